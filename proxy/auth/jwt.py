"""JWT verification: a client's password is a JWT naming its tenant.

Security rules (see DESIGN.md, tenant security model layer 1):
- the token header's ``alg`` must be in the configured allow-list, checked before any
  key is touched; ``none`` is never accepted;
- shared-secret (HS*) and public-key algorithms never share a verifier, and each key is
  only used with the algorithm family it belongs to, so no algorithm confusion;
- ``exp`` is required unless configured otherwise, ``nbf``/``iat`` are honoured, and
  ``iss``/``aud`` are checked when configured;
- the tenant claim must be a string that fully matches ``tenancy.tenant_pattern``.

Error messages never contain the token, a key or a secret. Reading and checking the
key material: :mod:`proxy.auth.jwt_keys`. Also :func:`mint_token` (``pgtenant token``).
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any, NoReturn

import jwt as pyjwt

from proxy.auth.errors import AuthError, AuthReason, AuthSqlState
from proxy.auth.identity import Identity
from proxy.auth.jwks import JwksSettings, RemoteJwks
from proxy.auth.jwt_keys import (
    HMAC_MIN_SECRET_BYTES,
    PinnedKey,
    VerificationKey,
    key_fits_algorithm,
    load_jwks,
    load_public_key,
    load_secret,
    remote_parser,
)
from proxy.config import (
    HMAC_ALGORITHMS,
    PUBLIC_KEY_ALGORITHMS,
    ConfigError,
    JwtConfig,
    TenancyConfig,
)

if TYPE_CHECKING:
    from jwt.types import Options

#: Tokens longer than this are refused before parsing (they cost CPU to decode);
#: real tokens with many claims stay far below it.
MAX_TOKEN_LENGTH = 64 * 1024


class JwtVerifier:
    """Verifies client JWTs against one configured key source and tenancy rules.

    Build it with :meth:`from_config`, which reads the key material once.
    """

    def __init__(
        self,
        *,
        algorithms: tuple[str, ...],
        key: VerificationKey | None = None,
        jwks: dict[str | None, PinnedKey] | None = None,
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
        keys: dict[str | None, PinnedKey] | None = None
        single: VerificationKey | None = None
        remote: RemoteJwks | None = None
        if algorithms[0] in HMAC_ALGORITHMS:
            single = load_secret(jwt, algorithms)
        elif jwt.public_key_file is not None:
            single = load_public_key(jwt.public_key_file, algorithms)
        elif jwt.jwks_file is not None:
            keys = load_jwks(jwt.jwks_file, algorithms)
        elif jwt.jwks_url is not None:
            settings = JwksSettings(jwt.jwks_url, jwt.jwks_ca_file, jwt.jwks_refresh_seconds,
                                    jwt.jwks_min_refresh_seconds, jwt.jwks_timeout_seconds,
                                    algorithms)
            old = previous.remote if previous is not None else None
            if old is not None and old.settings == settings:
                remote = old
            else:
                remote = RemoteJwks(settings, remote_parser(jwt.jwks_url, algorithms))
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
        entry: PinnedKey | None
        if self._key is not None:
            entry = PinnedKey(self._key, None)
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


def _nested_claim(claims: dict[str, Any], path: tuple[str, ...]) -> object:
    value: object = claims
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


