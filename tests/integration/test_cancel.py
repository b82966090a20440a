"""Cancel requests reach only the statement they were sent for, and always reach it.

PostgreSQL delivers a cancel as a signal that interrupts whatever the backend runs when
it arrives. So from the moment a client's cancel reaches the proxy until PostgreSQL has
closed the cancel connection, the backend runs nothing new and is leased to no one, and
only then is the client's cancel socket closed (libpq and asyncpg read that close as
"processed" and send their next statement).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import threading
from collections.abc import Callable
from typing import Any

import asyncpg
import psycopg
import pytest

from proxy import cancel as cancel_module
from proxy.cancel import CancelForwarding
from tests.proxy_harness import ThreadedProxy
from tests.support import wait_for

pytestmark = pytest.mark.usefixtures("clean_items")

# Transaction mode: both tenants share one server connection, so a cancel that landed
# late would hit the other tenant's statement. Session mode: each client has its own.
POOL_SIZE = {"transaction": 1, "session": 2}


@pytest.fixture(params=["transaction", "session"])
def cancel_proxy(request: pytest.FixtureRequest,
                 start_proxy: Callable[..., ThreadedProxy]) -> ThreadedProxy:
    return start_proxy(pool_mode=request.param, pool_size=POOL_SIZE[request.param])


def _running(superuser: psycopg.Connection[Any], marker: str) -> bool:
    row = superuser.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s "
        "AND pid <> pg_backend_pid()", (f"%{marker}%",)).fetchone()
    return row is not None and row[0] > 0


def test_cancels_never_reach_a_statement_they_were_not_sent_for(
        cancel_proxy: ThreadedProxy) -> None:
    # Two tenants, each alternating a statement that times out around the moment it ends
    # (asyncpg then sends a cancel that races the statement's end) and a statement its
    # client never cancels, which must never fail with 57014.
    rounds = 40

    async def client(tenant: str, seed: int) -> dict[str, int]:
        rng = random.Random(seed)
        counts = {"timed out": 0, "finished": 0, "stray cancel": 0}
        conn = await asyncpg.connect(cancel_proxy.dsn(tenant), ssl=False)
        try:
            for i in range(rounds):
                try:
                    await conn.execute(f"SELECT pg_sleep({rng.uniform(0.002, 0.006):.4f})",
                                       timeout=rng.uniform(0.001, 0.004))
                    counts["finished"] += 1
                except TimeoutError:
                    counts["timed out"] += 1
                except asyncpg.QueryCanceledError:
                    counts["stray cancel"] += 1  # cancelled before its own timeout
                try:
                    got = await conn.fetchval("SELECT $1::int FROM pg_sleep(0.003)", i)
                    assert got == i
                except asyncpg.QueryCanceledError:
                    counts["stray cancel"] += 1
        finally:
            await conn.close()
        return counts

    async def main() -> list[dict[str, int]]:
        return await asyncio.gather(client("acme", 1), client("globex", 2))

    results = asyncio.run(main())
    for counts in results:
        assert counts["stray cancel"] == 0, results
    assert sum(counts["timed out"] for counts in results) > 0, results


def _cancel_round(proxy: ThreadedProxy, superuser: psycopg.Connection[Any],
                  marker: str) -> dict[str, Any]:
    """acme runs a long statement and cancels it once it runs; globex runs a short one
    meanwhile (in transaction mode it waits for the server connection acme holds)."""
    outcome: dict[str, Any] = {}
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as acme, \
            psycopg.connect(proxy.dsn("globex"), autocommit=True) as globex:

        def run_acme() -> None:
            try:
                acme.execute(f"SELECT pg_sleep(60) /* {marker} */")
                outcome["acme"] = "finished"
            except psycopg.errors.QueryCanceled:
                outcome["acme"] = "cancelled"

        def run_globex() -> None:
            try:
                outcome["globex"] = globex.execute(
                    "SELECT current_setting('app.current_tenant') FROM pg_sleep(0.05)"
                ).fetchone()
            except psycopg.Error as exc:
                outcome["globex"] = repr(exc)

        threads = [threading.Thread(target=run_acme), threading.Thread(target=run_globex)]
        threads[0].start()
        wait_for(lambda: _running(superuser, marker), f"statement {marker} to run")
        threads[1].start()
        if proxy.config.databases["app"].pool_mode == "transaction":
            proxy.wait_until(lambda app: bool(app.pools["app"].waiters))
        # cancel_safe: libpq 17+ non-blocking cancel (the blocking one would hold the GIL
        # the in-process proxy needs); returns once the proxy closed the cancel socket.
        acme.cancel_safe()
        for thread in threads:
            thread.join(30)
    return outcome


def test_own_cancel_lands_and_the_next_statement_is_not_hit(
        cancel_proxy: ThreadedProxy, superuser_conn: psycopg.Connection[Any]) -> None:
    # In transaction mode globex gets the one server connection right after acme's
    # cancelled statement: its statement must run, not be cancelled.
    for round_ in range(5):
        outcome = _cancel_round(cancel_proxy, superuser_conn, f"cancel-me-{round_}")
        assert outcome == {"acme": "cancelled", "globex": ("globex",)}, round_


def test_cancel_with_nothing_running_changes_nothing(cancel_proxy: ThreadedProxy) -> None:
    with psycopg.connect(cancel_proxy.dsn("acme"), autocommit=True) as conn:
        for i in range(5):
            conn.cancel_safe()
            row = conn.execute("SELECT %s::int FROM pg_sleep(0.01)", (i,)).fetchone()
            assert row == (i,)


def test_cancel_delivery_that_gets_no_answer_is_not_settled_and_leaks_no_socket(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The other side accepts the CancelRequest and never closes: after the timeout the
    # delivery reports "not settled" (the backend is then closed, never reused) and its
    # socket is closed (filterwarnings = error turns a leaked one into a failure).
    monkeypatch.setattr(cancel_module, "_CANCEL_TIMEOUT", 0.2)

    async def main() -> bool:
        accepted: list[asyncio.StreamWriter] = []

        async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await CancelForwarding._deliver_cancel(None, ("127.0.0.1", port), 1, b"abcd")
        finally:
            for writer in accepted:
                writer.close()
            server.close()
            await server.wait_closed()

    assert asyncio.run(main()) is False
    with contextlib.suppress(Exception):
        gc.collect()


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_a_client_that_gives_up_on_a_slow_cancel_hangs_up_and_the_proxy_recovers(
        pool_mode: str, start_proxy: Callable[..., ThreadedProxy],
        superuser_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # asyncpg waits for its cancel only command_timeout; past that it closes its own
    # connection (InterfaceError "connection is closed" on the next call). Here the
    # proxy's delivery to PostgreSQL is held until then: the proxy closes nobody, the
    # abandoned backend's statement ends once the cancel lands, the one pool slot serves
    # the next clients meanwhile and after, and nothing of acme's cancel reaches them.
    caplog.set_level(logging.INFO, logger="pgtenant")
    gate = threading.Event()
    deliver = CancelForwarding._deliver_cancel

    async def held(path: str | None, address: tuple[str, int] | None, pid: int,
                   key: bytes) -> bool:
        await asyncio.to_thread(gate.wait, 30)
        return await deliver(path, address, pid, key)

    monkeypatch.setattr(CancelForwarding, "_deliver_cancel", staticmethod(held))
    proxy = start_proxy(pool_mode=pool_mode, pool_size=1)
    marker = f"abandoned-{pool_mode}"

    async def give_up() -> bool:
        conn = await asyncpg.connect(proxy.dsn("acme"), ssl=False, command_timeout=0.2)
        closed = asyncio.Event()
        conn.add_termination_listener(lambda _conn: closed.set())
        with pytest.raises(TimeoutError):
            await conn.fetchval(f"SELECT pg_sleep(20) /* {marker} */")
        async with asyncio.timeout(10):  # asyncpg's own verdict once its cancel outlasts 0.2 s
            await closed.wait()
        with pytest.raises(asyncpg.InterfaceError, match="connection is closed"):
            await conn.fetchval("SELECT 1")
        return _running(superuser_conn, marker)

    async def next_clients() -> list[Any]:
        seen = []
        for tenant in ("globex", "acme"):
            conn = await asyncpg.connect(proxy.dsn(tenant), ssl=False)
            try:
                seen.append(await conn.fetchval(
                    "SELECT current_setting('app.current_tenant') FROM pg_sleep(0.05)"))
            finally:
                await conn.close()
        return seen

    try:
        assert asyncio.run(give_up())  # its backend still sleeps: the cancel is held
        assert asyncio.run(next_clients()) == ["globex", "acme"]
    finally:
        gate.set()
    wait_for(lambda: not _running(superuser_conn, marker), "the abandoned statement to end")
    assert asyncio.run(next_clients()) == ["globex", "acme"]
    assert [r.getMessage() for r in caplog.records
            if getattr(r, "event", None) == "client_closed"] == []
