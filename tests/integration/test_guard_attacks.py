"""A tenant tries to become another tenant through every protocol path; the guard stops it.

Each attack runs through a real driver (psql, psycopg simple and extended, asyncpg) in
both pool modes; each must be refused with 42501 (or be harmless), and the follow-up
query on the same connection must still see only the client's own tenant.
"""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.proxy_harness import ThreadedProxy

pytestmark = pytest.mark.usefixtures("clean_items")

WHO_AM_I = ("SELECT current_setting('app.current_tenant'), "
            "(SELECT string_agg(DISTINCT tenant_id, ',') FROM items)")

ATTACKS = [
    "SET app.current_tenant = 'globex'",
    "SeT/**/app.current_tenant TO 'globex'",
    "SET LOCAL app.current_tenant = 'globex'",
    "SET \"app\".\"current_tenant\" = 'globex'",
    "SELECT set_config('app.current_tenant', 'globex', false)",
    "select PG_CATALOG.set_config('APP.CURRENT_TENANT', 'globex', false)",
    "SELECT 1; SET app.current_tenant = 'globex'",
    "WITH x AS (SELECT set_config('app.current_tenant', 'globex', false)) SELECT * FROM x",
    "SELECT * FROM items WHERE set_config('app.current_tenant', 'globex', false) IS NOT NULL",
    "SELECT set_config('app.' || 'current_tenant', 'globex', false)",
    "DO $$BEGIN PERFORM set_config('app.current_tenant', 'globex', false); END$$",
    "DO $$BEGIN EXECUTE 'SET app.current_tenant = ''globex'''; END$$",
    "DO $$BEGIN EXECUTE 'SE' || 'T app.current_tenant = ''globex'''; END$$",
    "SET pgtenant.proof = 'forged'",
    "SET ROLE postgres",
    "SET SESSION AUTHORIZATION postgres",
    "COPY items TO PROGRAM 'cat'",
    "ALTER ROLE CURRENT_USER SET app.current_tenant = 'globex'",
    "CREATE FUNCTION pwn() RETURNS int LANGUAGE sql SET app.current_tenant = 'globex' "
    "AS 'SELECT 1'",
    "UPDATE pg_settings SET setting = 'globex' WHERE name = 'app.current_tenant'",
]

HARMLESS = [
    "SET app.current_tenant = 'acme'",
    "SELECT set_config('app.current_tenant', 'acme', false)",
    "RESET ALL",
    "RESET app.current_tenant",
    "DISCARD ALL",
    "SET search_path TO public",
]


def _me(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
    row = conn.execute(WHO_AM_I).fetchone()
    assert row is not None
    return tuple(row)


@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_is_refused_simple_protocol(proxy: ThreadedProxy, attack: str) -> None:
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege), \
                psycopg.ClientCursor(conn) as cur:  # ClientCursor: simple query protocol
            cur.execute(attack)
        assert _me(conn) == ("acme", "acme")


@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_is_refused_extended_protocol(proxy: ThreadedProxy, attack: str) -> None:
    with psycopg.connect(proxy.dsn("acme"), autocommit=True, prepare_threshold=0) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(attack)  # Parse/Bind/Execute; named with prepare_threshold=0
        assert _me(conn) == ("acme", "acme")


def test_bound_parameters_cannot_name_another_tenant(proxy: ThreadedProxy) -> None:
    with psycopg.connect(proxy.dsn("acme"), autocommit=True, prepare_threshold=0) as conn:
        for args in (("app.current_tenant", "globex"), ("pgtenant.proof", "x")):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT set_config(%s, %s, false)", args)
            assert _me(conn) == ("acme", "acme")
        # The own tenant through a parameter is a harmless no-op (apps do this per request).
        conn.execute("SELECT set_config('app.current_tenant', %s, false)", ("acme",))
        assert _me(conn) == ("acme", "acme")


@pytest.mark.parametrize("statement", HARMLESS)
def test_harmless_resets_keep_the_tenant(proxy: ThreadedProxy, statement: str) -> None:
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
        conn.execute(statement, prepare=False)
        assert _me(conn) == ("acme", "acme")


def test_refusal_inside_a_transaction_aborts_it(proxy: ThreadedProxy) -> None:
    with psycopg.connect(proxy.dsn("acme")) as conn:
        conn.execute("INSERT INTO items (name) VALUES ('doomed')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET app.current_tenant = 'globex'")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert _me(conn) == ("acme", "acme")
        assert conn.execute("SELECT count(*) FROM items WHERE name = 'doomed'"
                            ).fetchone() == (0,)


def test_refusal_in_a_pipeline_skips_to_sync(proxy: ThreadedProxy) -> None:
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.pipeline():
            conn.execute("SELECT %s::int", (1,))
            conn.execute("SELECT set_config(%s, %s, false)", ("app.current_tenant", "globex"))
            conn.execute("SELECT %s::int", (2,))
        assert _me(conn) == ("acme", "acme")


def test_asyncpg_attacks_and_pool_reset(proxy: ThreadedProxy) -> None:
    async def main() -> tuple[str, str]:
        conn = await asyncpg.connect(proxy.dsn("acme"), ssl=False)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetchval("SELECT set_config('app.current_tenant', $1, false)",
                                    "globex")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("SET ROLE postgres")
            await conn.execute("RESET ALL")  # what asyncpg's pool runs on release
            row = await conn.fetchrow(WHO_AM_I)
            assert row is not None
            return row[0], row[1]
        finally:
            await conn.close()

    assert asyncio.run(main()) == ("acme", "acme")


def test_psql_attack_and_follow_up(proxy: ThreadedProxy) -> None:
    script = ("SET app.current_tenant = 'globex';\n"
              "SELECT 'tenant=' || current_setting('app.current_tenant');\n"
              "SELECT 'rows=' || string_agg(DISTINCT tenant_id, ',') FROM items;\n")
    done = subprocess.run(["psql", proxy.dsn("acme"), "-XAt", "-f", "-"], input=script,
                          capture_output=True, text=True, timeout=30)
    assert "permission denied" in done.stderr
    assert done.stdout.split() == ["tenant=acme", "rows=acme"]


def test_function_call_message_is_refused(proxy: ThreadedProxy) -> None:
    import socket

    from proxy.wire import authentication, messages
    from tests.proxy_harness import token

    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(messages.startup_message({"user": "u", "database": "app"}))
        sock.recv(1024)
        sock.sendall(authentication.password_message(token("acme").encode() + b"\0"))
        buf = b""
        while not buf.endswith(b"Z\x00\x00\x00\x05I"):
            buf += sock.recv(4096)
        # FunctionCall of set_config's OID would bypass SQL inspection: refused outright.
        body = (2078).to_bytes(4, "big") + b"\x00\x00" + b"\x00\x00" + b"\x00\x00"
        sock.sendall(b"F" + (4 + len(body)).to_bytes(4, "big") + body)
        reply = b""
        while not reply.endswith((b"Z\x00\x00\x00\x05I", b"Z\x00\x00\x00\x05E")):
            reply += sock.recv(4096)
        assert reply[:1] == b"E" and b"C42501\x00" in reply


def test_refusals_are_counted_for_the_tenant(start_proxy: Any) -> None:
    proxy = start_proxy(pool_mode="transaction")
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
        for attack in ATTACKS[:3]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(attack, prepare=False)
    app = proxy.app
    assert app is not None
    violations = proxy.call(lambda: dict(app.stats.tenants.get("acme").violations))
    assert sum(violations.values()) == 3
