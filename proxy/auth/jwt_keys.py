"""The key material a JWT verifier trusts: read once, checked against the allowed algorithms.

A shared secret (HS*), a PEM public key or certificate, or a JWKS document (a file, or a
provider's URL fetched by :mod:`proxy.auth.jwks`). Weak keys, private or symmetric keys
in a JWKS, and keys no allowed algorithm can use are configuration errors.
:func:`key_fits_algorithm` is the algorithm-confusion guard the verifier applies per token.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import jwt as pyjwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from proxy.config import (
    HMAC_ALGORITHMS,
    PUBLIC_KEY_ALGORITHMS,
    ConfigError,
    JwtConfig,
    resolve_secret,
)

PublicKey: TypeAlias = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)
VerificationKey: TypeAlias = bytes | PublicKey

#: RFC 7518 §3.2: an HMAC key must be at least as long as the hash output.
HMAC_MIN_SECRET_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
RSA_MIN_KEY_BITS = 2048

_EC_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES256K": ec.SECP256K1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}


def key_fits_algorithm(key: VerificationKey, algorithm: str) -> bool:
    """Whether ``key`` is the kind of key ``algorithm`` verifies with.

    This is the algorithm-confusion guard: a public key is never used as an HMAC
    secret, an RSA key never verifies an ECDSA signature, and so on.
    """
    if algorithm in HMAC_ALGORITHMS:
        return isinstance(key, bytes)
    if algorithm[:2] in ("RS", "PS"):
        return isinstance(key, rsa.RSAPublicKey)
    if algorithm in _EC_CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(
            key.curve, _EC_CURVES[algorithm]
        )
    if algorithm == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


@dataclass(frozen=True, slots=True)
class PinnedKey:
    """A verification key and the one algorithm its JWK pins it to, if any."""

    key: VerificationKey
    algorithm: str | None  # a JWK's "alg" pins the key to one algorithm


def load_secret(jwt: JwtConfig, algorithms: tuple[str, ...]) -> bytes:
    secret = resolve_secret(jwt.secret_env, jwt.secret_file, "auth.jwt.secret")
    if secret is None:
        raise ConfigError("auth.jwt: HS* algorithms need secret_env or secret_file")
    raw = secret.encode("utf-8")
    needed = max(HMAC_MIN_SECRET_BYTES[a] for a in algorithms)
    if len(raw) < needed:
        key = "auth.jwt.secret_env" if jwt.secret_env is not None else "auth.jwt.secret_file"
        raise ConfigError(
            f"{key}: the secret is too short; {', '.join(algorithms)} needs at least "
            f"{needed} bytes (RFC 7518 §3.2)"
        )
    return raw


def load_public_key(path: str, algorithms: tuple[str, ...]) -> PublicKey:
    what = "auth.jwt.public_key_file"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {path}: {e.strerror}") from None
    try:
        loaded: object = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        try:
            loaded = x509.load_pem_x509_certificate(data).public_key()
        except (ValueError, TypeError):
            raise ConfigError(
                f"{what}: {path} holds no PEM public key or certificate"
            ) from None
    key = _check_public_key(loaded, algorithms, what)
    if key is None:
        raise ConfigError(
            f"{what}: the key in {path} cannot verify any of {', '.join(algorithms)}"
        )
    return key


def _check_public_key(key: object, algorithms: tuple[str, ...], what: str) -> PublicKey | None:
    """The key if it can verify one of ``algorithms``, else None; weak RSA is an error."""
    if not isinstance(
        key,
        rsa.RSAPublicKey
        | ec.EllipticCurvePublicKey
        | ed25519.Ed25519PublicKey
        | ed448.Ed448PublicKey,
    ):
        return None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < RSA_MIN_KEY_BITS:
        raise ConfigError(
            f"{what}: an RSA key of {key.key_size} bits is too weak "
            f"(at least {RSA_MIN_KEY_BITS})"
        )
    return key if any(key_fits_algorithm(key, a) for a in algorithms) else None


def remote_parser(url: str, algorithms: tuple[str, ...]
                   ) -> Callable[[Any], dict[str | None, PinnedKey]]:
    """The check a fetched JWKS document gets: the one a jwks_file gets."""
    def parse(document: Any) -> dict[str | None, PinnedKey]:
        try:
            return _parse_jwks(document, algorithms, "auth.jwt.jwks_url", url)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    return parse


def load_jwks(path: str, algorithms: tuple[str, ...]) -> dict[str | None, PinnedKey]:
    what = "auth.jwt.jwks_file"
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {path}: {e.strerror}") from None
    except ValueError:
        raise ConfigError(f"{what}: {path} is not valid JSON") from None
    return _parse_jwks(document, algorithms, what, path)


def _parse_jwks(document: Any, algorithms: tuple[str, ...], what: str, path: str
                ) -> dict[str | None, PinnedKey]:
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f'{what}: {path} is not a JWKS document (no "keys" array)')
    keys: dict[str | None, PinnedKey] = {}
    for i, jwk in enumerate(entries):
        if not isinstance(jwk, dict):
            raise ConfigError(f"{what}: key #{i} in {path} is not a JSON object")
        # Symmetric or private material does not belong in a verification key set, and
        # an "oct" key would reopen the HS/RS confusion this module exists to prevent.
        if jwk.get("kty") == "oct" or "d" in jwk:
            raise ConfigError(
                f"{what}: key #{i} in {path} is a secret or private key; "
                "publish only public keys"
            )
        if jwk.get("use", "sig") != "sig":
            continue  # encryption keys are not for signatures
        jwk_alg = jwk.get("alg")
        if jwk_alg is not None and jwk_alg not in algorithms:
            continue  # pinned to an algorithm we do not accept
        if jwk_alg is not None and jwk_alg not in PUBLIC_KEY_ALGORITHMS:
            continue
        try:
            loaded = pyjwt.PyJWK(jwk).key
        except pyjwt.PyJWTError:
            raise ConfigError(f"{what}: key #{i} in {path} is not a usable JWK") from None
        key = _check_public_key(loaded, algorithms if jwk_alg is None else (jwk_alg,), what)
        if key is None:
            continue  # e.g. an RSA key in a set used with ES256 only
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise ConfigError(f"{what}: key #{i} in {path} has a kid that is not a string")
        if kid in keys:
            what_kid = "without a kid" if kid is None else f"with kid {kid!r}"
            raise ConfigError(f"{what}: {path} has more than one usable key {what_kid}")
        keys[kid] = PinnedKey(key, jwk_alg)
    if not keys:
        raise ConfigError(
            f"{what}: {path} has no signing key for any of {', '.join(algorithms)}"
        )
    return keys
