"""Clients waiting for a server connection: the pool's wait queue and its rules.

``ServerPool`` owns one :class:`Waits`. A client that cannot lease at once queues here
(``ServerPool.wait_for_server``, which ``ServerPool.acquire`` awaits) and is served in
one of these ways, each decided here or asked of the pool:

- a server comes back (``PoolServers._offer``, :mod:`proxy.pool.servers`):
  :meth:`Waits.take_for` names the waiter that gets it (FIFO within
  :meth:`Selection.waiter_for`'s tenant rules; an oldest waiter past _FAIR_WAIT first),
  or none: the server is parked idle for its tenant;
- servers sit idle or kept for other tenants' clients: after _PATIENCE the waiters take
  what the selection lets go (:meth:`Waits._serve_parked`, again every _FAIR_WAIT);
- a kept server of its own tenant, at once (``PoolServers._reclaim_for``);
- its query_wait_timeout passes: :class:`PoolTimeoutError`; its reserve_pool_timeout
  passes: the pool opens a connection beyond pool_size. One timer serves every wait;
- the pool fails (:meth:`Waits.fail`), or the client cancels its wait.

A wait is decided once (:class:`Wait`: served, failed or cancelled, and out of the
queue then); only a pending one is handed a server. Clients
held by PAUSE wait here too, before they queue (:meth:`Waits.wait_resumed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol

from proxy.backend.server import ServerConnection, ServerError
from proxy.config import DatabaseConfig
from proxy.pool.counters import PoolStats
from proxy.pool.lease import Lease
from proxy.pool.selection import AFFINITY_LOOKAHEAD, Selection, Waiter
from proxy.stats import ProxyStats, TrafficStats

_monotonic: Final = time.monotonic  # (a C static compiled: see proxy.frontend.relay)

log = logging.getLogger("pgtenant.pool")

# How long a client waits for a connection of its own tenant while others sit idle.
_PATIENCE: Final = 0.002
# Past this wait, the oldest waiter is served before any tenant-affine choice.
_FAIR_WAIT: Final = 0.010
# The wait timer's callback may run this much before the deadline it was set for (the
# event loop's timers have millisecond resolution): a wait due within it is due.
_TIMER_SLACK: Final = 0.001


class PoolTimeoutError(Exception):
    """No server connection became available within query_wait_timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.sqlstate = "57014"


class Supplier(Protocol):
    """What the wait queue needs of the pool its clients wait for (``ServerPool``)."""

    @property
    def db(self) -> DatabaseConfig: ...
    @property
    def closed(self) -> bool: ...
    @property
    def paused(self) -> bool: ...
    @property
    def size(self) -> int: ...
    @property
    def connecting(self) -> int: ...
    def has_parked(self) -> bool: ...
    def lend_parked(self, tenant: str | None) -> Lease | None: ...
    def open_server(self) -> None: ...


# A wait's states (Wait.state).
PENDING: Final = 0
SERVED: Final = 1
FAILED: Final = 2
CANCELLED: Final = 3


class Wait(Waiter):
    """One client's wait for a server connection (see ``ServerPool.wait_for_server``):
    pending until it is decided once, served (a lease), failed (an error) or cancelled.

    Not an asyncio Future, though it answers the same questions (done, cancelled,
    exception, result): deciding it runs its callback at once, in the decider's stack,
    with no event-loop pass. So a server a client releases goes to the next client inside
    the releasing callback, and its queued messages go out in the same pass; a Future
    cost a future, a done callback, a loop pass and a getpid() system call per wait.
    What the callback may do there is bounded: the pool's bookkeeping is complete before
    a wait is decided, and a client that goes away cancels its wait first
    (``ClientLeasing._stop_waiting``), so no chain of closed clients releases in turn.
    """

    __slots__ = ("_waits", "callback", "deadline", "error", "lease", "reserve_at", "started",
                 "state", "taken_at")

    def __init__(self, waits: Waits, tenant: str | None, since: float, started: float,
                 deadline: float, reserve_at: float,
                 callback: Callable[[Wait], None]) -> None:
        super().__init__(tenant, since)  # (since: on the fairness clock, ``Waits.clock``)
        self._waits = waits
        self.started = started        # time.monotonic(), as the deadlines
        self.deadline = deadline      # query_wait_timeout's (inf: none)
        self.reserve_at = reserve_at  # reserve_pool_timeout's (inf: none, or used)
        self.callback = callback
        self.state = PENDING
        self.lease: Lease | None = None
        self.error: Exception | None = None
        # time.monotonic() when take_for chose it (0.0: not chosen so): its wait ends then.
        self.taken_at = 0.0

    def done(self) -> bool:
        return self.state != PENDING

    def cancelled(self) -> bool:
        return self.state == CANCELLED

    def exception(self) -> Exception | None:
        """The error that failed it (None: served, cancelled or pending)."""
        return self.error

    def result(self) -> Lease:
        """The lease of a served wait (an error for any other)."""
        lease = self.lease
        if lease is None:
            raise RuntimeError(f"the wait is not served (state {self.state})")
        return lease

    def set_result(self, lease: Lease) -> None:
        """Serve it with ``lease`` (the pool took it out of the queue)."""
        self._decide(SERVED)
        self.lease = lease
        self._waits._done(self)

    def set_exception(self, error: Exception) -> None:
        self._decide(FAILED)
        self.error = error
        self._waits._done(self)

    def cancel(self) -> bool:
        """Leave the queue; False if it was decided already."""
        if self.state != PENDING:
            return False
        self.state = CANCELLED
        self._waits._done(self)
        return True

    def _decide(self, state: int) -> None:
        if self.state != PENDING:
            # A lease handed to a decided wait would be lost: never let it happen quietly.
            raise RuntimeError(f"a wait was decided twice (state {self.state} -> {state})")
        self.state = state


