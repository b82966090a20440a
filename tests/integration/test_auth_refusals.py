"""Clients without a valid credential are refused with the right SQLSTATE, upstream untouched."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.proxy_harness import JWT_SECRET, ThreadedProxy, startup_refusal


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _rsa_public_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


NOW = int(time.time())
CASES: dict[str, tuple[Callable[[], str], str]] = {
    "expired": (lambda: jwt.encode({"tenant_id": "acme", "exp": NOW - 3600}, JWT_SECRET,
                                   "HS256"), "28P01"),
    "wrong_key": (lambda: jwt.encode({"tenant_id": "acme", "exp": NOW + 3600},
                                     "another-secret-another-secret-another-secret", "HS256"),
                  "28P01"),
    "alg_none": (lambda: _b64({"alg": "none", "typ": "JWT"}) + "."
                 + _b64({"tenant_id": "acme", "exp": NOW + 3600}) + ".", "28P01"),
    "rs256_header_to_hs_verifier": (lambda: _b64({"alg": "RS256", "typ": "JWT"}) + "."
                                    + _b64({"tenant_id": "acme", "exp": NOW + 3600}) + ".c2ln",
                                    "28P01"),
    "missing_exp": (lambda: jwt.encode({"tenant_id": "acme"}, JWT_SECRET, "HS256"), "28P01"),
    "not_a_jwt": (lambda: "hunter2", "28P01"),
    "missing_tenant": (lambda: jwt.encode({"sub": "u1", "exp": NOW + 3600}, JWT_SECRET,
                                          "HS256"), "28000"),
    "injection_in_tenant": (lambda: jwt.encode({"tenant_id": "a'; DROP TABLE x;--",
                                                "exp": NOW + 3600}, JWT_SECRET, "HS256"),
                            "28000"),
    "tenant_not_a_string": (lambda: jwt.encode({"tenant_id": ["acme"], "exp": NOW + 3600},
                                               JWT_SECRET, "HS256"), "28000"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_token_is_refused_without_touching_the_pool(session_proxy: ThreadedProxy,
                                                        case: str) -> None:
    make, sqlstate = CASES[case]
    tok = make()
    state, message = startup_refusal(session_proxy.dsn(tok, raw_token=True))
    assert state == sqlstate, message
    assert tok not in message and JWT_SECRET not in message
    pool = session_proxy.app.pools["app"]  # type: ignore[union-attr]
    assert session_proxy.call(lambda: (pool.stats.servers_opened, len(pool.active))) == (0, 0)


def test_hs_token_signed_with_rsa_public_key_is_refused(session_proxy: ThreadedProxy) -> None:
    # The classic algorithm-confusion forgery: the verifier only accepts HS256 with its secret.
    pem = _rsa_public_pem()
    header = _b64({"alg": "HS256", "typ": "JWT"})
    payload = _b64({"tenant_id": "globex", "exp": NOW + 3600})
    sig = base64.urlsafe_b64encode(hmac.new(pem, f"{header}.{payload}".encode(),
                                            hashlib.sha256).digest()).rstrip(b"=").decode()
    state, _ = startup_refusal(session_proxy.dsn(f"{header}.{payload}.{sig}", raw_token=True))
    assert state == "28P01"


def test_unknown_database_is_refused(session_proxy: ThreadedProxy) -> None:
    state, message = startup_refusal(session_proxy.dsn("acme", dbname="nope"))
    assert state == "3D000"
    assert 'database "nope" does not exist' in message


def test_options_cannot_set_the_tenant(session_proxy: ThreadedProxy) -> None:
    for options in ("-c%20app.current_tenant%3Dglobex", "--app.current_tenant%3Dglobex",
                    "-c%20APP.Current_Tenant%3Dglobex", "-c%20pgtenant.proof%3Dx"):
        state, message = startup_refusal(session_proxy.dsn("acme", options=options))
        assert state == "42501", (options, message)


def test_large_token_fits(session_proxy: ThreadedProxy) -> None:
    tok = jwt.encode({"tenant_id": "acme", "exp": NOW + 3600, "pad": "p" * 6000}, JWT_SECRET,
                     "HS256")
    assert len(tok) > 8000
    with psycopg.connect(session_proxy.dsn(tok, raw_token=True)) as conn:
        assert conn.execute("SELECT current_setting('app.current_tenant')").fetchone() == ("acme",)
