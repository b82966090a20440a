"""A connection from the proxy to PostgreSQL: handshake, then header-only forwarding.

Every request written to the server carries what to do with its reply, in the order
the replies will come back (PgBouncer's pending-reply queue). One entry per expected
ReadyForQuery:

- ``FORWARD``: the client's request; bytes go to the linked client as received;
- ``SKIP``: the proxy's own request (tenant context, reset); bytes are dropped, errors
  are noted, and the entry's future is resolved when its ReadyForQuery arrives;
- a ``Collect`` entry: the proxy's own query whose messages it wants to read;
- an ``Amend`` entry: the client's request, its reply forwarded message by message with
  the changes of ``proxy.backend.prepared`` (statement names the client never sees);
- an ``Emit`` entry: a reply the proxy makes itself, written after the entry before it.

A server connection may go back to the pool only when this queue is empty and the last
ReadyForQuery said 'I' (``is_clean``).

What the proxy knows of the tenant setting on the backend is one value,
``tenant_state`` (see :data:`TenantState`); the context set and the scrub are sent by
:meth:`ServerConnection.apply_context`, whose only caller is ``proxy.pool.lease.Lease``.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, final

from proxy.auth.errors import UpstreamAuthError
from proxy.auth.upstream import UpstreamAuthenticator
from proxy.backend.context import TenantContext
from proxy.backend.prepared import (
    Amend,
    Emit,
    ServerStatements,
    schema_changed,
    statements_lost,
)
from proxy.wire import messages
from proxy.wire.errors import ProtocolViolation
from proxy.wire.framing import BackendScanner
from proxy.wire.tags import AuthCode, BackendTag

if TYPE_CHECKING:
    from proxy.config import DatabaseConfig

log = logging.getLogger("pgtenant.server")

_Z = BackendTag.READY_FOR_QUERY
_E = BackendTag.ERROR_RESPONSE
_S = BackendTag.PARAMETER_STATUS
_C = BackendTag.COMMAND_COMPLETE

_N = BackendTag.NOTICE_RESPONSE

# What the forwarding path needs to look at; every other message is only framed.
FORWARD_TAGS = frozenset({_Z, _E, _S, _C, _N})
# The SQLSTATE of the WARNING pgtenant.current_tenant() raises when the tenant setting
# holds a value its proof does not vouch for (policies/sql/install.sql).
FORGED_CONTEXT_SQLSTATE = b"CPT401\x00"
HANDSHAKE_TAGS = frozenset({
    BackendTag.AUTHENTICATION, BackendTag.BACKEND_KEY_DATA, BackendTag.NEGOTIATE_PROTOCOL_VERSION,
    BackendTag.NOTICE_RESPONSE, _Z, _E, _S,
})
ALL_TAGS = frozenset(range(256))
# What an Amend entry changes or reads; other messages (rows above all) pass as bytes.
AMEND_TAGS = FORWARD_TAGS | {BackendTag.PARSE_COMPLETE, BackendTag.PARAMETER_DESCRIPTION,
                             BackendTag.ROW_DESCRIPTION, BackendTag.NO_DATA}
# Bytes held back while a cancel is in flight beyond which the client stops being read.
_HOLD_HIGH_WATER = 256 * 1024

# Command tags after which the session's settings (tenant included) may have changed.
_CONTEXT_CHANGING_TAGS = (b"SET", b"RESET", b"DISCARD ALL", b"DISCARD")
# Command tags after which prepared statements may no longer match the schema.
_SCHEMA_CHANGING_TAGS = (b"ALTER ", b"CREATE ", b"DROP ")

# The scrub: everything one tenant's clients could have left on a backend, removed before
# another tenant's client runs anything on it. Without statements of the proxy's own on
# the backend, that is DISCARD ALL (one utility statement, the cheapest). With them, it
# is DISCARD ALL less DEALLOCATE ALL: the proxy's statements survive when the last
# statement proves them intact. One Query, so one implicit transaction: it applies whole
# or not at all. Names are schema-qualified: RESET ALL restores the role's search_path,
# which is not ours to trust.
_DISCARD_ALL = messages.query("DISCARD ALL")
SCRUB_SQL = (
    "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; RESET ROLE; UNLISTEN *; "
    "SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD PLANS; DISCARD SEQUENCES; "
    "DISCARD TEMP; SELECT pg_catalog.count(*) FILTER (WHERE from_sql), pg_catalog.count(*) "
    "FROM pg_catalog.pg_prepared_statements")
_SCRUB = messages.query(SCRUB_SQL)
_DEALLOCATE_ALL = messages.query("DEALLOCATE ALL")


class ServerState(enum.Enum):
    CONNECTING = "connecting"
    IDLE = "idle"          # in the pool
    ACTIVE = "active"      # leased to a client
    KEPT = "kept"          # idle, still linked to its last client (transaction mode)
    CLOSED = "closed"


class ContextMark(enum.Enum):
    """The tenant states that carry no tenant (see :data:`TenantState`)."""

    PRISTINE = "pristine"  # fresh or reset by the pool: the setting holds the role's default
    UNKNOWN = "unknown"    # something may have changed it: set it again, and wait, first


PRISTINE = ContextMark.PRISTINE
UNKNOWN = ContextMark.UNKNOWN


@final
class Stale:
    """A client ran RESET or DISCARD after the proxy set ``tenant``: the tenant setting
    holds that tenant or the role's default (never another tenant), the client's other
    settings must be set again. The set may be pipelined for ``tenant``'s clients."""

    __slots__ = ("tenant",)

    def __init__(self, tenant: str | None) -> None:
        self.tenant = tenant

    def __eq__(self, other: object) -> bool:
        return type(other) is Stale and other.tenant == self.tenant

    def __hash__(self) -> int:
        return hash(self.tenant)

    def __repr__(self) -> str:
        return f"Stale({self.tenant!r})"


