"""asyncpg through pgtenant: its statement cache, cursors (portals), executemany, binary
COPY, its pool (RESET ALL on release) and timeouts that send cancel requests."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import pytest

from tests.drivers.tenancy import SEED_ROWS, TENANTS, WHO_AM_I, own_view
from tests.proxy_harness import ThreadedProxy

T = TypeVar("T")


def run_as(proxy: ThreadedProxy, tenant: str,
           scenario: Callable[[asyncpg.Connection], Awaitable[T]], **connect: Any) -> T:
    """Run ``scenario`` on an asyncpg connection to the proxy as ``tenant``."""
    async def main() -> T:
        conn = await asyncpg.connect(proxy.dsn(tenant), ssl=False, **connect)
        try:
            return await scenario(conn)
        finally:
            await conn.close()

    return asyncio.run(main())


async def who_am_i(conn: asyncpg.Connection) -> tuple[Any, ...]:
    return tuple(await conn.fetchrow(WHO_AM_I))


def test_statement_cache_evicting_and_reusing_names(driver_proxy: ThreadedProxy) -> None:
    # A cache of 2 for 4 statements: asyncpg closes the evicted ones (Close 'S') and
    # prepares them again under new __asyncpg_stmt_N__ names, on whatever server is free.
    queries = [f"SELECT current_setting('app.current_tenant'), tenant_id, $1::int + {k} "
               "FROM items" for k in range(4)]

    async def client(tenant: str) -> list[bool]:
        conn = await asyncpg.connect(driver_proxy.dsn(tenant), ssl=False,
                                     statement_cache_size=2)
        try:
            checks = []
            for i in range(4):
                for k, query in enumerate(queries):
                    rows = await conn.fetch(query, i)
                    checks.append(rows == [(tenant, tenant, i + k)] * SEED_ROWS)
            stmt = await conn.prepare("SELECT count(*) FROM items WHERE tenant_id = $1")
            counts = [await stmt.fetchval(other) for other in TENANTS]
            checks.append(counts == [SEED_ROWS if other == tenant else 0 for other in TENANTS])
            return checks
        finally:
            await conn.close()

    async def main() -> list[list[bool]]:
        return await asyncio.gather(*[client(t) for t in TENANTS for _ in range(2)])

    assert all(all(checks) for checks in asyncio.run(main()))


def test_cursor_with_prefetch_inside_a_transaction(driver_proxy: ThreadedProxy) -> None:
    sql = "SELECT tenant_id, n FROM items, generate_series(1, 5) AS n ORDER BY id, n"

    async def scenario(conn: asyncpg.Connection) -> tuple[Any, ...]:
        other = await asyncpg.connect(driver_proxy.dsn("globex"), ssl=False)
        try:
            async with conn.transaction():
                streamed = [tuple(r) async for r in conn.cursor(sql, prefetch=2)]
                cur = await conn.cursor(sql)
                first = await cur.fetch(4)
                await cur.forward(6)
                # Another tenant in between Executes of the same portal.
                between = await who_am_i(other)
                rest = await cur.fetch(100)
            return streamed, first, rest, between, await who_am_i(conn)
        finally:
            await other.close()

    streamed, first, rest, between, after = run_as(driver_proxy, "acme", scenario)
    assert len(streamed) == SEED_ROWS * 5 and {r[0] for r in streamed} == {"acme"}
    assert [tuple(r) for r in [*first, *rest]] == streamed[:4] + streamed[10:]
    assert between == own_view("globex")
    assert after == own_view("acme")


def test_executemany_is_one_atomic_batch(driver_proxy: ThreadedProxy) -> None:
    async def scenario(conn: asyncpg.Connection) -> tuple[Any, ...]:
        insert = "INSERT INTO items (name) VALUES ('many-' || $1::text)"
        await conn.executemany(insert, [(str(n),) for n in range(20)])
        # A failure in the middle: asyncpg's batch has one Sync, nothing of it stays.
        with pytest.raises(asyncpg.DivisionByZeroError):
            await conn.executemany(
                "INSERT INTO items (name) VALUES ('bad-' || (1 / $1::int)::text)",
                [(1,), (0,), (2,)])
        # Rows of another tenant are invisible to a batch of UPDATEs too.
        await conn.executemany("UPDATE items SET name = name || '!' WHERE tenant_id = $1",
                               [(t,) for t in TENANTS])
        return await who_am_i(conn), await conn.fetchval(
            "SELECT count(*) FROM items WHERE name LIKE '%!'")

    assert run_as(driver_proxy, "globex", scenario) == (own_view("globex", SEED_ROWS + 20),
                                                        SEED_ROWS + 20)
    assert run_as(driver_proxy, "acme", who_am_i) == own_view("acme")


def test_binary_copy_out_and_staged_copy_in(driver_proxy: ThreadedProxy) -> None:
    async def scenario(conn: asyncpg.Connection) -> tuple[Any, ...]:
        csv, binary = io.BytesIO(), io.BytesIO()
        await conn.copy_from_query("SELECT tenant_id, name FROM items ORDER BY id",
                                   output=csv, format="csv")
        await conn.copy_from_table("items", columns=["tenant_id", "name"], output=binary,
                                   format="binary")
        records = [(f"loaded-{n}",) for n in range(30)]
        # PostgreSQL refuses COPY FROM into a table under RLS ...
        with pytest.raises(asyncpg.FeatureNotSupportedError):
            await conn.copy_records_to_table("items", records=records, columns=["name"])
        # ... so copy into a staging table and INSERT ... SELECT, in one transaction.
        async with conn.transaction():
            await conn.execute("CREATE TEMP TABLE staging (name text) ON COMMIT DROP")
            await conn.copy_records_to_table("staging", records=records)
            await conn.execute("INSERT INTO items (name) SELECT name FROM staging")
        return csv.getvalue(), binary.getvalue(), await who_am_i(conn)

    csv, binary, after = run_as(driver_proxy, "acme", scenario)
    assert csv.decode().splitlines() == [f"acme,acme-item-{n}" for n in (1, 2, 3)]
    assert binary.startswith(b"PGCOPY\n\xff\r\n\0")
    assert binary.count(b"acme-item-") == SEED_ROWS and b"globex" not in binary
    assert after == own_view("acme", SEED_ROWS + 30)
    assert run_as(driver_proxy, "globex", who_am_i) == own_view("globex")


def test_pool_reset_on_release_keeps_each_tenant(driver_proxy: ThreadedProxy) -> None:
    # Releasing runs asyncpg's reset (pg_advisory_unlock_all, CLOSE ALL, UNLISTEN *,
    # RESET ALL): the client's own settings go, its tenant stays.
    async def work(pool: asyncpg.Pool, tenant: str) -> list[Any]:
        seen = []
        for i in range(5):
            async with pool.acquire() as conn:
                seen.append(await conn.fetchval("SHOW statement_timeout"))
                await conn.execute("SET statement_timeout = '7s'")
                await conn.execute("INSERT INTO items (name) VALUES ($1)", f"pool-{i}")
                seen.append(await who_am_i(conn))
        return seen

    async def main() -> list[list[Any]]:
        pools = [await asyncpg.create_pool(driver_proxy.dsn(t), ssl=False, min_size=1,
                                           max_size=2) for t in TENANTS]
        try:
            return await asyncio.gather(*[work(p, t) for p, t in zip(pools, TENANTS,
                                                                      strict=True)])
        finally:
            await asyncio.gather(*[p.close() for p in pools])

    for tenant, seen in zip(TENANTS, asyncio.run(main()), strict=True):
        assert seen[0::2] == ["0"] * 5
        assert seen[1::2] == [own_view(tenant, SEED_ROWS + i + 1) for i in range(5)]


def test_timeouts_cancel_only_the_statement_that_timed_out(driver_proxy: ThreadedProxy) -> None:
    # 20 rounds: a statement timing out inside a transaction (simple query), one timing out
    # outside any (extended protocol; in transaction mode its server goes back to the pool),
    # then a short one. asyncpg sends a cancel for each timeout and goes on once the proxy
    # closes the cancel socket; a cancel that lands late would hit the statement after.
    # The timeouts are per call: asyncpg gives a cancel's round trip only command_timeout
    # and then drops the connection itself, and the next statement's timeout also pays for
    # waiting on that cancel. So command_timeout is a generous budget, not the 0.2 s that
    # a loaded machine misses now and then even straight to PostgreSQL.
    async def scenario(conn: asyncpg.Connection) -> tuple[list[str], tuple[Any, ...]]:
        outcomes = []
        for i in range(20):
            for statement in ("in_transaction", "outside", "short"):
                try:
                    if statement == "in_transaction":
                        async with conn.transaction():
                            await conn.execute("INSERT INTO items (name) VALUES ('rolled-back')")
                            await conn.execute("SELECT pg_sleep(20)", timeout=0.2)
                    elif statement == "outside":
                        await conn.fetchval("SELECT pg_sleep(20)", timeout=0.2)
                    else:
                        assert await conn.fetchval("SELECT pg_sleep(0.01)::text || $1::text",
                                                   str(i)) == str(i)
                    outcomes.append("ok")
                except TimeoutError:
                    outcomes.append("timeout")
                except asyncpg.QueryCanceledError:
                    outcomes.append("stray cancel")
        return outcomes, await who_am_i(conn)

    outcomes, after = run_as(driver_proxy, "globex", scenario, command_timeout=10)
    # Each timed-out sleep was cancelled (or the next statement would have waited 20 s
    # behind it), and no cancel reached a statement it was not sent for.
    assert outcomes == ["timeout", "timeout", "ok"] * 20
    assert after == own_view("globex")
