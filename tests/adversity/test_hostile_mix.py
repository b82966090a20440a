"""Benign clients of many tenants interleaved with hostile ones on a pool of 2.

The hostile tenants try every way the attack run found to leave state on a shared
backend (temp objects shadowing the app's table, settings through set_config, WITH HOLD
cursors, session advisory locks, SQL PREPARE and the proxy's own statement names,
LISTEN). The benign clients run ordinary application traffic (simple and prepared
queries, inserts, timestamps) and check every row and their tenant setting.

With the guard off, only the scrub on tenant switch and the context re-set stand
between them: no benign client may see a foreign row or context, lose a write, or get
an error. With the guard on, the hostile clients must not see a foreign row either.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import Counter
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from proxy.config import TenancyConfig
from tests.proxy_harness import ThreadedProxy, make_config
from tests.support import AppDatabase

BENIGN = tuple(f"benign{i}" for i in range(6))
HOSTILE = ("evil1", "evil2")
ROWS_PER_TENANT = 4
BENIGN_TRANSACTIONS = 250   # per benign client
HOSTILE_ROUNDS = 120        # per hostile client

ATTACKS = (
    "CREATE TEMP TABLE IF NOT EXISTS loot (tenant_id text, name text); "
    "CREATE OR REPLACE FUNCTION pg_temp.grab(t text, n text) RETURNS boolean LANGUAGE sql "
    "AS $$ INSERT INTO pg_temp.loot VALUES (t, n); SELECT true $$; "
    "CREATE OR REPLACE TEMP VIEW items AS SELECT * FROM public.items "
    "WHERE pg_temp.grab(tenant_id, name)",
    "CREATE TEMP TABLE IF NOT EXISTS items "
    "(id bigint, tenant_id text, name text, created_at timestamptz)",
    "SELECT set_config('search_path', 'trap, public', false)",
    "SELECT set_config('DateStyle', 'German', false)",
    "SELECT set_config('default_transaction_read_only', 'on', false)",
    "SELECT set_config('statement_timeout', '1', false)",
    "BEGIN; DECLARE hostile_cur CURSOR WITH HOLD FOR SELECT 1; COMMIT",
    "SELECT pg_try_advisory_lock(77)",
    "PREPARE hostile_stmt AS SELECT 'hijacked'",
    "LISTEN benign_channel",
    "DO $$DECLARE n text; BEGIN FOR n IN SELECT name FROM pg_prepared_statements "
    "WHERE NOT from_sql LOOP EXECUTE format('DEALLOCATE %I', n); "
    "EXECUTE format('PREPARE %I AS SELECT ''evil''::text AS name, ''evil''::text AS t', n); "
    "END LOOP; END$$",
)
# What a hostile client reads afterwards: anything of another tenant here is a leak.
PROBES = (
    "SELECT tenant_id FROM pg_temp.loot",
    "SELECT tenant_id FROM items",
    "FETCH ALL FROM benign_cur",
)


@pytest.fixture
def tenants_seeded(app_db: AppDatabase) -> Iterator[None]:
    everyone = [*BENIGN, *HOSTILE]
    with psycopg.connect(app_db.superuser_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS trap")
        conn.execute("CREATE TABLE IF NOT EXISTS trap.items "
                     "(id bigserial, tenant_id text, name text, created_at timestamptz)")
        conn.execute(f'GRANT USAGE ON SCHEMA trap TO "{app_db.user}"')
        conn.execute(f'GRANT ALL ON trap.items TO "{app_db.user}"')
        conn.execute(f'GRANT ALL ON SEQUENCE trap.items_id_seq TO "{app_db.user}"')
        conn.execute("TRUNCATE trap.items")
        conn.execute("DELETE FROM public.items WHERE tenant_id = ANY(%s)", [everyone])
        conn.execute("INSERT INTO public.items (tenant_id, name) SELECT t, t || '-' || n "
                     "FROM unnest(%s::text[]) t, generate_series(1, %s) n",
                     [everyone, ROWS_PER_TENANT])
    yield
    with psycopg.connect(app_db.superuser_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM public.items WHERE tenant_id = ANY(%s)", [everyone])


async def benign(proxy: ThreadedProxy, tenant: str, seed: int, found: Counter[str]) -> None:
    rng = random.Random(seed)
    conn = await asyncpg.connect(proxy.dsn(tenant))
    try:
        for i in range(BENIGN_TRANSACTIONS):
            kind = rng.random()
            try:
                if kind < 0.4:   # prepared (asyncpg's statement cache)
                    rows = await conn.fetch(
                        "SELECT tenant_id, current_setting('app.current_tenant') AS t "
                        "FROM items WHERE id > $1", 0)
                    found["rows"] += len(rows)
                    found["foreign"] += sum(r[0] != tenant or r[1] != tenant for r in rows)
                elif kind < 0.6:  # a write must land in its own tenant, in public.items
                    row = await conn.fetchrow(
                        "INSERT INTO items (name) VALUES ($1) RETURNING tenant_id, "
                        "tableoid::regclass::text", f"{tenant}-w{i}")
                    assert row is not None
                    found["foreign"] += row[0] != tenant
                    found["misrouted"] += row[1] != "items"
                elif kind < 0.8:  # timestamps parse (DateStyle), simple protocol
                    stamp = await conn.fetchval("SELECT now()::timestamptz")
                    found["stamps"] += stamp.year > 2000
                    await conn.execute("SELECT 1; SELECT 2")
                else:             # explicit transaction
                    async with conn.transaction():
                        rows = await conn.fetch("SELECT tenant_id FROM items")
                        found["foreign"] += sum(r[0] != tenant for r in rows)
                        setting = await conn.fetchval(
                            "SELECT current_setting('app.current_tenant')")
                        found["foreign"] += setting != tenant
            except asyncpg.PostgresError as exc:
                found[f"benign error: {type(exc).__name__}: {exc}"] += 1
    finally:
        await conn.close()


async def hostile(proxy: ThreadedProxy, tenant: str, seed: int, found: Counter[str]) -> None:
    rng = random.Random(seed)
    conn = await asyncpg.connect(proxy.dsn(tenant), statement_cache_size=0)
    try:
        for _ in range(HOSTILE_ROUNDS):
            sql = rng.choice(ATTACKS + PROBES)
            try:
                rows = await conn.fetch(sql) if sql in PROBES else await conn.execute(sql)
            except (asyncpg.PostgresError, asyncpg.InterfaceError):
                found["hostile refused or failed"] += 1
                continue
            if sql in PROBES:
                found["hostile foreign"] += sum(r[0] != tenant for r in rows)  # type: ignore[union-attr]
            found["hostile ran"] += 1
    finally:
        await conn.close()


async def mix(proxy: ThreadedProxy) -> Counter[str]:
    found: Counter[str] = Counter()
    await asyncio.gather(
        *(benign(proxy, t, i, found) for i, t in enumerate(BENIGN)),
        *(hostile(proxy, t, 100 + i, found) for i, t in enumerate(HOSTILE)))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("guard", [False, True], ids=["guard-off", "guard-on"])
@pytest.mark.usefixtures("tenants_seeded")
def test_hostile_tenants_never_reach_benign_ones(app_db: AppDatabase, guard: bool) -> None:
    config = make_config(app_db, pool_mode="transaction", pool_size=2)
    config = dataclasses.replace(config, tenancy=TenancyConfig(guard=guard))
    proxy = ThreadedProxy(config).start()
    try:
        found = asyncio.run(mix(proxy))
        scrubs = proxy.call(lambda: sum(s.scrubs for p in proxy.app.pools.values()  # type: ignore[union-attr]
                                        for s in (*p.idle, *p.active)))
    finally:
        proxy.stop()
    errors = {k: v for k, v in found.items() if k.startswith("benign error")}
    assert errors == {}
    assert found["foreign"] == 0 and found["misrouted"] == 0
    assert found["rows"] > 0 and found["stamps"] > 0
    with psycopg.connect(app_db.superuser_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM trap.items").fetchone() == (0,)
    assert found["hostile foreign"] == 0
    assert found["hostile ran"] > 0
    assert scrubs > 0

