"""Tokens, keys and checks the JWT tests (tests/unit/test_auth_jwt_*.py) share; their
verifiers and generated keys are fixtures in tests/unit/conftest.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from proxy.auth.errors import AuthError
from proxy.auth.jwt import JwtVerifier
from proxy.config import JwtConfig, TenancyConfig

SECRET = "a-shared-secret-of-at-least-32-bytes!"  # HS256 needs >= 32 bytes
SECRET_ENV = "PGT_TEST_JWT_SECRET"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes) -> str:
    return ".".join(
        (b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()),
         b64url(signature))
    )


def hs256_sign(header: dict[str, Any], claims: dict[str, Any], key: bytes) -> str:
    """Sign without pyjwt, which (rightly) refuses a PEM key as an HMAC secret."""
    signing_input = ".".join(
        (b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()))
    )
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(signature)


def pem_private(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def pem_public(key: Any) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"tenant_id": "acme", "sub": "user-1", "iat": now, "exp": now + 600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs_verifier(**jwt_options: Any) -> JwtVerifier:
    return JwtVerifier.from_config(JwtConfig(secret_env=SECRET_ENV, **jwt_options), TenancyConfig())


def assert_refused(
    verifier: JwtVerifier, token: str, sqlstate: str, reason: str, *secrets: str | bytes
) -> AuthError:
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    err = info.value
    assert (err.sqlstate, err.reason) == (sqlstate, reason), str(err)
    shown = f"{err} {err!r} {err.args}"
    # No part of the credential or key leaks into what gets logged or sent.
    for part in (token, *token.split("."), SECRET, *secrets):
        text = part.decode(errors="replace") if isinstance(part, bytes) else part
        if len(text) >= 8:
            assert text not in shown
    assert err.__cause__ is None and err.__suppress_context__
    return err
