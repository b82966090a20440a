"""Named prepared statements in transaction mode after a schema change: a statement
prepared again on another server connection never hands a client rows it would decode
with a stale description (asyncpg, psycopg), and DDL seen through the proxy makes every
statement fresh."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.integration.prepared_wire import Start
from tests.proxy_harness import ThreadedProxy

pytestmark = pytest.mark.usefixtures("clean_items")

# ---- stale statements after DDL --------------------------------------------------------


@pytest.fixture
def table_t(superuser_conn: psycopg.Connection[Any], app_db: Any) -> psycopg.Connection[Any]:
    superuser_conn.execute("DROP TABLE IF EXISTS t")
    superuser_conn.execute("CREATE TABLE t (secret int, public int)")
    superuser_conn.execute("INSERT INTO t VALUES (111, 222)")
    superuser_conn.execute(f"GRANT SELECT ON t TO {app_db.user}")
    return superuser_conn


def _change_t(conn: psycopg.Connection[Any]) -> None:
    """Same column count, other names: the form that used to give silently wrong data."""
    conn.execute("ALTER TABLE t DROP COLUMN secret")
    conn.execute("ALTER TABLE t ADD COLUMN extra int")
    conn.execute("UPDATE t SET extra = 333")


def _servers_with(proxy: ThreadedProxy, text: str) -> int:
    def count() -> int:
        assert proxy.app is not None
        pool = proxy.app.pools["app"]
        return sum(any(text.encode() in key for key in server.statements.by_key)
                   for server in [*pool.idle, *pool.kept, *pool.active])
    return proxy.call(count)


def _on_the_other_server(proxy: ThreadedProxy, tenant: str) -> Any:
    """Hold one of the two server connections in a transaction (then give it back), so
    the next statement runs on the other one."""
    holder = psycopg.connect(proxy.dsn(tenant))
    holder.execute("SELECT 1")
    return holder


def _asyncpg_across_ddl(proxy: ThreadedProxy, query: str, ddl: Callable[[], object],
                        fetch: str = "fetchrow") -> list[Any]:
    """Run ``query`` once on one server connection, ``ddl``, then 4 more times, the first
    on the other connection (the one freed last): asyncpg decodes with what it was told
    the first time unless it re-prepares."""
    async def main() -> list[Any]:
        conn = await asyncpg.connect(proxy.dsn("acme"), ssl=False)
        run = getattr(conn, fetch)
        try:
            holder = _on_the_other_server(proxy, "acme")
            first = await run(query)
            holder.commit()
            # Both servers back to the idle list (nobody waits, so each client had kept
            # its own): the holder's is the most recent, the next lease takes it.
            proxy.call(proxy.app.pools["app"].reclaim_kept)  # type: ignore[union-attr]
            ddl()
            after = [await run(query) for _ in range(4)]
            holder.close()
            return [first, *after]
        finally:
            await conn.close()

    return asyncio.run(main())


def test_asyncpg_reprepares_after_ddl_on_another_server(start_proxy: Start,
                                                        table_t: Any) -> None:
    proxy = start_proxy(pool_mode="transaction", pool_size=2)
    rows = [dict(r) for r in _asyncpg_across_ddl(proxy, "SELECT * FROM t",
                                                 lambda: _change_t(table_t))]
    assert rows[0] == {"secret": 111, "public": 222}
    assert rows[1:] == [{"public": 222, "extra": 333}] * 4
    assert _servers_with(proxy, "SELECT * FROM t") == 2


def test_asyncpg_type_change_after_ddl(start_proxy: Start, table_t: Any) -> None:
    # A column's type changes (the ProtocolError / "insufficient data" form).
    proxy = start_proxy(pool_mode="transaction", pool_size=2)
    values = _asyncpg_across_ddl(
        proxy, "SELECT public FROM t",
        lambda: table_t.execute("ALTER TABLE t ALTER COLUMN public TYPE text"), "fetchval")
    assert values == [222, "222", "222", "222", "222"]


def test_asyncpg_after_a_type_is_dropped_and_created_again(start_proxy: Start,
                                                          superuser_conn: Any,
                                                          app_db: Any) -> None:
    # The type OID the client decodes with no longer exists (the "cache lookup failed for
    # type" form): asyncpg re-prepares and introspects the new type.
    def create(values: str, row: str) -> None:
        superuser_conn.execute("DROP TABLE IF EXISTS t3")
        superuser_conn.execute("DROP TYPE IF EXISTS mood")
        superuser_conn.execute(f"CREATE TYPE mood AS ENUM ({values})")
        superuser_conn.execute("CREATE TABLE t3 (m mood)")
        superuser_conn.execute(f"INSERT INTO t3 VALUES ('{row}')")
        superuser_conn.execute(f"GRANT SELECT ON t3 TO {app_db.user}")

    create("'sad', 'happy'", "happy")
    proxy = start_proxy(pool_mode="transaction", pool_size=2)
    values = _asyncpg_across_ddl(proxy, "SELECT m FROM t3",
                                 lambda: create("'ok', 'sad', 'happy'", "ok"), "fetchval")
    assert values == ["happy", "ok", "ok", "ok", "ok"]


def test_asyncpg_prepared_statement_object_gets_0A000(start_proxy: Start,
                                                      table_t: Any) -> None:
    # An explicit prepared statement cannot be re-prepared for the client: it gets the
    # error PostgreSQL gives, never rows under the old column names.
    proxy = start_proxy(pool_mode="transaction", pool_size=2)

    async def main() -> None:
        conn = await asyncpg.connect(proxy.dsn("acme"), ssl=False)
        try:
            holder = _on_the_other_server(proxy, "acme")
            stmt = await conn.prepare("SELECT * FROM t")
            assert dict(await stmt.fetchrow()) == {"secret": 111, "public": 222}
            holder.commit()
            _change_t(table_t)
            with pytest.raises(asyncpg.exceptions.InvalidCachedStatementError):
                await stmt.fetchrow()
            holder.close()
            fresh = await conn.prepare("SELECT * FROM t")
            for _ in range(4):
                assert dict(await fresh.fetchrow()) == {"public": 222, "extra": 333}
        finally:
            await conn.close()

    asyncio.run(main())


def test_asyncpg_after_its_table_is_dropped(start_proxy: Start, table_t: Any) -> None:
    # The proxy's own prepare fails inside the client's transaction: the client gets
    # PostgreSQL's error for it, as it would on its own connection.
    proxy = start_proxy(pool_mode="transaction", pool_size=2)

    async def main() -> None:
        conn = await asyncpg.connect(proxy.dsn("acme"), ssl=False)
        try:
            holder = _on_the_other_server(proxy, "acme")
            await conn.fetchrow("SELECT * FROM t")
            holder.commit()
            table_t.execute("DROP TABLE t")
            with pytest.raises(asyncpg.UndefinedTableError):
                async with conn.transaction():
                    await conn.fetchrow("SELECT * FROM t")
            holder.close()
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()

    asyncio.run(main())


def test_psycopg_after_ddl_on_another_server(start_proxy: Start, table_t: Any) -> None:
    proxy = start_proxy(pool_mode="transaction", pool_size=2)
    with psycopg.connect(proxy.dsn("acme"), prepare_threshold=0, autocommit=True) as conn:
        holder = _on_the_other_server(proxy, "acme")
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        assert cur.execute("SELECT * FROM t").fetchone() == {"secret": 111, "public": 222}
        holder.commit()
        _change_t(table_t)
        got = []
        for _ in range(4):
            try:
                got.append(cur.execute("SELECT * FROM t").fetchone())
            except psycopg.errors.FeatureNotSupported as exc:
                assert str(exc) == "cached plan must not change result type"
        holder.close()
    assert got
    assert all(row == {"public": 222, "extra": 333} for row in got)


def test_ddl_through_the_proxy_makes_every_statement_fresh(unguarded: ThreadedProxy) -> None:
    """psycopg re-prepares after DDL and expects the new shape without an error, as it gets
    directly (psycopg's test_alter_table_clears_state): the proxy's shared statement of the
    same text must not be reused after an ALTER seen through the proxy."""
    with psycopg.connect(unguarded.dsn("acme"), autocommit=True, prepare_threshold=0) as conn:
        conn.execute("CREATE TEMP TABLE altered (id serial PRIMARY KEY, data text)")
        conn.execute("INSERT INTO altered (data) VALUES (%s)", ["foo"])
        query = "SELECT * FROM altered ORDER BY id"
        assert [r[1] for r in conn.execute(query)] == ["foo"]
        conn.execute("ALTER TABLE altered ADD data2 text")
        conn.execute("INSERT INTO altered (data) VALUES (%s)", ["bar"])
        assert [r[1:] for r in conn.execute(query)] == [("foo", None), ("bar", None)]