class Waits:
    """The clients waiting for one pool's server connections, in arrival order."""

    def __init__(self, pool: Supplier, selection: Selection[ServerConnection],
                 stats: PoolStats, proxy_stats: ProxyStats, traffic: TrafficStats) -> None:
        self._pool = pool
        self._sel = selection  # told of each wait; asked which waiter a server goes to
        self._stats = stats
        self._proxy_stats = proxy_stats
        self._traffic = traffic
        self.queue: deque[Wait] = deque()  # pending waits only (``ServerPool.waiters``)
        # One timer for every wait's query_wait_timeout and reserve_pool_timeout, set for
        # the earliest (or earlier): most waits end long before, and cost no timer.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf  # time.monotonic() it is set for
        self._parked_timer: asyncio.TimerHandle | None = None  # see be_patient
        self.clock: Callable[[], float] = _monotonic  # the fairness rule's (tests set it)
        self._resumed: asyncio.Event | None = None  # while the pool is paused
        self._paused_since: list[float] = []  # when each client in wait_resumed began

    @property
    def paused_waiting(self) -> int:
        """Clients in :meth:`wait_resumed`."""
        return len(self._paused_since)

    def oldest_wait(self, now: float) -> float:
        """Seconds the longest current waiter has waited (0.0 when nobody waits): the
        queue is in arrival order, and holds pending waits only."""
        oldest = self.queue[0].started if self.queue else now
        for started in self._paused_since:
            oldest = min(oldest, started)
        return max(0.0, now - oldest)

    # ---- a wait begins and ends -------------------------------------------------------

    def add(self, tenant: str | None, callback: Callable[[Wait], None],
            db: DatabaseConfig) -> Wait:
        """Queue a client of ``tenant`` (``db``: the pool's settings now); ``callback``
        runs once its wait is decided. The pool then looks for a server for it."""
        started = _monotonic()
        clock = self.clock
        timeout = db.query_wait_timeout
        deadline = started + timeout if timeout else math.inf
        reserve_at = started + db.reserve_pool_timeout if db.reserve_pool_size else math.inf
        wait = Wait(self, tenant, started if clock is _monotonic else clock(), started,
                    deadline, reserve_at, callback)
        self.queue.append(wait)
        wait.use = self._sel.wait_began(tenant)
        due = min(deadline, reserve_at)
        if due < self._timer_at:  # (else the timer runs before this wait is due)
            self._set_timer(due)
        return wait

    def _done(self, wait: Wait) -> None:
        """``wait`` was just decided (:class:`Wait` calls it): count it, run its callback."""
        if wait.state != SERVED:
            with contextlib.suppress(ValueError):  # still queued unless a failure popped it
                self.queue.remove(wait)
        tenant = wait.tenant
        self._sel.wait_ended(wait.use)
        wait.use = None
        waited = (wait.taken_at or _monotonic()) - wait.started
        stats = self._stats
        stats.waits += 1
        stats.wait_seconds_total += waited
        self._proxy_stats.wait_ended(self._traffic, tenant, waited)
        try:
            wait.callback(wait)
        except Exception:  # (as the event loop would for a Future's callback)
            log.exception("a client's wait callback failed")

    def fail(self, exc: Exception, limit: int | None = None) -> None:
        """Fail the longest waiters (``limit``; default: all) with ``exc``."""
        failed = 0
        queue = self.queue
        while queue and (limit is None or failed < limit):
            wait = queue.popleft()
            if not wait.done():
                wait.set_exception(exc)
                failed += 1

    def close(self, exc: Exception) -> None:
        """The pool shuts down: no timer runs again, every waiter fails with ``exc``."""
        if self._parked_timer is not None:
            self._parked_timer.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.fail(exc)

    # ---- which waiter a server goes to -------------------------------------------------

    def take_for(self, owner: object) -> Wait | None:
        """A server last used by ``owner`` came back (clients wait): the wait that gets
        it, out of the queue; the caller leases the server to its tenant and serves the
        wait with it. None: parked for ``owner``'s clients."""
        if not self.queue:
            return None
        clock = self.clock
        real = clock is _monotonic
        now = _monotonic() if real else clock()  # (a direct call when so)
        wait = self._sel.waiter_for(owner, self.queue, now - _FAIR_WAIT)
        if wait is None:
            return None
        assert isinstance(wait, Wait)  # (one of the queue's)
        if real:
            wait.taken_at = now  # (_done's clock read spared: it is decided right after)
        queue = self.queue
        if queue[0] is wait:  # (most often: popleft, not a search and two rotations)
            queue.popleft()
        else:
            queue.remove(wait)
        return wait

    def _eligible(self) -> list[Wait]:
        """The first AFFINITY_LOOKAHEAD waits of tenants below max_tenant_server_conns
        (a capped tenant's many waiters must not hide the others')."""
        waits: list[Wait] = []
        for wait in self.queue:
            if not self._sel.capped(wait.tenant):
                waits.append(wait)
                if len(waits) == AFFINITY_LOOKAHEAD:
                    break
        return waits

    def be_patient(self) -> None:
        """Clients wait while servers sit idle or kept for other tenants' clients: in
        _PATIENCE, :meth:`_serve_parked` gives them what the selection lets go."""
        if self._parked_timer is None:
            self._parked_timer = asyncio.get_running_loop().call_later(
                _PATIENCE, self._serve_parked)

    def _serve_parked(self) -> None:
        """Clients waited _PATIENCE while servers sat idle or kept for other tenants'
        clients: they take those :meth:`Selection.take` lets go, oldest waiter first;
        again every _FAIR_WAIT while both remain (a server parked for its tenant's
        clients is let go once they left it QUIET)."""
        self._parked_timer = None
        pool = self._pool
        if pool.paused:
            return
        for wait in self._eligible():
            if not pool.has_parked():
                return
            if wait.done():  # (decided by a callback of this loop)
                continue
            lease = pool.lend_parked(wait.tenant)
            if lease is not None:
                self.queue.remove(wait)
                wait.set_result(lease)
        if self.queue and pool.has_parked():
            self._parked_timer = asyncio.get_running_loop().call_later(
                _FAIR_WAIT, self._serve_parked)

    # ---- the wait timer: query_wait_timeout, reserve_pool_timeout ----------------------

    def _set_timer(self, at: float) -> None:
        """Run :meth:`_due` at time.monotonic() ``at``."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_later(
            max(0.0, at - _monotonic()), self._due)

    def _due(self) -> None:
        """The wait timer: waits past query_wait_timeout fail, those past
        reserve_pool_timeout may open a reserve connection (oldest first); then the
        timer is set for the next one due."""
        self._timer = None
        self._timer_at = math.inf
        now = _monotonic() + _TIMER_SLACK
        due = math.inf
        for wait in list(self.queue):
            if wait.done():  # (decided by a callback of this loop)
                continue
            if wait.deadline <= now:
                self._timed_out(wait)
                continue
            if wait.reserve_at <= now:
                wait.reserve_at = math.inf
                self._use_reserve(wait)
            due = min(due, wait.deadline, wait.reserve_at)
        if due < math.inf and not self._pool.closed:
            self._set_timer(due)

    def _timed_out(self, wait: Wait) -> None:
        if not wait.done():
            self._stats.acquire_timeouts += 1
            db = self._pool.db
            wait.set_exception(PoolTimeoutError(
                f"no server connection available for database \"{db.name}\" within "
                f"query_wait_timeout ({db.query_wait_timeout:g}s)"))

    def _use_reserve(self, wait: Wait) -> None:
        """A client waited reserve_pool_timeout: open a connection beyond pool_size (up to
        reserve_pool_size more; maintenance closes it again once it is idle)."""
        pool = self._pool
        db = pool.db
        if (wait.done() or pool.closed or pool.paused or pool.connecting >= len(self.queue)
                or pool.size >= db.pool_size + db.reserve_pool_size):
            return
        log.info("database %s: a client waited %gs; opening a reserve connection",
                 db.name, db.reserve_pool_timeout)
        self._stats.reserve_opened += 1
        pool.open_server()

    # ---- PAUSE: clients wait for RESUME before they queue ------------------------------

    def pause(self) -> None:
        """The pool was paused: :meth:`wait_resumed` waits from now on."""
        self._resumed = asyncio.Event()

    def resume(self) -> None:
        """The pool was resumed: release the clients in :meth:`wait_resumed`."""
        if self._resumed is not None:
            self._resumed.set()
        self._resumed = None

    async def wait_resumed(self, tenant: str | None) -> None:
        """Wait (a client of ``tenant``) until the pool is resumed or closed, up to
        query_wait_timeout: counted as a wait, in ``paused_waiting`` meanwhile."""
        pool = self._pool
        started = _monotonic()
        self._paused_since.append(started)
        try:
            while pool.paused and self._resumed is not None and not pool.closed:
                async with asyncio.timeout(pool.db.query_wait_timeout or None):
                    await self._resumed.wait()
        except TimeoutError:
            self._stats.acquire_timeouts += 1
            raise PoolTimeoutError(
                f"database \"{pool.db.name}\" is paused and was not resumed within "
                f"query_wait_timeout ({pool.db.query_wait_timeout:g}s)") from None
        finally:
            self._paused_since.remove(started)
            waited = _monotonic() - started
            self._stats.waits += 1
            self._stats.wait_seconds_total += waited
            self._proxy_stats.wait_ended(self._traffic, tenant, waited)
        if pool.closed:
            raise ServerError("the pool is shutting down", "57P01")
