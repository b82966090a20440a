"""The PostgreSQL the suite runs on, and the demo database's RLS, checked directly.

No proxy is involved: these prove the ground the proxy tests stand on (a real server,
an upstream role that cannot bypass RLS, a policy that confines each tenant).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg
import pytest
from psycopg import errors

from proxy.devtools import provision_app
from tests.support import AppDatabase, PostgresServer

Conn = psycopg.Connection[Any]


def _names(conn: Conn) -> list[str]:
    return [name for (name,) in conn.execute("SELECT name FROM items ORDER BY id")]


def _set_tenant(conn: Conn, tenant: str) -> None:
    conn.execute("SELECT set_config('app.current_tenant', %s, false)", [tenant])


def test_cluster_accepts_the_superuser(postgres: PostgresServer) -> None:
    with psycopg.connect(postgres.superuser_dsn) as conn:
        assert conn.info.server_version >= 130000
        is_superuser = conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert is_superuser == (True,)


def test_app_user_is_neither_superuser_nor_bypassrls(
    app_db: AppDatabase, superuser_conn: Conn
) -> None:
    role = superuser_conn.execute(
        "SELECT rolcanlogin, rolsuper, rolbypassrls, rolpassword LIKE 'SCRAM-SHA-256$%%'"
        " FROM pg_authid WHERE rolname = %s",
        [app_db.user],
    ).fetchone()
    assert role == (True, False, False, True)


def test_app_user_needs_its_password(app_db: AppDatabase) -> None:
    wrong = dataclasses.replace(app_db, password="not-the-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong.upstream_dsn).close()


def test_items_is_owned_by_the_superuser_with_forced_rls(
    app_db: AppDatabase, superuser_conn: Conn
) -> None:
    table = superuser_conn.execute(
        "SELECT relrowsecurity, relforcerowsecurity, pg_get_userbyid(relowner) <> %s"
        " FROM pg_class WHERE oid = 'public.items'::regclass",
        [app_db.user],
    ).fetchone()
    assert table == (True, True, True)
    policies = superuser_conn.execute(
        "SELECT policyname FROM pg_policies WHERE tablename = 'items'"
    ).fetchall()
    assert policies == [("tenant_isolation",)]


def test_pgcrypto_is_installed(superuser_conn: Conn) -> None:
    assert superuser_conn.execute(
        "SELECT count(*) FROM pg_extension WHERE extname = 'pgcrypto'"
    ).fetchone() == (1,)


@pytest.mark.parametrize("tenant", ["acme", "globex"])
def test_rls_shows_a_tenant_only_its_own_rows(
    clean_items: AppDatabase, app_user_conn: Conn, tenant: str
) -> None:
    _set_tenant(app_user_conn, tenant)
    assert _names(app_user_conn) == [f"{tenant}-item-{n}" for n in (1, 2, 3)]


def test_rls_shows_nothing_without_a_tenant(clean_items: AppDatabase, app_user_conn: Conn) -> None:
    assert _names(app_user_conn) == []


def test_rls_hides_other_tenants_from_update_and_delete(
    clean_items: AppDatabase, app_user_conn: Conn, superuser_conn: Conn
) -> None:
    _set_tenant(app_user_conn, "acme")
    updated = app_user_conn.execute("UPDATE items SET name = 'mine' WHERE tenant_id = 'globex'")
    assert updated.rowcount == 0
    deleted = app_user_conn.execute("DELETE FROM items WHERE tenant_id = 'globex'")
    assert deleted.rowcount == 0
    assert superuser_conn.execute(
        "SELECT count(*) FROM items WHERE tenant_id = 'globex' AND name LIKE 'globex-item-%%'"
    ).fetchone() == (3,)


def test_rls_refuses_writing_rows_for_another_tenant(
    clean_items: AppDatabase, app_user_conn: Conn
) -> None:
    _set_tenant(app_user_conn, "acme")
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        app_user_conn.execute("INSERT INTO items (tenant_id, name) VALUES ('globex', 'planted')")
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        app_user_conn.execute("UPDATE items SET tenant_id = 'globex' WHERE id = 1")


def test_new_rows_belong_to_the_current_tenant(
    clean_items: AppDatabase, app_user_conn: Conn, superuser_conn: Conn
) -> None:
    _set_tenant(app_user_conn, "acme")
    inserted = app_user_conn.execute(
        "INSERT INTO items (name) VALUES ('fresh') RETURNING tenant_id"
    ).fetchone()
    assert inserted == ("acme",)
    _set_tenant(app_user_conn, "globex")
    assert "fresh" not in _names(app_user_conn)
    assert superuser_conn.execute(
        "SELECT tenant_id FROM items WHERE name = 'fresh'"
    ).fetchall() == [("acme",)]


def test_provision_app_is_idempotent(
    app_db: AppDatabase, clean_items: AppDatabase, superuser_conn: Conn
) -> None:
    provision_app(
        app_db.superuser_dsn, dbname=app_db.dbname, app_user=app_db.user,
        app_password=app_db.password, tenants=app_db.tenants,
    )
    rows = superuser_conn.execute("SELECT id, tenant_id, name FROM items ORDER BY id").fetchall()
    seeds = [(tenant, f"{tenant}-item-{n}") for tenant in ("acme", "globex") for n in (1, 2, 3)]
    assert rows == [(id_, *seed) for id_, seed in enumerate(seeds, start=1)]
    with psycopg.connect(app_db.upstream_dsn) as conn:  # the password still works
        assert conn.execute("SELECT current_user").fetchone() == (app_db.user,)


@pytest.mark.restarts_postgres
def test_fast_restart_keeps_data_and_port(
    postgres: PostgresServer, clean_items: AppDatabase
) -> None:
    with psycopg.connect(clean_items.superuser_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO items (tenant_id, name) VALUES ('acme', 'survivor')")
    port = postgres.port
    postgres.restart("fast")
    assert postgres.port == port
    with psycopg.connect(clean_items.upstream_dsn, autocommit=True) as conn:
        _set_tenant(conn, "acme")
        assert "survivor" in _names(conn)


@pytest.mark.restarts_postgres
def test_immediate_restart_drops_clients_and_recovers(
    postgres: PostgresServer, clean_items: AppDatabase
) -> None:
    with psycopg.connect(clean_items.superuser_dsn, autocommit=True) as before:
        # synchronous_commit is off on the test cluster: an immediate stop may lose the
        # last commits unless one commit waits for the WAL flush (which flushes all before).
        before.execute("SET synchronous_commit = on")
        before.execute("INSERT INTO items (tenant_id, name) VALUES ('globex', 'flushed')")
        postgres.restart("immediate")
        with pytest.raises(psycopg.OperationalError):
            before.execute("SELECT 1")
    with psycopg.connect(clean_items.upstream_dsn, autocommit=True) as after:
        _set_tenant(after, "globex")
        assert _names(after) == ["globex-item-1", "globex-item-2", "globex-item-3", "flushed"]
