"""A hostile tenant tries to leave state on shared backends or reach other sessions.

Each attack class of the statement policy goes through psycopg (simple protocol with a
ClientCursor, extended protocol with named statements) and asyncpg (simple and extended),
in both pool modes. Each must be refused with 42501, and the same connection must stay
usable and still see only its own tenant. Request-path patterns (a staging temp table
for COPY, cursors, SQL PREPARE in session mode) keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from proxy.config import TenancyConfig
from tests.integration.test_guard_attacks import WHO_AM_I, _me
from tests.proxy_harness import ThreadedProxy, make_config

pytestmark = pytest.mark.usefixtures("clean_items")

#: Refused in both pool modes.
ATTACKS = [
    # objects that shadow app tables or functions for whoever uses the backend next
    "CREATE TEMP VIEW items AS SELECT * FROM public.items WHERE false",
    "CREATE FUNCTION pg_temp.lower(text) RETURNS text LANGUAGE sql AS $$SELECT 'x'$$",
    "CREATE TEMP TABLE items AS SELECT * FROM public.items",
    "DO $$BEGIN NULL; END$$",
    "DO $$BEGIN PERFORM set_config('search_path', 'pg_temp, public', false); END$$",
    "ALTER FUNCTION pgtenant.current_tenant() RENAME TO set_config",
    # the proxy's statement names
    "EXECUTE pgtenant_0",
    "DEALLOCATE pgtenant_0",
    # notifications cross tenants
    "LISTEN orders",
    "NOTIFY orders, 'secret'",
    "SELECT pg_notify('orders', 'secret')",
    # other sessions
    "SELECT query FROM pg_stat_activity",
    'SELECT * FROM "pg_catalog"."pg_prepared_statements"',
    "SELECT * FROM pg_cursors",
    "SELECT * FROM PG_LOCKS",
    "SELECT * FROM pg_stat_get_activity(NULL)",
    "WITH a AS (SELECT pid FROM pg_stat_activity) SELECT count(*) FROM a",
    "SELECT pg_cancel_backend(1)",
    "SELECT pg_terminate_backend(pg_backend_pid())",
    # roles and persistent settings
    "ALTER ROLE CURRENT_USER PASSWORD 'pwned'",
    "ALTER ROLE CURRENT_USER SET search_path = pg_temp, public",
    "GRANT SELECT ON items TO PUBLIC",
    # RLS bypasses and server side effects
    "TRUNCATE items",
    "COPY items TO '/tmp/pgtenant_items_copy'",
    "SELECT lo_import('/etc/hostname')",
    "PREPARE TRANSACTION 'pgtenant_test'",
    "VACUUM items",
]

#: Refused in transaction mode only: state that outlives the transaction.
TRANSACTION_ONLY = [
    "PREPARE q AS SELECT 1",
    "EXECUTE q",
    "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    "SELECT pg_advisory_lock(7)",
    "CREATE TEMP TABLE items (LIKE public.items)",
]


def _psycopg_refused(proxy: ThreadedProxy, sql: str) -> None:
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege), \
                psycopg.ClientCursor(conn) as cur:  # simple query protocol
            cur.execute(sql)
        assert _me(conn) == ("acme", "acme")
    with psycopg.connect(proxy.dsn("acme"), autocommit=True, prepare_threshold=0) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql)  # Parse/Bind/Execute, named statement
        assert _me(conn) == ("acme", "acme")
        with conn.transaction():  # inside a transaction: aborts it, the client rolls back
            conn.execute("INSERT INTO items (name) VALUES ('before')")
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(sql)
        assert _me(conn) == ("acme", "acme")


def _asyncpg_then_me(proxy: ThreadedProxy,
                     attempt: Callable[[asyncpg.Connection[Any]], Awaitable[None]]
                     ) -> tuple[str, str]:
    """Run ``attempt`` on an asyncpg connection as acme; then who that connection is."""
    async def main() -> tuple[str, str]:
        conn = await asyncpg.connect(proxy.dsn("acme"), ssl=False)
        try:
            await attempt(conn)
            row = await conn.fetchrow(WHO_AM_I)
            assert row is not None
            return row[0], row[1]
        finally:
            await conn.close()

    return asyncio.run(main())


def _asyncpg_refused(proxy: ThreadedProxy, sql: str) -> None:
    async def attempt(conn: asyncpg.Connection[Any]) -> None:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(sql)  # simple protocol
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch(sql)  # extended protocol (prepared)

    assert _asyncpg_then_me(proxy, attempt) == ("acme", "acme")


@pytest.mark.parametrize("sql", ATTACKS)
def test_attack_is_refused_and_the_connection_stays_in_its_tenant(proxy: ThreadedProxy,
                                                                  sql: str) -> None:
    _psycopg_refused(proxy, sql)
    _asyncpg_refused(proxy, sql)


@pytest.mark.parametrize("sql", TRANSACTION_ONLY)
def test_state_outliving_the_transaction_is_refused_in_transaction_mode(
        start_proxy: Callable[..., ThreadedProxy], sql: str) -> None:
    proxy = start_proxy(pool_mode="transaction")
    _psycopg_refused(proxy, sql)
    _asyncpg_refused(proxy, sql)


def test_session_mode_keeps_sql_prepare_hold_cursors_and_session_locks(
        session_proxy: ThreadedProxy) -> None:
    with psycopg.connect(session_proxy.dsn("acme"), autocommit=True) as conn, \
            psycopg.ClientCursor(conn) as cur:
        cur.execute("PREPARE q(int) AS SELECT count(*) FROM items WHERE id > $1")
        cur.execute("EXECUTE q(0)")
        assert cur.fetchone() == (3,)  # only acme's rows
        cur.execute("DECLARE c CURSOR WITH HOLD FOR SELECT tenant_id FROM items")
        cur.execute("FETCH ALL FROM c")
        assert {row[0] for row in cur.fetchall()} == {"acme"}
        cur.execute("CLOSE c")
        cur.execute("SELECT pg_advisory_lock(7), pg_advisory_unlock(7)")
        cur.execute("DEALLOCATE q")
        assert _me(conn) == ("acme", "acme")


def test_sql_execute_cannot_bind_another_tenant_to_a_protocol_statement(
        session_proxy: ThreadedProxy) -> None:
    # Parse and SQL PREPARE share one namespace: EXECUTE of a statement prepared through
    # the protocol is checked like a Bind of it.
    async def attempt(conn: asyncpg.Connection[Any]) -> None:
        stmt = await conn.prepare("SELECT set_config('app.current_tenant', $1::text, false)")
        name = stmt.get_name()
        assert name
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(f"EXECUTE {name}('globex')")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(f"EXECUTE {name}(current_user)")
        await conn.execute(f"EXECUTE {name}('acme')")  # the own tenant: allowed
        assert await stmt.fetchval("acme") == "acme"

    assert _asyncpg_then_me(session_proxy, attempt) == ("acme", "acme")


def test_staging_temp_table_for_copy_works_in_transaction_mode(
        start_proxy: Callable[..., ThreadedProxy]) -> None:
    proxy = start_proxy(pool_mode="transaction")
    with psycopg.connect(proxy.dsn("acme")) as conn:
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE staging (name text) ON COMMIT DROP")
            with conn.cursor().copy("COPY staging (name) FROM STDIN") as copy:
                for name in ("copied-1", "copied-2"):
                    copy.write_row((name,))
            conn.execute("INSERT INTO items (name) SELECT name FROM staging")
        rows = conn.execute("SELECT tenant_id FROM items WHERE name LIKE 'copied-%'"
                            ).fetchall()
        assert rows == [("acme",), ("acme",)]
        conn.commit()
    with psycopg.connect(proxy.dsn("globex")) as other:
        assert other.execute("SELECT count(*) FROM items WHERE name LIKE 'copied-%'"
                             ).fetchone() == (0,)


@contextlib.contextmanager
def tenancy_proxy(app_db: Any, pool_mode: str, **tenancy: Any) -> Iterator[ThreadedProxy]:
    """A proxy with ``[tenancy]`` keys set, in ``pool_mode``."""
    config = make_config(app_db, pool_mode=pool_mode)
    proxy = ThreadedProxy(dataclasses.replace(config, tenancy=TenancyConfig(**tenancy)))
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def test_allow_ddl_in_session_mode_only_relaxes_session_pools(app_db: Any) -> None:
    with tenancy_proxy(app_db, "session", allow_ddl_in_session_mode=True) as session, \
            psycopg.connect(session.dsn("acme"), autocommit=True) as conn:
        conn.execute("CREATE TEMP VIEW mine AS SELECT tenant_id FROM items")
        assert {row[0] for row in conn.execute("SELECT * FROM mine").fetchall()} == {"acme"}
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("TRUNCATE items")  # not DDL: still refused
    with tenancy_proxy(app_db, "transaction", allow_ddl_in_session_mode=True) as tx, \
            psycopg.connect(tx.dsn("acme"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TEMP VIEW mine AS SELECT 1")
        assert _me(conn) == ("acme", "acme")


def test_allowed_functions_lets_a_named_function_through(app_db: Any) -> None:
    with tenancy_proxy(app_db, "transaction", allowed_functions=("pg_advisory_lock",)
                       ) as proxy, psycopg.connect(proxy.dsn("acme")) as conn:
        conn.execute("SELECT pg_advisory_lock(11)")
        conn.execute("SELECT pg_advisory_unlock(11)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT pg_try_advisory_lock(11)")


def test_listen_notify_in_session_mode_when_allowed(app_db: Any) -> None:
    # Refused by default (channels are shared by tenants); an operator may allow them.
    with tenancy_proxy(app_db, "session", allow_listen_in_session_mode=True,
                       allow_notify=True) as proxy, \
            psycopg.connect(proxy.dsn("acme"), autocommit=True) as listener, \
            psycopg.connect(proxy.dsn("acme"), autocommit=True) as sender:
        listener.execute("LISTEN ping")
        sender.execute("NOTIFY ping, 'hi'")
        note = next(listener.notifies(timeout=5))
        assert (note.channel, note.payload) == ("ping", "hi")
