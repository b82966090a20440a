"""Named prepared statements in transaction mode.

A client's statement names mean nothing on a pooled server connection: the next
transaction may run on another one. So, like PgBouncer since 1.21, the proxy keeps each
client's statements (name → the Parse message's text and parameter types, the *key*) and
gives each server connection statements of its own, named by the proxy and shared by
every client that prepares the same key. A client's batch is rewritten before it goes out.

No name a client chose ever reaches a server: the proxy's names start with a prefix that
is random per process (:data:`PREFIX`), and a client message naming a statement the client
does not have is replaced by one naming :data:`MISSING` (never prepared), whose 26000 error
the reply amendment (:class:`Amend`) turns into the error PostgreSQL would have sent with
the client's name. The server thus fails at the same point of the batch as PostgreSQL
would, and the transaction status the client sees is the server's own.

- ``Parse(name, …)``: remembered for the client. If the server already has the key and
  the Parse starts a batch, the proxy answers ParseComplete itself; otherwise (or when the
  client also describes it in the batch: it is preparing, and gets a fresh server
  statement) the Parse goes out under a new proxy name. A name the client already has:
  42P05, as PostgreSQL.
- ``Bind``/``Describe`` of a named statement: renamed. A statement the server lacks is
  prepared in line, just before, and its ParseComplete dropped from the reply.
- ``Close`` of a named statement: forgotten for the client; the server keeps its copy.
- ``DEALLOCATE`` (simple query): answered as PostgreSQL would, one CommandComplete, through
  a stand-in that never touches the proxy's statements (see :mod:`proxy.backend.deallocate`).

Stale statements: a client that described a statement (``Describe`` S: the result and
parameter types it will decode with) gets data only from a server statement with the same
description. The proxy captures descriptions from the replies the client gets and from a
Describe of its own when it prepares a statement for such a client on another server
(:mod:`proxy.backend.verification`, waited for). When they differ the client gets
PostgreSQL's ``0A000 cached plan must not change result type`` and re-prepares; whichever
description was seen later is the current one, so the re-prepare gets a fresh server
statement.

Each server connection keeps at most ``max_prepared_statements`` statements (LRU); the
evicted ones are closed in the next internal batch. This module is pure: no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from proxy.backend.deallocate import (
    deallocate,
    deallocate_parse,
    may_deallocate,
    mentions_deallocate,
)
from proxy.backend.statements import (
    MISSING,
    NAME_ERRORS,
    Amend,
    ClientStatement,
    Emit,
    ServerStatement,
    ServerStatements,
    missing_error,
    parse_frame,
)
from proxy.wire import messages
from proxy.wire.framing import frame_end
from proxy.wire.messages import header
from proxy.wire.tags import (
    B_ERROR_RESPONSE,
    F_BIND,
    F_CLOSE,
    F_DESCRIBE,
    F_EXECUTE,
    F_FUNCTION_CALL,
    F_PARSE,
    F_QUERY,
    F_SYNC,
)

if TYPE_CHECKING:
    from mypy_extensions import i64  # (compiled: machine integers; interpreted: int)

STATEMENT: Final = 0x53  # b"S": Describe/Close of a statement, not a portal
# Messages naming MISSING, made to fail on the server.
_BIND_MISSING: Final = messages.bind("", MISSING, [])
_DESCRIBE_MISSING: Final = messages.describe(b"S", MISSING)
_CLOSE_MISSING: Final = messages.close(b"S", MISSING)
_ABORTED: Final = messages.frame(B_ERROR_RESPONSE, b"".join((
    b"SERROR\x00VERROR\x00C25P02\x00Mcurrent transaction is aborted, commands ignored ",
    b"until end of transaction block\x00Fpostgres.c\x00Rexec_parse_message\x00\x00")))
# As PostgreSQL sends it; drivers (asyncpg) recognise it by the routine field.
_STALE: Final = messages.frame(B_ERROR_RESPONSE, b"".join((
    b"SERROR\x00VERROR\x00C0A000\x00Mcached plan must not change result type\x00",
    b"Fplancache.c\x00RRevalidateCachedQuery\x00\x00")))


def _find_nul(data: bytes, start: int, size: int) -> int:
    """The index of the first NUL at or after ``start`` and before ``size``, -1 if none.
    Compiled, this loop over a name's few bytes costs a tenth of a call of ``bytes.find``."""
    end = start
    while end < size:
        if data[end] == 0:
            return end
        end += 1
    return -1


def string_end(data: bytes, start: int) -> int:
    """The end of the string at ``start``: ValueError if it has no NUL terminator."""
    end = _find_nul(data, start, len(data))
    if end < 0:
        raise ValueError("string without its NUL terminator")
    return end


