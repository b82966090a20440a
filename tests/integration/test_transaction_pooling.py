"""Transaction mode: many clients on few server connections, tenants never mixed,
named prepared statements working for real drivers."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import psycopg
import pytest

from proxy.wire import messages
from tests import rawclient
from tests.proxy_harness import ThreadedProxy, token

pytestmark = pytest.mark.usefixtures("clean_items")

Start = Callable[..., ThreadedProxy]


def _pool(proxy: ThreadedProxy) -> Any:
    assert proxy.app is not None
    return proxy.app.pools["app"]


def test_isolation_stress_50_tenants_on_4_servers(start_proxy: Start) -> None:
    # 50 tenants x 4 connections, interleaved simple, extended, prepared and pipelined work
    # on 4 server connections; every statement checks the tenant it runs as.
    proxy = start_proxy(pool_mode="transaction", pool_size=4)
    tenants = [f"t{i:02d}" for i in range(50)]
    seen_wrong: list[str] = []

    async def client(tenant: str, rnd: random.Random) -> int:
        conn = await asyncpg.connect(proxy.dsn(tenant), ssl=False)
        done = 0
        try:
            await conn.execute("INSERT INTO items (name) VALUES ($1)", f"{tenant}-row")
            for _ in range(20):
                kind = rnd.randrange(4)
                if kind == 0:      # simple protocol
                    got = await conn.fetchval(
                        "SELECT string_agg(DISTINCT tenant_id, ',') || '|' || "
                        "current_setting('app.current_tenant') FROM items")
                    rows_tenant, setting = str(got).split("|")
                    ok = rows_tenant == tenant and setting == tenant
                elif kind == 1:    # named prepared statement (asyncpg's cache)
                    rows = await conn.fetch("SELECT tenant_id FROM items WHERE id > $1", 0)
                    ok = bool(rows) and {r[0] for r in rows} == {tenant}
                elif kind == 2:    # explicit transaction
                    async with conn.transaction():
                        setting = await conn.fetchval(
                            "SELECT current_setting('app.current_tenant')")
                        count = await conn.fetchval(
                            "SELECT count(*) FROM items WHERE tenant_id <> $1", tenant)
                    ok = setting == tenant and count == 0
                else:              # a batch of executions in one round trip
                    await conn.executemany(
                        "INSERT INTO items (name) VALUES ($1)", [(f"{tenant}-b",)] * 3)
                    ok = await conn.fetchval(
                        "SELECT count(*) FROM items WHERE tenant_id <> $1", tenant) == 0
                if not ok:
                    seen_wrong.append(tenant)
                done += 1
        finally:
            await conn.close()
        return done

    async def main() -> int:
        rnd = random.Random(1234)
        jobs = [client(t, random.Random(rnd.random())) for t in tenants for _ in range(4)]
        return sum(await asyncio.gather(*jobs))

    total = asyncio.run(main())
    assert total == 50 * 4 * 20
    assert seen_wrong == []
    stats = proxy.call(lambda: (_pool(proxy).stats.leases,
                                _pool(proxy).stats.leases_with_context_set,
                                _pool(proxy).size, _pool(proxy).stats.kept_reuses))
    leases, with_set, size, kept = stats
    assert size <= 4
    assert leases + kept >= total  # a transaction either leased or kept its server
    print(f"leases {leases}, with a tenant set {with_set} ({with_set / leases:.1%})")


def test_asyncpg_statement_cache_with_more_clients_than_servers(start_proxy: Start) -> None:
    proxy = start_proxy(pool_mode="transaction", pool_size=2)

    async def worker(tenant: str) -> None:
        conn = await asyncpg.connect(proxy.dsn(tenant), ssl=False)
        try:
            for i in range(30):
                rows = await conn.fetch("SELECT tenant_id, $1::int FROM items", i)
                assert {r[0] for r in rows} == {tenant} and all(r[1] == i for r in rows)
            stmt = await conn.prepare("SELECT count(*) FROM items WHERE name LIKE $1")
            assert await stmt.fetchval(f"{tenant}%") == 3
        finally:
            await conn.close()

    async def main() -> None:
        await asyncio.gather(*[worker(t) for t in ("acme", "globex") * 5])

    asyncio.run(main())


def test_asyncpg_pool_reset_all_keeps_the_tenant(start_proxy: Start) -> None:
    # asyncpg's pool runs RESET ALL (and more) when a connection is released.
    proxy = start_proxy(pool_mode="transaction", pool_size=2)

    async def main() -> list[str]:
        async with asyncpg.create_pool(proxy.dsn("globex"), ssl=False, min_size=2,
                                       max_size=4) as pool:
            out = []
            for _ in range(10):
                async with pool.acquire() as conn:
                    out.append(await conn.fetchval(
                        "SELECT current_setting('app.current_tenant')"))
            return out

    assert set(asyncio.run(main())) == {"globex"}


def test_psycopg_prepared_statements_deallocate_and_discard(start_proxy: Start) -> None:
    proxy = start_proxy(pool_mode="transaction", pool_size=1)
    errors: list[BaseException] = []

    def run(tenant: str) -> None:
        try:
            with psycopg.connect(proxy.dsn(tenant), prepare_threshold=0,
                                 autocommit=True) as conn:
                for i in range(20):
                    rows = conn.execute("SELECT tenant_id, %s::int FROM items", (i,)).fetchall()
                    assert {r[0] for r in rows} == {tenant}
                conn.execute("DEALLOCATE ALL")
                rows = conn.execute("SELECT tenant_id, %s::int FROM items", (1,)).fetchall()
                assert {r[0] for r in rows} == {tenant}
                conn.execute("DISCARD ALL")
                assert conn.execute("SELECT current_setting('app.current_tenant')"
                                    ).fetchone() == (tenant,)
                rows = conn.execute("SELECT tenant_id, %s::int FROM items", (2,)).fetchall()
                assert {r[0] for r in rows} == {tenant}
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in ("acme", "globex") * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def test_psycopg_pipeline_mode(start_proxy: Start) -> None:
    proxy = start_proxy(pool_mode="transaction", pool_size=1)
    with psycopg.connect(proxy.dsn("acme"), prepare_threshold=0, autocommit=True) as conn:
        with conn.pipeline():
            curs = [conn.execute("SELECT tenant_id FROM items WHERE id > %s", (i,))
                    for i in range(10)]
        for cur in curs:
            assert {r[0] for r in cur.fetchall()} <= {"acme"}
        with conn.transaction(), conn.pipeline():
            conn.execute("INSERT INTO items (name) VALUES (%s)", ("p1",))
            conn.execute("INSERT INTO items (name) VALUES (%s)", ("p2",))
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (5,)


def test_extended_protocol_statement_handling_by_bytes(start_proxy: Start) -> None:
    # What PostgreSQL would answer, even though the proxy renames statements.
    proxy = start_proxy(pool_mode="transaction", pool_size=2)
    with rawclient.logged_in(proxy.port, "acme") as sock:
        parse = messages.parse("s1", "SELECT current_setting('app.current_tenant')")
        run = messages.bind("", "s1", []) + messages.execute() + messages.sync()
        sock.sendall(parse + messages.sync())
        assert _tags(rawclient.read_until(sock, b"Z")) == "1Z"
        sock.sendall(run)
        replies = rawclient.read_until(sock, b"Z")
        assert _tags(replies) == "2DCZ" and b"acme" in replies[1][1]
        # Same name again: 42P05, and the rest of the batch is skipped.
        sock.sendall(parse + run)
        replies = rawclient.read_until(sock, b"Z")
        assert _tags(replies) == "EZ"
        assert messages.decode_error_fields(replies[0][1])["C"] == "42P05"
        # Close, then the name is free; an unknown name is 26000 with the client's name.
        sock.sendall(messages.close(b"S", "s1") + messages.sync())
        assert _tags(rawclient.read_until(sock, b"Z")) == "3Z"
        sock.sendall(messages.bind("", "s1", []) + messages.execute() + messages.sync())
        replies = rawclient.read_until(sock, b"Z")
        fields = messages.decode_error_fields(replies[0][1])
        assert fields["C"] == "26000" and '"s1"' in fields["M"]
        # DEALLOCATE of a known name through the simple protocol.
        sock.sendall(parse + messages.sync())
        rawclient.read_until(sock, b"Z")
        sock.sendall(messages.query("DEALLOCATE s1"))
        replies = rawclient.read_until(sock, b"Z")
        assert replies[-2][0] == b"C" and replies[-2][1].startswith(b"DEALLOCATE")
        sock.sendall(messages.query("DEALLOCATE s1"))
        replies = rawclient.read_until(sock, b"Z")
        assert messages.decode_error_fields(replies[0][1])["C"] == "26000"


def test_pgbench_prepared_with_40_clients_on_4_servers(start_proxy: Start,
                                                       tmp_path: Any) -> None:
    proxy = start_proxy(pool_mode="transaction", pool_size=4, query_wait_timeout=60.0)
    script = tmp_path / "tenant.sql"
    script.write_text("SELECT 1 / (current_setting('app.current_tenant') = 'acme')::int, "
                      "count(*) FROM items WHERE id > 0;\n")
    env = {**os.environ, "PGPASSWORD": token("acme"), "PGSSLMODE": "disable"}
    done = subprocess.run(
        ["pgbench", "-n", "-M", "prepared", "-c", "40", "-j", "2", "-t", "50",
         "-f", str(script), "-h", "127.0.0.1", "-p", str(proxy.port), "-U", "bench", "app"],
        capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "number of failed transactions: 0" in done.stdout
    assert "number of transactions actually processed: 2000/2000" in done.stdout


def test_client_gone_mid_transaction_leaves_no_dirty_server(start_proxy: Start) -> None:
    proxy = start_proxy(pool_mode="transaction", pool_size=1)
    for unfinished, executed in (
        (messages.query("BEGIN; INSERT INTO items (name) VALUES ('half-done')"), b"Z"),
        # a pipeline cut before its Sync: Flush brings the INSERT's CommandComplete
        (messages.parse("", "INSERT INTO items (name) VALUES ('piped')") +
         messages.bind("", "", []) + messages.execute() + messages.flush(), b"C"),
    ):
        sock = rawclient.logged_in(proxy.port, "acme")
        sock.sendall(unfinished)
        # The server ran the INSERT (its reply came back): the client leaves mid-transaction.
        replies = rawclient.read_until(sock, executed)
        assert b"E" not in [tag for tag, _ in replies]
        if executed == b"Z":
            assert replies[-1][1] == b"T"  # ReadyForQuery: in a transaction block
        sock.close()
        with psycopg.connect(proxy.dsn("globex"), autocommit=True) as conn:
            row = conn.execute("SELECT current_setting('app.current_tenant'), "
                               "txid_current_if_assigned() IS NULL, "
                               "(SELECT count(*) FROM items)").fetchone()
            assert row == ("globex", True, 3)
    with psycopg.connect(proxy.dsn("acme")) as conn:
        rows = conn.execute("SELECT name FROM items WHERE name IN ('half-done', 'piped')")
        assert rows.fetchall() == []


def test_terminated_backends_under_load(start_proxy: Start, app_db: Any) -> None:
    proxy = start_proxy(pool_mode="transaction", pool_size=3)
    stop = time.monotonic() + 3
    results = {"ok": 0, "errors": 0}

    async def worker(tenant: str) -> None:
        while time.monotonic() < stop:
            try:
                conn = await asyncpg.connect(proxy.dsn(tenant), ssl=False)
            except (asyncpg.PostgresError, OSError):
                results["errors"] += 1
                continue
            try:
                while time.monotonic() < stop:
                    got = await conn.fetchval("SELECT current_setting('app.current_tenant')")
                    assert got == tenant
                    results["ok"] += 1
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                results["errors"] += 1  # its server was killed: a clear error
            finally:
                conn.terminate()

    async def killer() -> None:
        su = await asyncpg.connect(app_db.superuser_dsn)
        try:
            while time.monotonic() < stop - 0.5:
                await asyncio.sleep(0.3)
                await su.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE usename = $1 AND pid <> pg_backend_pid()",
                                 app_db.user)
        finally:
            await su.close()

    async def main() -> None:
        await asyncio.gather(killer(), *[worker(t) for t in ("acme", "globex") * 3])

    asyncio.run(main())
    assert results["ok"] > 100
    # Afterwards the pool refilled and serves everyone.
    with psycopg.connect(proxy.dsn("acme")) as conn:
        assert conn.execute("SELECT current_setting('app.current_tenant')").fetchone() == ("acme",)


def _tags(replies: list[tuple[bytes, bytes]]) -> str:
    return "".join(t.decode() for t, _ in replies if t not in (b"S", b"N", b"t", b"T", b"n"))


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_idle_transaction_timeout_ends_the_client_and_recovers_the_server(
        start_proxy: Start, pool_mode: str) -> None:
    proxy = start_proxy(pool_mode=pool_mode, pool_size=1, idle_transaction_timeout=0.3)
    conn = psycopg.connect(proxy.dsn("acme"))
    conn.execute("INSERT INTO items (name) VALUES ('never-committed')")
    pool = _pool(proxy)
    proxy.wait_until(lambda app: not pool.active)  # the timeout ended it and took its server
    with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
        conn.execute("SELECT 1")
    conn.close()
    with psycopg.connect(proxy.dsn("globex"), autocommit=True) as other:
        row = other.execute("SELECT current_setting('app.current_tenant'), "
                            "txid_current_if_assigned() IS NULL").fetchone()
        assert row == ("globex", True)
    with psycopg.connect(proxy.dsn("acme")) as again:
        assert again.execute("SELECT count(*) FROM items WHERE name = 'never-committed'"
                             ).fetchone() == (0,)


def test_client_idle_timeout_spares_busy_clients(start_proxy: Start) -> None:
    proxy = start_proxy(pool_mode="transaction", client_idle_timeout=0.4)
    idle = psycopg.connect(proxy.dsn("acme"), autocommit=True)
    with psycopg.connect(proxy.dsn("globex"), autocommit=True) as busy:
        for _ in range(8):
            busy.execute("SELECT 1")
            time.sleep(0.1)  # busy for twice the timeout, a query every quarter of it
        proxy.wait_until(lambda app: len(app.clients) == 1)  # the idle one was ended
        with pytest.raises(psycopg.OperationalError, match="idle-session timeout"):
            idle.execute("SELECT 1")
        assert busy.execute("SELECT 2").fetchone() == (2,)
    idle.close()


def test_max_tenant_server_conns_keeps_a_noisy_tenant_from_taking_the_pool(
        start_proxy: Start) -> None:
    proxy = start_proxy(pool_mode="transaction", pool_size=3, max_tenant_server_conns=1)
    holder = psycopg.connect(proxy.dsn("acme"))
    holder.execute("SELECT 1")  # inside a transaction: holds acme's only allowed server
    result: dict[str, Any] = {}

    def second_acme() -> None:
        with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
            result["acme"] = conn.execute("SELECT current_setting('app.current_tenant')"
                                          ).fetchone()

    thread = threading.Thread(target=second_acme)
    thread.start()
    pool = _pool(proxy)
    proxy.wait_until(lambda app: len(pool.waiters) == 1)
    assert "acme" not in result  # waits although the pool has room
    with psycopg.connect(proxy.dsn("globex"), autocommit=True) as other:
        assert other.execute("SELECT 1").fetchone() == (1,)  # other tenants are served
    holder.commit()
    thread.join(10)
    assert result["acme"] == ("acme",)
    holder.close()


def test_a_clients_set_does_not_reach_the_next_client(start_proxy: Start) -> None:
    proxy = start_proxy(pool_mode="transaction", pool_size=1)
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as first:
        default = first.execute("SHOW work_mem").fetchone()
        first.execute("SET work_mem = '1234kB'")
        first.execute("SET search_path TO pg_catalog")
    with psycopg.connect(proxy.dsn("globex"), autocommit=True) as second:
        assert second.execute("SHOW work_mem").fetchone() == default
        assert second.execute("SHOW search_path").fetchone() == ('"$user", public',)
        assert second.execute("SELECT current_setting('app.current_tenant')"
                              ).fetchone() == ("globex",)


def test_reserve_pool_serves_a_client_that_waited_too_long(start_proxy: Start) -> None:
    proxy = start_proxy(pool_mode="transaction", pool_size=1, reserve_pool_size=1,
                        reserve_pool_timeout=0.3)
    holder = psycopg.connect(proxy.dsn("acme"))
    holder.execute("SELECT 1")  # holds the only regular connection in a transaction
    started = time.monotonic()
    with psycopg.connect(proxy.dsn("globex"), autocommit=True) as late:
        assert late.execute("SELECT current_setting('app.current_tenant')"
                            ).fetchone() == ("globex",)
    assert 0.25 < time.monotonic() - started < 5
    holder.commit()
    holder.close()
    pool = _pool(proxy)
    assert proxy.call(lambda: pool.stats.reserve_opened) == 1
    proxy.wait_until(lambda app: pool.size <= 1, timeout=5)  # maintenance closes it again



def test_a_reported_setting_follows_the_client_to_every_server(start_proxy: Start) -> None:
    # SET TimeZone is reported (ParameterStatus): the proxy carries it in the client's
    # context to whichever server runs its next transaction, and to no other client.
    proxy = start_proxy(pool_mode="transaction", pool_size=1)
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as acme, \
         psycopg.connect(proxy.dsn("globex"), autocommit=True) as globex:
        default = globex.execute("SHOW TimeZone").fetchone()
        acme.execute("SET TimeZone = 'Asia/Tokyo'")
        for _ in range(3):  # one server: each turn it changes hands (and is reset)
            assert acme.execute("SHOW TimeZone").fetchone() == ("Asia/Tokyo",)
            assert globex.execute("SHOW TimeZone").fetchone() == default
