"""Fixtures of the unit tests: a config file loader, and JWT verifiers with their keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from proxy.auth.jwt import JwtVerifier
from proxy.config import Config, JwtConfig, TenancyConfig, load_config
from tests.unit.jwt_tokens import SECRET, SECRET_ENV, hs_verifier, pem_public


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write TOML to ./config.toml in a temp dir and return a loader for it."""
    monkeypatch.chdir(tmp_path)

    def load(text: str) -> Config:
        Path("config.toml").write_text(text, encoding="utf-8")
        return load_config("config.toml")

    return load


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_keys() -> tuple[ec.EllipticCurvePrivateKey, ec.EllipticCurvePrivateKey]:
    return ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)


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
