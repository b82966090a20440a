"""A wait for a server connection is decided once, and its callback runs at once.

:class:`proxy.pool.waits.Wait` is not an asyncio Future: serving it runs the waiting
client's callback inside the call that served it (no event-loop pass), so a server one
client releases reaches the next client before ``release`` returns. These tests pin
that down, and what keeps it safe: a wait decided twice is an error (a lease handed to a
decided wait would be lost), a callback that fails does not break the releasing client,
and the pool's bookkeeping is complete when the callback runs. In-memory
ServerConnection objects; no sockets.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from proxy.backend.server import ServerConnection
from proxy.config import DatabaseConfig
from proxy.pool.lease import Lease
from proxy.pool.pool import ServerPool
from proxy.pool.waits import Wait


def one_server_leased() -> tuple[ServerPool, ServerConnection, Lease]:
    """A pool of one server connection, leased by a client of t1."""
    db = DatabaseConfig(name="app", pool_size=1, query_wait_timeout=0)
    pool = ServerPool(db, password=None)
    server = ServerConnection(db)
    pool._offer(server)
    lease = pool.try_acquire("t1")
    assert lease is not None
    server.owner = "t1"  # what apply_context records (no socket here)
    return pool, server, lease


def test_a_released_server_reaches_the_waiting_client_before_release_returns() -> None:
    async def scenario() -> None:
        pool, server, held = one_server_leased()
        seen: list[tuple[Wait, bool, int]] = []

        def leased(wait: Wait) -> None:
            # The pool's bookkeeping is done when the client hears of it.
            seen.append((wait, wait in pool.waiters, pool.stats.waits))

        wait = pool.wait_for_server("t1", leased)
        assert not wait.done() and list(pool.waiters) == [wait]
        held.release()
        assert seen == [(wait, False, 1)]  # no event-loop pass in between
        assert wait.done() and not wait.cancelled() and wait.exception() is None
        got = wait.result()
        assert got.server is server and server.lessee == "t1"
        assert not pool._sel.waiting
        got.release()
        await pool.close()

    asyncio.run(scenario())


def test_a_wait_is_decided_once() -> None:
    async def scenario() -> None:
        pool, _, held = one_server_leased()
        calls: list[Wait] = []
        wait = pool.wait_for_server("t2", calls.append)
        assert wait.cancel() and wait.cancelled() and calls == [wait]
        assert not pool.waiters and not pool._sel.waiting
        assert not wait.cancel()  # decided already: nothing happens
        with pytest.raises(RuntimeError, match="decided twice"):
            wait.set_exception(RuntimeError("late"))
        with pytest.raises(RuntimeError, match="not served"):
            wait.result()
        assert calls == [wait] and pool.stats.waits == 1
        held.release()  # nobody waits: the server is parked
        assert pool.idle_count == 1
        await pool.close()

    asyncio.run(scenario())


def test_a_failing_callback_does_not_break_the_release(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    """As the event loop does with a Future's callback, the error is logged; the client
    that released (whose server callback this runs in) carries on."""
    async def scenario() -> None:
        pool, server, held = one_server_leased()

        def broken(wait: Wait) -> None:
            raise ValueError("a bug in the waiting client")

        wait = pool.wait_for_server("t1", broken)
        with caplog.at_level(logging.ERROR, logger="pgtenant.pool"):
            held.release()
        assert "wait callback failed" in caplog.text
        assert wait.result().server is server  # leased: the lease is the client's
        wait.result().release()
        assert pool.idle_count == 1
        await pool.close()

    asyncio.run(scenario())


def test_failing_every_wait_runs_each_callback_once_and_empties_the_queue() -> None:
    async def scenario() -> None:
        pool, _, held = one_server_leased()
        calls: list[Wait] = []
        waits = [pool.wait_for_server(f"t{i}", calls.append) for i in range(3)]
        pool.waits.fail(RuntimeError("upstream refused"))
        assert calls == waits and not pool.waiters and not pool._sel.waiting
        assert all(isinstance(w.exception(), RuntimeError) for w in waits)
        held.release()
        await pool.close()

    asyncio.run(scenario())


def test_the_oldest_wait_is_the_first_queued_or_the_longest_held_by_pause() -> None:
    async def scenario() -> None:
        pool, _, held = one_server_leased()
        now = time.monotonic()
        assert pool.oldest_wait(now) == 0.0
        first = pool.wait_for_server("t1", lambda wait: None)
        second = pool.wait_for_server("t1", lambda wait: None)
        assert pool.oldest_wait(now + 5.0) == pytest.approx(now + 5.0 - first.started)
        held.release()  # serves the first: the second is now the oldest
        assert first.done() and not second.done()
        assert pool.oldest_wait(now + 5.0) == pytest.approx(now + 5.0 - second.started)
        first.result().release()  # serves the second
        assert pool.oldest_wait(now + 5.0) == 0.0
        second.result().release()
        pool.pause()
        resumed = asyncio.ensure_future(pool.waits.wait_resumed("t1"))
        await asyncio.sleep(0)
        assert pool.paused_waiting == 1
        assert 5.0 <= pool.oldest_wait(time.monotonic() + 5.0) < 6.0
        pool.resume()
        await resumed
        assert pool.paused_waiting == 0 and pool.oldest_wait(time.monotonic()) == 0.0
        assert pool.stats.waits == 3
        assert pool.stats.wait_seconds_total == pytest.approx(
            pool.traffic.wait_seconds.sum)
        await pool.close()

    asyncio.run(scenario())
