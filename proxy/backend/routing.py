"""One backend's reply routing, without I/O: bytes in, calls out.

:class:`BackendSession` is everything the proxy knows about one PostgreSQL session once
it is logged in and the rules that change it: the state, kept by its base
:class:`~proxy.backend.session_state.SessionState` (what was asked and in which order:
the pending-reply queue, PgBouncer's; what the last ReadyForQuery said; what the tenant
setting holds), and here the routing of the server's bytes and the writes to it. Bytes
from the server go in through :meth:`BackendSession.data_received`; what follows goes
out as calls on the linked client (:class:`Receiver`), on the futures of the proxy's own
requests (any ``Outcome``, :mod:`proxy.backend.replies`) and as writes on a
:class:`~proxy.backend.session_state.Transport`.
Nothing here imports asyncio or reads a clock of its own (``clock`` is given), so the
whole routing is driven by bytes in unit tests, byte by byte if need be, with a fake clock
and a recording transport (``tests/unit/test_routing.py``).

``proxy.backend.server.ServerConnection`` adds the I/O: connecting, TLS and
authentication, the query timer, the tenant context set and scrub (which create futures).

The pending-reply queue (:class:`~proxy.backend.replies.ReplyQueue`) holds one entry per
expected ReadyForQuery:

- ``FORWARD``: the client's request; bytes go to the linked client as received;
- ``Skip``: the proxy's own request (tenant context, reset); bytes are dropped, errors
  are noted, and the entry's outcome is resolved when its ReadyForQuery arrives;
- a ``Collect`` entry: the proxy's own query whose messages it wants to read;
- an ``Amend`` entry: the client's request, its reply forwarded message by message with
  the changes of ``proxy.backend.prepared`` (statement names the client never sees);
- an ``Emit`` entry: a reply the proxy makes itself, written after the entry before it.

A server connection may go back to the pool only when this queue is empty and the last
ReadyForQuery said 'I' (``is_clean``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

from proxy.backend.context import UNKNOWN
from proxy.backend.replies import FORWARD, Collect, Entry, Skip
from proxy.backend.session_state import ServerError, ServerState, SessionState, Transport
from proxy.backend.statements import Amend, Emit, schema_changed, statements_lost
from proxy.build import mypyc_attr
from proxy.wire import messages
from proxy.wire.errors import ProtocolViolation
from proxy.wire.framing import BackendScanner, TagSet

# Reply tags by the short names this module's code uses (B_: from the server); imported,
# the Final ints are constants in the compiled C.
from proxy.wire.tags import B_COMMAND_COMPLETE as _C
from proxy.wire.tags import B_ERROR_RESPONSE as _E
from proxy.wire.tags import B_NOTICE_RESPONSE as _N
from proxy.wire.tags import B_PARAMETER_STATUS as _S
from proxy.wire.tags import B_READY_FOR_QUERY as _Z
from proxy.wire.tags import BackendTag

if TYPE_CHECKING:
    from proxy.config import DatabaseConfig


# What the forwarding path needs to look at; every other message is only framed.
FORWARD_TAGS: Final = TagSet({_Z, _E, _S, _C, _N})
# The SQLSTATE of the WARNING pgtenant.current_tenant() raises when the tenant setting
# holds a value its proof does not vouch for (policies/sql/install.sql).
FORGED_CONTEXT_SQLSTATE: Final = b"CPT401\x00"
HANDSHAKE_TAGS: Final = TagSet({
    BackendTag.AUTHENTICATION, BackendTag.BACKEND_KEY_DATA, BackendTag.NEGOTIATE_PROTOCOL_VERSION,
    BackendTag.NOTICE_RESPONSE, _Z, _E, _S,
})
ALL_TAGS: Final = TagSet(range(256))
# What an Amend entry changes or reads; other messages (rows above all) pass as bytes.
AMEND_TAGS: Final = FORWARD_TAGS | {BackendTag.PARSE_COMPLETE, BackendTag.PARAMETER_DESCRIPTION,
                             BackendTag.ROW_DESCRIPTION, BackendTag.NO_DATA}
# ReadyForQuery's transaction statuses, one object each.
_IDLE: Final = b"I"
_IN_TX: Final = b"T"
_FAILED_TX: Final = b"E"
# The first bytes of the CommandComplete tags _route looks at: SET, RESET, DISCARD,
# DEALLOCATE, ALTER, CREATE, DROP (a table of 256, 1 where a watched tag may start).
_WATCHED_COMMAND: Final = bytes(1 if chr(b) in "ACDRS" else 0 for b in range(256))
# Bytes held back while a cancel is in flight beyond which the client stops being read.
HOLD_HIGH_WATER: Final = 256 * 1024


class ContextSetDone(Protocol):
    """A context set's future once done, as its receiver reads it (an asyncio future;
    this module stays free of asyncio)."""

    def cancelled(self) -> bool: ...
    def exception(self) -> BaseException | None: ...
    def result(self) -> dict[str, str] | None: ...


@mypyc_attr(allow_interpreted_subclasses=True)
class Receiver:
    """The client side a server connection forwards to (``ClientRelay``; stand-ins in
    tests subclass it). A base class, not a Protocol: compiled, a call through a native
    class is a vtable call, through a Protocol a Python method call."""

    __slots__ = ()

    def forward_to_client(self, data: bytes) -> None:
        raise NotImplementedError

    def unsolicited(self, data: bytes) -> None:
        raise NotImplementedError

    def server_ready(self, server: BackendSession) -> None:
        raise NotImplementedError

    def server_lost(self, server: BackendSession, reason: str) -> None:
        raise NotImplementedError

    def server_paused_writing(self, paused: bool) -> None:
        raise NotImplementedError

    def parameter_changed(self, name: str, value: str) -> None:
        raise NotImplementedError

    def statements_cleared(self) -> None:
        raise NotImplementedError

    def server_reclaimed(self, server: BackendSession) -> None:
        raise NotImplementedError

    def server_error(self, body: bytes) -> None:
        raise NotImplementedError

    def forged_context(self) -> None:
        raise NotImplementedError

    def query_timed_out(self, server: BackendSession) -> None:
        raise NotImplementedError

    def pipelined_context_done(self, fut: ContextSetDone) -> None:
        """How a context set sent in front of the client's messages went (the messages
        ran after it: a failed one ends the client). ``proxy.pool.lease.Lease`` adds it
        to the set's future, only when there is such a set."""
        raise NotImplementedError


