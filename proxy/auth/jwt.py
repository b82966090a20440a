"""JWT verification: a client's password is a JWT naming its tenant.

Security rules (see DESIGN.md, tenant security model layer 1):
- the token header's ``alg`` must be in the configured allow-list, checked before any
  key is touched; ``none`` is never accepted;
- shared-secret (HS*) and public-key algorithms never share a verifier, and each key is
  only used with the algorithm family it belongs to, so no algorithm confusion;
- ``exp`` is required unless configured otherwise, ``nbf``/``iat`` are honoured, and
  ``iss``/``aud`` are checked when configured;
- the tenant claim must be a string that fully matches ``tenancy.tenant_pattern``.

Error messages never contain the token, a key or a secret.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

import jwt as pyjwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from proxy.auth.errors import AuthError, AuthReason, AuthSqlState
from proxy.auth.identity import Identity
from proxy.auth.jwks import JwksSettings, RemoteJwks
from proxy.config import (
    HMAC_ALGORITHMS,
    PUBLIC_KEY_ALGORITHMS,
    ConfigError,
    JwtConfig,
    TenancyConfig,
    resolve_secret,
)

if TYPE_CHECKING:
    from jwt.types import Options

PublicKey: TypeAlias = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)
VerificationKey: TypeAlias = bytes | PublicKey

#: Tokens longer than this are refused before parsing (they cost CPU to decode);
#: real tokens with many claims stay far below it.
MAX_TOKEN_LENGTH = 64 * 1024

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
class _Key:
    key: VerificationKey
    algorithm: str | None  # a JWK's "alg" pins the key to one algorithm


class JwtVerifier:
    """Verifies client JWTs against one configured key source and tenancy rules.

    Build it with :meth:`from_config`, which reads the key material once.
    """

    def __init__(
        self,
        *,
        algorithms: tuple[str, ...],
        key: VerificationKey | None = None,
        jwks: dict[str | None, _Key] | None = None,
        remote: RemoteJwks | None = None,
        tenant_claim: str,
        tenant_pattern: re.Pattern[str],
        issuer: str | None = None,
        audience: str | None = None,
        leeway_seconds: float = 0.0,
        require_exp: bool = True,
    ) -> None:
        if not algorithms or any(a.lower() == "none" for a in algorithms):
            raise ValueError("algorithms must be a non-empty allow-list without 'none'")
        if sum(x is not None for x in (key, jwks, remote)) != 1:
            raise ValueError("pass exactly one of key, jwks or remote")
        self._algorithms = frozenset(algorithms)
        # One configured key (secret or PEM) ignores the token's kid; a JWKS is indexed
        # by kid, with None for a key published without one; a remote JWKS is replaced
        # whole by each refresh.
        self._key = key
        self._jwks = jwks or {}
        self.remote = remote
        self._tenant_claim = tenant_claim
        # "app_metadata.tenant_id": a claim nested in objects, for providers that put
        # custom claims there (a top-level claim of that exact name wins).
        self._tenant_path = tuple(tenant_claim.split(".")) if "." in tenant_claim else ()
        self._tenant_pattern = tenant_pattern
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._options: Options = {
            "require": ["exp"] if require_exp else [],
            # Keys are checked at load; this turns pyjwt's warning into a refusal.
            "enforce_minimum_key_length": True,
        }

    @classmethod
    def from_config(cls, jwt: JwtConfig, tenancy: TenancyConfig,
                    previous: JwtVerifier | None = None) -> JwtVerifier:
        """Load the key material named by ``jwt`` (secret, PEM public key, JWKS file, or
        a JWKS URL whose keys are fetched later: see :class:`RemoteJwks`).

        ``previous`` (a reload): its remote key set is kept when the URL and its settings
        did not change, so a reload never drops the keys logins depend on.
        Raises :class:`ConfigError` if the key is missing, unreadable, too weak, or of
        a kind the allowed algorithms cannot use.
        """
        algorithms = tuple(jwt.algorithms)
        # load_config already enforces this; a JwtConfig built by hand must not bypass it.
        if not algorithms or not (
            set(algorithms) <= HMAC_ALGORITHMS or set(algorithms) <= PUBLIC_KEY_ALGORITHMS
        ):
            raise ConfigError(
                "auth.jwt.algorithms: expected known algorithms of one family "
                "(HS* or public-key), never none"
            )
        keys: dict[str | None, _Key] | None = None
        single: VerificationKey | None = None
        remote: RemoteJwks | None = None
        if algorithms[0] in HMAC_ALGORITHMS:
            single = _load_secret(jwt, algorithms)
        elif jwt.public_key_file is not None:
            single = _load_public_key(jwt.public_key_file, algorithms)
        elif jwt.jwks_file is not None:
            keys = _load_jwks(jwt.jwks_file, algorithms)
        elif jwt.jwks_url is not None:
            settings = JwksSettings(jwt.jwks_url, jwt.jwks_ca_file, jwt.jwks_refresh_seconds,
                                    jwt.jwks_min_refresh_seconds, jwt.jwks_timeout_seconds,
                                    algorithms)
            old = previous.remote if previous is not None else None
            if old is not None and old.settings == settings:
                remote = old
            else:
                remote = RemoteJwks(settings, _remote_parser(jwt.jwks_url, algorithms))
        else:
            raise ConfigError("auth.jwt: no key configured "
                              "(public_key_file, jwks_file or jwks_url)")
        return cls(
            algorithms=algorithms,
            key=single,
            jwks=keys,
            remote=remote,
            tenant_claim=jwt.tenant_claim,
            tenant_pattern=re.compile(tenancy.tenant_pattern),
            issuer=jwt.issuer,
            audience=jwt.audience,
            leeway_seconds=jwt.leeway_seconds,
            require_exp=jwt.require_exp,
        )

    def verify(self, token: str) -> Identity:
        """Verify ``token`` and return the identity it proves.

        Raises :class:`AuthError`: sqlstate 28P01 for a bad, expired or malformed
        token, 28000 for a valid token without an acceptable tenant.
        """
        if len(token) > MAX_TOKEN_LENGTH:
            _fail("malformed", "the token is too long")
        try:
            header = pyjwt.get_unverified_header(token)
        except pyjwt.PyJWTError:
            _fail("malformed", "the password is not a well-formed JWT")
        algorithm = header.get("alg")
        # Decided from the allow-list before any key is chosen: the header is
        # attacker-controlled and must not pick how the signature is checked.
        if not isinstance(algorithm, str) or algorithm not in self._algorithms:
            _fail("algorithm", "the token's signing algorithm is not accepted")
        key = self._select_key(header, algorithm)
        claims = self._decode(token, key, algorithm)
        for claim in ("exp", "nbf", "iat"):
            value = claims.get(claim)
            # pyjwt accepts numeric strings here; RFC 7519 NumericDate is a number.
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                _fail("malformed", f"the token's {claim} claim is not a number")
        tenant = claims.get(self._tenant_claim)
        if tenant is None and self._tenant_path:
            tenant = _nested_claim(claims, self._tenant_path)
        if tenant is None:
            _fail("missing_tenant", f"the token has no {self._tenant_claim} claim", "28000")
        if not isinstance(tenant, str) or not self._tenant_pattern.fullmatch(tenant):
            _fail(
                "bad_tenant",
                f"the token's {self._tenant_claim} claim is not a valid tenant id",
                "28000",
            )
        subject = claims.get("sub")
        exp = claims.get("exp")
        return Identity(
            tenant=tenant,
            subject=subject if isinstance(subject, str) else None,
            expires_at=float(exp) if exp is not None else None,
        )

    def _select_key(self, header: dict[str, Any], algorithm: str) -> VerificationKey:
        entry: _Key | None
        if self._key is not None:
            entry = _Key(self._key, None)
        else:
            jwks = self.remote.keys if self.remote is not None else self._jwks
            kid = header.get("kid")
            entry = jwks.get(kid)
            if entry is None and kid is None and len(jwks) == 1:
                # A one-key set needs no kid to choose; a kid that names no key is
                # refused even then, as keys are selected by kid.
                entry = next(iter(jwks.values()))
        if entry is None:
            _fail("no_key", "no configured key matches the token's key id")
        if entry.algorithm is not None and entry.algorithm != algorithm:
            _fail("algorithm", "the token's signing algorithm does not match its key")
        if not key_fits_algorithm(entry.key, algorithm):
            _fail("no_key", "no configured key fits the token's signing algorithm")
        return entry.key

    def may_refresh_for(self, token: str) -> bool:
        """The token names a key id the remote set lacks, and the provider may be asked
        again now (rate-limited): refresh, then verify once more."""
        if self.remote is None:
            return False
        try:
            kid = pyjwt.get_unverified_header(token).get("kid")
        except pyjwt.PyJWTError:
            return False
        return isinstance(kid, str) and self.remote.may_refresh_for(kid)

    def _decode(self, token: str, key: VerificationKey, algorithm: str) -> dict[str, Any]:
        try:
            return pyjwt.decode(
                token,
                key,
                algorithms=[algorithm],
                options=self._options,
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
            )
        # Most specific first: InvalidSignatureError is a DecodeError, and all of
        # these are InvalidTokenError. pyjwt's own messages are not passed on.
        except pyjwt.ExpiredSignatureError:
            _fail("expired", "the token has expired")
        except pyjwt.ImmatureSignatureError:
            _fail("not_yet_valid", "the token is not valid yet")
        except pyjwt.InvalidSignatureError:
            _fail("bad_signature", "the token's signature is invalid")
        except pyjwt.InvalidAlgorithmError:
            _fail("algorithm", "the token's signing algorithm is not accepted")
        except pyjwt.InvalidIssuerError:
            _fail("issuer", "the token's issuer is not accepted")
        except pyjwt.InvalidAudienceError:
            _fail("audience", "the token's audience is not accepted")
        except pyjwt.MissingRequiredClaimError as e:
            if e.claim == "exp":
                _fail("missing_exp", "the token has no expiry (exp claim)")
            if e.claim == "iss":
                _fail("issuer", "the token has no issuer (iss claim)")
            if e.claim == "aud":
                _fail("audience", "the token has no audience (aud claim)")
            _fail("malformed", f"the token has no {e.claim} claim")
        except pyjwt.InvalidKeyError:
            _fail("no_key", "no configured key can verify the token")
        except (pyjwt.PyJWTError, TypeError, ValueError):
            _fail("malformed", "the password is not a well-formed JWT")


def _fail(reason: AuthReason, detail: str, sqlstate: AuthSqlState = "28P01") -> NoReturn:
    """Raise the AuthError for ``reason``; ``from None`` keeps pyjwt's text out of logs."""
    raise AuthError(f"JWT rejected: {detail}", sqlstate=sqlstate, reason=reason) from None