def _split_cstr(body: bytes, start: int = 0) -> tuple[str, int]:
    end = string_end(body, start)
    return body[start:end].decode("utf-8", NAME_ERRORS), end + 1


class Rewritten:
    """A client batch made fit for one server connection. (A plain class: compiled, a
    dataclass's generated ``__init__`` runs interpreted, ~3,000 instructions a batch.)"""

    __slots__ = ("carry", "data", "entries", "used")

    def __init__(self, data: bytes, entries: list[object], carry: bool, used: set[bytes]
                 ) -> None:
        self.data = data
        self.entries = entries  # FORWARD / Amend / Emit, in reply order
        # The batch goes on (no Sync yet) with an entry queued or an error: the client's
        # next messages must be rewritten too, whatever they are.
        self.carry = carry
        self.used = used  # the keys of the statements it uses (kept from eviction)


def needs_rewrite(tag: int, data: bytes, start: int, end: int) -> bool:
    """Whether a client message, its body ``data[start:end]``, involves a named statement
    (or DEALLOCATE). Read in place: compiled, a slice of each body cost ~150 instructions."""
    if tag == F_PARSE:
        return start == end or data[start] != 0 or may_deallocate(data, start, end)
    if tag == F_BIND:
        portal_end = _find_nul(data, start, end)
        return 0 <= portal_end < end - 1 and data[portal_end + 1] != 0
    if tag == F_DESCRIBE or tag == F_CLOSE:
        return (start < end and data[start] == STATEMENT
                and (end - start == 1 or data[start + 1] != 0))
    if tag == F_QUERY:
        return mentions_deallocate(data, start, end)
    return False


class _Batch:
    """Rewriting state for one client batch (see :func:`rewrite`).

    A sub-batch (up to a Sync) gets one pending entry: FORWARD, or an Amend when its reply
    needs changes. A sub-batch that goes on in a later call gets an Amend queued at once,
    so that every reply of it passes through one Amend and ParseCompletes can be counted
    (``exact``); one begun before the proxy looked at it (``exact`` False) gets no change
    that depends on counting.
    """

    __slots__ = ("amend", "at_start", "client", "entries", "exact", "forward", "out",
                 "parses", "queued", "server", "skipping", "targets", "used")

    def __init__(self, client: dict[str, ClientStatement], server: ServerStatements,
                 forward: object, batch_start: bool) -> None:
        self.client = client
        self.server = server
        self.forward = forward
        self.at_start = batch_start  # nothing sent since the last Sync awaits a reply
        self.skipping = server.skipping
        self.amend = server.open     # the current sub-batch's reply changes
        self.queued = self.amend is not None  # ... already in the pending queue
        self.exact = batch_start or self.queued
        self.parses = self.amend.parses if self.amend is not None else 0  # in the sub-batch
        # Per Describe of a statement in the sub-batch: where its description goes.
        self.targets: list[tuple[ClientStatement | None, ServerStatement] | None] = (
            self.amend.targets if self.amend is not None else [])
        self.out: list[bytes] = []
        self.entries: list[object] = []
        self.used: set[bytes] = set()

    def amended(self) -> Amend:
        if self.amend is None:
            self.amend = Amend()
            self.amend.targets = self.targets
        return self.amend

    def described(self, target: tuple[ClientStatement | None, ServerStatement] | None
                  ) -> None:
        """A Describe of a statement goes out; its description is captured if ``target``."""
        if not self.exact:
            return  # earlier Describes of this sub-batch are unknown: capture nothing
        self.targets.append(target)
        if target is not None:
            self.amended()

    def synced(self, frame: bytes) -> None:
        """A Sync (or a message that answers with ReadyForQuery) ends the sub-batch."""
        self.out.append(frame)
        if not self.queued:
            self.entries.append(self.amend if self.amend is not None else self.forward)
        if self.amend is not None or self.targets:  # else empty, and no Amend holds it
            self.targets = []
        self.amend = None
        self.queued = False
        self.exact = True
        self.parses = 0
        self.at_start = True

    def finish(self) -> Rewritten:
        """The messages end here; a sub-batch still open is continued by the next call."""
        server = self.server
        server.skipping = self.skipping
        if server.failed:
            server.failed.clear()  # they answered this batch only
        if self.at_start:
            server.open = None
        else:
            amend = self.amended()
            if not self.queued:
                self.entries.append(amend)
            amend.parses = self.parses
            server.open = amend
        return Rewritten(b"".join(self.out), self.entries, not self.at_start, self.used)

    def fail(self, error: bytes, frame: bytes = _BIND_MISSING) -> None:
        """Make the server fail here (a message about MISSING), then skip to Sync."""
        self.out.append(frame)
        self.amended().error = error
        self.at_start = False
        self.skipping = True

    def send_parse(self, frame: bytes, *, drop: bool = False) -> None:
        if drop:
            self.amended().drop_parses.add(self.parses)
        self.parses += 1
        self.out.append(frame)


