"""A logged-in client's relaying: the rules, apart from the event loop.

:class:`ClientRelay` frames what the client sends, lets the guard filter it, asks
:func:`proxy.frontend.requests.classify` what it means, leases a server (transaction
mode), has the lease set the tenant on it, sends the messages (rewritten when they name
prepared statements) and forwards what the server answers, down to giving the server back
(``_release_server``: the one place a client ends its lease). It calls no event-loop
function: timers, tasks and futures come from
:class:`proxy.frontend.client.ClientConnection`, which adds the asyncio protocol, the
login and the timers around it (``_stop_idle_timer``, ``_arm_idle_timer``,
``_lease_when_resumed``, ``_new_future``, ``_shutdown``).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING, Any, Final, Protocol

from proxy.auth.identity import Identity
from proxy.backend.context import TenantContext
from proxy.backend.prepared import (
    internal_batch,
    rewrite,
    to_verify,
    verified,
    verify_batch,
)
from proxy.backend.server import (
    FORWARD,
    BackendSession,
    Collect,
    Receiver,
    ServerConnection,
    ServerState,
    Skip,
)
from proxy.backend.statements import ClientStatement, ServerStatement
from proxy.frontend.guarding import ParseVerdicts, StreamGuard
from proxy.frontend.interfaces import ClientState, LoginHost
from proxy.frontend.requests import NO_STOP, classify, drop_first_request
from proxy.guard import Refusal
from proxy.pool.lease import Lease
from proxy.pool.pool import ServerPool
from proxy.pool.waits import Wait
from proxy.stats import ProxyStats, TrafficStats
from proxy.wire import messages
from proxy.wire.framing import FrontendFramer, split_frames
from proxy.wire.tags import FrontendTag

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("pgtenant.client")


class ClientHost(LoginHost, Protocol):
    """What a client needs of the proxy (``proxy.app.ProxyApp``) beyond its login: the
    narrow face of the app the frontend sees (it imports neither the app nor the admin
    console). The client (a ClientConnection) is what the proxy knows clients by."""

    @property
    def parse_verdicts(self) -> ParseVerdicts: ...
    def next_client_id(self) -> int: ...
    def client_connected(self, client: Any) -> None: ...
    def client_disconnected(self, client: Any) -> None: ...
    def client_transport_closed(self, client: Any) -> None: ...
    def cancel_server(self, server: ServerConnection) -> asyncio.Future[None] | None: ...
    def open_admin_session(self, client: Any, user: str, pending: bytes) -> None: ...


_X: Final[int] = FrontendTag.TERMINATE
# Pause reading from the client when this much is queued waiting for a server.
QUEUE_HIGH_WATER: Final = 256 * 1024

_NO_TRAFFIC: Final = TrafficStats()  # placeholder counters before the database is known
_PAUSE_BITS: Final = {"queue": 1, "server": 2}


class ClientRelay(Receiver):
    """A client's relaying state and rules (see the module docstring); the
    :class:`Receiver` its server connection forwards to."""

    # One object per connected client, idle ones included: no per-instance __dict__.
    __slots__ = ("_guard", "_idle_timeouts", "_leasing", "_queue", "_queue_batch_start",
                 "_queue_named", "_queue_replies", "_queued_bytes", "_reading_paused_for",
                 "_rewriting", "_touched", "_tx_started", "_unsynced", "_wait", "_writing_paused",
                 "app", "context", "database", "framer", "id", "identity", "lease", "pool",
                 "state", "statements", "stats", "stats_tenant", "traffic", "transaction_mode",
                 "transport")

    def __init__(self, app: ClientHost) -> None:
        self.app = app
        # The proxy's counters, kept: compiled, app.stats is a Python attribute lookup
        # (the app is interpreted), twice per transaction.
        self.stats: ProxyStats = app.stats
        self.id = app.next_client_id()
        self.state = ClientState.STARTUP
        self.transport: asyncio.Transport | None = None
        self.framer: FrontendFramer | None = None
        self.database = ""
        self.pool: ServerPool | None = None
        self.transaction_mode = False
        self.identity: Identity | None = None
        self.context: TenantContext | None = None  # holds its settings once logged in
        self.lease: Lease | None = None  # the server connection the pool lent it
        self._queue: list[bytes] = []   # message blocks waiting for a server
        self._queue_replies = 0
        self._queue_named = False       # the queue holds named-statement messages
        self._queue_batch_start = True  # the queue's first frame starts a batch
        # Transaction mode: the client's prepared statements by name, from its first one.
        self.statements: dict[str, ClientStatement] | None = None
        self._rewriting = False         # a batch the proxy rewrites goes on until Sync
        self._touched = False  # what goes out next may change the tenant setting (guard)
        self._guard: StreamGuard | None = None  # created at the first message after login
        self.traffic = _NO_TRAFFIC      # the database's counters, once it is known
        self.stats_tenant = "_unknown"  # the tenant label for counters
        self._tx_started = 0.0          # monotonic time the current transaction began
        self._idle_timeouts = False     # idle_transaction_timeout or client_idle_timeout set
        self._unsynced = False  # the client's stream is mid extended-protocol batch
        self._queued_bytes = 0
        self._leasing = False
        self._wait: Wait | None = None  # its wait for a server, while the pool decides
        self._writing_paused = False
        self._reading_paused_for = 0  # bits of _PAUSE_BITS: why reading is paused

    # ---- what the event-loop side provides (ClientConnection) --------------------------

    def _stop_idle_timer(self) -> None:
        raise NotImplementedError

    def _arm_idle_timer(self, tx_status: bytes) -> None:
        raise NotImplementedError

    def _lease_when_resumed(self) -> None:
        """The pool is paused (admin PAUSE): lease once it resumes."""
        raise NotImplementedError

    def _new_future(self) -> asyncio.Future[list[tuple[int, bytes]]]:
        raise NotImplementedError

    def query_timed_out(self, server: BackendSession) -> None:
        """query_timeout passed on a request of this client's (cancel, then a grace)."""
        raise NotImplementedError

    def _shutdown(self) -> None:
        """The client is gone: its lease ends, its timers and tasks stop."""
        raise NotImplementedError

    # ---- its server ----------------------------------------------------------------------

    @property
    def server(self) -> ServerConnection | None:
        """The server connection its lease lends it, if any."""
        lease = self.lease
        return None if lease is None else lease.server

    @property
    def is_active(self) -> bool:
        """Linked to a server connection that works for it (one it kept between
        transactions does not count: the client is idle)."""
        lease = self.lease
        return lease is not None and lease.server.state is not ServerState.KEPT

    @property
    def peer(self) -> str:
        """The client's address for logs ("host:port", "unix"; "?" once its socket is
        gone): read from the socket when asked, not kept by every idle client."""
        transport = self.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        if isinstance(peer, tuple) and peer:
            return f"{peer[0]}:{peer[1]}"
        return "?" if peer is None else "unix"

    # The cancel key the proxy gave it, in one int (not an int and a bytes object).
    def _holds(self, server: BackendSession) -> bool:
        lease = self.lease
        return lease is not None and lease.server is server

    # ---- relaying client → server -----------------------------------------------------

    def _relay_messages(self, data: bytes = b"") -> None:
        """Frame what the client sent (``data`` just received, after anything buffered);
        write it to the server in one write."""
        framer = self.framer
        assert framer is not None
        batch = framer.next_batch(data)
        if batch is None:
            return
        block, index = batch
        if self._idle_timeouts:
            self._stop_idle_timer()
        guard = self._guard
        if guard is None and self.app.guard is not None:
            guard = self._guard = StreamGuard(self.app.guard, self.app.parse_verdicts,
                                              self._refused,
                                              transaction_mode=self.transaction_mode,
                                              on_state_change=self._session_state_changed)
        if guard is not None:
            block, index = guard.filter(
                block, index, self.identity.tenant if self.identity is not None else None)
        block, replies, unsynced, named, stop = classify(
            block, index, self._unsynced, self._rewriting, self.transaction_mode)
        self._flush(block, replies, unsynced, named)
        if stop == _X:
            self.close_transport()
        elif stop != NO_STOP:
            # PostgreSQL would end the session for it (and a pooled backend with it):
            # answer as it would, without forwarding it.
            self.fatal("08P01", f"invalid frontend message type {stop}")

    def _session_state_changed(self) -> None:
        """The guard let through a message that may change session settings (an own-tenant
        re-statement, set_config of another setting, ...): once it is sent, the proxy no
        longer trusts its idea of the server's context and re-sets it before the next
        transaction (defence in depth behind the guard's refusals)."""
        self._touched = True

    def _refused(self, refusal: Refusal, tag: int) -> None:
        tenant = self.stats_tenant
        self.stats.record_violation(tenant, refusal.kind)
        log.warning("client #%s (%s) tenant=%s: %s refused by the guard (%s)",
                    self.id, self.peer, tenant, chr(tag), refusal.kind,
                    extra=self._log_fields("guard_refusal"))

    def _flush(self, block: bytes, replies: int, unsynced: bool, named: bool) -> None:
        """Send the client's messages to its server, or queue them until it has one."""
        if replies:
            self.stats.record_queries(self.traffic, self.stats_tenant, replies)
        if not block:
            return
        batch_start = not self._unsynced
        self._unsynced = unsynced
        if not self._tx_started:
            self._tx_started = time.monotonic()
        context = self.context
        assert context is not None
        lease = self.lease
        ready: bool | None = False
        if lease is not None and not self._queue:
            # Resumes a kept server; sets the context, pipelined when it may be.
            ready = lease.begin(context, self._tx_started)
            if ready is None:  # kept, but not leasable as it is: lease another
                self._release_server()
                lease = None
        if lease is None and not self._queue and not self._leasing:
            lease = self._lease_now()
            if lease is not None:
                ready = lease.context_ready(context)
        if ready:
            assert lease is not None
            server = lease.server
            if named:
                self._send_rewritten(server, [block], batch_start)
            else:
                server.send(block, replies, unsynced)
            if self._touched:
                self._touched = False
                lease.context_touched()
            return
        if not self._queue:
            self._queue_batch_start = batch_start
        self._queue.append(block)
        self._queue_replies += replies
        self._queue_named |= named
        self._queued_bytes += len(block)
        if self._queued_bytes > QUEUE_HIGH_WATER:
            self._pause_reading("queue", True)
        if self._leasing:
            return
        self._leasing = True
        if lease is not None:
            self._deliver(lease)
        elif self.pool is not None and self.pool.paused:
            self._lease_when_resumed()
        else:
            assert self.pool is not None
            self._wait_for_server(self.pool, context.tenant)

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

    def cancel_queued(self) -> bool:
        """A CancelRequest came for this client while the request it waits on has not
        reached a server (queued for one, or behind the context set on one): it is
        answered as PostgreSQL answers a cancelled statement (57014, then
        ReadyForQuery) and never sent; requests queued behind it stay. True if one was.

        Only outside a transaction (a client that waits for a server is between
        transactions; one behind a statement check on its own server may not be: its
        cancel is left, as before, to find nothing running). A batch still waiting for
        its Sync is no complete request yet: nothing is cancelled.
        """
        lease = self.lease
        if (not self._queue or self.state is not ClientState.READY
                or (lease is not None and lease.server.tx_status != b"I")):
            return False
        rest = drop_first_request(self._queue)
        if rest is None:
            return False
        self._queue = rest
        self._queue_replies -= 1
        self._queued_bytes = sum(map(len, rest))
        self._queue_batch_start = True
        if not rest:
            self._queue_named = False
            self._tx_started = 0.0
            self._stop_waiting()  # nothing left to send: out of the pool's queue
        log.info("client #%s: a queued request was cancelled before it reached a server",
                 self.id, extra=self._log_fields("queued_request_cancelled"))
        self.stats.record_error(self.traffic, self.stats_tenant)
        self.write(messages.error_response("57014", "canceling statement due to user request")
                   + messages.ready_for_query(b"I"))
        if self._reading_paused_for and self._queued_bytes <= QUEUE_HIGH_WATER:
            self._pause_reading("queue", False)
        return True

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
            else:
                server.send(b"".join(frames), replies, self._unsynced)
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

    def _pipelined_context_done(self, fut: asyncio.Future[dict[str, str] | None]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return  # the server is gone; server_lost reports it
        error = fut.result()
        if error is not None:
            # The client's pipelined messages ran with no tenant at all (fail-closed) and
            # their replies cannot be trusted to match the client's expectations: end it.
            self.fatal("08006", f"could not set the session context: {error.get('M', '')}")

    def _send_rewritten(self, server: ServerConnection, blocks: list[bytes],
                        batch_start: bool, verify: bool = True) -> None:
        """Transaction mode with named statements: see proxy.backend.prepared."""
        statements = self.statements
        if statements is None:
            statements = self.statements = {}
        frames = [frame for block in blocks for frame in split_frames(block)]
        try:
            if verify and batch_start:
                keys = to_verify(frames, statements, server.statements)
                if keys:
                    self._verify(server, frames, keys)
                    return
            done = rewrite(frames, statements, server.statements, FORWARD,
                           batch_start=batch_start,
                           aborted=server.tx_status == b"E" and not server.pending)
        except ValueError:  # a name without its terminator
            self.fatal("08P01", "invalid message format: malformed statement or portal name")
            return
        self._rewriting = done.carry
        if batch_start:
            evict = server.statements.take_evictions(done.used)
            if evict:
                server.send_internal(internal_batch(evict), Skip(None))
        server.send_entries(done.data, done.entries, self._unsynced)  # type: ignore[arg-type]

    def _verify(self, server: ServerConnection, frames: list[bytes], keys: list[bytes]
                ) -> None:
        """Prepare and describe statements the client described elsewhere before sending
        ``frames`` (held in the queue meanwhile): what it decodes with must still hold."""
        data, made = verify_batch(server.statements, keys, set(keys))
        fut: asyncio.Future[list[tuple[int, bytes]]] = self._new_future()
        server.send_internal(data, Collect(fut))
        self._queue.insert(0, b"".join(frames))
        self._queue_named = True
        self._queue_batch_start = True
        self._leasing = True  # later messages queue behind these
        fut.add_done_callback(functools.partial(self._verified, server, keys, made))

    def _verified(self, server: ServerConnection, keys: list[bytes],
                  made: list[ServerStatement],
                  fut: asyncio.Future[list[tuple[int, bytes]]]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self._leasing = False
            return  # the server is gone: server_lost reports it
        verified(server.statements, keys, made, fut.result())
        self._send_queued(server, verify=False)  # a failed prepare: its error, in line

    def statements_cleared(self) -> None:
        # DISCARD ALL / DEALLOCATE ALL ran for this client: its statements are gone too.
        if self.statements is not None:
            self.statements.clear()

    # ---- server side callbacks ----------------------------------------------------------

    def link(self, lease: Lease) -> None:
        self.lease = lease
        lease.on_pipelined_set = self._pipelined_context_done
        server = lease.server
        server.receiver = self
        if self._writing_paused:
            server.pause_reading(True)
        assert self.pool is not None
        self.pool.stats.leases += 1

    def unsolicited(self, data: bytes) -> None:
        """Server messages that answer nothing this client sent. In session mode, once
        the client is greeted, they are its own (LISTEN notifications, notices). Before the
        greeting (a backend dying during login sends a notice first) and in transaction
        mode (the server is between transactions) they are dropped; if the server is going
        away, server_lost tells the client properly."""
        if self.state is ClientState.READY and not self.transaction_mode:
            self.forward_to_client(data)

    def forward_to_client(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.traffic.bytes_out += len(data)
            transport.write(data)

    def server_error(self, body: bytes) -> None:
        """An ErrorResponse from the server on its way to this client."""
        stats = self.stats
        stats.record_error(self.traffic, self.stats_tenant)
        if b"C42501\x00" in body and b"row-level security" in body:
            # PostgreSQL's own RLS refusal: a write aimed at another tenant's rows.
            stats.record_violation(self.stats_tenant, "rls_policy")

    def forged_context(self) -> None:
        """pgtenant.current_tenant() warned of a tenant setting its proof does not vouch
        for: something set it past the guard. The server re-sets it (see ServerConnection);
        here it is counted and logged."""
        self.stats.record_violation(self.stats_tenant, "forged_context")
        log.warning("client #%s (%s) tenant=%s: forged tenant context seen by the database",
                    self.id, self.peer, self.stats_tenant,
                    extra=self._log_fields("forged_context"))

    def server_ready(self, server: BackendSession) -> None:
        """The server answered everything we sent (pending queue empty)."""
        if server.tx_status == b"I" and self._tx_started:
            # last_used: when the server's ReadyForQuery came in (one clock read for both)
            self.stats.record_transaction(self.traffic, self.stats_tenant,
                                          server.last_used - self._tx_started)
            self._tx_started = 0.0
        # (Read before the release: the pool may lend the server to a waiting client, who
        # sends on it, before _release_server returns.)
        tx_status = server.tx_status
        unsynced = server.unsynced
        lease = self.lease
        # (_leasing with a lease: a context set or a statement check of ours is on its
        # way here, which decides once it is answered; see cancel_queued.)
        if (self.transaction_mode and not self._queue and not self._leasing
                and self.state is ClientState.READY and lease is not None
                and not lease.keep()):
            self._release_server()  # its transaction is over and the pool wants it back
        if self._idle_timeouts and not self._queue and not unsynced:
            self._arm_idle_timer(tx_status)

    def server_reclaimed(self, server: BackendSession) -> None:
        """The pool took back the server this client kept between transactions (or it
        died there): the next transaction leases one, as if it had been released."""
        if self._holds(server):
            self.lease = None

    def server_lost(self, server: BackendSession, reason: str) -> None:
        if not self._holds(server):
            return
        self.lease = None
        if self.state is ClientState.LOGIN:
            return  # the login waits on this server: it leases another or fails itself
        if (self._leasing and self._queue and self.transaction_mode
                and self.state is ClientState.READY and self.pool is not None
                and self.context is not None):
            # It died (or failed its scrub) before any of the queued messages reached it:
            # they go to another server, and the client never knows.
            log.info("client #%s: server #%s lost before use (%s); leasing another",
                     self.id, server.id, reason, extra=self._log_fields("server_replaced"))
            self._wait_for_server(self.pool, self.context.tenant)
            return
        self.fatal("08006", f"server connection lost: {reason}")

    def server_paused_writing(self, paused: bool) -> None:
        self._pause_reading("server", paused)

    def parameter_changed(self, name: str, value: str) -> None:
        # The client changed a reported setting (SET TimeZone ...): carry it to later servers.
        # Its settings live in its context once it is logged in.
        context = self.context
        if context is None:
            return
        settings = dict(context.settings)
        if settings.get(name) != value:
            settings[name] = value
            self.context = context.with_settings(settings)
            if self.lease is not None:
                self.lease.context_changed(self.context)

    def _release_server(self) -> None:
        """The one place this client ends its lease (``Lease.release``: the server goes
        back to the pool)."""
        lease = self.lease
        if lease is None:
            return
        self.lease = None
        server = lease.server
        if self._writing_paused:
            server.pause_reading(False)
        if not server.is_clean:
            # The client left mid-request: stop the backend's work before the pool closes it.
            self.app.cancel_server(server)
        # Session mode ends with a reset; a dirty server is closed by the pool.
        lease.release(reset=not self.transaction_mode)

    # ---- helpers ----------------------------------------------------------------------

    def _pause_reading(self, why: str, paused: bool) -> None:
        """Stop reading from the client while any reason ("queue", "server") holds."""
        bit = _PAUSE_BITS[why]
        before = self._reading_paused_for
        after = before | bit if paused else before & ~bit
        self._reading_paused_for = after
        transport = self.transport
        if bool(before) == bool(after) or transport is None or transport.is_closing():
            return
        if after:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _log_fields(self, event: str) -> dict[str, object]:
        """Context for structured (log_format = "json") log lines; never a secret."""
        tenant = self.identity.tenant if self.identity is not None else None
        return {"client_id": self.id, "tenant": tenant, "database": self.database,
                "event": event}

    def fatal(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        """Send a FATAL ErrorResponse and close the connection."""
        if self.state is ClientState.CLOSED:
            return
        log.info("client #%s (%s) closed: %s [%s]", self.id, self.peer, message, sqlstate,
                 extra=self._log_fields("client_closed"))
        self.write(messages.error_response(sqlstate, message, severity="FATAL", hint=hint))
        self.close_transport()

    def close_transport(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self._shutdown()
