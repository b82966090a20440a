"""Which waiting client a released server connection goes to, on a fake clock.

Tenant affinity (a waiter whose tenant the connection already carries goes first) holds
only while the oldest waiter has waited less than _FAIR_WAIT; past it the oldest waiter
is served. The pool's fairness clock is swapped for one the test moves, so no verdict
depends on how fast this machine happens to be. The connections are in-memory
ServerConnection objects: the pool is full from the start, so it never opens a real one.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter

import pytest

from proxy.backend.server import ServerConnection, ServerError
from proxy.config import DatabaseConfig
from proxy.pool.lease import Lease
from proxy.pool.pool import PoolTimeoutError, ServerPool
from proxy.pool.waits import _FAIR_WAIT


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def one_connection_pool(clock: FakeClock) -> tuple[ServerPool, ServerConnection]:
    db = DatabaseConfig(name="app", pool_size=1, query_wait_timeout=0)
    pool = ServerPool(db, password=None)
    pool.waits.clock = clock
    server = ServerConnection(db)
    pool._offer(server)  # idle: the pool is at pool_size
    return pool, server


async def lease(pool: ServerPool, tenant: str) -> Lease:
    """Acquire for ``tenant`` and set the connection for it, as a client's first query does."""
    held = await pool.acquire(tenant)
    held.server.owner = tenant  # what apply_context records (no socket here)
    return held


async def two_tenants() -> tuple[ServerPool, Lease, Lease]:
    """A pool of two servers, one leased by a client of t1, one by a client of t2."""
    db = DatabaseConfig(name="app", pool_size=2, query_wait_timeout=0)
    pool = ServerPool(db, password=None)
    for _ in range(2):
        pool._offer(ServerConnection(db))
    return pool, await lease(pool, "t1"), await lease(pool, "t2")


async def queued(pool: ServerPool, tenants: list[str]) -> list[asyncio.Task[Lease]]:
    """Clients of ``tenants`` waiting in this order."""
    tasks = []
    for tenant in tenants:
        tasks.append(asyncio.ensure_future(lease(pool, tenant)))
        await asyncio.sleep(0)  # the task runs up to its wait
    assert len(pool.waiters) == len(tenants)
    return tasks


def served_after(waited: float) -> str | None:
    """The tenant a t1 connection goes to when t2, t3, t1 have queued for ``waited``."""
    async def scenario() -> str | None:
        clock = FakeClock()
        pool, server = one_connection_pool(clock)
        held = await lease(pool, "t1")
        waiting = await queued(pool, ["t2", "t3", "t1"])
        clock.now += waited
        held.release()
        tenant = server.lessee
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        return tenant

    return asyncio.run(scenario())


def test_a_connection_goes_to_a_waiter_of_its_tenant_within_the_fair_wait() -> None:
    assert served_after(_FAIR_WAIT / 2) == "t1"


def test_past_the_fair_wait_the_oldest_waiter_is_served_whatever_its_tenant() -> None:
    assert served_after(_FAIR_WAIT * 1.5) == "t2"


def test_tenant_affinity_does_not_starve_other_tenants() -> None:
    # One server connection, four tenants with two clients each hammering it, every
    # transaction 1 ms on the fake clock: affinity alone would keep handing the connection
    # back and forth between the two clients of whichever tenant holds it.
    transactions = 800
    clock = FakeClock()
    served: list[str] = []

    async def client(pool: ServerPool, tenant: str) -> None:
        while len(served) < transactions:
            held = await lease(pool, tenant)
            served.append(tenant)
            clock.now += 0.001
            await asyncio.sleep(0)  # the others queue meanwhile
            held.release()
            await asyncio.sleep(0)

    async def main() -> None:
        pool, _ = one_connection_pool(clock)
        clients = [client(pool, tenant) for tenant in ["t1", "t2", "t3", "t4"] * 2]
        await asyncio.wait_for(asyncio.gather(*clients), timeout=60)

    asyncio.run(main())
    counts = Counter(served)
    assert sorted(counts) == ["t1", "t2", "t3", "t4"]
    total = sum(counts.values())
    assert min(counts.values()) > total / 4 / 3, counts  # none below a third of its share