# What the proxy knows of the tenant setting on a server connection, as one value:
# PRISTINE; set to exactly a context (the TenantContext itself: no wrapper, so the hot
# path is an identity check against the client's context); Stale(tenant); UNKNOWN.
# Changed only through ServerConnection's named methods: apply_context (the Lease, the
# only caller), adopt_context and mark_context_unknown (the Lease), the reply routing
# (SET/RESET/DISCARD, the forged-context warning, a failed set) and reset_done (the
# pool's reset).
TenantState = TenantContext | Stale | ContextMark


class _Nobody:
    """The owner of a server connection no client has used yet."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOBODY"


NOBODY = _Nobody()


class ServerError(Exception):
    """The server connection failed or refused the proxy; safe to show to the client."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate or "08006"


class Receiver(Protocol):
    """The client side a server connection forwards to."""

    def forward_to_client(self, data: bytes) -> None: ...
    def unsolicited(self, data: bytes) -> None: ...
    def server_ready(self, server: ServerConnection) -> None: ...
    def server_lost(self, server: ServerConnection, reason: str) -> None: ...
    def server_paused_writing(self, paused: bool) -> None: ...
    def parameter_changed(self, name: str, value: str) -> None: ...
    def statements_cleared(self) -> None: ...
    def server_reclaimed(self, server: ServerConnection) -> None: ...
    def server_error(self, body: bytes) -> None: ...
    def forged_context(self) -> None: ...
    def query_timed_out(self, server: ServerConnection) -> None: ...


