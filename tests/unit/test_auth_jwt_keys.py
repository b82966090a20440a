"""JWT verifier configuration: secrets and keys are loaded from the environment, files and
JWKS, and weak, wrong or secret keys and a hand-built algorithm list are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from proxy.auth.jwt import JwtVerifier, mint_token
from proxy.config import ConfigError, JwtConfig, TenancyConfig
from tests.unit.jwt_tokens import (
    SECRET,
    SECRET_ENV,
    assert_refused,
    b64url,
    hs_verifier,
    pem_private,
    pem_public,
)

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


@pytest.mark.parametrize("algorithms", [(), ("none",), ("HS256", "RS256"), ("HS256", "none")])
def test_hand_built_config_cannot_bypass_the_allow_list_rules(
    secret_env: None, algorithms: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError, match=r"^auth\.jwt\.algorithms: "):
        hs_verifier(algorithms=algorithms)
