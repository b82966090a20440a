"""psycopg 3 through pgtenant: sync and async connections, pipelines, prepared
statements, server-side cursors, COPY both ways, binary results, psycopg_pool."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import psycopg
import pytest
from psycopg.types import TypeInfo
from psycopg_pool import ConnectionPool

from tests.drivers.tenancy import SEED_ROWS, TENANTS, WHO_AM_I, own_view
from tests.proxy_harness import ThreadedProxy


def test_each_tenant_reads_and_writes_only_its_rows(driver_proxy: ThreadedProxy) -> None:
    with psycopg.connect(driver_proxy.dsn("acme"), autocommit=True) as acme, \
            psycopg.connect(driver_proxy.dsn("globex"), autocommit=True) as globex:
        acme.execute("INSERT INTO items (name) VALUES (%s)", ("acme-psycopg",))
        renamed = acme.execute("UPDATE items SET name = name || '!'").rowcount
        assert renamed == SEED_ROWS + 1
        assert acme.execute("DELETE FROM items WHERE tenant_id = 'globex'").rowcount == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            acme.execute("INSERT INTO items (tenant_id, name) VALUES ('globex', 'planted')")
        assert acme.execute(WHO_AM_I).fetchone() == own_view("acme", SEED_ROWS + 1)
        assert globex.execute(WHO_AM_I).fetchone() == own_view("globex")
        assert globex.execute("SELECT count(*) FROM items WHERE name LIKE '%!'"
                              ).fetchone() == (0,)


def test_async_connections_run_concurrently_each_in_its_tenant(
        driver_proxy: ThreadedProxy) -> None:
    clients = [t for t in TENANTS for _ in range(2)]
    inserted = asyncio.Event()
    pending = len(clients)

    async def client(tenant: str) -> list[tuple[Any, ...]]:
        nonlocal pending
        seen = []
        async with await psycopg.AsyncConnection.connect(driver_proxy.dsn(tenant),
                                                         autocommit=True) as conn:
            await conn.execute("INSERT INTO items (name) VALUES (%s)", (f"{tenant}-async",))
            # Both clients of a tenant have inserted before either counts its rows.
            pending -= 1
            if not pending:
                inserted.set()
            await inserted.wait()
            for i in range(10):
                cur = await conn.execute(
                    "SELECT current_setting('app.current_tenant'), tenant_id, %s::int "
                    "FROM items WHERE name = %s", (i, f"{tenant}-async"))
                seen.extend(await cur.fetchall())
            async with conn.transaction():
                cur = await conn.execute(WHO_AM_I)
                seen.append(await cur.fetchone() or ())
        return seen

    async def main() -> list[list[tuple[Any, ...]]]:
        return await asyncio.gather(*[client(t) for t in clients])

    for tenant, seen in zip(clients, asyncio.run(main()), strict=True):
        assert seen[:-1] and all(row[:2] == (tenant, tenant) for row in seen[:-1])
        assert seen[-1] == own_view(tenant, SEED_ROWS + 2)


def test_pipeline_with_an_error_in_the_middle(driver_proxy: ThreadedProxy) -> None:
    with psycopg.connect(driver_proxy.dsn("globex"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline() as pipe:
            conn.execute("INSERT INTO items (name) VALUES (%s)", ("before-error",))
            pipe.sync()
            conn.execute("SELECT 1 / %s::int", (0,))
            conn.execute("INSERT INTO items (name) VALUES (%s)", ("skipped",))
        # The first insert had its own Sync; the one after the error was skipped.
        with conn.pipeline():
            names = conn.execute("SELECT name FROM items WHERE name IN (%s, %s)",
                                 ("before-error", "skipped"))
            who = conn.execute(WHO_AM_I)
        assert names.fetchall() == [("before-error",)]
        assert who.fetchone() == own_view("globex", SEED_ROWS + 1)


def test_prepared_statements_with_threshold_zero(driver_proxy: ThreadedProxy) -> None:
    # psycopg names them _pg3_0, _pg3_1, ... on every connection: four clients, same names.
    tenants = [t for t in TENANTS for _ in range(2)]
    conns = [psycopg.connect(driver_proxy.dsn(t), autocommit=True, prepare_threshold=0)
             for t in tenants]
    try:
        for i in range(5):
            for tenant, conn in zip(tenants, conns, strict=True):
                rows = conn.execute(
                    "SELECT current_setting('app.current_tenant'), tenant_id, %s::int "
                    "FROM items", (i,)).fetchall()
                assert rows == [(tenant, tenant, i)] * SEED_ROWS
        for tenant, conn in zip(tenants, conns, strict=True):
            assert conn.execute(WHO_AM_I).fetchone() == own_view(tenant)
    finally:
        for conn in conns:
            conn.close()


def test_server_side_cursor_fetched_in_chunks_inside_a_transaction(
        driver_proxy: ThreadedProxy) -> None:
    # A named cursor is a portal on one server connection: in transaction mode it lives
    # only as long as the transaction that holds that connection.
    with psycopg.connect(driver_proxy.dsn("acme")) as conn, \
            psycopg.connect(driver_proxy.dsn("globex"), autocommit=True) as other:
        with conn.transaction(), conn.cursor(name="items_cursor") as cur:
            cur.itersize = 2
            cur.execute("SELECT tenant_id, name, n FROM items, generate_series(1, 4) AS n "
                        "ORDER BY name, n")
            fetched: list[tuple[Any, ...]] = []
            while chunk := cur.fetchmany(5):
                fetched.extend(chunk)
                # Another tenant works meanwhile, on another server connection.
                assert other.execute(WHO_AM_I).fetchone() == own_view("globex")
            assert len(fetched) == SEED_ROWS * 4
            assert {row[0] for row in fetched} == {"acme"}
        assert conn.execute(WHO_AM_I).fetchone() == own_view("acme")


def test_copy_to_and_from_in_text_and_binary(driver_proxy: ThreadedProxy) -> None:
    with psycopg.connect(driver_proxy.dsn("globex")) as conn, conn.cursor() as cur:
        with cur.copy("COPY items (tenant_id, name) TO STDOUT") as copy:
            text_rows = list(copy.rows())
        assert sorted(text_rows) == [("globex", f"globex-item-{n}") for n in (1, 2, 3)]
        with cur.copy("COPY (SELECT id, tenant_id FROM items) TO STDOUT (FORMAT BINARY)"
                      ) as copy:
            copy.set_types(["int8", "text"])
            binary_rows = list(copy.rows())
        assert {r[1] for r in binary_rows} == {"globex"} and len(binary_rows) == SEED_ROWS
        conn.commit()
        # COPY FROM into an RLS table is refused by PostgreSQL itself (0A000) ...
        with pytest.raises(psycopg.errors.FeatureNotSupported), \
                cur.copy("COPY items (name) FROM STDIN") as copy:
            copy.write_row(("direct",))
        conn.rollback()
        # ... so load a staging table and INSERT ... SELECT, all in one transaction (a temp
        # table outlives the transaction only in session mode).
        with conn.transaction():
            cur.execute("CREATE TEMP TABLE staging (name text, n int) ON COMMIT DROP")
            with cur.copy("COPY staging FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["text", "int4"])
                for n in range(50):
                    copy.write_row((f"bulk-{n}", n))
            cur.execute("INSERT INTO items (name) SELECT name FROM staging")
            assert cur.rowcount == 50
        assert cur.execute(WHO_AM_I).fetchone() == own_view("globex", SEED_ROWS + 50)
    with psycopg.connect(driver_proxy.dsn("acme")) as conn:
        assert conn.execute(WHO_AM_I).fetchone() == own_view("acme")


def test_binary_results(driver_proxy: ThreadedProxy) -> None:
    with psycopg.connect(driver_proxy.dsn("acme"), autocommit=True) as conn:
        with conn.cursor(binary=True) as cur:
            cur.execute("SELECT id, tenant_id, created_at, current_setting('app.current_tenant')"
                        " FROM items WHERE id > %s ORDER BY id", (0,))
            rows = cur.fetchall()
            assert cur.pgresult is not None and cur.pgresult.fformat(0) == 1  # binary
        assert [r[0] for r in rows] == [1, 2, 3]
        assert all(r[1] == r[3] == "acme" and isinstance(r[2], datetime.datetime)
                   for r in rows)
        info = TypeInfo.fetch(conn, "text")  # a catalog query, binary too
        assert info is not None and info.oid == 25
        assert conn.execute("SELECT %s::text[]", (["a", "b"],), binary=True
                            ).fetchone() == (["a", "b"],)


def test_psycopg_pool_keeps_each_pools_tenant(driver_proxy: ThreadedProxy) -> None:
    # RESET ALL on return, as apps that clean their connections do: the tenant stays.
    def reset(conn: psycopg.Connection[Any]) -> None:
        conn.execute("RESET ALL")

    pools = {t: ConnectionPool(driver_proxy.dsn(t), min_size=1, max_size=2, open=True,
                               reset=reset, kwargs={"prepare_threshold": 1},
                               check=ConnectionPool.check_connection)
             for t in TENANTS}
    try:
        for i in range(6):
            for tenant, pool in pools.items():
                with pool.connection() as conn:
                    conn.execute("SET application_name = 'pooled'")
                    conn.execute("INSERT INTO items (name) VALUES (%s)", (f"{tenant}-{i}",))
                    assert conn.execute(WHO_AM_I).fetchone() == own_view(tenant,
                                                                        SEED_ROWS + i + 1)
        for tenant, pool in pools.items():
            with pool.connection() as conn:
                assert conn.execute("SHOW application_name").fetchone() != ("pooled",)
                assert conn.execute(WHO_AM_I).fetchone() == own_view(tenant, SEED_ROWS + 6)
    finally:
        for pool in pools.values():
            pool.close()
