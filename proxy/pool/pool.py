"""Server connection pool for one configured database.

Invariant (PgBouncer's ``objects.c``): each server connection is in exactly one of
``connecting`` (a count), ``idle`` (by owner tenant, its warmest first), ``kept`` (idle,
still linked to the transaction-mode client it last served) or ``active`` (leased).
Which server a client gets, and which waiter a freed server goes to, is decided in
:mod:`proxy.pool.selection` (tenants keep their servers: a change of tenant costs a
scrub); waiting clients are served FIFO within those rules; a waiter that already timed
out is never handed a connection.

A client gets a server as a :class:`~proxy.pool.lease.Lease` (made in
:meth:`ServerPool._lease_to`); the lease is the only way back: ``Lease.release`` calls
:meth:`ServerPool.take_back`, ``Lease.keep`` and ``Lease.begin`` call :meth:`ServerPool.keep`
and :meth:`ServerPool.resume_kept`.

Kept servers: a transaction-mode client whose transaction ended keeps its (clean) server
while nobody else needs one, so its next transaction costs no lease at all. They are idle
in every other respect: a client of the same tenant that starts waiting takes it at once,
another tenant's client when the selection lets it convert one, PAUSE and maintenance
take them back, and one that dies is forgotten without its client noticing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from proxy.backend.server import ServerConnection, ServerError, ServerState, Skip
from proxy.config import DatabaseConfig
from proxy.pool.lease import Lease
from proxy.pool.selection import OwnerIndex, Selection
from proxy.stats import ProxyStats
from proxy.tasks import TaskSet
from proxy.wire import messages
from proxy.wire.tags import BackendTag

log = logging.getLogger("pgtenant.pool")


class PoolTimeoutError(Exception):
    """No server connection became available within query_wait_timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.sqlstate = "57014"


class UpstreamRefusedError(ServerError):
    """The upstream role is not safe for tenancy (superuser or BYPASSRLS)."""


# How far down the wait queue a released connection looks for a waiter of its tenant.
_AFFINITY_LOOKAHEAD: Final = 32
# How long a client waits for a connection of its own tenant while others sit idle.
_PATIENCE: Final = 0.002
# Past this wait, the oldest waiter is served before any tenant-affine choice.
_FAIR_WAIT: Final = 0.010
# The wait timer's callback may run this much before the deadline it was set for (the
# event loop's timers have millisecond resolution): a wait due within it is due.
_TIMER_SLACK: Final = 0.001


class _Wait:
    """One client's wait for a server connection (see ``ServerPool.wait_for_server``)."""

    __slots__ = ("callback", "deadline", "reserve_at", "since", "started", "tenant")

    def __init__(self, tenant: str | None, since: float, started: float, deadline: float,
                 reserve_at: float,
                 callback: Callable[[asyncio.Future[Lease]], None]) -> None:
        self.tenant = tenant
        self.since = since            # on the pool's fairness clock (``ServerPool._clock``)
        self.started = started        # time.monotonic(), as the deadlines
        self.deadline = deadline      # query_wait_timeout's (inf: none)
        self.reserve_at = reserve_at  # reserve_pool_timeout's (inf: none, or used)
        self.callback = callback


@dataclass(slots=True)
class PoolStats:
    leases: int = 0
    leases_with_context_set: int = 0
    acquire_timeouts: int = 0
    server_errors: int = 0
    servers_opened: int = 0
    servers_closed: int = 0
    wait_seconds_total: float = 0.0
    waits: int = 0
    reserve_opened: int = 0   # connections opened beyond pool_size (reserve_pool_size)
    servers_failed_check: int = 0  # idle connections found dead by server_check_delay
    kept_reuses: int = 0      # transactions served by the server their client kept
    kept_reclaimed: int = 0   # kept servers taken back for another client (or PAUSE)


