"""The server connections of one pool, and the only code that moves them.

Invariant (PgBouncer's ``objects.c``): each server connection is in exactly one of
``connecting`` (a count), ``idle`` (by owner tenant, its warmest first), ``kept`` (idle,
still linked to the transaction-mode client it last served) or ``active`` (leased), as
``active`` and ``kept`` read (a server kept lately sits in ``_active`` until a reader
settles the index: :meth:`PoolServers.keep`);
:class:`PoolServers` holds them and makes every move: lease, keep, take back, check,
reset, offer, open, close. ``ServerPool`` (:mod:`proxy.pool.pool`) is this class plus
what the rest of the proxy asks of a pool (acquire, maintenance, PAUSE, reload).

Which server a client gets, and which waiter a freed server goes to, is decided in
:mod:`proxy.pool.selection` (tenants keep their servers: a change of tenant costs a
scrub); the waiting clients, their timeouts and the rules that serve them are
:mod:`proxy.pool.waits`. :meth:`PoolServers._offer` is where a server that comes back
goes to a waiting client (or is parked idle).

A client gets a server as a :class:`~proxy.pool.lease.Lease` (made in
:meth:`PoolServers._lease_to`); the lease is the only way back: ``Lease.release`` calls
:meth:`PoolServers.take_back`, ``Lease.keep`` and ``Lease.begin`` call
:meth:`PoolServers.keep` and :meth:`PoolServers.resume_kept`.

Kept servers: a transaction-mode client whose transaction ended keeps its (clean) server
while nobody else needs one, so its next transaction costs no lease at all. They are idle
in every other respect: a client of the same tenant that starts waiting takes it at once,
another tenant's client when the selection lets it convert one, PAUSE and maintenance
take them back, and one that dies is forgotten without its client noticing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from proxy.backend.server import ServerConnection, ServerError, ServerState, Skip
from proxy.config import DatabaseConfig
from proxy.pool.counters import PoolStats
from proxy.pool.lease import Lease, Lender
from proxy.pool.selection import OwnerIndex, Selection, TenantUse
from proxy.pool.waits import Wait, Waits
from proxy.stats import ProxyStats
from proxy.tasks import TaskSet
from proxy.wire import messages
from proxy.wire.tags import BackendTag

_monotonic: Final = time.monotonic  # (a C static compiled: see proxy.frontend.relay)

log = logging.getLogger("pgtenant.pool")


def _last_used(server: ServerConnection) -> float:
    return server.last_used


class UpstreamRefusedError(ServerError):
    """The upstream role is not safe for tenancy (superuser or BYPASSRLS)."""


class PoolServers(Lender):
    """The server connections of one database entry, each in one state, and their moves
    (the base of ``ServerPool``)."""

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
        self._active: set[ServerConnection] = set()  # (and kept ones in _fresh_kept)
        # Idle but still linked to their last client (oldest first): see the module doc.
        self._kept: OwnerIndex[ServerConnection] = self._sel.kept
        # Servers kept since ``_kept`` was last brought up to date (``_settle_kept``), each
        # once (``fresh_kept`` set), resumed since or not: see :meth:`keep`.
        self._fresh_kept: list[ServerConnection] = []
        self.connecting = 0
        self.stats = PoolStats()
        # The clients waiting for a server, their timers and the rules that serve them.
        self.waits = Waits(self, self._sel, self.stats, self.proxy_stats, self.traffic)
        self.waiters = self.waits.queue  # in arrival order (the hot paths test it)
        self.closed = False
        self._role_checked = False
        self._refused: UpstreamRefusedError | None = None
        self._tasks = TaskSet()
        self.paused = False  # PAUSE (``ServerPool.pause``): no new lease, no new server

    @property
    def active(self) -> set[ServerConnection]:
        """The servers lent to clients (and those being checked, reset or cancelled)."""
        if self._fresh_kept:
            self._settle_kept()
        return self._active

    @property
    def kept(self) -> OwnerIndex[ServerConnection]:
        """The servers kept linked to their last client, by owner, oldest first."""
        if self._fresh_kept:
            self._settle_kept()
        return self._kept

    @property
    def size(self) -> int:
        return len(self.idle) + len(self._kept) + len(self._active) + self.connecting

    @property
    def idle_count(self) -> int:
        """Idle server connections, kept ones included (what SHOW POOLS and metrics call
        idle: any client may have them)."""
        return len(self.idle) + len(self.kept)

    # ---- lease ------------------------------------------------------------------------

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
        if self._fresh_kept:
            self._settle_kept()
        if not self.idle.owner_of and not self._kept.owner_of:
            return None  # every server is at work (the clock read and the choice spared)
        while True:
            now = _monotonic()
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

    def has_parked(self) -> bool:
        """Servers sit idle or kept: a waiter out of patience may be given one."""
        return bool(self.idle or self.kept)

    def lend_parked(self, tenant: str | None) -> Lease | None:
        """A waiter of ``tenant`` ran out of patience (``Waits._serve_parked``): the idle
        or kept server the selection lets go to it, or None."""
        return self._take(tenant, patient=False)

    # ---- kept servers (transaction mode): linked to their last client while unneeded ---

    def keep(self, server: ServerConnection) -> bool:
        """The client ``server`` serves ended its transaction: keep the two linked (True)
        when nobody else needs a server; False: the client must release it. Called by
        ``Lease.keep`` only.

        Not kept: when clients wait (even of other tenants only: measured slower), the
        pool is paused or closing, the server must be reset (a client ran SET), checked
        before each lease (server_check_delay = 0), ends or has a cancel in flight.

        The kept index (by owner: what a waiter or another tenant's client looks in) is
        brought up to date only when something reads it (:meth:`_settle_kept`): a client
        keeps and resumes its server once per transaction, and moving it between
        ``_active`` and ``_kept`` each time cost two dict-of-dict updates and two set
        updates (~1,700 instructions per transaction compiled). Until then a kept server
        stays in ``_active`` and in ``_fresh_kept``; ``active`` and ``kept`` settle first.
        """
        if (self.waiters or self.paused or self.closed or server.session_dirty
                or server.ending or server.cancels or not self.db.server_check_delay):
            return False
        server.state = ServerState.KEPT
        if not server.fresh_kept:
            server.fresh_kept = True
            self._fresh_kept.append(server)
        return True

    def _settle_kept(self) -> None:
        """Index the servers kept since the last time (those still kept: the others were
        resumed, taken back or closed since), oldest first: they were all kept after any
        server already in the index."""
        fresh = self._fresh_kept
        self._fresh_kept = []
        fresh.sort(key=_last_used)
        for server in fresh:
            server.fresh_kept = False
            if server.state is ServerState.KEPT:
                self._active.discard(server)
                self._kept.add(server, server.owner, server.last_used)

    def resume_kept(self, server: ServerConnection, now: float) -> bool:
        """The client of a kept server starts a transaction at ``now``: True, and the
        server is active for it. False when an idle server would not be leased as it is
        (unused for server_check_delay: it is checked first; past server_lifetime): the
        client releases it and leases as usual. Called by ``Lease.begin`` only."""
        db = self.db
        if (now - server.last_used >= db.server_check_delay
                or (db.server_lifetime and now - server.created_at > db.server_lifetime)):
            return False
        if not server.fresh_kept:  # (else it is in _active still: see keep)
            self._kept.discard(server)
            self._active.add(server)
        server.state = ServerState.ACTIVE
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

    def _reclaim_for(self, wait: Wait, tenant: str | None) -> None:
        """A client starts waiting: it gets a kept server of its own tenant at once (no
        scrub). Another tenant's kept server goes to a waiter only after _PATIENCE
        (``Waits._serve_parked``), as an idle one would: taking it at once made most
        transactions of a many-tenant workload change a backend's tenant.

        Only the new waiter can match: servers are kept only while nobody waits
        (:meth:`keep`), and each earlier waiter got its tenant's when it came."""
        server = self.kept.oldest_of(tenant)
        if server is not None:
            self._kept.discard(server)
            self.waiters.remove(wait)
            self._unlink_kept(server)
            wait.set_result(self._lease_to(server, tenant, wait.use))

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
        self._active.add(server)
        self._tasks.spawn(self._check_then_offer(server))

    async def _check_then_offer(self, server: ServerConnection) -> None:
        fut: asyncio.Future[dict[str, str] | None] = asyncio.get_running_loop().create_future()
        server.send_internal(messages.query(""), Skip(fut))
        try:
            async with asyncio.timeout(self.db.server_connect_timeout):
                error = await fut
        except (TimeoutError, ServerError) as exc:
            error = {"M": str(exc) or "no answer"}
        self._active.discard(server)
        if error is not None or not server.is_clean:
            self.stats.servers_failed_check += 1
            log.info("database %s: an idle server connection failed its check (%s); "
                     "replaced", self.db.name, error.get("M") if error else "not idle")
            self._close(server)
            return
        self._offer(server)

    def _lease_to(self, server: ServerConnection, tenant: str | None,
                  use: TenantUse | None = None) -> Lease:
        """Hand ``server`` out to a client of ``tenant``: the one place a lease begins."""
        server.state = ServerState.ACTIVE
        self._active.add(server)
        server.lessee = tenant
        self._sel.leased(tenant, use)
        return Lease(self, server)

    def _unlease(self, server: ServerConnection) -> None:
        tenant = server.lessee
        if tenant is not None:
            server.lessee = None
            self._sel.unleased(tenant)

    def _grow(self) -> None:
        """Open connections for waiters while the pool has room."""
        while (self.connecting < len(self.waiters) and self.size < self.db.pool_size
               and not self.closed and not self.paused):
            self.open_server()

    def open_server(self) -> None:
        """Open one more server connection (in ``connecting`` until it is offered)."""
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
                self.waits.fail(exc)
            elif self.waiters:
                # Tell the longest waiter now rather than letting it time out.
                self.waits.fail(exc, limit=1)
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

    # ---- release ----------------------------------------------------------------------

    def _offer(self, server: ServerConnection) -> None:
        """Give a usable connection to the waiter :meth:`Waits.take_for` names (the
        choice of :meth:`Selection.waiter_for`), else park it idle for its tenant's
        clients (others get it after their patience: ``Waits.be_patient``)."""
        server.receiver = None
        server.pause_reading(False)
        if server.ending or self.closed:  # PostgreSQL said FATAL; the pool is shutting down
            self._close(server)
            return
        if server.cancels:
            self._hold_while_cancelling(server)
            return
        if self.waiters and not self.paused:  # a paused pool keeps even early waiters waiting
            wait = self.waits.take_for(server.owner)
            if wait is not None:
                wait.set_result(self._lease_to(server, wait.tenant, wait.use))
                return
            self.waits.be_patient()
        server.state = ServerState.IDLE
        server.last_used = _monotonic()
        self.idle.add(server, server.owner, server.last_used)

    def _hold_while_cancelling(self, server: ServerConnection) -> None:
        """A cancel for this backend is in flight: lease it to no one (the cancel would
        interrupt whatever runs when it lands) until PostgreSQL has closed the cancel
        connection; then offer it."""
        server.state = ServerState.ACTIVE
        self._active.add(server)
        server.after_cancel = self._cancel_done

    def _cancel_done(self, server: ServerConnection) -> None:
        self._active.discard(server)
        if server.state is ServerState.CLOSED:
            return  # _on_closed forgot it
        if self.closed or self._expired(server):
            self._close(server)
            return
        self._offer(server)

    def take_back(self, server: ServerConnection, *, reset: bool = False) -> None:
        """The one place a leased server connection comes back (``Lease.release``
        calls it; nothing else does).

        Fail-closed: a connection with outstanding replies, an open transaction or a
        closed socket is closed, never reused. ``reset`` runs the server_reset_query first
        (session mode, when a client leaves).
        """
        self._active.discard(server)
        if server.state is ServerState.KEPT:  # kept for a client that is leaving
            self._kept.discard(server)
            server.state = ServerState.ACTIVE
        self._unlease(server)
        server.receiver = None
        lifetime = self.db.server_lifetime  # (_expired inline: once per transaction)
        if (not server.is_clean or self.closed
                or (lifetime and _monotonic() - server.created_at > lifetime)):
            self._close(server)
            return
        # Session mode: the client left, reset its session. Transaction mode: a client
        # that ran SET (search_path, work_mem, ...) must not leave it to the next client.
        query = (self.db.server_reset_query if reset and self.db.server_reset_query
                 else "RESET ALL" if server.session_dirty else None)
        if query is not None:
            self._active.add(server)
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
        self._active.discard(server)
        if error is not None or not server.is_clean:
            log.warning("database %s: server reset failed (%s); closing it",
                        self.db.name, error.get("M") if error else "not idle")
            self._close(server)
            return
        server.reset_done()
        self._offer(server)

    def _close(self, server: ServerConnection) -> None:
        self._active.discard(server)
        self._kept.discard(server)
        self._unlease(server)
        self.idle.discard(server)
        if server.state is not ServerState.CLOSED:
            self.stats.servers_closed += 1
        server.on_closed = None
        server.close()
        self._grow()

    def _on_closed(self, server: ServerConnection) -> None:
        """A connection died on its own (server restart, network): forget it."""
        self._active.discard(server)
        self._kept.discard(server)
        self._unlease(server)
        self.idle.discard(server)
        self.stats.servers_closed += 1
        self._grow()

    def _expired(self, server: ServerConnection) -> bool:
        lifetime = self.db.server_lifetime
        return bool(lifetime) and _monotonic() - server.created_at > lifetime

