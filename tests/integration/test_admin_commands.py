"""The admin console's commands through psycopg, on a real PostgreSQL: every SHOW, SHOW
CONFIG without secrets, errors for unknown commands and the extended protocol,
KILL_CLIENT, and RELOAD."""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg
import pytest

from tests.integration.admin_console import ADMIN, admin_dsn, console, simple
from tests.proxy_harness import JWT_SECRET, ThreadedProxy

# ---- commands --------------------------------------------------------------------------


def test_every_show_command_answers_rows_over_psycopg(admin_proxy: ThreadedProxy) -> None:
    with psycopg.connect(admin_proxy.dsn("acme"), autocommit=True) as tenant:
        tenant.execute("SELECT count(*) FROM items").fetchone()
        with psycopg.connect(admin_dsn(admin_proxy), autocommit=True) as conn:
            pools = simple(conn, "SHOW POOLS")
            assert pools[0]["database"] == "app" and pools[0]["pool_size"] == "2"
            clients = simple(conn, "SHOW CLIENTS")
            assert {c["database"] for c in clients} == {"app", "pgtenant"}
            assert [c["tenant"] for c in clients if c["database"] == "app"] == ["acme"]
            assert [c["self"] for c in clients if c["database"] == "pgtenant"] == ["yes"]
            servers = simple(conn, "SHOW SERVERS")
            assert servers and servers[0]["tenant"] == "acme"
            assert int(servers[0]["backend_pid"] or 0) > 0
            tenants = {t["tenant"]: t for t in simple(conn, "SHOW TENANTS")}
            assert tenants["acme"]["clients"] == "1"
            assert int(tenants["acme"]["queries"] or 0) >= 1
            stats = simple(conn, "SHOW STATS")
            assert stats[0]["database"] == "app" and int(stats[0]["queries"] or 0) >= 1
            assert simple(conn, "SHOW HELP")[0]["command"] == "SHOW POOLS"


def test_show_config_shows_settings_but_no_secrets(admin_proxy: ThreadedProxy,
                                                   app_db: Any) -> None:
    rows = {r["key"]: r["value"] for r in console(admin_proxy, "SHOW CONFIG")}
    assert rows["databases.app.pool_size"] == "2"
    assert rows["server.shutdown_timeout"] == "30.0"
    assert rows["admin.users"] == ADMIN
    text = repr(rows)
    assert "SCRAM-SHA-256$" not in text
    assert JWT_SECRET not in text and app_db.password not in text


def test_unknown_command_is_42601_with_a_hint(admin_proxy: ThreadedProxy) -> None:
    with psycopg.connect(admin_dsn(admin_proxy), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.SyntaxError) as info:
            simple(conn, "SELECT 1")
        assert info.value.diag.sqlstate == "42601"
        assert "SHOW POOLS" in (info.value.diag.message_hint or "")
        assert simple(conn, "SHOW HELP")  # still usable


def test_extended_protocol_is_refused_clearly(admin_proxy: ThreadedProxy) -> None:
    with psycopg.connect(admin_dsn(admin_proxy), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported) as info:
            conn.execute("SHOW POOLS", prepare=True)  # Parse/Bind/Execute/Sync
        assert "simple query protocol" in str(info.value)
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("SELECT %s", [1])  # parameters: the extended protocol too
        # psycopg sends a query without parameters as a simple Query: that works.
        assert conn.execute("SHOW POOLS").fetchone()[0] == "app"  # type: ignore[index]
        assert simple(conn, "SHOW POOLS")[0]["database"] == "app"


def test_kill_client_ends_that_client_with_57P01(admin_proxy: ThreadedProxy) -> None:
    with psycopg.connect(admin_proxy.dsn("acme"), autocommit=True) as victim, \
         psycopg.connect(admin_proxy.dsn("globex"), autocommit=True) as bystander, \
         psycopg.connect(admin_dsn(admin_proxy), autocommit=True) as conn:
        victim.execute("SELECT 1")
        clients = simple(conn, "SHOW CLIENTS")
        victim_id = next(c["id"] for c in clients if c["tenant"] == "acme")
        simple(conn, f"KILL_CLIENT {victim_id}")
        with pytest.raises(psycopg.OperationalError) as info:
            victim.execute("SELECT 1")
        assert "terminating connection due to administrator command" in str(info.value)
        assert bystander.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.errors.UndefinedObject):
            simple(conn, f"KILL_CLIENT {victim_id}")


def test_reload_without_a_config_file_is_refused_and_counted(
        admin_proxy: ThreadedProxy) -> None:
    # The threaded proxy's config was built in memory ("<test>"): there is no file to read.
    with pytest.raises(psycopg.Error) as info:
        console(admin_proxy, "RELOAD")
    assert info.value.diag.sqlstate == "F0000"
    app = admin_proxy.app
    assert app is not None
    assert admin_proxy.call(lambda: app.stats.config_reload_failures) == 1
    assert console(admin_proxy, "SHOW POOLS")[0]["pool_size"] == "2"


def test_reload_applies_pool_size_and_new_databases(admin_proxy: ThreadedProxy,
                                                    app_db: Any) -> None:
    app = admin_proxy.app
    assert app is not None
    old = app.config
    new_app = dataclasses.replace(old.databases["app"], pool_size=3)
    second = dataclasses.replace(new_app, name="app2")
    admin_proxy.call(lambda: app.reload(dataclasses.replace(
        old, databases={"app": new_app, "app2": second})))
    pools = {p["database"]: p for p in console(admin_proxy, "SHOW POOLS")}
    assert pools["app"]["pool_size"] == "3" and "app2" in pools
    with psycopg.connect(admin_proxy.dsn("acme", dbname="app2"), autocommit=True) as conn:
        assert conn.execute("SELECT current_setting('app.current_tenant')").fetchone() == (
            "acme",)
    assert admin_proxy.call(lambda: app.stats.config_reloads) == 1