def rewrite(frames: list[bytes], client: dict[str, ClientStatement],
            server: ServerStatements, forward: object, *, batch_start: bool,
            aborted: bool = False) -> Rewritten:
    """Rewrite framed client messages for ``server``; update the client's statements.

    ``batch_start``: the first frame starts a batch (no unsynced messages before it).
    ``aborted``: the server is known to be in a failed transaction block (then a Parse is
    refused, never answered by the proxy).
    ``forward`` is the pending-queue entry for a reply the client gets from the server
    unchanged. A batch the previous call left open (``server.open``, ``server.skipping``)
    is continued.
    """
    if batch_start:
        server.follow_schema()
    batch = _Batch(client, server, forward, batch_start)
    described: set[str] | None = None
    # Positions are into the whole frame (its body starts at 5): no copy of each body.
    for frame in frames:
        tag = frame[0]
        if batch.skipping:
            if tag == F_SYNC:
                batch.skipping = False
                batch.synced(frame)
            continue
        if tag == F_PARSE:
            name, rest_at = _split_cstr(frame, 5)
            if not name:
                if may_deallocate(frame, 5, len(frame)):
                    deallocate_parse(batch, frame)
                else:
                    batch.send_parse(frame)
                batch.at_start = False
                continue
            key = frame[rest_at:]
            batch.used.add(key)
            if name in client:
                batch.fail(messages.error_response(
                    "42P05", f'prepared statement "{name}" already exists'))
                continue
            if described is None:
                described = _described(frames)
            if batch.at_start and name not in described and server.get(key) is not None:
                if aborted:
                    batch.fail(_ABORTED)
                    continue
                client[name] = ClientStatement(key)
                batch.entries.append(Emit(messages.parse_complete()))
                continue
            stmt = client[name] = ClientStatement(key)
            if batch.exact:  # forgotten again if PostgreSQL refuses it
                batch.amended().parsed.append((batch.parses, client, name, stmt))
            batch.send_parse(parse_frame(server.add(key).name, key))
            batch.at_start = False
        elif tag == F_BIND:
            name_at = string_end(frame, 5) + 1  # after the portal's name
            name_end = string_end(frame, name_at)
            if name_end == name_at:  # the unnamed statement
                batch.out.append(frame)
            else:
                target = _target(batch, frame[name_at:name_end].decode("utf-8", NAME_ERRORS))
                if target is not None:
                    _renamed(batch.out, frame, name_at, name_end, target.wire_name)
            batch.at_start = False
        elif tag == F_DESCRIBE and len(frame) > 5 and frame[5] == STATEMENT:
            name_end = string_end(frame, 6)
            if name_end == 6:
                batch.described(None)
                batch.out.append(frame)
            else:
                name = frame[6:name_end].decode("utf-8", NAME_ERRORS)
                target = _target(batch, name, describe=True)
                if target is not None:
                    batch.described((client[name], target))
                    batch.out.append(_describe_statement(target.wire_name))
            batch.at_start = False
        elif tag == F_CLOSE and len(frame) > 5 and frame[5] == STATEMENT:
            name_end = string_end(frame, 6)
            if name_end == 6:
                batch.out.append(frame)
            else:
                name = frame[6:name_end].decode("utf-8", NAME_ERRORS)
                if client.pop(name, None) is not None and batch.at_start:
                    batch.entries.append(Emit(messages.close_complete()))
                    continue
                batch.out.append(_CLOSE_MISSING)
            batch.at_start = False
        elif tag == F_SYNC or tag == F_FUNCTION_CALL:
            batch.synced(frame)
        elif tag == F_QUERY:
            deallocate(batch, frame)
        elif tag == F_EXECUTE:
            batch.out.append(frame)
            batch.at_start = False
        else:  # Flush, CopyData/CopyDone/CopyFail: no batch begins
            batch.out.append(frame)
    return batch.finish()