def test_a_kept_server_goes_at_once_to_its_tenant_and_to_another_only_after_patience(
        ) -> None:
    # Taking another tenant's kept server at once made about two transactions in three of
    # a many-tenant workload change a backend's tenant (a scrub and a waited context set).
    async def scenario() -> None:
        pool, t1, _ = await two_tenants()
        assert pool.keep(t1.server)  # t1's client is between transactions
        # t2 holds its fair share (1 of 2): t1's kept server is not taken at once ...
        assert pool.try_acquire("t2") is None
        # ... while another client of t1 gets it at once (no scrub).
        again = pool.try_acquire("t1")
        assert again is not None and again.server is t1.server
        assert pool.keep(again.server)
        # A waiting client of t2 gets it once t1's clients leave it alone (QUIET: t1 holds
        # no more than its share), whatever the fairness clock says.
        waiter = asyncio.ensure_future(lease(pool, "t2"))
        await asyncio.sleep(0)
        assert not waiter.done() and pool.kept
        got = await asyncio.wait_for(waiter, 5)
        assert got.server is t1.server and not pool.kept

    asyncio.run(scenario())


def test_a_freed_server_waits_for_its_tenant_rather_than_changing_tenant() -> None:
    # t1 and t2 hold one server each (their share of two). When t1's client ends its
    # transaction while a second client of t2 waits, the server stays t1's: t1's next
    # transaction takes it without a scrub. Only once t1 leaves it alone does t2's waiter
    # get it (QUIET later: no tenant waits forever while a server sits idle).
    async def scenario() -> None:
        pool, t1, _ = await two_tenants()
        waiter = asyncio.ensure_future(lease(pool, "t2"))
        await asyncio.sleep(0)
        t1.release()
        assert not waiter.done() and list(pool.idle) == [t1.server]
        again = pool.try_acquire("t1")
        assert again is not None and again.server is t1.server
        again.release()
        got = await asyncio.wait_for(waiter, 5)
        assert got.server is t1.server and not pool.idle

    asyncio.run(scenario())


def test_waiters_of_a_tenant_at_its_cap_do_not_hide_another_tenants_waiter() -> None:
    # max_tenant_server_conns = 1: t1's forty queued clients cannot have t2's server, so
    # the client of t3 queued behind them gets it the moment t2's client releases it.
    async def scenario() -> None:
        db = DatabaseConfig(name="app", pool_size=2, query_wait_timeout=0,
                            max_tenant_server_conns=1)
        pool = ServerPool(db, password=None)
        for _ in range(2):
            pool._offer(ServerConnection(db))
        await lease(pool, "t1")
        t2 = await lease(pool, "t2")
        waiting = await queued(pool, ["t1"] * 40 + ["t3"])
        t2.release()
        assert t2.server.lessee == "t3"
        got = await asyncio.wait_for(waiting[-1], 5)
        assert got.server is t2.server
        for task in waiting[:-1]:
            task.cancel()
        await asyncio.gather(*waiting[:-1], return_exceptions=True)

    asyncio.run(scenario())


def test_a_server_offered_after_shutdown_is_closed_not_kept_idle() -> None:
    """Whatever path offers a server late (a connection that finished opening, a check or
    reset that completed as the pool closed), it must not park idle where nothing would
    ever close it."""
    async def main() -> None:
        db = DatabaseConfig(name="app", pool_size=1, query_wait_timeout=0)
        pool = ServerPool(db, password=None)
        await pool.close()
        late = ServerConnection(db)
        pool._offer(late)
        assert not pool.idle and late.state.value == "closed"

    asyncio.run(main())


# ---- query_wait_timeout: one pool timer for every wait ------------------------------


async def leased_out(query_wait_timeout: float) -> tuple[ServerPool, Lease]:
    """A pool of one server connection, leased by a client of t1."""
    db = DatabaseConfig(name="app", pool_size=1, query_wait_timeout=query_wait_timeout)
    pool = ServerPool(db, password=None)
    pool._offer(ServerConnection(db))
    return pool, await lease(pool, "t1")