class _Forward:
    """Queue entry for a client request: its reply goes to the client as received."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "FORWARD"


FORWARD = _Forward()


class Collect:
    """A proxy-issued query whose reply messages are gathered and handed to a future."""

    __slots__ = ("future", "messages")

    def __init__(self, future: asyncio.Future[list[tuple[int, bytes]]]) -> None:
        self.future = future
        self.messages: list[tuple[int, bytes]] = []


class Skip:
    """A proxy-issued request whose reply is dropped; the future says whether it succeeded."""

    __slots__ = ("error", "future")

    def __init__(self, future: asyncio.Future[dict[str, str] | None] | None) -> None:
        self.future = future
        self.error: dict[str, str] | None = None


Entry = _Forward | Skip | Collect | Emit | Amend


_server_ids = itertools.count(1)


class ServerConnection(asyncio.Protocol):
    """One PostgreSQL backend connection owned by a pool."""

    def __init__(self, db: DatabaseConfig) -> None:
        self.id = next(_server_ids)
        self.db = db
        self.state = ServerState.CONNECTING
        self.transport: asyncio.Transport | None = None
        self.scanner = BackendScanner(HANDSHAKE_TAGS)
        self.pending: deque[Entry] = deque()
        self.receiver: Receiver | None = None
        self.params: dict[str, str] = {}
        self.backend_pid = 0
        self.backend_key = b""
        self.tx_status = b"I"
        self.unsynced = False
        self.lessee: str | None = None  # the tenant whose client holds it (pool bookkeeping)
        # A client ran SET/RESET/DISCARD: settings beyond the context may differ from the
        # role's defaults, so the pool resets it (RESET ALL) before another client. Set by
        # the reply routing, cleared by reset_done; independent of tenant_state (a context
        # set restores the client's settings, not the others).
        self.session_dirty = False
        self._corked = b""   # proxy bytes waiting to go out with the next client write
        self.statements = ServerStatements(db.max_prepared_statements)
        self.lost: asyncio.Future[None] | None = None  # done when the socket is closed
        self.tenant_state: TenantState = PRISTINE
        # The tenant whose clients have used this backend since it was last scrubbed
        # (None: a bypass identity). Another tenant gets it only after the scrub.
        self.owner: str | _Nobody | None = NOBODY
        self.scrubs = 0
        self.created_at = time.monotonic()
        self.last_used = self.created_at
        self._handshake: asyncio.Future[None] | None = None
        self._auth: UpstreamAuthenticator | None = None
        self._tls_answer: asyncio.Future[bytes] | None = None
        self._paused_reading = False
        # Set by the pool; called once when the connection is gone for good.
        self.on_closed: Callable[[ServerConnection], None] | None = None
        # CancelRequests sent to PostgreSQL for this backend and not yet closed by it. While
        # any is in flight nothing new is written (a cancel interrupts whatever runs when it
        # lands), and the pool leases the connection to no one; after_cancel is called
        # when the last one is done.
        self.cancels = 0
        self.ending = False  # PostgreSQL sent FATAL: never offered to anyone again
        self._held: list[bytes] = []
        self.after_cancel: Callable[[ServerConnection], None] | None = None
        # query_timeout: when the oldest outstanding client request was sent (0: none).
        self.waiting_since = 0.0
        self._timed_out = 0.0
        self._query_timer: asyncio.TimerHandle | None = None

    # ---- connecting -------------------------------------------------------------------

    @classmethod
    async def connect(cls, db: DatabaseConfig, password: str | None) -> ServerConnection:
        """Open, negotiate TLS per sslmode, authenticate and wait for ReadyForQuery."""
        loop = asyncio.get_running_loop()
        server = cls(db)
        try:
            async with asyncio.timeout(db.server_connect_timeout):
                if db.host.startswith("/"):
                    path = f"{db.host}/.s.PGSQL.{db.port}"
                    await loop.create_unix_connection(lambda: server, path)
                else:
                    await loop.create_connection(lambda: server, db.host, db.port)
                await server._negotiate_tls(loop)
                await server._authenticate(password)
        except TimeoutError:
            server.close()
            raise ServerError(
                f"could not connect to upstream {db.host}:{db.port} within "
                f"server_connect_timeout ({db.server_connect_timeout:g}s)") from None
        except OSError as os_error:
            server.close()
            raise ServerError(f"could not connect to upstream {db.host}:{db.port}: "
                              f"{os_error.strerror or os_error}") from None
        except (ServerError, UpstreamAuthError, ProtocolViolation, ssl.SSLError) as exc:
            server.close()
            if isinstance(exc, ServerError):
                raise
            raise ServerError(f"upstream {db.host}:{db.port}: {exc}") from None
        except BaseException:  # cancelled (shutdown): leave no socket behind
            server.close()
            raise
        server.scanner.interesting = FORWARD_TAGS
        server.state = ServerState.IDLE
        return server

    async def _negotiate_tls(self, loop: asyncio.AbstractEventLoop) -> None:
        mode = self.db.sslmode
        if mode == "disable" or self.db.host.startswith("/"):
            return
        assert self.transport is not None
        self._tls_answer = loop.create_future()
        self.transport.write(messages.ssl_request())
        answer = await self._tls_answer
        self._tls_answer = None
        if answer == b"N":
            if mode == "prefer":
                return
            raise ServerError(f"upstream does not support TLS but sslmode={mode}")
        if answer != b"S":
            raise ServerError("upstream sent an invalid answer to SSLRequest")
        ctx = ssl.create_default_context(cafile=self.db.sslrootcert)
        if mode in ("prefer", "require"):
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif mode == "verify-ca":
            ctx.check_hostname = False
        new = await loop.start_tls(self.transport, self, ctx, server_hostname=self.db.host)
        if new is None:
            raise ServerError("TLS handshake with upstream failed")
        self.transport = new  # type: ignore[assignment]

    async def _authenticate(self, password: str | None) -> None:
        assert self.transport is not None
        self._auth = UpstreamAuthenticator(self.db.user, password)
        self._handshake = asyncio.get_running_loop().create_future()
        self.transport.write(messages.startup_message(
            {"user": self.db.user, "database": self.db.upstream_dbname}))
        await self._handshake
        self._handshake = None
        self._auth = None

    def _handshake_message(self, tag: int, body: bytes) -> None:
        fut = self._handshake
        assert fut is not None and self._auth is not None and self.transport is not None
        if fut.done():
            return
        if tag == BackendTag.AUTHENTICATION:
            code, payload = messages.decode_authentication(body)
            try:
                reply = self._auth.respond(code, payload)
            except UpstreamAuthError as exc:
                fut.set_exception(exc)
                return
            if reply:
                self.transport.write(reply)
            elif code == AuthCode.OK:
                pass
        elif tag == BackendTag.PARAMETER_STATUS:
            name, value = messages.decode_parameter_status(body)
            self.params[name] = value
        elif tag == BackendTag.BACKEND_KEY_DATA:
            self.backend_pid, self.backend_key = messages.decode_backend_key_data(body)
        elif tag == _E:
            fields = messages.decode_error_fields(body)
            fut.set_exception(ServerError(
                f"upstream refused the proxy's connection: {fields.get('M', 'unknown error')}",
                fields.get("C")))
        elif tag == _Z:
            self.tx_status = messages.decode_ready_for_query(body)
            fut.set_result(None)

    # ---- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.lost = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if self._tls_answer is not None and not self._tls_answer.done():
            # The one-byte answer to SSLRequest; nothing else may follow it in plaintext.
            if len(data) != 1:
                self._tls_answer.set_exception(ServerError("unexpected data after SSLRequest"))
            else:
                self._tls_answer.set_result(data)
            return
        try:
            events = self.scanner.feed(data)
        except ProtocolViolation as exc:
            self._fail(f"protocol violation from upstream: {exc}")
            return
        if self._handshake is not None:
            try:
                for tag, _end, body in events:
                    self._handshake_message(tag, body)
            except ProtocolViolation as exc:
                if not self._handshake.done():
                    self._handshake.set_exception(exc)
            return
        self._relay(data, events)

    def _relay(self, data: bytes, events: list[tuple[int, int, bytes]]) -> None:
        """Route one chunk by the pending-reply queue: forward, skip or collect."""
        receiver = self.receiver
        pending = self.pending
        if not events and (pending[0] is FORWARD if pending else self.unsynced):
            # Hot path: a chunk in the middle of the client's reply.
            if receiver is not None:
                receiver.forward_to_client(data)
            return
        out: list[bytes] = []
        start = 0
        ready = False
        going_away = b""
        for tag, end, body in events:
            head = pending[0] if pending else FORWARD
            forwarded = head is FORWARD
            if type(head) is Amend:
                # The bytes since the last event end with this message, whole: a start
                # received in an earlier chunk was held.
                forwarded = True
                piece = data[start:end]
                if head.held:
                    piece, head.held = head.held + piece, b""
                out.append(head.message(tag, piece, body))
                start = end
            if tag == _Z:
                self.tx_status = body[:1]
                if pending:
                    pending.popleft()
                if head is FORWARD:
                    out.append(data[start:end])
                elif isinstance(head, Collect):
                    head.messages.append((tag, body))
                    if not head.future.done():
                        head.future.set_result(head.messages)
                elif isinstance(head, Skip) and head.future is not None and not head.future.done():
                    head.future.set_result(head.error)
                while pending and type(pending[0]) is Emit:
                    out.append(pending.popleft().data)  # type: ignore[union-attr]
                if type(head) is Amend:
                    self._restore_interest(None)
                start = end
                ready = True
                continue
            if isinstance(head, Collect):
                head.messages.append((tag, body))
                continue
            if tag == _S:
                self._parameter_status(body, forwarded)
            elif tag == _E:
                if b"\x00VFATAL\x00" in body or b"\x00VPANIC\x00" in body:
                    going_away = body  # PostgreSQL ends the session: never reuse it
                if self.statements.unconfirmed:
                    self.statements.invalidate_unconfirmed()
                if forwarded:
                    if statements_lost(body):
                        self.statements.invalidate_all()
                    if receiver is not None:
                        receiver.server_error(body)
                elif isinstance(head, Skip) and head.error is None:
                    try:
                        head.error = messages.decode_error_fields(body)
                    except ProtocolViolation:
                        head.error = {"M": "malformed error from upstream"}
            elif tag == _C and forwarded and body.startswith(_CONTEXT_CHANGING_TAGS):
                # The client ran SET/RESET/DISCARD: re-establish the context before its next
                # transaction. After SET the tenant setting could hold anything; RESET and
                # DISCARD can only restore the default.
                self._session_changed(body.startswith(b"SET"))
                if body.startswith(b"DISCARD ALL"):
                    self._statements_cleared()
            elif tag == _C and forwarded and body.startswith(b"DEALLOCATE ALL"):
                self._statements_cleared()
            elif tag == _C and forwarded and body.startswith(_SCHEMA_CHANGING_TAGS):
                # DDL: statements prepared before it may describe what no longer is, on
                # every server connection; each prepares afresh at its next use, as a
                # driver that re-prepares after DDL expects (psycopg does).
                schema_changed()
            elif tag == _N and FORGED_CONTEXT_SQLSTATE in body:
                # The database saw a tenant setting its proof does not vouch for: whatever
                # the proxy believes, re-set the context before anything else runs here.
                # Counted once per request (one warning per protected table it reads).
                if self.tenant_state is not UNKNOWN:
                    self.mark_context_unknown()
                    if forwarded and receiver is not None:
                        receiver.forged_context()
        head = pending[0] if pending else FORWARD
        unsolicited = b""
        if type(head) is Amend and start < len(data):
            # Forward all but the start of a message the Amend may change.
            tail = head.held + data[start:]
            keep = min(self.scanner.partial_interesting(), len(tail))
            head.held = tail[len(tail) - keep:] if keep else b""
            if keep < len(tail):
                out.append(tail[:len(tail) - keep])
        elif head is FORWARD and start < len(data):
            tail = data[start:] if start else data
            if pending or self.unsynced:
                out.append(tail)
            else:
                # Nothing outstanding: no reply to anything the client sent (a NOTIFY, a
                # notice, the FATAL of a backend going away); the receiver decides.
                unsolicited = tail
        if receiver is not None:
            if out:
                receiver.forward_to_client(out[0] if len(out) == 1 else b"".join(out))
            if unsolicited:
                receiver.unsolicited(unsolicited)
        if going_away:
            # PostgreSQL is closing this session. Idle in the pool (or kept): forget it
            # now. With a client: it got the FATAL; the pool closes the connection when
            # it comes back (a FATAL right after the client's last ReadyForQuery is not
            # the client's).
            self.ending = True
            if receiver is None or self.state is ServerState.KEPT:
                self._ended_by_server(going_away)
                return
        if ready and self.waiting_since:
            self.waiting_since = time.monotonic() if pending else 0.0
        if ready and not pending:
            if self.statements.unconfirmed:
                self.statements.confirm()
            self.last_used = time.monotonic()
            if receiver is not None:
                receiver.server_ready(self)

    def _statements_cleared(self) -> None:
        self.statements.clear()
        if self.receiver is not None:
            self.receiver.statements_cleared()

    def _parameter_status(self, body: bytes, forwarded: bool) -> None:
        try:
            name, value = messages.decode_parameter_status(body)
        except ProtocolViolation:
            return
        self.params[name] = value
        if forwarded and self.receiver is not None:
            self.receiver.parameter_changed(name, value)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"upstream connection lost: {exc}" if exc else "upstream closed the connection"
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(ServerError(reason))
        if self._tls_answer is not None and not self._tls_answer.done():
            self._tls_answer.set_exception(ServerError(reason))
        self._fail(reason)

    def pause_writing(self) -> None:
        if self.receiver is not None:
            self.receiver.server_paused_writing(True)

    def resume_writing(self) -> None:
        if self.receiver is not None:
            self.receiver.server_paused_writing(False)

    # ---- used by the client session and the pool ------------------------------------

    def send(self, data: bytes, expected_replies: int, unsynced: bool = False) -> None:
        """Write client messages; ``expected_replies`` ReadyForQuery replies will be forwarded.

        ``unsynced``: the data ends in extended-protocol messages with no Sync after them
        (a Flush, say): the server is mid-batch and must stay with this client until a
        later Sync completes.
        """
        assert self.transport is not None
        if expected_replies:
            self.pending.extend([FORWARD] * expected_replies)
            if self.db.query_timeout and not self.waiting_since:
                self._start_query_timer()
        self.unsynced = unsynced
        self._write(data)

    def send_entries(self, data: bytes, entries: list[Entry], unsynced: bool) -> None:
        """Like ``send``, with the pending entries spelled out (replies the proxy makes
        itself, ``Emit``, among the client's). An Emit with nothing before it goes now."""
        assert self.transport is not None
        pending = self.pending
        for entry in entries:
            if not pending and type(entry) is Emit and not self.unsynced:
                if self.receiver is not None:
                    self.receiver.forward_to_client(entry.data)  # type: ignore[union-attr]
            else:
                if type(entry) is Amend and self.scanner.interesting is FORWARD_TAGS:
                    self.scanner.interesting = AMEND_TAGS
                pending.append(entry)
        if pending and self.db.query_timeout and not self.waiting_since:
            self._start_query_timer()
        self.unsynced = unsynced
        if data or self._corked:
            self._write(data)

    def send_internal(self, data: bytes, entry: Skip | Collect, *, corked: bool = False
                      ) -> None:
        """Write a request of the proxy's own, ending in exactly one Sync or Query.

        ``corked``: hold the bytes until the next send (the caller sends the client's
        messages right after), so both go out in one write.
        """
        assert self.transport is not None
        if isinstance(entry, Collect):
            self.scanner.interesting = ALL_TAGS
            entry.future.add_done_callback(self._restore_interest)
        self.pending.append(entry)
        if corked:
            self._corked += data
        else:
            self._write(data)

    def flush_cork(self) -> None:
        """Write corked bytes now (nothing of the client's followed them)."""
        if self._corked:
            self._write(b"")

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        corked = self._corked
        if corked:
            self._corked = b""
            data = corked + data
        if self.cancels:
            self._hold(data)
            return
        self.transport.write(data)

    # ---- cancel requests in flight -----------------------------------------------------

    def cancel_started(self) -> None:
        """A CancelRequest for this backend is on its way: write nothing new until
        :meth:`cancel_finished` (PostgreSQL has closed the cancel connection)."""
        self.cancels += 1

    def cancel_finished(self) -> None:
        """PostgreSQL closed the cancel connection (or it was never sent): what was
        written meanwhile goes out now; the pool may lease the connection again."""
        self.cancels -= 1
        if self.cancels:
            return
        held, self._held = self._held, []
        if held and self.state is not ServerState.CLOSED and self.transport is not None \
                and not self.transport.is_closing():
            self.transport.write(b"".join(held))
        if sum(map(len, held)) > _HOLD_HIGH_WATER:
            self.resume_writing()
        callback, self.after_cancel = self.after_cancel, None
        if callback is not None:
            callback(self)

    def _hold(self, data: bytes) -> None:
        held = self._held
        before = sum(map(len, held))
        held.append(data)
        if before <= _HOLD_HIGH_WATER < before + len(data):
            self.pause_writing()  # backpressure: stop reading from the client meanwhile

    # ---- query_timeout -----------------------------------------------------------------

    def _start_query_timer(self) -> None:
        self.waiting_since = time.monotonic()
        if self._query_timer is None:
            self._query_timer = asyncio.get_running_loop().call_later(
                self.db.query_timeout, self._query_timer_fired)

    def _query_timer_fired(self) -> None:
        """One timer per connection, re-armed lazily: cheap when replies come in time."""
        self._query_timer = None
        since = self.waiting_since
        if not since or self.state is ServerState.CLOSED:
            return
        timeout = self.db.query_timeout
        left = since + timeout - time.monotonic()
        if left <= 0:
            if since != self._timed_out and self.receiver is not None:
                self._timed_out = since  # told once per request
                self.receiver.query_timed_out(self)
            left = timeout
        # Runs while anything is outstanding (a pipeline's next request starts the clock
        # again at each ReadyForQuery).
        self._query_timer = asyncio.get_running_loop().call_later(left, self._query_timer_fired)

    def _restore_interest(self, _fut: object) -> None:
        interest: frozenset[int] = FORWARD_TAGS
        for entry in self.pending:
            if type(entry) is Collect:
                interest = ALL_TAGS
                break
            if type(entry) is Amend:
                interest = AMEND_TAGS
        self.scanner.interesting = interest

    async def query(self, sql: str, params: list[bytes | None] | None = None
                    ) -> list[tuple[int, bytes]]:
        """Run a query of the proxy's own; return its reply messages.

        With ``params``, through the extended protocol: values are bind parameters, never
        spliced into the text.
        """
        fut: asyncio.Future[list[tuple[int, bytes]]] = asyncio.get_running_loop().create_future()
        if params is None:
            request = messages.query(sql)
        else:
            request = b"".join((messages.parse("", sql), messages.bind("", "", params),
                                messages.execute(), messages.sync()))
        self.send_internal(request, Collect(fut))
        return await fut

    def apply_context(self, context: TenantContext, *, corked: bool = False
                      ) -> asyncio.Future[dict[str, str] | None]:
        """Send the tenant context; the future gives None on success or the error fields.

        The one place a backend changes hands between tenants: when it last served
        another tenant, the scrub goes first. Called only by ``proxy.pool.lease.Lease``,
        which decides whether the client's messages may follow before the answer.
        """
        loop = asyncio.get_running_loop()
        if self.owner != context.tenant and self.owner is not NOBODY:
            self.scrubs += 1
            if self.statements.by_key or self.statements.orphans:
                checked: asyncio.Future[list[tuple[int, bytes]]] = loop.create_future()
                self.send_internal(_SCRUB, Collect(checked), corked=corked)
                checked.add_done_callback(self._scrubbed)
            else:
                discarded: asyncio.Future[dict[str, str] | None] = loop.create_future()
                self.send_internal(_DISCARD_ALL, Skip(discarded), corked=corked)
                discarded.add_done_callback(self._discarded)
        fut: asyncio.Future[dict[str, str] | None] = loop.create_future()
        self.send_internal(context.messages(self.backend_pid), Skip(fut), corked=corked)
        self.tenant_state = context
        self.owner = context.tenant
        fut.add_done_callback(self._context_applied)
        return fut

    def _scrubbed(self, fut: asyncio.Future[list[tuple[int, bytes]]]) -> None:
        """Check the scrub's answer (before the context set's answer is acted on: both
        futures resolve in reply order). Fail-closed: a scrub that did not complete
        closes the backend, and the waiting client is told by ``server_lost``."""
        if fut.cancelled() or fut.exception() is not None:
            return
        counts: list[int] = []
        for tag, body in fut.result():
            if tag == _E:
                self._scrub_failed(messages.decode_error_fields(body))
                return
            if tag == _S:
                self._parameter_status(body, False)
            elif tag == BackendTag.DATA_ROW:
                counts = [int(v or b"-1") for v in messages.decode_data_row(body)]
        statements = self.statements
        expected = len(statements.by_key) + len(statements.orphans)
        if counts != [0, expected]:
            # SQL-level PREPARE, or the proxy's statements changed behind its back: none
            # of them can be trusted. DEALLOCATE ALL goes out before the client's messages.
            log.info("server #%s: prepared statements not as the proxy left them %s; "
                     "deallocating all", self.id, counts)
            statements.clear()
            self.send_internal(_DEALLOCATE_ALL, Skip(None))

    def _discarded(self, fut: asyncio.Future[dict[str, str] | None]) -> None:
        """DISCARD ALL as the scrub: fail-closed like :meth:`_scrubbed`."""
        if fut.cancelled() or fut.exception() is not None:
            return
        error = fut.result()
        if error is not None:
            self._scrub_failed(error)

    def _scrub_failed(self, error: dict[str, str]) -> None:
        log.warning("server #%s: the scrub between tenants failed (%s); closing it",
                    self.id, error.get("M", "?"))
        self._fail("the scrub between tenants failed")

    def mark_context_unknown(self) -> None:
        """A statement may have changed the tenant setting: re-set it (waiting for the
        set) before anything else runs here."""
        self.tenant_state = UNKNOWN

    def adopt_context(self, context: TenantContext) -> None:
        """The server, set to a context, carries ``context`` as well (an equal one, or
        settings the server itself reported changing): record it as set. Any other
        state stays: a context the proxy does not know to be set is set again."""
        if type(self.tenant_state) is TenantContext:
            self.tenant_state = context

    def _session_changed(self, setting: bool) -> None:
        """A client's SET (``setting``), RESET or DISCARD completed. After SET the tenant
        setting could hold anything; RESET and DISCARD can only restore the default."""
        self.session_dirty = True
        state = self.tenant_state
        if setting:
            self.tenant_state = UNKNOWN
        elif type(state) is TenantContext:
            self.tenant_state = Stale(state.tenant)

    def reset_done(self) -> None:
        """The pool's reset query (RESET ALL, server_reset_query) completed: the session
        holds the role's defaults again."""
        self.tenant_state = PRISTINE
        self.session_dirty = False

    def _context_applied(self, fut: asyncio.Future[dict[str, str] | None]) -> None:
        if fut.cancelled() or fut.exception() is not None or fut.result() is not None:
            # Failed: the setting is whatever it was before; never trust it again.
            self.tenant_state = UNKNOWN

    @property
    def runs_client_request(self) -> bool:
        """The next reply answers a client's request (not one of the proxy's own)."""
        pending = self.pending
        return bool(pending) and (pending[0] is FORWARD or type(pending[0]) is Amend)

    @property
    def is_clean(self) -> bool:
        """Idle, nothing outstanding: the only state in which it may serve another client."""
        return (self.state is not ServerState.CLOSED and not self.pending
                and self.tx_status == b"I" and not self.unsynced)

    def pause_reading(self, paused: bool) -> None:
        if self.transport is None or paused == self._paused_reading:
            return
        self._paused_reading = paused
        if paused:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def close(self) -> None:
        """Close the connection (politely: Terminate first when it is usable)."""
        if self.state is ServerState.CLOSED:
            return
        self.state = ServerState.CLOSED
        if self.transport is not None and not self.transport.is_closing():
            if self._handshake is None:
                self.transport.write(messages.terminate())
            self.transport.close()

    def _ended_by_server(self, body: bytes) -> None:
        try:
            message = messages.decode_error_fields(body).get("M", "")
        except ProtocolViolation:
            message = "malformed error"
        self._fail(f"upstream ended the session: {message}")

    def _fail(self, reason: str) -> None:
        kept = self.state is ServerState.KEPT
        self.state = ServerState.CLOSED
        if self._query_timer is not None:
            self._query_timer.cancel()
            self._query_timer = None
        if self.transport is not None:
            self.transport.close()
        for entry in self.pending:
            if isinstance(entry, (Skip, Collect)) and entry.future is not None \
                    and not entry.future.done():
                entry.future.set_exception(ServerError(reason))
        self.pending.clear()
        receiver = self.receiver
        if receiver is not None:
            if kept:  # idle between its client's transactions: as if idle in the pool
                self.receiver = None
                receiver.server_reclaimed(self)
            else:
                receiver.server_lost(self, reason)
        if self.on_closed is not None:
            callback, self.on_closed = self.on_closed, None
            callback(self)

    def __repr__(self) -> str:
        return f"<ServerConnection #{self.id} {self.state.value} pid={self.backend_pid}>"
