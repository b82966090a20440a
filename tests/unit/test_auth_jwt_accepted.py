"""JWT verification: valid tokens give an Identity (HS256, RS256 from a PEM key, ES256 from
a JWKS by kid; leeway, issuer and audience, custom and nested tenant claims)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import ECAlgorithm

from proxy.auth.identity import Identity
from proxy.auth.jwt import JwtVerifier, mint_token
from proxy.config import JwtConfig, TenancyConfig
from tests.unit.jwt_tokens import (
    SECRET,
    SECRET_ENV,
    assert_refused,
    claims,
    hand_made_token,
    hs_verifier,
    pem_private,
)

# --------------------------------------------------------------------- accepted tokens


def test_valid_hs256_token_gives_the_identity(verifier: JwtVerifier) -> None:
    token = mint_token(SECRET, "acme", subject="user-1", ttl_seconds=600)
    identity = verifier.verify(token)
    assert identity.tenant == "acme"
    assert identity.subject == "user-1"
    assert identity.bypass_tenancy is False
    assert identity.upstream_user is None
    assert identity.expires_at is not None
    assert time.time() + 500 < identity.expires_at <= time.time() + 600


def test_valid_rs256_token_verifies_with_the_pem_public_key(
    rs_verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = mint_token(pem_private(rsa_key), "acme", algorithm="RS256")
    assert rs_verifier.verify(token) == Identity(
        tenant="acme", expires_at=pyjwt.decode(token, options={"verify_signature": False})["exp"]
    )


def test_es256_token_is_verified_with_the_jwks_key_its_kid_names(
    es_verifier: JwtVerifier, ec_keys: Any
) -> None:
    token = mint_token(pem_private(ec_keys[1]), "acme", algorithm="ES256", key_id="k2")
    assert es_verifier.verify(token).tenant == "acme"
    # Signed by k1's key but claiming to be k2: the kid chose k2, so the signature fails.
    forged = mint_token(pem_private(ec_keys[0]), "acme", algorithm="ES256", key_id="k2")
    assert_refused(es_verifier, forged, "28P01", "bad_signature")


def test_jwks_token_with_unknown_or_missing_kid_is_refused(
    es_verifier: JwtVerifier, ec_keys: Any
) -> None:
    key = pem_private(ec_keys[0])
    unknown = mint_token(key, "acme", algorithm="ES256", key_id="k9")
    assert_refused(es_verifier, unknown, "28P01", "no_key")
    missing = mint_token(key, "acme", algorithm="ES256")
    assert_refused(es_verifier, missing, "28P01", "no_key")


def test_jwks_key_is_only_used_with_its_own_key_type(
    es_verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    # RS256 is allowed, but kid k1 is an EC key: it must not verify an RS256 token.
    token = mint_token(pem_private(rsa_key), "acme", algorithm="RS256", key_id="k1")
    assert_refused(es_verifier, token, "28P01", "no_key")
    assert es_verifier.verify(
        mint_token(pem_private(rsa_key), "acme", algorithm="RS256", key_id="r1")
    ).tenant == "acme"


def test_jwk_alg_pins_the_key_to_one_algorithm(tmp_path: Path, ec_keys: Any) -> None:
    jwk = {**ECAlgorithm.to_jwk(ec_keys[0].public_key(), as_dict=True), "kid": "k1",
           "alg": "ES256"}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    verifier = JwtVerifier.from_config(
        JwtConfig(algorithms=("ES256", "ES384"), jwks_file=str(path)), TenancyConfig()
    )
    header = {"alg": "ES384", "kid": "k1", "typ": "JWT"}
    token = hand_made_token(header, claims(), b"\0" * 96)
    assert_refused(verifier, token, "28P01", "algorithm")


def test_token_over_4kb_is_accepted(verifier: JwtVerifier) -> None:
    token = mint_token(SECRET, "acme", extra={"roles": ["reader"] * 800, "blob": "x" * 3000})
    assert len(token) > 8192
    assert verifier.verify(token).tenant == "acme"


def test_expiry_within_leeway_is_accepted(secret_env: None) -> None:
    token = mint_token(SECRET, "acme", ttl_seconds=-10)
    assert hs_verifier(leeway_seconds=30).verify(token).tenant == "acme"
    assert_refused(hs_verifier(leeway_seconds=0), token, "28P01", "expired")


def test_matching_issuer_and_audience_are_accepted(secret_env: None) -> None:
    verifier = hs_verifier(issuer="https://issuer.example", audience="pgtenant")
    token = mint_token(SECRET, "acme", issuer="https://issuer.example", audience="pgtenant")
    assert verifier.verify(token).tenant == "acme"
    listed = mint_token(SECRET, "acme", issuer="https://issuer.example",
                        extra={"aud": ["other", "pgtenant"]})
    assert verifier.verify(listed).tenant == "acme"


def test_token_without_exp_is_accepted_when_exp_is_optional(secret_env: None) -> None:
    token = mint_token(SECRET, "acme", ttl_seconds=None)
    identity = hs_verifier(require_exp=False).verify(token)
    assert identity == Identity(tenant="acme", expires_at=None)


def test_custom_tenant_claim_and_pattern(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    verifier = JwtVerifier.from_config(
        JwtConfig(secret_env=SECRET_ENV, tenant_claim="org"),
        TenancyConfig(tenant_pattern=r"^org-[0-9]{1,6}$"),
    )
    token = mint_token(SECRET, "org-42", tenant_claim="org")
    assert verifier.verify(token).tenant == "org-42"
    assert_refused(verifier, mint_token(SECRET, "acme", tenant_claim="org"), "28000", "bad_tenant")
    assert_refused(verifier, mint_token(SECRET, "org-42"), "28000", "missing_tenant")


def test_identity_without_tenant_must_bypass_tenancy() -> None:
    with pytest.raises(ValueError):
        Identity(tenant=None)
    assert Identity(tenant=None, bypass_tenancy=True, upstream_user="migrator").tenant is None


def test_nested_tenant_claim_is_read_by_path(secret_env: None) -> None:
    v = hs_verifier(tenant_claim="app_metadata.tenant_id")
    nested = claims(tenant_id=None, app_metadata={"tenant_id": "globex"})
    assert v.verify(pyjwt.encode(nested, SECRET, algorithm="HS256")).tenant == "globex"
    # A top-level claim with the dotted name itself wins (Auth0-style namespaced claims).
    flat = claims(**{"app_metadata.tenant_id": "acme", "app_metadata": {"tenant_id": "x"}})
    assert v.verify(pyjwt.encode(flat, SECRET, algorithm="HS256")).tenant == "acme"
    assert_refused(v, pyjwt.encode(claims(app_metadata="globex"), SECRET, algorithm="HS256"),
                   "28000", "missing_tenant")