def bound(block: bytes, client: dict[str, ClientStatement], server: ServerStatements
          ) -> bytes | None:
    """The batch that runs a prepared statement, rewritten with nothing to check or carry;
    None for any other batch (the caller takes ``verification.to_verify`` and :func:`rewrite`).

    ``block``: whole messages starting a batch. It qualifies when it is one Bind of a
    statement the client has, then only Describes of a portal and Executes, then Sync
    (what libpq, JDBC, psycopg and asyncpg send to run one), and the server has the
    statement with the description the client was told (or the client was told none),
    has no batch open and nothing to close. For such a batch ``to_verify`` finds nothing
    and ``rewrite`` renames the Bind and answers one FORWARD entry; this does the same in
    one pass over the headers (``tests/unit/test_prepared_bound.py`` checks that both agree).
    """
    if server.open is not None or server.skipping or server.failed or server.orphans:
        return None
    size = len(block)
    if size < 10 or block[0] != F_BIND:
        return None
    bind_end = frame_end(block, 0)
    pos = bind_end
    synced = False
    while pos + 5 <= size:
        tag = block[pos]
        end = frame_end(block, pos)
        if tag == F_SYNC:
            if end != size:
                return None  # more than one batch
            synced = True
        elif tag != F_EXECUTE and not (tag == F_DESCRIBE and end > pos + 5
                                       and block[pos + 5] != STATEMENT):
            return None
        pos = end
    if not synced:
        return None
    name_at = _find_nul(block, 5, bind_end) + 1  # after the portal's name
    name_end = _find_nul(block, name_at, bind_end) if name_at else -1
    if name_end <= name_at:
        return None  # unnamed, or malformed: rewrite decides
    server.follow_schema()
    stmt = client.get(block[name_at:name_end].decode("utf-8", NAME_ERRORS))
    if stmt is None or len(server.by_key) > server.limit:
        return None
    target = server.by_key.get(stmt.key)
    if target is None or (stmt.desc is not None and stmt.desc != target.desc):
        return None
    server.get(stmt.key)  # now the most recently used
    name = target.wire_name
    # (One join of the block's own slices: cutting the Bind out first for _renamed cost
    # ~1,000 instructions a transaction compiled, about 4% of one.)
    return b"".join((header(F_BIND, _renamed_size(bind_end, name_at, name_end, name)),
                     block[5:name_at], name, block[name_end + 1:]))


def _renamed(out: list[bytes], frame: bytes, start: int, end: int, name: bytes) -> None:
    """Append to ``out`` the parts of ``frame`` with the name at ``start`` (its NUL at
    ``end``) replaced by ``name`` (NUL included): the batch is joined once, at its end."""
    out.append(header(frame[0], _renamed_size(len(frame), start, end, name)))
    out.append(frame[5:start])
    out.append(name)
    out.append(frame[end + 1:])


def _renamed_size(frame_size: i64, start: i64, end: i64, name: bytes) -> i64:
    """The length field of a message of ``frame_size`` bytes (tag included) once the name
    at ``start`` (its NUL at ``end``) is replaced by ``name`` (NUL included)."""
    return frame_size - 1 - (end + 1 - start) + len(name)


def _describe_statement(name: bytes) -> bytes:
    """Describe of the statement ``name`` (NUL included)."""
    return b"".join((header(F_DESCRIBE, len(name) + 5), b"S", name))


def _described(frames: list[bytes]) -> set[str]:
    """Names the batch describes (Describe S): the client is preparing them."""
    out = set()
    for frame in frames:
        if frame[0] == F_DESCRIBE and len(frame) > 5 and frame[5] == STATEMENT:
            out.add(frame[6:string_end(frame, 6)].decode("utf-8", NAME_ERRORS))
    return out


def _target(batch: _Batch, name: str, describe: bool = False) -> ServerStatement | None:
    """The server statement for the client's ``name``; None after making the server fail
    (an unknown name: 26000; a stale description: 0A000)."""
    stmt = batch.client.get(name)
    if stmt is None or (not batch.exact and stmt.key not in batch.server.by_key):
        # Unknown; or missing on this server within a batch begun before the proxy looked
        # at it, where a Parse of ours cannot be hidden: 26000, the client may retry.
        batch.fail(missing_error(name), _DESCRIBE_MISSING if describe else _BIND_MISSING)
        return None
    batch.used.add(stmt.key)
    target = batch.server.get(stmt.key)
    if target is None:
        error = batch.server.failed.get(stmt.key)
        if error is not None:  # PostgreSQL's answer when the proxy just prepared it
            batch.fail(error, _DESCRIBE_MISSING if describe else _BIND_MISSING)
            return None
        target = batch.server.add(stmt.key)
        batch.send_parse(parse_frame(target.name, stmt.key), drop=True)
    elif (stmt.desc is not None and target.desc is not None and target.desc != stmt.desc
          and not describe):
        batch.fail(_STALE)  # what the client decodes with no longer holds
        return None
    return target


def internal_batch(evict: list[str]) -> bytes:
    """Close evicted statements, ending with Sync."""
    return b"".join(messages.close(b"S", name) for name in evict) + messages.sync()
