"""JWT verification: valid tokens give an Identity; every bad one is refused for a reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from proxy.auth.errors import AuthError
from proxy.auth.identity import Identity
from proxy.auth.jwt import MAX_TOKEN_LENGTH, JwtVerifier, mint_token
from proxy.config import ConfigError, JwtConfig, TenancyConfig

SECRET = "a-shared-secret-of-at-least-32-bytes!"  # HS256 needs >= 32 bytes
OTHER_SECRET = "another-shared-secret-32-bytes-long!!"
SECRET_ENV = "PGT_TEST_JWT_SECRET"


# --------------------------------------------------------------------- helpers, keys


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


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_keys() -> tuple[ec.EllipticCurvePrivateKey, ec.EllipticCurvePrivateKey]:
    return ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"tenant_id": "acme", "sub": "user-1", "iat": now, "exp": now + 600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)


def hs_verifier(**jwt_options: Any) -> JwtVerifier:
    return JwtVerifier.from_config(JwtConfig(secret_env=SECRET_ENV, **jwt_options), TenancyConfig())


@pytest.fixture
def verifier(secret_env: None) -> JwtVerifier:
    return hs_verifier()


@pytest.fixture
def rs_verifier(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> JwtVerifier:
    path = tmp_path / "jwt.pem"
    path.write_bytes(pem_public(rsa_key))
    config = JwtConfig(algorithms=("RS256",), public_key_file=str(path))
    return JwtVerifier.from_config(config, TenancyConfig())


@pytest.fixture
def es_verifier(tmp_path: Path, ec_keys: Any, rsa_key: rsa.RSAPrivateKey) -> JwtVerifier:
    """ES256 over a JWKS with two EC keys (kid "k1", "k2") and one RSA key ("r1")."""
    jwks = []
    for kid, key in (("k1", ec_keys[0]), ("k2", ec_keys[1])):
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        jwks.append({**jwk, "kid": kid, "use": "sig"})
    jwks.append({**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "r1"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": jwks}))
    config = JwtConfig(algorithms=("ES256", "RS256"), jwks_file=str(path))
    return JwtVerifier.from_config(config, TenancyConfig())


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


# --------------------------------------------------------------------- key loading


def test_secret_is_read_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    verifier = JwtVerifier.from_config(JwtConfig(secret_file=str(path)), TenancyConfig())
    assert verifier.verify(mint_token(SECRET, "acme")).tenant == "acme"


def test_missing_secret_env_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    with pytest.raises(ConfigError, match=r"^auth\.jwt\.secret_env: "):
        hs_verifier()


def test_short_secret_is_refused_without_showing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "too-short-secret")
    with pytest.raises(ConfigError, match=r"^auth\.jwt\.secret_env: .*at least 32 bytes") as info:
        hs_verifier()
    assert "too-short-secret" not in str(info.value)
    monkeypatch.setenv(SECRET_ENV, SECRET)  # 37 bytes: enough for HS256, not HS512
    with pytest.raises(ConfigError, match="at least 64 bytes"):
        hs_verifier(algorithms=("HS256", "HS512"))


def test_public_key_of_the_wrong_type_is_refused(tmp_path: Path, rsa_key: Any) -> None:
    path = tmp_path / "rsa.pem"
    path.write_bytes(pem_public(rsa_key))
    config = JwtConfig(algorithms=("ES256",), public_key_file=str(path))
    with pytest.raises(ConfigError, match=r"^auth\.jwt\.public_key_file: .*cannot verify"):
        JwtVerifier.from_config(config, TenancyConfig())


def test_weak_rsa_key_is_refused(tmp_path: Path) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = tmp_path / "weak.pem"
    path.write_bytes(pem_public(weak))
    config = JwtConfig(algorithms=("RS256",), public_key_file=str(path))
    with pytest.raises(ConfigError, match="too weak"):
        JwtVerifier.from_config(config, TenancyConfig())


def test_unreadable_or_non_pem_public_key_file_is_refused(tmp_path: Path, rsa_key: Any) -> None:
    config = JwtConfig(algorithms=("RS256",), public_key_file=str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="cannot read"):
        JwtVerifier.from_config(config, TenancyConfig())
    private = tmp_path / "private.pem"
    private.write_bytes(pem_private(rsa_key))  # a private key is not a public key file
    config = JwtConfig(algorithms=("RS256",), public_key_file=str(private))
    with pytest.raises(ConfigError, match="no PEM public key") as info:
        JwtVerifier.from_config(config, TenancyConfig())
    assert "PRIVATE" not in str(info.value)


@pytest.mark.parametrize(
    ("jwk", "fragment"),
    [
        ({"kty": "oct", "k": b64url(SECRET.encode()), "kid": "s"}, "secret or private"),
        ("private-ec", "secret or private"),
        ("not-a-dict", "not a JSON object"),
    ],
)
def test_jwks_with_secret_or_private_keys_is_refused(
    tmp_path: Path, ec_keys: Any, jwk: Any, fragment: str
) -> None:
    if jwk == "private-ec":
        jwk = ECAlgorithm.to_jwk(ec_keys[0], as_dict=True)
        assert "d" in jwk
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    config = JwtConfig(algorithms=("ES256",), jwks_file=str(path))
    with pytest.raises(ConfigError, match=fragment) as info:
        JwtVerifier.from_config(config, TenancyConfig())
    assert SECRET not in str(info.value) and b64url(SECRET.encode()) not in str(info.value)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("{", "not valid JSON"), ('{"no": 1}', "not a JWKS"), ('{"keys": []}', "no signing key")],
)
def test_malformed_jwks_file_is_refused(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(content)
    config = JwtConfig(algorithms=("ES256",), jwks_file=str(path))
    with pytest.raises(ConfigError, match=fragment):
        JwtVerifier.from_config(config, TenancyConfig())


def test_jwks_skips_keys_it_cannot_use(tmp_path: Path, ec_keys: Any, rsa_key: Any) -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    raw_ed = ed.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    keys = [
        {**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "rsa"},
        {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw_ed), "kid": "ed"},
        {**ECAlgorithm.to_jwk(ec_keys[0].public_key(), as_dict=True), "kid": "enc", "use": "enc"},
        {**ECAlgorithm.to_jwk(ec_keys[1].public_key(), as_dict=True), "kid": "ok"},
    ]
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": keys}))
    config = JwtConfig(algorithms=("ES256",), jwks_file=str(path))
    verifier = JwtVerifier.from_config(config, TenancyConfig())
    token = mint_token(pem_private(ec_keys[1]), "acme", algorithm="ES256", key_id="ok")
    assert verifier.verify(token).tenant == "acme"
    enc = mint_token(pem_private(ec_keys[0]), "acme", algorithm="ES256", key_id="enc")
    assert_refused(verifier, enc, "28P01", "no_key")


# --------------------------------------------------------------------- mint_token


def test_mint_token_sets_the_standard_claims() -> None:
    token = mint_token(
        SECRET, "acme", subject="svc", issuer="iss", audience="aud", key_id="k1",
        extra={"role": "reader"},
    )
    assert pyjwt.get_unverified_header(token)["kid"] == "k1"
    decoded = pyjwt.decode(token, SECRET, algorithms=["HS256"], audience="aud")
    assert decoded["tenant_id"] == "acme"
    assert (decoded["sub"], decoded["iss"], decoded["role"]) == ("svc", "iss", "reader")
    assert decoded["exp"] - decoded["iat"] == 3600


@pytest.mark.parametrize("algorithm", ["none", "NONE"])
def test_mint_token_refuses_unsigned_tokens(algorithm: str) -> None:
    with pytest.raises(ValueError, match="none"):
        mint_token(SECRET, "acme", algorithm=algorithm)


def test_mint_token_refuses_a_short_hmac_secret() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        mint_token("short", "acme")


def test_identity_without_tenant_must_bypass_tenancy() -> None:
    with pytest.raises(ValueError):
        Identity(tenant=None)
    assert Identity(tenant=None, bypass_tenancy=True, upstream_user="migrator").tenant is None


@pytest.mark.parametrize("algorithms", [(), ("none",), ("HS256", "RS256"), ("HS256", "none")])
def test_hand_built_config_cannot_bypass_the_allow_list_rules(
    secret_env: None, algorithms: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError, match=r"^auth\.jwt\.algorithms: "):
        hs_verifier(algorithms=algorithms)


def test_nested_tenant_claim_is_read_by_path(secret_env: None) -> None:
    v = hs_verifier(tenant_claim="app_metadata.tenant_id")
    nested = claims(tenant_id=None, app_metadata={"tenant_id": "globex"})
    assert v.verify(pyjwt.encode(nested, SECRET, algorithm="HS256")).tenant == "globex"
    # A top-level claim with the dotted name itself wins (Auth0-style namespaced claims).
    flat = claims(**{"app_metadata.tenant_id": "acme", "app_metadata": {"tenant_id": "x"}})
    assert v.verify(pyjwt.encode(flat, SECRET, algorithm="HS256")).tenant == "acme"
    assert_refused(v, pyjwt.encode(claims(app_metadata="globex"), SECRET, algorithm="HS256"),
                   "28000", "missing_tenant")
