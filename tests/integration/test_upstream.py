"""The proxy's side of the upstream connection: TLS per sslmode, and SCRAM, md5 or trust.

A dedicated throwaway cluster, since this needs TLS and pg_hba.conf of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from proxy.devtools import EmbeddedPostgres, provision_app
from tests.proxy_harness import ThreadedProxy, make_config
from tests.support import AppDatabase, self_signed_cert

PASSWORD = "upstream-test-password"


@dataclasses.dataclass(frozen=True)
class TlsCluster:
    db: AppDatabase
    cert: str  # the server's self-signed certificate: its own CA


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsCluster]:
    pg = EmbeddedPostgres(hba_lines=[
        "hostssl all  tls_only  127.0.0.1/32  scram-sha-256",
        "host    all  tls_only  127.0.0.1/32  reject",
        "host    all  md5_user  127.0.0.1/32  md5",
        "host    all  trust_user  127.0.0.1/32  trust",
    ])
    with pg:
        cert, key = self_signed_cert(tmp_path_factory.mktemp("pgtls"))
        cert_path = pg.write_file("server.crt", Path(cert).read_bytes())
        key_path = pg.write_file("server.key", Path(key).read_bytes())
        pg.execute(f"ALTER SYSTEM SET ssl_cert_file = '{cert_path}'")
        pg.execute(f"ALTER SYSTEM SET ssl_key_file = '{key_path}'")
        pg.execute("ALTER SYSTEM SET ssl = on")
        pg.execute("SELECT pg_reload_conf()")
        provision_app(pg.superuser_dsn, dbname="tlsapp", app_user="tls_app",
                      app_password=PASSWORD, tenants=["acme", "globex"])
        pg.execute("SET password_encryption = 'md5'; "
                   f"CREATE ROLE md5_user LOGIN PASSWORD '{PASSWORD}' IN ROLE tls_app; "
                   "CREATE ROLE trust_user LOGIN IN ROLE tls_app; "
                   "RESET password_encryption; "
                   f"CREATE ROLE tls_only LOGIN PASSWORD '{PASSWORD}' IN ROLE tls_app")
        db = AppDatabase(host=pg.host, port=pg.port, dbname="tlsapp", user="tls_app",
                         password=PASSWORD, superuser_dsn=pg.dsn("tlsapp"))
        yield TlsCluster(db, cert)


@pytest.fixture
def tls_db(tls_cluster: TlsCluster) -> AppDatabase:
    return tls_cluster.db


def _proxy(db: AppDatabase, **overrides: Any) -> ThreadedProxy:
    return ThreadedProxy(make_config(db, **overrides)).start()


def _server_side(proxy: ThreadedProxy) -> tuple[Any, ...]:
    with psycopg.connect(proxy.dsn("acme")) as conn:
        row = conn.execute(
            "SELECT current_user::text, coalesce((SELECT ssl FROM pg_stat_ssl "
            "WHERE pid = pg_backend_pid()), false), "
            "(SELECT count(*) FROM items)").fetchone()
        assert row is not None
        return tuple(row)


@pytest.mark.parametrize(("user", "sslmode", "expected_ssl"), [
    ("tls_app", "disable", False),
    ("tls_app", "prefer", True),
    ("tls_app", "require", True),
    ("tls_only", "require", True),
    ("md5_user", "prefer", True),
    ("trust_user", "disable", False),
])
def test_upstream_auth_and_tls(tls_db: AppDatabase, user: str, sslmode: str,
                               expected_ssl: bool) -> None:
    proxy = _proxy(dataclasses.replace(tls_db, user=user), sslmode=sslmode)
    try:
        assert _server_side(proxy) == (user, expected_ssl, 3)
    finally:
        proxy.stop()


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_verify_full_accepts_the_right_certificate(tls_cluster: TlsCluster, host: str) -> None:
    db = dataclasses.replace(tls_cluster.db, host=host)
    proxy = _proxy(db, sslmode="verify-full", sslrootcert=tls_cluster.cert)
    try:
        assert _server_side(proxy) == ("tls_app", True, 3)
    finally:
        proxy.stop()


def test_verify_full_refuses_an_unknown_certificate(tls_db: AppDatabase, tmp_path: Path) -> None:
    other_ca, _ = self_signed_cert(tmp_path)
    proxy = _proxy(tls_db, sslmode="verify-full", sslrootcert=other_ca)
    try:
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(proxy.dsn("acme"), connect_timeout=10)
        assert "certificate verify failed" in str(info.value)
        assert PASSWORD not in str(info.value)
    finally:
        proxy.stop()


def test_require_against_a_server_without_tls_is_a_clear_error(app_db: AppDatabase) -> None:
    proxy = _proxy(app_db, sslmode="require")
    try:
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(proxy.dsn("acme"), connect_timeout=10)
        assert "does not support TLS" in str(info.value)
    finally:
        proxy.stop()


def test_wrong_upstream_password_is_reported_without_the_password(tls_db: AppDatabase) -> None:
    proxy = _proxy(dataclasses.replace(tls_db, password="not-the-password"))
    try:
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(proxy.dsn("acme"), connect_timeout=10)
        message = str(info.value)
        assert "password authentication failed" in message
        assert "not-the-password" not in message
    finally:
        proxy.stop()