def test_each_waiter_times_out_on_its_own_deadline_after_an_earlier_one_was_served() -> None:
    """The pool's one wait timer is set for the first wait's deadline; that wait is
    served before it, so the timer must move on to the next wait, which times out."""
    async def scenario() -> None:
        pool, held = await leased_out(0.3)
        first = asyncio.ensure_future(pool.acquire("t1"))
        await asyncio.sleep(0.1)
        second = asyncio.ensure_future(pool.acquire("t1"))
        await asyncio.sleep(0)
        held.release()  # to the first waiter (FIFO within the tenant)
        got = await asyncio.wait_for(first, 5)
        assert got.server is held.server
        with pytest.raises(PoolTimeoutError, match="query_wait_timeout"):
            await asyncio.wait_for(second, 5)
        assert pool.stats.acquire_timeouts == 1 and not pool.waiters
        got.release()
        await pool.close()

    asyncio.run(scenario())


def test_a_wait_with_a_shorter_timeout_than_the_timer_is_set_for_still_times_out() -> None:
    """A reload shortened query_wait_timeout: a new wait's deadline comes before the one
    the timer is set for (a wait of the old setting); it times out on its own."""
    async def scenario() -> None:
        pool, held = await leased_out(60)
        patient = asyncio.ensure_future(pool.acquire("t1"))
        await asyncio.sleep(0)
        pool.db = dataclasses.replace(pool.db, query_wait_timeout=0.1)
        hurried = asyncio.ensure_future(pool.acquire("t1"))
        with pytest.raises(PoolTimeoutError):
            await asyncio.wait_for(hurried, 5)
        assert not patient.done() and len(pool.waiters) == 1
        held.release()
        got = await asyncio.wait_for(patient, 5)
        got.release()
        await pool.close()

    asyncio.run(scenario())


def test_waits_cancelled_or_failed_by_shutdown_leave_no_wait_or_timer_behind() -> None:
    async def scenario() -> None:
        pool, _ = await leased_out(60)
        cancelled = asyncio.ensure_future(pool.acquire("t2"))
        failed = asyncio.ensure_future(pool.acquire("t3"))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        assert len(pool.waiters) == 1
        await pool.close()
        with pytest.raises(ServerError, match="shutting down"):
            await failed
        await asyncio.sleep(0)
        assert not pool.waiters and not pool._sel.waiting
        assert pool.waits._timer is None

    asyncio.run(scenario())


def test_the_share_follows_leases_and_parked_servers() -> None:
    """Selection.share keeps its count of tenants between calls: leases (held) and parked
    servers change it through the pool's own paths (waits: test_pool_selection)."""
    def check(pool: ServerPool) -> None:
        sel = pool._sel
        names = {name for name in set(sel.held) | set(sel.idle.by_owner)
                 if isinstance(name, str)}
        for owner in (None, "t1", "t9"):
            tenants = len(names | ({owner} if owner else set()))
            assert sel.share(owner=owner) == max(1, 4 // max(1, tenants)), (owner, names)

    async def scenario() -> None:
        # pool_size 4 (shares 4, 2, 1 for 1, 2, 3 tenants), 3 servers: it never grows.
        db = DatabaseConfig(name="app", pool_size=4, query_wait_timeout=0)
        pool = ServerPool(db, password=None)
        for _ in range(3):
            pool._offer(ServerConnection(db))
        check(pool)
        leases = []
        for tenant in ("t1", "t2", "t3"):  # each takes a server no client used yet
            leases.append(await lease(pool, tenant))
            check(pool)
        for held in leases:
            held.release()  # parked, owned by its tenant
            check(pool)
        gone = await lease(pool, "t5")
        check(pool)
        gone.server.close()  # it died while leased: t5 leaves held, nothing is parked
        gone.release()
        check(pool)
        again = await lease(pool, "t2")
        check(pool)
        again.release()
        check(pool)
        await pool.close()

    asyncio.run(scenario())
