"""A client connection: its login (proxy.frontend.login), then relaying to a server
(the rules in proxy.frontend.relay; this module adds the event loop: the protocol
callbacks, timers and tasks).

Until it is logged in a client holds a :class:`~proxy.frontend.login.Login` (startup,
TLS, authentication, its first server and the greeting) and hands it what it receives;
then it drops it and relays. Session mode keeps the server leased at login until the
client leaves; transaction mode returns it on every ReadyForQuery 'I' and leases one
again at the next message.

The client holds its server as a ``proxy.pool.lease.Lease``. Where the tenant is set:
the lease (``Lease.begin``/``context_ready`` pipeline the set when a failed one could not
leave another tenant in place; ``Lease.set_context`` sends one the client waits for, at
login and on a switch from another tenant) — before any client message is written to a
server connection whose context is not this client's; the bytes are built in one place,
``proxy.backend.context``. Where a server goes back to the pool: the lease too
(``Lease.release``; ``Lease.keep`` between transactions). A linked client ends its lease
in :meth:`ClientRelay._release_server`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from proxy.backend.server import BackendSession, ServerConnection, ServerError
from proxy.frontend.interfaces import ClientError, ClientHost, ClientState
from proxy.frontend.login import Login, is_loopback
from proxy.frontend.relay import QUEUE_HIGH_WATER, ClientRelay
from proxy.pool.pool import PoolTimeoutError
from proxy.tasks import TaskSet
from proxy.wire.errors import ProtocolViolation

# ClientState, ClientError and ClientHost are the client's, defined with the login's seams
# (proxy.frontend.interfaces).
__all__ = ["ClientConnection", "ClientError", "ClientHost", "ClientState"]

log = logging.getLogger("pgtenant.client")

# query_timeout: how long the server may take to answer the proxy's cancel, at most.
_QUERY_TIMEOUT_GRACE: Final = 5.0


class ClientConnection(ClientRelay):
    """One client of the proxy: the asyncio protocol (duck-typed: the event loop calls
    these methods), its login, timers and tasks around :class:`ClientRelay`."""

    # What only a login needs lives in its Login (self._login), dropped once logged in.
    __slots__ = ("_cancel_key", "_idle_timer", "_login", "_task_set")

    def __init__(self, app: ClientHost) -> None:
        super().__init__(app)
        self._login: Login | None = None  # from connection_made until logged in
        self._cancel_key = 0  # its BackendKeyData: process id << 32 | secret key
        self._idle_timer: asyncio.TimerHandle | None = None
        self._task_set: TaskSet | None = None  # made at its first task (rare once logged in)

    @property
    def cancel_pid(self) -> int:
        return self._cancel_key >> 32

    @cancel_pid.setter
    def cancel_pid(self, pid: int) -> None:
        self._cancel_key = pid << 32 | (self._cancel_key & 0xFFFFFFFF)

    @property
    def cancel_secret(self) -> bytes:
        return (self._cancel_key & 0xFFFFFFFF).to_bytes(4, "big") if self._cancel_key else b""

    @cancel_secret.setter
    def cancel_secret(self, secret: bytes) -> None:
        assert len(secret) == 4, "a protocol 3.0 cancel key is 4 bytes"
        self._cancel_key = (self._cancel_key >> 32 << 32) | int.from_bytes(secret, "big")

    @property
    def tls(self) -> bool:
        """Whether the client's connection is encrypted."""
        transport = self.transport
        return transport is not None and transport.get_extra_info("sslcontext") is not None

    @property
    def _tasks(self) -> TaskSet:
        tasks = self._task_set
        if tasks is None:
            tasks = self._task_set = TaskSet(self.internal_error)
        return tasks

    def __repr__(self) -> str:
        tenant = self.identity.tenant if self.identity else None
        return f"<Client #{self.id} {self.state.value} {self.peer} tenant={tenant}>"

    # ---- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        # A Unix socket's peer (no address) is local by definition.
        is_local = not (isinstance(peer, tuple) and peer) or is_loopback(str(peer[0]))
        self.app.client_connected(self)
        self._login = Login(self, is_local)

    def data_received(self, data: bytes) -> None:
        try:
            if self.state is ClientState.READY:
                assert self.framer is not None
                self.traffic.bytes_in += len(data)
                self._relay_messages(data)
            elif self.state is ClientState.LOGIN:  # buffered until it is logged in
                assert self.framer is not None
                self.framer.feed(data)
                if self.framer.buffered() > QUEUE_HIGH_WATER:
                    self._pause_reading("queue", True)
            elif self._login is not None:
                self._login.received(data)
        except ProtocolViolation as violation:
            self.fatal("08P01", str(violation))
        except ClientError as error:
            self.fatal(error.sqlstate, str(error), error.hint)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._shutdown()
        self.app.client_transport_closed(self)

    def pause_writing(self) -> None:
        # The client reads slower than the server sends: stop reading from the server.
        self._writing_paused = True
        if self.lease is not None:
            self.lease.server.pause_reading(True)

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.lease is not None:
            self.lease.server.pause_reading(False)

    # ---- what its login calls ---------------------------------------------------------

    def open_admin_session(self, user: str, pending: bytes) -> None:
        """Database "pgtenant": the admin console (proxy/admin) takes over the socket."""
        self.app.open_admin_session(self, user, pending)

    def logged_in(self) -> None:
        """Its login greeted the client: drop the login and relay from now on."""
        self._login = None
        self.state = ClientState.READY
        if self.transaction_mode:
            self._release_server()
        assert self.pool is not None
        db = self.pool.db
        self._idle_timeouts = bool(db.idle_transaction_timeout or db.client_idle_timeout)
        if self._idle_timeouts:
            self._arm_idle_timer(b"I")
        self._pause_reading("queue", False)
        self._relay_messages()

    def _lease_when_resumed(self) -> None:
        self._tasks.spawn(self._lease_after_resume())

    async def _lease_after_resume(self) -> None:
        """Transaction mode while the pool is paused (admin PAUSE): wait for RESUME."""
        assert self.pool is not None and self.context is not None
        try:
            lease = await self.pool.acquire(self.context.tenant)
        except (PoolTimeoutError, ServerError) as exc:
            self._leasing = False
            self.fatal(exc.sqlstate, str(exc))
            return
        self._got_server(lease)

    def _new_future(self) -> asyncio.Future[list[tuple[int, bytes]]]:
        return asyncio.get_running_loop().create_future()

    def _stop_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _arm_idle_timer(self, tx_status: bytes) -> None:
        """Wait for the client's next message at most idle_transaction_timeout (inside a
        transaction) or client_idle_timeout (outside one); 0 disables either."""
        assert self.pool is not None
        db = self.pool.db
        in_tx = tx_status != b"I"
        delay = db.idle_transaction_timeout if in_tx else db.client_idle_timeout
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if delay > 0:
            self._idle_timer = asyncio.get_running_loop().call_later(
                delay, self._idle_timed_out, in_tx)

    def _idle_timed_out(self, in_tx: bool) -> None:
        self._idle_timer = None
        if in_tx:
            # The server connection is closed, not reused: PostgreSQL rolls the work back.
            self.fatal("25P03", "terminating connection due to idle-in-transaction timeout",
                       "idle_transaction_timeout expired while the client held a transaction")
        else:
            self.fatal("57P05", "terminating connection due to idle-session timeout",
                       "client_idle_timeout expired")

    def query_timed_out(self, server: BackendSession) -> None:
        """query_timeout: a request of ours waited that long for its reply. Cancel it (the
        client gets PostgreSQL's 57014); if the server does not answer within a grace
        period either, close it and end this client with FATAL 08006."""
        lease = self.lease
        if lease is None or lease.server is not server:
            return
        held = lease.server
        timeout = held.db.query_timeout
        log.warning("client #%s (%s): no reply within query_timeout (%gs); cancelling",
                    self.id, self.peer, timeout, extra=self._log_fields("query_timeout"))
        self.app.cancel_server(held)
        asyncio.get_running_loop().call_later(
            min(timeout, _QUERY_TIMEOUT_GRACE), self._query_timeout_grace_over, held,
            held.waiting_since)

    def _query_timeout_grace_over(self, server: ServerConnection, since: float) -> None:
        if self._holds(server) and server.waiting_since == since:
            self.fatal("08006", f"query_timeout ({server.db.query_timeout:g}s) expired and "
                       "the server did not answer the cancel; its connection was closed")

    def internal_error(self, exc: BaseException) -> None:
        """A task of its own or of its login died of an unexpected exception."""
        self.fatal("XX000", "internal error in pgtenant; the connection was closed")

    def _shutdown(self) -> None:
        if self.state is ClientState.CLOSED:
            return
        self.state = ClientState.CLOSED
        if self._login is not None:
            self._login.stop()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._task_set is not None:
            self._task_set.cancel_all()
        self._stop_waiting()
        self._release_server()
        self.app.client_disconnected(self)