class ServerPool:
    """Acquire/release of server connections for one database entry."""

    def __init__(self, db: DatabaseConfig, password: str | None,
                 proxy_stats: ProxyStats | None = None) -> None:
        self.db = db
        self.password = password
        self.proxy_stats = proxy_stats or ProxyStats([db.name])
        self.traffic = self.proxy_stats.database(db.name)
        # Idle and kept servers by owner, held and waiting counts by tenant: the choices.
        self._sel: Selection[ServerConnection] = Selection(
            db.pool_size, db.max_tenant_server_conns)
        self.idle: OwnerIndex[ServerConnection] = self._sel.idle  # oldest first
        self.active: set[ServerConnection] = set()
        # Idle but still linked to their last client (oldest first): see the module doc.
        self.kept: OwnerIndex[ServerConnection] = self._sel.kept
        self._held = self._sel.held  # tenant → servers its clients hold (kept ones too)
        self.connecting = 0
        self.waiters: deque[asyncio.Future[Lease]] = deque()  # in arrival order
        self._waits: dict[asyncio.Future[Lease], _Wait] = {}  # until each one's done
        # One timer for every wait's query_wait_timeout and reserve_pool_timeout, set for
        # the earliest (or earlier): most waits end long before, and cost no timer.
        self._wait_timer: asyncio.TimerHandle | None = None
        self._wait_timer_at = math.inf  # time.monotonic() it is set for
        self.stats = PoolStats()
        self.closed = False
        self._role_checked = False
        self._refused: UpstreamRefusedError | None = None
        self._tasks = TaskSet()
        self._clock: Callable[[], float] = time.monotonic  # the fairness rule's (tests set it)
        self._parked_timer: asyncio.TimerHandle | None = None  # see _offer

    @property
    def size(self) -> int:
        return len(self.idle) + len(self.kept) + len(self.active) + self.connecting

    @property
    def idle_count(self) -> int:
        """Idle server connections, kept ones included (what SHOW POOLS and metrics call
        idle: any client may have them)."""
        return len(self.idle) + len(self.kept)

    # ---- acquire ----------------------------------------------------------------------

    async def acquire(self, tenant: str | None) -> Lease:
        """Lease a server connection, preferring one already set for ``tenant``."""
        if self._refused is not None:
            raise self._refused
        if self.closed:
            raise ServerError("the pool is shutting down", "57P01")
        if self.paused:
            await self._wait_resumed(tenant)
        lease = self.try_acquire(tenant)
        if lease is not None:
            return lease
        done: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()

        def deliver(waiter: asyncio.Future[Lease]) -> None:
            if done.cancelled():  # the caller went away: give the connection back
                if not waiter.cancelled() and waiter.exception() is None:
                    waiter.result().release()
            elif waiter.cancelled():
                done.cancel()
            elif (exc := waiter.exception()) is not None:
                done.set_exception(exc)
            else:
                done.set_result(waiter.result())

        waiter = self.wait_for_server(tenant, deliver)
        try:
            return await done
        except asyncio.CancelledError:
            waiter.cancel()
            raise

    def wait_for_server(self, tenant: str | None,
                        callback: Callable[[asyncio.Future[Lease]], None]
                        ) -> asyncio.Future[Lease]:
        """Queue for a server connection; ``callback(waiter)`` runs once it is decided.

        The waiter holds the lease, or PoolTimeoutError after query_wait_timeout, or
        the error that failed the pool; cancel it to leave the queue. No task is created:
        this is the transaction-mode path when no idle connection fits.
        """
        waiter: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        db = self.db
        started = time.monotonic()
        clock = self._clock
        timeout = db.query_wait_timeout
        deadline = started + timeout if timeout else math.inf
        reserve_at = started + db.reserve_pool_timeout if db.reserve_pool_size else math.inf
        self._waits[waiter] = _Wait(tenant, started if clock is time.monotonic else clock(),
                                    started, deadline, reserve_at, callback)
        self._sel.wait_began(tenant)
        self.proxy_stats.wait_began(self.traffic, waiter)
        due = min(deadline, reserve_at)
        if due < self._wait_timer_at:  # (else the timer runs before this wait is due)
            self._set_wait_timer(due)
        kept = self.kept.owner_of  # (dicts tested: this runs for every wait)
        if self._parked_timer is None and (self.idle.owner_of or kept):
            self._be_patient()
        waiter.add_done_callback(self._wait_done)
        if kept and tenant in self.kept.by_owner and not self.paused:
            self._reclaim_for(waiter, tenant)
        if self.connecting < db.pool_size - len(self.active) - len(self.idle.owner_of) - len(
                kept):
            self._grow()
        return waiter

    def _set_wait_timer(self, at: float) -> None:
        """Run :meth:`_waits_due` at time.monotonic() ``at``."""
        if self._wait_timer is not None:
            self._wait_timer.cancel()
        self._wait_timer_at = at
        self._wait_timer = asyncio.get_running_loop().call_later(
            max(0.0, at - time.monotonic()), self._waits_due)

    def _waits_due(self) -> None:
        """The wait timer: waits past query_wait_timeout fail, those past
        reserve_pool_timeout may open a reserve connection (oldest first); then the
        timer is set for the next one due."""
        self._wait_timer = None
        self._wait_timer_at = math.inf
        now = time.monotonic() + _TIMER_SLACK
        waits = self._waits
        due = math.inf
        for waiter in list(self.waiters):
            wait = waits.get(waiter)
            if wait is None or waiter.done():
                continue
            if wait.deadline <= now:
                self._wait_timed_out(waiter)
                continue
            if wait.reserve_at <= now:
                wait.reserve_at = math.inf
                self._use_reserve(waiter)
            due = min(due, wait.deadline, wait.reserve_at)
        if due < math.inf and not self.closed:
            self._set_wait_timer(due)

    def _wait_timed_out(self, waiter: asyncio.Future[Lease]) -> None:
        if not waiter.done():
            self.stats.acquire_timeouts += 1
            waiter.set_exception(PoolTimeoutError(
                f"no server connection available for database \"{self.db.name}\" within "
                f"query_wait_timeout ({self.db.query_wait_timeout:g}s)"))

    def _use_reserve(self, waiter: asyncio.Future[Lease]) -> None:
        """A client waited reserve_pool_timeout: open a connection beyond pool_size (up to
        reserve_pool_size more; maintenance closes it again once it is idle)."""
        db = self.db
        if (waiter.done() or self.closed or self.paused or self.connecting >= len(self.waiters)
                or self.size >= db.pool_size + db.reserve_pool_size):
            return
        log.info("database %s: a client waited %gs; opening a reserve connection",
                 db.name, db.reserve_pool_timeout)
        self.stats.reserve_opened += 1
        self.connecting += 1
        self._tasks.spawn(self._open())

    def _wait_done(self, waiter: asyncio.Future[Lease]) -> None:
        wait = self._waits.pop(waiter)
        if waiter.cancelled() or waiter.exception() is not None:
            with contextlib.suppress(ValueError):  # still queued unless a failure popped it
                self.waiters.remove(waiter)
        tenant = wait.tenant
        self._sel.wait_ended(tenant)
        waited = time.monotonic() - wait.started
        stats = self.stats
        stats.waits += 1
        stats.wait_seconds_total += waited
        self.proxy_stats.wait_ended(self.traffic, waiter, tenant, waited)
        wait.callback(waiter)

    def try_acquire(self, tenant: str | None) -> Lease | None:
        """A server connection right now, or None: the client waits (see
        :meth:`Selection.take`: while others wait, only its own tenant's is likely)."""
        if self._refused is not None or self.closed or self.paused:
            return None
        return self._take(tenant, patient=True)

    def _take(self, tenant: str | None, *, patient: bool) -> Lease | None:
        """Lease the server :meth:`Selection.take` chooses for ``tenant``, or None (none
        fits, or the chosen idle one is due for its check: it is offered after it)."""
        db = self.db
        while True:
            now = time.monotonic()
            server = self._sel.take(tenant, patient=patient, now=now)
            if server is None:
                return None
            if server.state is ServerState.KEPT:  # (out of ``kept`` already)
                self._unlink_kept(server)
                return self._lease_to(server, tenant)
            if server.state is ServerState.CLOSED:
                continue
            if db.server_lifetime and now - server.created_at > db.server_lifetime:
                self._close(server)
                continue
            if now - server.last_used >= db.server_check_delay:
                self._check(server)
                return None  # the caller waits; the checked server is offered to waiters
            return self._lease_to(server, tenant)

    # ---- kept servers (transaction mode): linked to their last client while unneeded ---

    def keep(self, server: ServerConnection) -> bool:
        """The client ``server`` serves ended its transaction: keep the two linked (True)
        when nobody else needs a server; False: the client must release it. Called by
        ``Lease.keep`` only.

        Not kept: when clients wait (even of other tenants only: measured slower), the
        pool is paused or closing, the server must be reset (a client ran SET), checked
        before each lease (server_check_delay = 0), ends or has a cancel in flight.
        """
        if (self.waiters or self.paused or self.closed or server.session_dirty
                or server.ending or server.cancels or not self.db.server_check_delay):
            return False
        self.active.discard(server)
        server.state = ServerState.KEPT
        self.kept.add(server, server.owner, server.last_used)
        return True

    def resume_kept(self, server: ServerConnection, now: float) -> bool:
        """The client of a kept server starts a transaction at ``now``: True, and the
        server is active for it. False when an idle server would not be leased as it is
        (unused for server_check_delay: it is checked first; past server_lifetime): the
        client releases it and leases as usual. Called by ``Lease.begin`` only."""
        db = self.db
        if (now - server.last_used >= db.server_check_delay
                or (db.server_lifetime and now - server.created_at > db.server_lifetime)):
            return False
        self.kept.discard(server)
        server.state = ServerState.ACTIVE
        self.active.add(server)
        self.stats.kept_reuses += 1
        return True

    def _unlink_kept(self, server: ServerConnection) -> None:
        """Take a kept server (out of ``kept`` already) back from its client; the caller
        leases or offers it."""
        self._unlease(server)
        receiver, server.receiver = server.receiver, None
        if receiver is not None:
            receiver.server_reclaimed(server)
        self.stats.kept_reclaimed += 1

    def _reclaim_for(self, waiter: asyncio.Future[Lease], tenant: str | None) -> None:
        """A client starts waiting: it gets a kept server of its own tenant at once (no
        scrub). Another tenant's kept server goes to a waiter only after _PATIENCE
        (``_serve_parked``), as an idle one would: taking it at once made most
        transactions of a many-tenant workload change a backend's tenant.

        Only the new waiter can match: servers are kept only while nobody waits
        (:meth:`keep`), and each earlier waiter got its tenant's when it came."""
        server = self.kept.oldest_of(tenant)
        if server is not None:
            self.kept.discard(server)
            self.waiters.remove(waiter)
            self._unlink_kept(server)
            self._hand(server, waiter)

    def reclaim_kept(self, servers: list[ServerConnection] | None = None) -> None:
        """These kept servers (default: all) back to the pool (PAUSE, maintenance)."""
        for server in list(self.kept) if servers is None else servers:
            if self.kept.discard(server):
                self._unlink_kept(server)
                self._offer(server)

    # ---- server_check_delay: idle servers are checked before they are leased -----------

    def _check(self, server: ServerConnection) -> None:
        """Out of the idle list until an empty query proves the backend alive (PostgreSQL
        may have ended it while it sat idle); then offered like a released one. A dead one
        is closed and replaced, before any client byte was written to it."""
        server.state = ServerState.ACTIVE
        self.active.add(server)
        self._tasks.spawn(self._check_then_offer(server))

    async def _check_then_offer(self, server: ServerConnection) -> None:
        fut: asyncio.Future[dict[str, str] | None] = asyncio.get_running_loop().create_future()
        server.send_internal(messages.query(""), Skip(fut))
        try:
            async with asyncio.timeout(self.db.server_connect_timeout):
                error = await fut
        except (TimeoutError, ServerError) as exc:
            error = {"M": str(exc) or "no answer"}
        self.active.discard(server)
        if error is not None or not server.is_clean:
            self.stats.servers_failed_check += 1
            log.info("database %s: an idle server connection failed its check (%s); "
                     "replaced", self.db.name, error.get("M") if error else "not idle")
            self._close(server)
            return
        self._offer(server)

    def _lease_to(self, server: ServerConnection, tenant: str | None) -> Lease:
        """Hand ``server`` out to a client of ``tenant``: the one place a lease begins."""
        server.state = ServerState.ACTIVE
        self.active.add(server)
        server.lessee = tenant
        if tenant is not None:  # (inline: once per transaction)
            self._held[tenant] = self._held.get(tenant, 0) + 1
        return Lease(self, server)

    def _unlease(self, server: ServerConnection) -> None:
        tenant = server.lessee
        server.lessee = None
        if tenant is not None:
            left = self._held.get(tenant, 0) - 1
            if left > 0:
                self._held[tenant] = left
            else:
                self._held.pop(tenant, None)

    def _grow(self) -> None:
        """Open connections for waiters while the pool has room."""
        while (self.connecting < len(self.waiters) and self.size < self.db.pool_size
               and not self.closed and not self.paused):
            self.connecting += 1
            self._tasks.spawn(self._open())

    async def _open(self) -> None:
        server: ServerConnection | None = None
        try:
            server = await ServerConnection.connect(self.db, self.password)
            if not self._role_checked:
                await self._check_role(server)
        except BaseException as exc:
            if server is not None:
                server.close()  # cancelled by shutdown after it connected: no socket left
            if not isinstance(exc, ServerError):
                raise
            self.connecting -= 1
            self.stats.server_errors += 1
            log.warning("database %s: %s", self.db.name, exc)
            if isinstance(exc, UpstreamRefusedError):
                self._refused = exc
                self._fail_waiters(exc)
            elif self.waiters:
                # Tell the longest waiter now rather than letting it time out.
                self._fail_waiters(exc, limit=1)
            return
        self.connecting -= 1
        self.stats.servers_opened += 1
        server.on_closed = self._on_closed
        self._offer(server)

    async def _check_role(self, server: ServerConnection) -> None:
        """Refuse a superuser or BYPASSRLS upstream role: RLS would not apply to it."""
        rows = await server.query(
            "SELECT rolsuper::text || ' ' || rolbypassrls::text FROM pg_roles "
            "WHERE rolname = current_user")
        flags = ""
        for tag, body in rows:
            if tag == BackendTag.DATA_ROW:
                flags = body[6:].decode()
        privileged = flags != "false false"
        self._role_checked = True
        if privileged and not self.db.allow_privileged_upstream:
            server.close()
            raise UpstreamRefusedError(
                f"upstream role \"{self.db.user}\" is a superuser or has BYPASSRLS, so "
                "row-level security would not confine tenants; use an unprivileged role "
                "(or set allow_privileged_upstream = true)", "28000")
        if privileged:
            log.warning("database %s: upstream role %s is superuser or BYPASSRLS: RLS does NOT "
                        "apply (allow_privileged_upstream = true)", self.db.name, self.db.user)

    def _fail_waiters(self, exc: Exception, limit: int | None = None) -> None:
        failed = 0
        while self.waiters and (limit is None or failed < limit):
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(exc)
                failed += 1

    # ---- release ----------------------------------------------------------------------

    def _offer(self, server: ServerConnection) -> None:
        """Give a usable connection to the waiter :meth:`Selection.waiter_for` picks,
        else park it idle (for its tenant's clients: see ``_serve_parked``)."""
        server.receiver = None
        server.pause_reading(False)
        if server.ending or self.closed:  # PostgreSQL said FATAL; the pool is shutting down
            self._close(server)
            return
        if server.cancels:
            self._hold_while_cancelling(server)
            return
        waiters = self.waiters
        while waiters and waiters[0].done():
            waiters.popleft()
        if waiters and not self.paused:  # a paused pool keeps even early waiters waiting
            waiter = self._waiter_for(server)
            if waiter is not None:
                waiters.remove(waiter)
                self._hand(server, waiter)
                return
            self._be_patient()
        server.state = ServerState.IDLE
        server.last_used = time.monotonic()
        self.idle.add(server, server.owner, server.last_used)

    def _waiter_for(self, server: ServerConnection) -> asyncio.Future[Lease] | None:
        """The waiter that gets ``server`` now, or None (parked for its tenant)."""
        queued, tenants = self._eligible_waiters()
        if not queued:
            return None
        overdue = self._clock() - self._waits[queued[0]].since >= _FAIR_WAIT
        pick = self._sel.waiter_for(server.owner, tenants, overdue)
        return queued[pick] if pick >= 0 else None

    def _be_patient(self) -> None:
        """Clients wait while servers sit idle or kept for other tenants' clients: in
        _PATIENCE, :meth:`_serve_parked` gives them what the selection lets go."""
        if self._parked_timer is None:
            self._parked_timer = asyncio.get_running_loop().call_later(
                _PATIENCE, self._serve_parked)

    def _eligible_waiters(self) -> tuple[list[asyncio.Future[Lease]], list[str | None]]:
        """The first _AFFINITY_LOOKAHEAD waiters of tenants below max_tenant_server_conns
        (a capped tenant's many waiters must not hide the others'), and their tenants."""
        cap = self.db.max_tenant_server_conns
        held = self._held
        queued: list[asyncio.Future[Lease]] = []
        tenants: list[str | None] = []
        # _waits is in the order of the queue; besides the queued waiters, it has only
        # ones already done (their done callback pending).
        for waiter, wait in self._waits.items():
            if waiter.done():
                continue
            tenant = wait.tenant
            if cap and tenant is not None and held.get(tenant, 0) >= cap:
                continue
            queued.append(waiter)
            tenants.append(tenant)
            if len(queued) == _AFFINITY_LOOKAHEAD:
                break
        return queued, tenants

    def _serve_parked(self) -> None:
        """Clients waited _PATIENCE while servers sat idle or kept for other tenants'
        clients: they take those :meth:`Selection.take` lets go, oldest waiter first;
        again every _FAIR_WAIT while both remain (a server parked for its tenant's
        clients is let go once they left it QUIET)."""
        self._parked_timer = None
        if self.paused:
            return
        queued, tenants = self._eligible_waiters()
        for waiter, tenant in zip(queued, tenants, strict=True):
            if not (self.idle or self.kept):
                return
            lease = self._take(tenant, patient=False)
            if lease is not None:
                self.waiters.remove(waiter)
                waiter.set_result(lease)
        if self.waiters and (self.idle or self.kept):
            self._parked_timer = asyncio.get_running_loop().call_later(
                _FAIR_WAIT, self._serve_parked)

    def _hold_while_cancelling(self, server: ServerConnection) -> None:
        """A cancel for this backend is in flight: lease it to no one (the cancel would
        interrupt whatever runs when it lands) until PostgreSQL has closed the cancel
        connection; then offer it."""
        server.state = ServerState.ACTIVE
        self.active.add(server)
        server.after_cancel = self._cancel_done

    def _cancel_done(self, server: ServerConnection) -> None:
        self.active.discard(server)
        if server.state is ServerState.CLOSED:
            return  # _on_closed forgot it
        if self.closed or self._expired(server):
            self._close(server)
            return
        self._offer(server)

    def _hand(self, server: ServerConnection, waiter: asyncio.Future[Lease]) -> None:
        waiter.set_result(self._lease_to(server, self._waits[waiter].tenant))

    def take_back(self, server: ServerConnection, *, reset: bool = False) -> None:
        """The one place a leased server connection comes back (``Lease.release``
        calls it; nothing else does).

        Fail-closed: a connection with outstanding replies, an open transaction or a
        closed socket is closed, never reused. ``reset`` runs the server_reset_query first
        (session mode, when a client leaves).
        """
        self.active.discard(server)
        if server.state is ServerState.KEPT:  # kept for a client that is leaving
            self.kept.discard(server)
            server.state = ServerState.ACTIVE
        self._unlease(server)
        server.receiver = None
        lifetime = self.db.server_lifetime  # (_expired inline: once per transaction)
        if (not server.is_clean or self.closed
                or (lifetime and time.monotonic() - server.created_at > lifetime)):
            self._close(server)
            return
        # Session mode: the client left, reset its session. Transaction mode: a client
        # that ran SET (search_path, work_mem, ...) must not leave it to the next client.
        query = (self.db.server_reset_query if reset and self.db.server_reset_query
                 else "RESET ALL" if server.session_dirty else None)
        if query is not None:
            self.active.add(server)
            self._tasks.spawn(self._reset_then_offer(server, query))
            return
        self._offer(server)

    async def _reset_then_offer(self, server: ServerConnection, query: str) -> None:
        fut: asyncio.Future[dict[str, str] | None] = asyncio.get_running_loop().create_future()
        server.send_internal(messages.query(query), Skip(fut))
        try:
            async with asyncio.timeout(self.db.server_connect_timeout):
                error = await fut
        except (TimeoutError, ServerError):
            error = {"M": "reset did not complete"}
        self.active.discard(server)
        if error is not None or not server.is_clean:
            log.warning("database %s: server reset failed (%s); closing it",
                        self.db.name, error.get("M") if error else "not idle")
            self._close(server)
            return
        server.reset_done()
        self._offer(server)

    def _close(self, server: ServerConnection) -> None:
        self.active.discard(server)
        self.kept.discard(server)
        self._unlease(server)
        self.idle.discard(server)
        if server.state is not ServerState.CLOSED:
            self.stats.servers_closed += 1
        server.on_closed = None
        server.close()
        self._grow()

    def _on_closed(self, server: ServerConnection) -> None:
        """A connection died on its own (server restart, network): forget it."""
        self.active.discard(server)
        self.kept.discard(server)
        self._unlease(server)
        self.idle.discard(server)
        self.stats.servers_closed += 1
        self._grow()

    def _expired(self, server: ServerConnection) -> bool:
        lifetime = self.db.server_lifetime
        return bool(lifetime) and time.monotonic() - server.created_at > lifetime

    # ---- maintenance ------------------------------------------------------------------

    def maintain(self) -> None:
        """Close idle connections past server_idle_timeout/server_lifetime; keep min_pool_size."""
        now = time.monotonic()
        keep = self.db.min_pool_size
        idle_timeout = self.db.server_idle_timeout
        # A kept server unused as long as an idle one is checked or closed after is
        # treated as one (this runs every second: kept servers follow within a second).
        limit = min(self.db.server_check_delay, idle_timeout or math.inf)
        self.reclaim_kept([s for s in self.kept
                           if now - s.last_used >= limit or self._expired(s)])
        for server in list(self.idle):
            too_idle = bool(idle_timeout) and now - server.last_used > idle_timeout
            if self._expired(server) or (too_idle and self.size > keep):
                self._close(server)
        missing = 0 if self.paused else keep - self.size
        for _ in range(max(0, missing)):
            self.connecting += 1
            self._tasks.spawn(self._open())

    async def close(self) -> None:
        """Close every connection (shutdown)."""
        self.closed = True
        if self._parked_timer is not None:
            self._parked_timer.cancel()
        if self._wait_timer is not None:
            self._wait_timer.cancel()
            self._wait_timer = None
        self._fail_waiters(ServerError("the proxy is shutting down", "57P01"))
        servers = [*self.idle, *self.kept, *self.active]
        for server in servers:
            self._close(server)
        self._tasks.cancel_all()
        await self._tasks.wait(2)
        lost = [s.lost for s in servers if s.lost is not None]
        if lost:
            await asyncio.wait(lost, timeout=2)

    # ---- pause, resume, reload (admin console, SIGHUP) --------------------------------
    # PAUSE stops new leases: acquire() waits (up to query_wait_timeout), try_acquire()
    # answers None and queued waiters stay queued, while leases already made go on; no
    # connection is opened. The console's PAUSE waits until in_use is 0, then calls
    # disconnect_idle(). In session mode a lease lasts a whole client session.

    paused = False
    _resumed: asyncio.Event | None = None
    _paused_waiting = 0

    def pause(self) -> None:
        """Start no new lease until :meth:`resume`; running transactions finish."""
        if not self.paused:
            self.paused = True
            self._resumed = asyncio.Event()
            self.reclaim_kept()
            log.info("database %s: paused", self.db.name)

    def resume(self) -> None:
        """Let the clients held by :meth:`pause` lease again."""
        if self.paused:
            self.paused = False
            if self._resumed is not None:
                self._resumed.set()
            self._resumed = None
            log.info("database %s: resumed", self.db.name)
            # Clients queued before the pause: serve them from the idle list, then open.
            for server in list(self.idle):
                self.idle.discard(server)
                if self._expired(server) or server.state is ServerState.CLOSED:
                    self._close(server)
                else:
                    self._offer(server)
            self._grow()

    @property
    def in_use(self) -> int:
        """Server connections leased, being reset or being opened: what PAUSE waits for."""
        return len(self.active) + self.connecting

    def disconnect_idle(self) -> None:
        """Close every idle server connection (a completed PAUSE: PostgreSQL may restart)."""
        for server in list(self.idle):
            self._close(server)

    @property
    def paused_waiting(self) -> int:
        """Clients waiting for :meth:`resume` (not yet in the pool's wait queue)."""
        return self._paused_waiting

    async def _wait_resumed(self, tenant: str | None) -> None:
        token = object()
        self.proxy_stats.wait_began(self.traffic, token)
        self._paused_waiting += 1
        started = time.monotonic()
        try:
            while self.paused and self._resumed is not None and not self.closed:
                async with asyncio.timeout(self.db.query_wait_timeout or None):
                    await self._resumed.wait()
        except TimeoutError:
            self.stats.acquire_timeouts += 1
            raise PoolTimeoutError(
                f"database \"{self.db.name}\" is paused and was not resumed within "
                f"query_wait_timeout ({self.db.query_wait_timeout:g}s)") from None
        finally:
            self._paused_waiting -= 1
            waited = time.monotonic() - started
            self.stats.waits += 1
            self.stats.wait_seconds_total += waited
            self.proxy_stats.wait_ended(self.traffic, token, tenant, waited)
        if self.closed:
            raise ServerError("the pool is shutting down", "57P01")

    def reconfigure(self, db: DatabaseConfig, password: str | None) -> None:
        """Apply a reloaded entry for this database; leased connections keep serving.

        pool_size, timeouts and the other limits apply from now on (idle connections
        beyond a smaller pool_size are closed by :meth:`trim`). When the upstream itself
        changed (host, port, dbname, user, TLS), idle connections are closed now and
        leased ones are closed when released (if server_lifetime is not 0); a new
        password only matters for new connections.
        """
        old = self.db
        upstream = ("host", "port", "dbname", "user", "sslmode", "sslrootcert")
        moved = any(getattr(old, k) != getattr(db, k) for k in upstream)
        self.db = db
        self.password = password
        self._sel.pool_size, self._sel.cap = db.pool_size, db.max_tenant_server_conns
        if moved:
            self._role_checked = False
            self._refused = None
            self.reclaim_kept()
            for server in list(self.idle):
                self._close(server)
            for server in self.active:
                server.created_at = -math.inf  # expired: closed, not reused, when released
        self.trim()
        self._grow()

    def trim(self) -> None:
        """Shrink to pool_size after a reload made it smaller.

        Idle connections beyond it are closed now; if leased ones still exceed it, that
        many are marked expired, so they are closed, not reused, when released (a busy
        pool may never have an idle moment). Needs server_lifetime > 0 for the latter.
        """
        while self.idle and self.size > self.db.pool_size:
            self._close(self.idle.oldest())  # the coldest first
        excess = self.size - self.connecting - self.db.pool_size
        for server in self.active:
            if excess <= 0:
                break
            if server.created_at != -math.inf:
                server.created_at = -math.inf  # expired: closed when released
            excess -= 1
