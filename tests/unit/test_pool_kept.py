"""Kept servers are indexed lazily: keeping and resuming one touches no index.

A transaction-mode client keeps its server between transactions while nobody else needs
one (``PoolServers.keep``) and resumes it at its next transaction: once per transaction
each. The index by owner that waiters and other tenants' clients look in is brought up
to date only when something reads ``kept`` or ``active`` (or leases); these tests pin
down that readers always see the true state. In-memory ServerConnection objects; no
sockets.
"""

from __future__ import annotations

import asyncio

from proxy.backend.server import ServerConnection, ServerState
from proxy.config import DatabaseConfig
from proxy.pool.lease import Lease
from proxy.pool.pool import ServerPool
from proxy.pool.waits import Wait


def leased_pool(n: int) -> tuple[ServerPool, list[Lease]]:
    """A pool of ``n`` servers, each leased by a client of t1."""
    db = DatabaseConfig(name="app", pool_size=n, query_wait_timeout=0)
    pool = ServerPool(db, password=None)
    for _ in range(n):
        pool._offer(ServerConnection(db))
    leases = []
    for _ in range(n):
        lease = pool.try_acquire("t1")
        assert lease is not None
        lease.server.owner = "t1"  # what apply_context records
        leases.append(lease)
    return pool, leases


def test_keep_and_resume_touch_no_index_and_readers_see_the_truth() -> None:
    pool, [lease] = leased_pool(1)
    server = lease.server
    for _ in range(3):
        assert lease.keep() and server.state is ServerState.KEPT
        assert not pool._kept and pool._fresh_kept == [server]  # not indexed yet
        assert pool.resume_kept(server, server.last_used)
        assert server.state is ServerState.ACTIVE
    assert pool.stats.kept_reuses == 3
    assert lease.keep()
    # A reader settles: the server is kept, not active, counted once.
    assert list(pool.kept) == [server] and not pool.active
    assert pool.size == 1 and pool.idle_count == 1 and pool.in_use == 0
    assert not pool._fresh_kept and not server.fresh_kept
    # Resumed from the index this time.
    assert pool.resume_kept(server, server.last_used)
    assert pool.active == {server} and not pool.kept


def test_settled_kept_servers_are_oldest_first_and_closed_ones_are_left_out() -> None:
    pool, leases = leased_pool(3)
    first, second, third = (lease.server for lease in leases)
    first.last_used, second.last_used, third.last_used = 3.0, 1.0, 2.0
    for lease in leases:
        assert lease.keep()
    pool._close(third)  # died while kept, before anything read the index
    assert list(pool.kept) == [second, first]
    assert third not in pool.active and pool.size == 2


def test_a_waiter_of_the_tenant_gets_a_kept_server_not_yet_indexed_at_once() -> None:
    async def scenario() -> None:
        pool, leases = leased_pool(2)
        for lease in leases:
            assert lease.keep()
        got: list[Wait] = []
        wait = pool.wait_for_server("t1", got.append)
        assert got == [wait] and wait.result().server is leases[0].server
        assert list(pool.kept) == [leases[1].server]
        assert pool.active == {leases[0].server}
        await pool.close()

    asyncio.run(scenario())


def test_a_kept_server_taken_back_before_settling_is_offered_once() -> None:
    pool, [lease] = leased_pool(1)
    server = lease.server
    assert lease.keep()
    lease.release()  # its client left while it was kept
    assert server.state is ServerState.IDLE and list(pool.idle) == [server]
    assert not pool.kept and not pool.active and pool.size == 1
    again = pool.try_acquire("t1")
    assert again is not None and again.server is server
    assert pool.active == {server} and not pool.idle
