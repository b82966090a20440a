"""A logged-in client's relaying: the rules, apart from the event loop.

:class:`ClientRelay` frames what the client sends, lets the guard filter it, asks
:func:`proxy.frontend.requests.classify` what it means, leases a server (transaction
mode), has the lease set the tenant on it, sends the messages (rewritten when they name
prepared statements) and forwards what the server answers, down to giving the server back
(``_release_server``: the one place a client ends its lease). Its bases hold two parts of
that: :class:`~proxy.frontend.leasing.ClientLeasing` the way to a server (the queue, the
lease, the context set before anything queued goes out) and
:class:`~proxy.frontend.named_statements.NamedStatementRelay` the rewriting of named
prepared statements. It calls no event-loop function: timers, tasks and futures come
from :class:`proxy.frontend.client.ClientConnection`, which adds the asyncio protocol, the
login and the timers around it (``_stop_idle_timer``, ``_arm_idle_timer``,
``_lease_when_resumed``, ``_new_future``, ``_shutdown``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Final

from proxy.auth.identity import Identity
from proxy.backend.server import BackendSession, ServerConnection, ServerState
from proxy.frontend.guarding import StreamGuard
from proxy.frontend.interfaces import ClientHost, ClientState
from proxy.frontend.named_statements import NamedStatementRelay
from proxy.frontend.requests import NO_STOP, classify, drop_first_request
from proxy.guard import Refusal
from proxy.stats import ProxyStats, TrafficStats
from proxy.wire import messages
from proxy.wire.framing import FrontendFramer
from proxy.wire.tags import FrontendTag

# The clock as a C static when compiled (``time.monotonic`` is a lookup in the module
# ``time`` at each call).
_monotonic: Final = time.monotonic

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("pgtenant.client")

_X: Final[int] = FrontendTag.TERMINATE
# Pause reading from the client when this much is queued waiting for a server.
QUEUE_HIGH_WATER: Final = 256 * 1024

_NO_TRAFFIC: Final = TrafficStats()  # placeholder counters before the database is known
_PAUSE_BITS: Final = {"queue": 1, "server": 2}


class ClientRelay(NamedStatementRelay):
    """A client's relaying state and rules (see the module docstring); the
    :class:`~proxy.backend.routing.Receiver` its server connection forwards to."""

    # One object per connected client, idle ones included: no per-instance __dict__.
    __slots__ = ("_guard", "_idle_timeouts", "_tx_started", "app", "database", "framer", "id",
                 "identity", "stats", "stats_tenant", "traffic", "transport")

    def __init__(self, app: ClientHost) -> None:
        # The bases set up what they read: the client's state, pool, context, mode and
        # flow control (ClientLeasing), the lease and its queue, the statements.
        super().__init__()
        self.app = app
        # The proxy's counters, kept: compiled, app.stats is a Python attribute lookup
        # (the app is interpreted), twice per transaction.
        self.stats: ProxyStats = app.stats
        self.id = app.next_client_id()
        self.transport: asyncio.Transport | None = None
        self.framer: FrontendFramer | None = None
        self.database = ""
        self.identity: Identity | None = None
        self._guard: StreamGuard | None = None  # created at the first message after login
        self.traffic = _NO_TRAFFIC      # the database's counters, once it is known
        self.stats_tenant = "_unknown"  # the tenant label for counters
        self._tx_started = 0.0          # monotonic time the current transaction began
        self._idle_timeouts = False     # idle_transaction_timeout or client_idle_timeout set

    # ---- what the event-loop side provides (ClientConnection) --------------------------

    def _stop_idle_timer(self) -> None:
        raise NotImplementedError

    def _arm_idle_timer(self, tx_status: bytes) -> None:
        raise NotImplementedError

    def _lease_when_resumed(self) -> None:
        """The pool is paused (admin PAUSE): lease once it resumes."""
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

    # ---- relaying client → server -----------------------------------------------------

    def _relay_messages(self, data: bytes = b"") -> None:
        """Frame what the client sent (``data`` just received, after anything buffered);
        write it to the server in one write."""
        framer = self.framer
        assert framer is not None
        block = framer.next_batch(data)
        if block is None:
            return
        if self._idle_timeouts:
            self._stop_idle_timer()
        guard = self._guard
        if guard is None and self.app.guard is not None:
            guard = self._guard = StreamGuard(
                self.app.guard, self.app.parse_verdicts, self._refused,
                tenant=self.identity.tenant if self.identity is not None else None,
                transaction_mode=self.transaction_mode,
                on_state_change=self._session_state_changed)
        if guard is not None:
            block = guard.filter(block)
        block, replies, unsynced, named, stop = classify(
            block, self._unsynced, self._rewriting, self.transaction_mode)
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
        if not len(block):  # (compiled: a length read; a bytes object's truth is a call)
            return
        batch_start = not self._unsynced
        self._unsynced = unsynced
        if not self._tx_started:
            self._tx_started = _monotonic()
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

    # ---- server side callbacks ----------------------------------------------------------

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
        # (The state, not transport.is_closing(): a method call per reply. Once the
        # client is CLOSED, by its connection_lost or our close_transport, nothing is
        # written; a write after uvloop lost the connection but before connection_lost
        # ran is dropped by the transport.)
        if transport is not None and self.state is not ClientState.CLOSED:
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