def mint_token(
    secret: str | bytes,
    tenant: str,
    *,
    algorithm: str = "HS256",
    tenant_claim: str = "tenant_id",
    ttl_seconds: float | None = 3600,
    subject: str | None = None,
    issuer: str | None = None,
    audience: str | None = None,
    extra: dict[str, Any] | None = None,
    key_id: str | None = None,
) -> str:
    """Sign a JWT for ``tenant`` (``pgtenant token`` and tests).

    ``secret`` is the shared secret for HS* or a PEM private key for the others.
    ``ttl_seconds`` may be negative (an already expired token) or None (no ``exp``).
    ``extra`` claims are applied last, so they can override any claim set here.
    ``key_id`` goes into the header as ``kid``.
    """
    if algorithm.lower() == "none":
        raise ValueError('refusing to mint an unsigned ("none") token')
    if algorithm in HMAC_ALGORITHMS:
        raw = secret.encode() if isinstance(secret, str) else secret
        if len(raw) < HMAC_MIN_SECRET_BYTES[algorithm]:
            raise ValueError(
                f"{algorithm} needs a secret of at least {HMAC_MIN_SECRET_BYTES[algorithm]} bytes"
            )
    now = int(time.time())
    claims: dict[str, Any] = {tenant_claim: tenant, "iat": now}
    if ttl_seconds is not None:
        claims["exp"] = now + int(ttl_seconds)
    optional = {"sub": subject, "iss": issuer, "aud": audience}
    claims.update({name: value for name, value in optional.items() if value is not None})
    claims.update(extra or {})
    headers = {"kid": key_id} if key_id is not None else None
    return pyjwt.encode(claims, secret, algorithm=algorithm, headers=headers)


def _load_secret(jwt: JwtConfig, algorithms: tuple[str, ...]) -> bytes:
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


def _load_public_key(path: str, algorithms: tuple[str, ...]) -> PublicKey:
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


def _nested_claim(claims: dict[str, Any], path: tuple[str, ...]) -> object:
    value: object = claims
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _remote_parser(url: str, algorithms: tuple[str, ...]
                   ) -> Callable[[Any], dict[str | None, _Key]]:
    """The check a fetched JWKS document gets: the one a jwks_file gets."""
    def parse(document: Any) -> dict[str | None, _Key]:
        try:
            return _parse_jwks(document, algorithms, "auth.jwt.jwks_url", url)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    return parse


def _load_jwks(path: str, algorithms: tuple[str, ...]) -> dict[str | None, _Key]:
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
                ) -> dict[str | None, _Key]:
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f'{what}: {path} is not a JWKS document (no "keys" array)')
    keys: dict[str | None, _Key] = {}
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
        keys[kid] = _Key(key, jwk_alg)
    if not keys:
        raise ConfigError(
            f"{what}: {path} has no signing key for any of {', '.join(algorithms)}"
        )
    return keys
