"""JWT verification: every bad token is refused for a reason, with its SQLSTATE (28P01 for
the credential, 28000 for a tenant that is missing or not allowed), and nothing of the
token or the key in the error."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.auth.jwt import MAX_TOKEN_LENGTH, JwtVerifier, mint_token
from tests.unit.jwt_tokens import (
    SECRET,
    assert_refused,
    b64url,
    claims,
    hand_made_token,
    hs256_sign,
    hs_verifier,
    pem_private,
    pem_public,
)

OTHER_SECRET = "another-shared-secret-32-bytes-long!!"


# --------------------------------------------------------------------- refused: 28P01


def test_expired_token_is_refused(verifier: JwtVerifier) -> None:
    token = mint_token(SECRET, "acme", ttl_seconds=-3600)
    err = assert_refused(verifier, token, "28P01", "expired")
    assert "expired" in str(err)


def test_token_signed_with_another_secret_is_refused(verifier: JwtVerifier) -> None:
    token = mint_token(OTHER_SECRET, "acme")
    assert_refused(verifier, token, "28P01", "bad_signature", OTHER_SECRET)


def test_tampered_claims_are_refused(verifier: JwtVerifier) -> None:
    header, _, signature = mint_token(SECRET, "acme").split(".")
    payload = b64url(json.dumps(claims(tenant_id="globex")).encode())
    assert_refused(verifier, f"{header}.{payload}.{signature}", "28P01", "bad_signature")


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_unsigned_alg_none_token_is_refused(verifier: JwtVerifier, alg: str) -> None:
    token = hand_made_token({"alg": alg, "typ": "JWT"}, claims(), b"")
    assert token.endswith(".")
    assert_refused(verifier, token, "28P01", "algorithm")


@pytest.mark.parametrize("header", [{"typ": "JWT"}, {"alg": None}, {"alg": ["HS256"]}])
def test_token_without_a_usable_alg_is_refused(verifier: JwtVerifier, header: dict) -> None:
    token = hand_made_token(header, claims(), b"sig")
    assert_refused(verifier, token, "28P01", "algorithm")


def test_hs256_token_keyed_with_the_rsa_public_key_is_refused_by_rs256_verifier(
    rs_verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    # The classic confusion attack: the public key is public, so anyone can HMAC with it.
    public_pem = pem_public(rsa_key)
    token = hs256_sign({"alg": "HS256", "typ": "JWT"}, claims(), public_pem)
    assert_refused(rs_verifier, token, "28P01", "algorithm", public_pem)


def test_rs256_token_is_refused_by_hs256_verifier(
    verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = mint_token(pem_private(rsa_key), "acme", algorithm="RS256")
    assert_refused(verifier, token, "28P01", "algorithm")


def test_hs512_token_is_refused_when_only_hs256_is_allowed(verifier: JwtVerifier) -> None:
    token = mint_token(SECRET * 2, "acme", algorithm="HS512")
    assert_refused(verifier, token, "28P01", "algorithm")


def test_token_without_exp_is_refused(verifier: JwtVerifier) -> None:
    token = mint_token(SECRET, "acme", ttl_seconds=None)
    assert_refused(verifier, token, "28P01", "missing_exp")


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_token_not_valid_yet_is_refused(verifier: JwtVerifier, claim: str) -> None:
    token = mint_token(SECRET, "acme", extra={claim: int(time.time()) + 3600})
    assert_refused(verifier, token, "28P01", "not_yet_valid")


def test_past_nbf_is_accepted(verifier: JwtVerifier) -> None:
    token = mint_token(SECRET, "acme", extra={"nbf": int(time.time()) - 5})
    assert verifier.verify(token).tenant == "acme"


@pytest.mark.parametrize(
    ("mint", "reason"),
    [
        ({"issuer": "https://evil.example", "audience": "pgtenant"}, "issuer"),
        ({"audience": "pgtenant"}, "issuer"),  # iss required when configured
        ({"issuer": "https://issuer.example", "audience": "other"}, "audience"),
        ({"issuer": "https://issuer.example"}, "audience"),  # aud required when configured
    ],
)
def test_wrong_or_missing_issuer_and_audience_are_refused(
    secret_env: None, mint: dict[str, str], reason: str
) -> None:
    verifier = hs_verifier(issuer="https://issuer.example", audience="pgtenant")
    assert_refused(verifier, mint_token(SECRET, "acme", **mint), "28P01", reason)


def test_audience_is_refused_when_none_is_configured(verifier: JwtVerifier) -> None:
    # RFC 7519 §4.1.3: a token meant for someone else is not for us.
    token = mint_token(SECRET, "acme", audience="another-service")
    assert_refused(verifier, token, "28P01", "audience")


@pytest.mark.parametrize(
    "token",
    ["", "not-a-jwt", "a.b", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.!!!.sig", "Bearer x.y.z"],
)
def test_malformed_password_is_refused(verifier: JwtVerifier, token: str) -> None:
    assert_refused(verifier, token, "28P01", "malformed")


@pytest.mark.parametrize("value", ["9999999999", True, [1], {"t": 1}])
def test_non_numeric_exp_is_refused(verifier: JwtVerifier, value: Any) -> None:
    header = {"alg": "HS256", "typ": "JWT"}
    token = hs256_sign(header, claims(exp=value), SECRET.encode())
    assert_refused(verifier, token, "28P01", "expired" if value is True else "malformed")


def test_oversized_token_is_refused_before_parsing(verifier: JwtVerifier) -> None:
    token = "x" * (MAX_TOKEN_LENGTH + 1)
    assert_refused(verifier, token, "28P01", "malformed")


# --------------------------------------------------------------------- refused: 28000


@pytest.mark.parametrize("present", [False, True])
def test_token_without_tenant_claim_is_not_authorised(
    verifier: JwtVerifier, present: bool
) -> None:
    body = claims(tenant_id=None)
    if present:
        body["tenant_id"] = None  # JSON null
    token = hs256_sign({"alg": "HS256", "typ": "JWT"}, body, SECRET.encode())
    err = assert_refused(verifier, token, "28000", "missing_tenant")
    assert "tenant_id" in str(err)


@pytest.mark.parametrize(
    "tenant",
    [
        "a'; DROP TABLE x;--",
        "acme\n",  # `$` alone would match before a trailing newline
        "acme other",
        "",
        "x" * 64,
        "ácme",
        "acme\x00",
    ],
)
def test_tenant_failing_the_pattern_is_not_authorised(verifier: JwtVerifier, tenant: str) -> None:
    token = mint_token(SECRET, tenant)
    err = assert_refused(verifier, token, "28000", "bad_tenant")
    if tenant:
        assert tenant not in str(err)


@pytest.mark.parametrize("tenant", [42, 4.2, True, ["acme"], {"id": "acme"}])
def test_non_string_tenant_is_not_authorised(verifier: JwtVerifier, tenant: Any) -> None:
    token = mint_token(SECRET, "acme", extra={"tenant_id": tenant})
    assert_refused(verifier, token, "28000", "bad_tenant")
