"""A client's way to a server connection, and what waits for it meanwhile.

:class:`ClientLeasing`, the lowest of the bases of :class:`proxy.frontend.relay.ClientRelay`:
the client's messages that wait for a server (the queue), a lease from the pool (an idle
server at once, ``_lease_now``, or a :class:`~proxy.pool.waits.Wait` the pool decides),
the link to the lent server (``link``), and, once the lease has set the client's tenant
context on it (``Lease.context_ready``, ``Lease.set_context``: the lease is where the
tenant is set), the queued messages. A linked client gives its server back in
``ClientRelay._release_server`` (a lease that arrives for a client already gone, or with
a dead server, is released at once in ``_got_server``). Like the relay, it calls no
event-loop function.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from proxy.backend.routing import ContextSetDone
from proxy.backend.server import BackendSession, Receiver, ServerConnection, ServerState
from proxy.frontend.interfaces import ClientState
from proxy.pool.lease import Lease
from proxy.pool.pool import ServerPool
from proxy.pool.waits import Wait

if TYPE_CHECKING:
    import asyncio

    from proxy.backend.context import TenantContext


class ClientLeasing(Receiver):
    """A client's lease and the messages queued for it (see the module docstring).

    mypyc compiles one chain of native bases: ``Receiver`` -> this class ->
    ``NamedStatementRelay`` -> ``ClientRelay``. Each attribute is set up in the lowest
    class that reads it (compiled, reading one that a subclass sets up costs a check that
    it is set), so the client's state, pool, context and flow control, which the relay
    changes, are set up here too.
    """

    __slots__ = ("_leasing", "_queue", "_queue_batch_start", "_queue_named", "_queue_replies",
                 "_queued_bytes", "_reading_paused_for", "_touched", "_unsynced", "_wait",
                 "_writing_paused", "context", "lease", "pool", "state", "transaction_mode")

    def __init__(self) -> None:
        # The client's, set by its login and its relaying.
        self.state = ClientState.STARTUP
        self.pool: ServerPool | None = None
        self.transaction_mode = False
        self.context: TenantContext | None = None  # holds its settings once logged in
        self._unsynced = False  # the client's stream is mid extended-protocol batch
        self._writing_paused = False
        self._reading_paused_for = 0  # bits of relay._PAUSE_BITS: why reading is paused
        # Its lease.
        self.lease: Lease | None = None  # the server connection the pool lent it
        self._queue: list[bytes] = []   # message blocks waiting for a server
        self._queue_replies = 0
        self._queue_named = False       # the queue holds named-statement messages
        self._queue_batch_start = True  # the queue's first frame starts a batch
        self._queued_bytes = 0
        self._touched = False  # what goes out next may change the tenant setting (guard)
        # A lease, or a context set or statement check of ours, is on its way: what the
        # client sends meanwhile queues behind it.
        self._leasing = False
        self._wait: Wait | None = None  # its wait for a server, while the pool decides

    # ---- what the relay provides (ClientRelay, NamedStatementRelay) ---------------------

    def fatal(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        raise NotImplementedError

    def _pause_reading(self, why: str, paused: bool) -> None:
        raise NotImplementedError

    def _send_rewritten(self, server: ServerConnection, blocks: list[bytes],
                        batch_start: bool, verify: bool = True) -> None:
        raise NotImplementedError

    # ---- leasing -------------------------------------------------------------------------

    def _lease_now(self) -> Lease | None:
        """Transaction mode fast path: an idle server, when nobody is waiting for one."""
        assert self.pool is not None and self.context is not None
        lease = self.pool.try_acquire(self.context.tenant)
        if lease is not None:
            self.link(lease)
        return lease

    def _wait_for_server(self, pool: ServerPool, tenant: str | None) -> None:
        """Queue for a server (transaction mode): :meth:`_leased` runs once the pool
        decides, maybe before this returns."""
        wait = pool.wait_for_server(tenant, self._leased)
        if not wait.done():
            self._wait = wait

    def _stop_waiting(self) -> None:
        """The client goes away: out of the pool's queue now (its turn would only lease a
        server to give it back)."""
        wait = self._wait
        if wait is not None:
            self._wait = None
            wait.cancel()

    def _leased(self, wait: Wait) -> None:
        """The pool decided our wait (transaction mode; no task involved). It runs in
        the stack of whatever decided it: often another client releasing its server."""
        self._wait = None
        if wait.cancelled():
            self._leasing = False
            return
        exc = wait.exception()
        if exc is not None:
            self._leasing = False
            self.fatal(getattr(exc, "sqlstate", "08006"), str(exc))
            return
        self._got_server(wait.result())

    def _got_server(self, lease: Lease) -> None:
        if self.state is ClientState.CLOSED:
            self._leasing = False
            lease.release()
            return
        if lease.server.state is ServerState.CLOSED and self.pool is not None:
            # It died while the lease was on its way (through ``acquire``, when the
            # pool was paused): nothing of ours reached it, so lease another.
            lease.release()
            assert self.context is not None
            self._wait_for_server(self.pool, self.context.tenant)
            return
        self.link(lease)
        self._deliver(lease)

    def _deliver(self, lease: Lease) -> None:
        """Send the queued messages as soon as the lent server carries our context."""
        assert self.context is not None
        server = lease.server
        if lease.context_ready(self.context):
            self._send_queued(server)
            return
        # A switch from another tenant: the set must succeed before anything else runs.
        fut = lease.set_context(self.context)
        assert fut is not None  # not ready, so not set
        fut.add_done_callback(functools.partial(self._context_set, server))

    def _context_set(self, server: ServerConnection,
                     fut: asyncio.Future[dict[str, str] | None]) -> None:
        if not self._holds(server):
            return  # lost while the set was on its way: server_lost decided what follows
        if fut.cancelled() or fut.exception() is not None:
            self._leasing = False
            return  # the server is gone: server_lost reports it
        error = fut.result()
        if error is not None:
            self._leasing = False
            self.fatal(error.get("C", "08006"),
                       f"could not set the session context: {error.get('M', '')}")
            return
        self._send_queued(server)

    def _send_queued(self, server: ServerConnection, verify: bool = True) -> None:
        self._leasing = False
        lease = self.lease
        if lease is None or lease.server is not server or self.state is ClientState.CLOSED:
            return
        if self._queue:
            frames = self._queue
            replies = self._queue_replies
            named = self._queue_named
            self._queue = []
            self._queue_replies = 0
            self._queue_named = False
            self._queued_bytes = 0
            if named:
                self._send_rewritten(server, frames, self._queue_batch_start, verify)
            else:  # (most often one block: sent as it is, not joined)
                server.send(frames[0] if len(frames) == 1 else b"".join(frames), replies,
                            self._unsynced)
            if self._touched:
                self._touched = False
                lease.context_touched()
        else:
            server.flush_cork()
            if not server.pending and self.transaction_mode:
                # Nothing to send after all (its request was cancelled meanwhile): the
                # transaction never began; the server is kept or goes back.
                self.server_ready(server)
        if self._reading_paused_for:  # (a call less on every waited transaction)
            self._pause_reading("queue", False)

    def pipelined_context_done(self, fut: ContextSetDone) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return  # the server is gone; server_lost reports it
        error = fut.result()
        if error is not None:
            # The client's pipelined messages ran with no tenant at all (fail-closed) and
            # their replies cannot be trusted to match the client's expectations: end it.
            self.fatal("08006", f"could not set the session context: {error.get('M', '')}")

    def link(self, lease: Lease) -> None:
        """Hold ``lease``: its server's replies come to this client from now on."""
        self.lease = lease
        server = lease.server
        server.receiver = self
        if self._writing_paused:
            server.pause_reading(True)
        assert self.pool is not None
        self.pool.stats.leases += 1

    def _holds(self, server: BackendSession) -> bool:
        lease = self.lease
        return lease is not None and lease.server is server
