"""The pool of server connections for one configured database: what the proxy calls.

``ServerPool`` is :class:`~proxy.pool.servers.PoolServers` (the server connections in
their states, and every move between them: lease, keep, take back, offer, close) plus
what clients and the process ask of a pool: :meth:`ServerPool.acquire` and
:meth:`ServerPool.wait_for_server` (``try_acquire`` is the base's), maintenance, shutdown,
PAUSE/RESUME and reload.

Where a waiting client is served: it queues in :class:`~proxy.pool.waits.Waits` (FIFO,
query_wait_timeout, reserve_pool_timeout, patience); a server that comes back goes to
the waiter :meth:`Waits.take_for` names, in ``PoolServers._offer``; which one is the
choice of :mod:`proxy.pool.selection`. The lease it gets is :mod:`proxy.pool.lease`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from proxy.backend.server import ServerError, ServerState
from proxy.config import DatabaseConfig
from proxy.pool.counters import PoolStats
from proxy.pool.lease import Lease
from proxy.pool.servers import PoolServers, UpstreamRefusedError
from proxy.pool.waits import PoolTimeoutError, Wait

# Imported from here by the rest of the proxy (and tests).
__all__ = ["PoolStats", "PoolTimeoutError", "ServerPool", "UpstreamRefusedError"]

log = logging.getLogger("pgtenant.pool")


class ServerPool(PoolServers):
    """Acquire/release of server connections for one database entry."""

    # ---- acquire ----------------------------------------------------------------------

    async def acquire(self, tenant: str | None) -> Lease:
        """Lease a server connection, preferring one already set for ``tenant``."""
        if self._refused is not None:
            raise self._refused
        if self.closed:
            raise ServerError("the pool is shutting down", "57P01")
        if self.paused:
            await self.waits.wait_resumed(tenant)
        lease = self.try_acquire(tenant)
        if lease is not None:
            return lease
        done: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()

        def deliver(wait: Wait) -> None:
            if done.cancelled():  # the caller went away: give the connection back
                if not wait.cancelled() and wait.exception() is None:
                    wait.result().release()
            elif wait.cancelled():
                done.cancel()
            elif (exc := wait.exception()) is not None:
                done.set_exception(exc)
            else:
                done.set_result(wait.result())

        wait = self.wait_for_server(tenant, deliver)
        try:
            return await done
        except asyncio.CancelledError:
            wait.cancel()
            raise

    def wait_for_server(self, tenant: str | None, callback: Callable[[Wait], None]) -> Wait:
        """Queue for a server connection; ``callback(wait)`` runs once it is decided,
        at once and in the stack of whatever decided it (this call, when a kept server
        of ``tenant`` is reclaimed for it; see :class:`~proxy.pool.waits.Wait`).

        The wait holds the lease, or PoolTimeoutError after query_wait_timeout, or
        the error that failed the pool; cancel it to leave the queue. No task is created:
        this is the transaction-mode path when no idle connection fits. How the wait is
        served: :mod:`proxy.pool.waits`.
        """
        wait = self.waits.add(tenant, callback, self.db)
        kept = self.kept.owner_of  # (dicts tested: this runs for every wait)
        if self.idle.owner_of or kept:
            self.waits.be_patient()
        if kept and tenant in self.kept.by_owner and not self.paused:
            self._reclaim_for(wait, tenant)
        if self.connecting < self.db.pool_size - len(self.active) - len(
                self.idle.owner_of) - len(kept):
            self._grow()
        return wait

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
            self.open_server()

    async def close(self) -> None:
        """Close every connection (shutdown)."""
        self.closed = True
        self.waits.close(ServerError("the proxy is shutting down", "57P01"))
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

    def pause(self) -> None:
        """Start no new lease until :meth:`resume`; running transactions finish."""
        if not self.paused:
            self.paused = True
            self.waits.pause()
            self.reclaim_kept()
            log.info("database %s: paused", self.db.name)

    def resume(self) -> None:
        """Let the clients held by :meth:`pause` lease again."""
        if self.paused:
            self.paused = False
            self.waits.resume()
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
        return self.waits.paused_waiting

    def oldest_wait(self, now: float) -> float:
        """Seconds the longest current waiter (queued or held by PAUSE) has waited."""
        return self.waits.oldest_wait(now)

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
