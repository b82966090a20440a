"""Keys from an identity provider's JWKS URL: rotation, unknown kids, outages, slowness.

A local HTTPS server (self-signed CA, loopback only) plays the identity provider; its
key set, availability and speed are changed by each test. Logins go through the proxy
with psycopg (success) and asyncpg (refusals keep their SQLSTATE).
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from proxy.auth.jwt import mint_token
from proxy.config import AuthConfig, JwtConfig
from proxy.metrics.http import ReadinessProbe
from tests.proxy_harness import ThreadedProxy, make_config, startup_refusal
from tests.support import AppDatabase, self_signed_cert


class IdentityProvider:
    """An HTTPS JWKS endpoint on 127.0.0.1 whose behaviour the test controls."""

    def __init__(self, directory: Path) -> None:
        self.cert, key = self_signed_cert(directory)
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.published: list[str] = []
        self.status = 200
        self.hang = threading.Event()  # set: requests block until released
        self.release = threading.Event()
        self.fetches = 0
        provider = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.fetches += 1
                if provider.hang.is_set():
                    provider.release.wait(10)
                body = json.dumps({"keys": [
                    {**RSAAlgorithm.to_jwk(provider.keys[kid].public_key(), as_dict=True),
                     "kid": kid, "use": "sig", "alg": "RS256"}
                    for kid in provider.published]}).encode()
                self.send_response(provider.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def add_key(self, kid: str, *, publish: bool = True) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if publish:
            self.published.append(kid)

    def token(self, tenant: str, kid: str, **kw: Any) -> str:
        pem = self.keys[kid].private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())
        return mint_token(pem, tenant, algorithm="RS256", key_id=kid, **kw)

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def idp(tmp_path: Path) -> Iterator[IdentityProvider]:
    provider = IdentityProvider(tmp_path)
    provider.add_key("k1")
    yield provider
    provider.close()


def start(app_db: AppDatabase, idp: IdentityProvider, **jwt: Any) -> ThreadedProxy:
    config = make_config(app_db, pool_mode="transaction")
    settings = {"algorithms": ("RS256",), "jwks_url": idp.url, "jwks_ca_file": idp.cert,
                "jwks_timeout_seconds": 2.0, **jwt}
    config = dataclasses.replace(config, auth=AuthConfig(jwt=JwtConfig(**settings)))
    return ThreadedProxy(config).start()


@pytest.fixture
def running(app_db: AppDatabase, idp: IdentityProvider) -> Iterator[ThreadedProxy]:
    proxy = start(app_db, idp)
    yield proxy
    proxy.stop()


def login(proxy: ThreadedProxy, token: str) -> str:
    with psycopg.connect(proxy.dsn(token, raw_token=True)) as conn:
        row = conn.execute("SELECT current_setting('app.current_tenant')").fetchone()
        assert row is not None
        return str(row[0])


def remote(proxy: ThreadedProxy) -> Any:
    assert proxy.app is not None and proxy.app.verifier.remote is not None
    return proxy.app.verifier.remote


def readiness(proxy: ThreadedProxy) -> tuple[bool, str]:
    import asyncio

    assert proxy.loop is not None and proxy.app is not None
    probe = ReadinessProbe(proxy.app)
    return asyncio.run_coroutine_threadsafe(probe.check(), proxy.loop).result(10)


def test_token_signed_with_a_published_key_logs_in(running: ThreadedProxy,
                                                   idp: IdentityProvider) -> None:
    assert login(running, idp.token("acme", "k1")) == "acme"
    assert idp.fetches == 1
    assert readiness(running) == (True, "ready")


def test_rotated_key_is_fetched_on_its_first_token(app_db: AppDatabase,
                                                   idp: IdentityProvider) -> None:
    proxy = start(app_db, idp, jwks_min_refresh_seconds=0.0)
    try:
        idp.add_key("k2")  # the provider rotates: k2 signs from now on
        assert login(proxy, idp.token("globex", "k2")) == "globex"
        assert idp.fetches == 2
        assert login(proxy, idp.token("acme", "k1")) == "acme"  # the old key still works
    finally:
        proxy.stop()


def test_random_key_ids_cannot_make_the_proxy_hammer_the_provider(
        running: ThreadedProxy, idp: IdentityProvider) -> None:
    for i in range(15):
        idp.add_key(f"forged{i}", publish=False)
        sqlstate, message = startup_refusal(running.dsn(idp.token("acme", f"forged{i}"),
                                                        raw_token=True))
        assert sqlstate == "28P01" and "key id" in message
    # At most one fetch per jwks_min_refresh_seconds (30 s): the start-up fetch was the one.
    assert idp.fetches == 1


def test_known_keys_keep_working_while_the_provider_is_down(
        app_db: AppDatabase, idp: IdentityProvider) -> None:
    proxy = start(app_db, idp, jwks_refresh_seconds=0.1)
    try:
        assert login(proxy, idp.token("acme", "k1")) == "acme"
        idp.status = 503
        proxy.wait_until(lambda app: app.verifier.remote.refreshes_failed >= 2)  # type: ignore[union-attr]
        assert login(proxy, idp.token("acme", "k1")) == "acme"
        assert readiness(proxy) == (True, "ready")
        assert "503" in remote(proxy).last_error
    finally:
        proxy.stop()


def test_a_hanging_provider_does_not_stall_logins(app_db: AppDatabase,
                                                  idp: IdentityProvider) -> None:
    proxy = start(app_db, idp, jwks_refresh_seconds=0.1, jwks_timeout_seconds=30.0)
    try:
        idp.hang.set()
        before = idp.fetches
        proxy.wait_until(lambda app: idp.fetches > before)  # a fetch is hanging now
        assert login(proxy, idp.token("acme", "k1")) == "acme"
    finally:
        idp.release.set()
        proxy.stop()


def test_no_key_ever_loaded_fails_closed_until_the_provider_answers(
        app_db: AppDatabase, idp: IdentityProvider) -> None:
    idp.status = 500
    proxy = start(app_db, idp, jwks_min_refresh_seconds=0.0)
    try:
        sqlstate, _ = startup_refusal(proxy.dsn(idp.token("acme", "k1"), raw_token=True))
        assert sqlstate == "28P01"
        ready, reason = readiness(proxy)
        assert not ready and "jwks_url" in reason
        idp.status = 200
        assert login(proxy, idp.token("acme", "k1")) == "acme"
    finally:
        proxy.stop()


def test_nested_tenant_claim(app_db: AppDatabase, idp: IdentityProvider) -> None:
    proxy = start(app_db, idp, tenant_claim="app_metadata.tenant_id")
    try:
        token = idp.token("ignored", "k1", extra={"app_metadata": {"tenant_id": "globex"}})
        assert login(proxy, token) == "globex"
    finally:
        proxy.stop()


def test_metrics_show_the_key_set(running: ThreadedProxy, idp: IdentityProvider) -> None:
    from prometheus_client import generate_latest

    from proxy.metrics.collector import make_registry

    assert running.app is not None
    text = running.call(lambda: generate_latest(make_registry(running.app)).decode())  # type: ignore[arg-type]
    assert 'pgtenant_jwks_refreshes_total{result="ok"} 1.0' in text
    assert "pgtenant_jwks_keys 1.0" in text


def test_reload_keeps_the_fetched_keys(running: ThreadedProxy, idp: IdentityProvider) -> None:
    assert running.app is not None
    before = remote(running)
    running.call(lambda: running.app.reload(running.config))  # type: ignore[union-attr]
    assert remote(running) is before and before.loaded
    idp.status = 500  # the reload must not depend on the provider answering
    assert login(running, idp.token("acme", "k1")) == "acme"
    assert idp.fetches == 1