class BackendSession(SessionState):
    """One logged-in PostgreSQL session: its state (:class:`SessionState`), the reply
    routing and the writes (see the module docstring)."""

    def __init__(self, db: DatabaseConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(db, clock)
        self.transport: Transport | None = None
        self.scanner = BackendScanner(HANDSHAKE_TAGS)
        self.handshaking = False  # messages go to _handshake_messages, not the routing
        self.receiver: Receiver | None = None
        self._corked = b""   # proxy bytes waiting to go out with the next client write
        self._paused_reading = False
        # CancelRequests sent to PostgreSQL for this backend and not yet closed by it. While
        # any is in flight nothing new is written (a cancel interrupts whatever runs when it
        # lands): it is held in _held (ServerConnection.cancel_finished writes it).
        self.cancels = 0
        self._held: list[bytes] = []
        # query_timeout: when the oldest outstanding client request was sent (0: none).
        self.waiting_since = 0.0

    # ---- bytes from the server ----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.handshaking and self._before_startup(data):
            return
        try:
            events = self.scanner.feed(data)
        except ProtocolViolation as exc:
            self._fail(f"protocol violation from upstream: {exc}")
            return
        if self.handshaking:
            self._handshake_messages(events)
            return
        self._route(data, events)

    def _before_startup(self, data: bytes) -> bool:
        """Bytes before the startup exchange (ServerConnection: the answer to SSLRequest);
        True when they were taken."""
        return False

    def _handshake_messages(self, events: list[tuple[int, int, bytes]]) -> None:
        """Messages of the startup exchange (ServerConnection authenticates)."""
        raise NotImplementedError

    def _route(self, data: bytes, events: list[tuple[int, int, bytes]]) -> None:
        """Route one chunk by the pending-reply queue: forward, skip or collect."""
        receiver = self.receiver
        pending = self.pending
        if not events and (pending.first() is FORWARD if pending else self.unsynced):
            # Hot path: a chunk in the middle of the client's reply.
            if receiver is not None:
                receiver.forward_to_client(data)
            return
        out: list[bytes] = []
        start = 0
        ready = False
        going_away = b""
        for tag, end, body in events:
            head = pending.first() if pending else FORWARD
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
                # (The common statuses without a new bytes object each time. len(): compiled,
                # a bytes object's truth is a generic call, its length a field read.)
                status = body[0] if len(body) else -1
                self.tx_status = (_IDLE if status == 0x49 else _IN_TX if status == 0x54
                                  else _FAILED_TX if status == 0x45 else body[:1])
                if pending:
                    pending.popleft()
                if head is FORWARD:
                    # (Compiled, a slice copies even when it is all of ``data``.)
                    out.append(data if start == 0 and end == len(data) else data[start:end])
                elif isinstance(head, Collect):
                    head.messages.append((tag, body))
                    self._restore_interest()
                    if not head.future.done():
                        head.future.set_result(head.messages)
                elif isinstance(head, Skip) and head.future is not None and not head.future.done():
                    head.future.set_result(head.error)
                while pending and type(pending.first()) is Emit:
                    out.append(pending.popleft().data)  # type: ignore[union-attr]
                if type(head) is Amend:
                    self._restore_interest()
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
                    if receiver is not None and (pending or self.unsynced):
                        receiver.server_error(body)  # (an unsolicited one is no request's)
                elif isinstance(head, Skip) and head.error is None:
                    try:
                        head.error = messages.decode_error_fields(body)
                    except ProtocolViolation:
                        head.error = {"M": "malformed error from upstream"}
            elif tag == _C and forwarded and len(body) and _WATCHED_COMMAND[body[0]]:
                # Only tags starting with A, C, D, R or S are looked at (a byte read: most
                # are SELECT, INSERT, UPDATE, COMMIT, BEGIN), and only the prefixes that
                # start with that byte. One prefix per startswith: compiled, that is a C
                # call; a tuple of prefixes is a generic method call.
                first = body[0]
                if ((first == 0x53 and body.startswith(b"SET"))
                        or (first == 0x52 and body.startswith(b"RESET"))
                        or (first == 0x44 and body.startswith(b"DISCARD"))):
                    # The client ran SET/RESET/DISCARD: re-establish the context before
                    # its next transaction. After SET the tenant setting could hold
                    # anything; RESET and DISCARD can only restore the default.
                    self._session_changed(first == 0x53)
                    if body.startswith(b"DISCARD ALL"):
                        self._statements_cleared()
                elif first == 0x44 and body.startswith(b"DEALLOCATE ALL"):
                    self._statements_cleared()
                elif ((first == 0x41 and body.startswith(b"ALTER "))
                      or (first == 0x43 and body.startswith(b"CREATE "))
                      or (first == 0x44 and body.startswith(b"DROP "))):
                    # DDL: statements prepared before it may describe what no longer is,
                    # on every server connection; each prepares afresh at its next use,
                    # as a driver that re-prepares after DDL expects (psycopg does).
                    schema_changed()
            elif tag == _N and FORGED_CONTEXT_SQLSTATE in body:
                # The database saw a tenant setting its proof does not vouch for: whatever
                # the proxy believes, re-set the context before anything else runs here.
                # Counted once per request (one warning per protected table it reads).
                if self.tenant_state is not UNKNOWN:
                    self.mark_context_unknown()
                    if forwarded and receiver is not None:
                        receiver.forged_context()
        head = pending.first() if pending else FORWARD
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
            if len(unsolicited):
                receiver.unsolicited(unsolicited)
        if len(going_away):
            # PostgreSQL is closing this session. Idle in the pool (or kept): forget it
            # now. With a client: it got the FATAL; the pool closes the connection when
            # it comes back (a FATAL right after the client's last ReadyForQuery is not
            # the client's).
            self.ending = True
            if receiver is None or self.state is ServerState.KEPT:
                self._ended_by_server(going_away)
                return
        if ready and self.waiting_since:
            self.waiting_since = self.clock() if pending else 0.0
        if ready and not pending:
            if self.statements.unconfirmed:
                self.statements.confirm()
            self.last_used = self.clock()
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

    def _restore_interest(self) -> None:
        """The scanner looks at what the entries still pending need to see."""
        interest: TagSet = FORWARD_TAGS
        for entry in self.pending:
            if type(entry) is Collect:
                interest = ALL_TAGS
                break
            if type(entry) is Amend:
                interest = AMEND_TAGS
        self.scanner.interesting = interest

    # ---- requests to the server -----------------------------------------------------------

    def send(self, data: bytes, expected_replies: int, unsynced: bool = False) -> None:
        """Write client messages; ``expected_replies`` ReadyForQuery replies will be forwarded.

        ``unsynced``: the data ends in extended-protocol messages with no Sync after them
        (a Flush, say): the server is mid-batch and must stay with this client until a
        later Sync completes.
        """
        if expected_replies:
            self.pending.append_many(FORWARD, expected_replies)
            if self.db.query_timeout and not self.waiting_since:
                self._start_query_timer()
        self.unsynced = unsynced
        self._write(data)

    def send_entries(self, data: bytes, entries: list[Entry], unsynced: bool) -> None:
        """Like ``send``, with the pending entries spelled out (replies the proxy makes
        itself, ``Emit``, among the client's). An Emit with nothing before it goes now."""
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
        if isinstance(entry, Collect):
            self.scanner.interesting = ALL_TAGS
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
        transport = self.transport
        assert transport is not None
        corked = self._corked
        if len(corked):
            self._corked = b""
            data = corked + data
        if self.cancels:
            self._hold(data)
            return
        try:
            transport.write(data)
        except RuntimeError:
            # uvloop closed the socket under us (connection_lost has run: the session
            # was lent as it died). What was just queued would wait forever: fail it.
            if self.state is ServerState.CLOSED:
                self._fail("upstream closed the connection")

    def _start_query_timer(self) -> None:
        """A client request went out with nothing outstanding: query_timeout starts."""
        self.waiting_since = self.clock()

    # ---- cancel requests in flight -----------------------------------------------------

    def _hold(self, data: bytes) -> None:
        held = self._held
        before = sum(map(len, held))
        held.append(data)
        if before <= HOLD_HIGH_WATER < before + len(data) and self.receiver is not None:
            # backpressure: stop reading from the client meanwhile
            self.receiver.server_paused_writing(True)

    # ---- the connection ------------------------------------------------------------------

    def pause_reading(self, paused: bool) -> None:
        transport = self.transport
        if transport is None or paused == self._paused_reading:
            return
        self._paused_reading = paused
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def close(self) -> None:
        """Close the connection (politely: Terminate first when it is usable)."""
        if self.state is ServerState.CLOSED:
            return
        self.state = ServerState.CLOSED
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if not self.handshaking:
                transport.write(messages.terminate())
            transport.close()

    def _ended_by_server(self, body: bytes) -> None:
        try:
            message = messages.decode_error_fields(body).get("M", "")
        except ProtocolViolation:
            message = "malformed error"
        self._fail(f"upstream ended the session: {message}")

    def _fail(self, reason: str) -> None:
        """The session is gone: what waited on it fails, its client is told (and
        ServerConnection tells the pool)."""
        kept = self.state is ServerState.KEPT
        self.state = ServerState.CLOSED
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
