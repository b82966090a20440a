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
  a stand-in that never touches the proxy's statements (see :func:`deallocate`).

Stale statements: a client that described a statement (``Describe`` S: the result and
parameter types it will decode with) gets data only from a server statement with the same
description. The proxy captures descriptions from the replies the client gets and from a
Describe of its own when it prepares a statement for such a client on another server
(:func:`verify_batch`, waited for). When they differ the client gets PostgreSQL's
``0A000 cached plan must not change result type`` and re-prepares; whichever description
was seen later is the current one, so the re-prepare gets a fresh server statement.

Each server connection keeps at most ``max_prepared_statements`` statements (LRU); the
evicted ones are closed in the next internal batch. This module is pure: no I/O.
"""

from __future__ import annotations

import itertools
import re
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from proxy.wire import messages
from proxy.wire.tags import BackendTag, FrontendTag

_P = FrontendTag.PARSE
_B = FrontendTag.BIND
_D = FrontendTag.DESCRIBE
_C = FrontendTag.CLOSE
_S = FrontendTag.SYNC
_Q = FrontendTag.QUERY
_F = FrontendTag.FUNCTION_CALL
_H = FrontendTag.FLUSH

#: Every statement the proxy names starts with this; random per process so that no
#: client can guess it, and starting with ``pgtenant_`` so SQL can refuse the namespace.
PREFIX = f"pgtenant_{secrets.token_hex(8)}_"
#: A statement that never exists: Bind/Describe/DEALLOCATE of it fails with 26000.
MISSING = PREFIX + "missing"
_MISSING_QUOTED = f'"{MISSING}"'.encode()
# The throwaway statement of the DEALLOCATE stand-in.
_THROWAWAY = PREFIX + "deallocate"
_names = itertools.count(1)
# Order in which descriptions were seen: the later one reflects the newer schema.
_seen = itertools.count(1)

_DEALLOCATE_WORD = re.compile(rb"deallocate", re.IGNORECASE)
_DEALLOCATE = re.compile(
    rb"\s*deallocate\s+(?:prepare\s+)?(?:\"((?:[^\"]|\"\")+)\"|([A-Za-z_][A-Za-z0-9_$]*))"
    rb"\s*;?\s*\x00$", re.IGNORECASE)
_STAND_IN = messages.query(f"PREPARE {_THROWAWAY} AS SELECT; DEALLOCATE {_THROWAWAY}")
_MISSING_QUERY = messages.query(f"DEALLOCATE {MISSING}")
_COMPLETE_ALL = messages.command_complete("DEALLOCATE ALL")
_DEALLOCATE_NOT_ALONE = messages.error_response(
    "0A000", "DEALLOCATE must be sent as a query of its own in transaction pooling mode",
    hint="send DEALLOCATE in a separate query, or close the statement with a Close message")
_STALE = messages.error_response("0A000", "cached plan must not change result type")

_PARSE_COMPLETE = BackendTag.PARSE_COMPLETE
_COMMAND_COMPLETE = BackendTag.COMMAND_COMPLETE
_ERROR = BackendTag.ERROR_RESPONSE
_PARAMS = BackendTag.PARAMETER_DESCRIPTION
_ROWS = BackendTag.ROW_DESCRIPTION
_NO_DATA = BackendTag.NO_DATA
_FIELD_TAIL = struct.Struct("!IhIhih")


class ClientStatement:
    """One of a client's statements: its key and the description it was told, if any."""

    __slots__ = ("desc", "key", "seen")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.desc: bytes | None = None  # ParameterDescription + RowDescription/NoData
        self.seen = 0                   # when desc was observed (see _seen)


class ServerStatement:
    """A statement the proxy prepared on one server connection."""

    __slots__ = ("desc", "name", "seen")

    def __init__(self, name: str) -> None:
        self.name = name
        self.desc: bytes | None = None  # as for ClientStatement, None until observed
        self.seen = 0

    def observed(self, desc: bytes) -> None:
        self.desc = desc
        self.seen = next(_seen)


class Emit:
    """A reply the proxy writes to the client itself, in its place among the server's."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Emit({self.data[:1]!r})"


class Amend:
    """A client's reply (up to one ReadyForQuery) forwarded with the proxy's changes.

    The server connection hands it every reply message whole (``message``), in order,
    and forwards what it returns: the ParseCompletes of statements the proxy prepared in
    line are dropped, a stand-in's extra CommandComplete is dropped or renamed, the 26000
    about :data:`MISSING` becomes the error PostgreSQL would have sent the client, and
    the descriptions the client is told are remembered.
    """

    __slots__ = ("_params", "_parses", "complete", "drop_completes", "drop_parses", "error",
                 "held", "on_complete", "targets")

    def __init__(self) -> None:
        self.drop_parses: set[int] = set()  # ordinals of ParseCompletes to drop
        self.drop_completes = 0             # leading CommandCompletes to drop
        self.complete: bytes | None = None  # replaces the CommandComplete that is kept
        self.on_complete: Callable[[], object] | None = None  # the command succeeded
        self.error: bytes | None = None     # replaces the error about MISSING
        self.targets: list[tuple[ClientStatement | None, ServerStatement]] = []
        self.held = b""                     # a message split across chunks (server side)
        self._parses = 0
        self._params: bytes | None = None

    def message(self, tag: int, data: bytes, body: bytes) -> bytes:
        """What to forward for one whole reply message ``data`` (``body`` its body)."""
        if tag == _PARSE_COMPLETE:
            n = self._parses
            self._parses = n + 1
            return b"" if n in self.drop_parses else data
        if tag == _COMMAND_COMPLETE:
            if self.drop_completes:
                self.drop_completes -= 1
                return b""
            if self.on_complete is not None:
                callback, self.on_complete = self.on_complete, None
                callback()
            return self.complete if self.complete is not None else data
        if tag == _ERROR:
            if self.error is not None and _MISSING_QUOTED in body:
                return self.error
        elif tag == _PARAMS:
            self._params = data
        elif (tag == _ROWS or tag == _NO_DATA) and self._params is not None:
            # The answer to a Describe of a statement (a portal has no ParameterDescription).
            desc = description(self._params + data)
            self._params = None
            if self.targets:
                client_stmt, server_stmt = self.targets.pop(0)
                server_stmt.observed(desc)
                if client_stmt is not None:
                    client_stmt.desc = desc
                    client_stmt.seen = server_stmt.seen
        return data

    def __repr__(self) -> str:
        return "Amend()"


def description(data: bytes) -> bytes:
    """ParameterDescription + RowDescription/NoData, without what may change harmlessly.

    Column names, types, type modifiers and parameter types are kept; the source table
    OID and column number of each result column are zeroed (a recreated table changes
    them, not what the client decodes).
    """
    plen = int.from_bytes(data[1:5], "big") + 1
    rows = data[plen:]
    if rows[:1] != b"T":
        return data
    out = bytearray(data[:plen + 7])
    pos = 7
    count = int.from_bytes(rows[5:7], "big")
    for _ in range(count):
        end = rows.index(0, pos) + 1
        _table, _column, type_oid, size, modifier, fmt = _FIELD_TAIL.unpack_from(rows, end)
        out += rows[pos:end]
        out += _FIELD_TAIL.pack(0, 0, type_oid, size, modifier, fmt)
        pos = end + _FIELD_TAIL.size
    return bytes(out)


class ServerStatements:
    """The proxy-named statements prepared on one server connection, least recent first."""

    __slots__ = ("by_key", "limit", "orphans", "unconfirmed")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.by_key: OrderedDict[bytes, ServerStatement] = OrderedDict()
        self.orphans: list[str] = []          # names to close: replaced or evicted
        self.unconfirmed: list[bytes] = []    # keys whose Parse has not been answered yet

    def get(self, key: bytes) -> ServerStatement | None:
        stmt = self.by_key.get(key)
        if stmt is not None:
            self.by_key.move_to_end(key)
        return stmt

    def add(self, key: bytes) -> ServerStatement:
        """A new proxy-named statement for ``key`` (the caller sends the Parse)."""
        old = self.by_key.pop(key, None)
        if old is not None:
            self.orphans.append(old.name)
        stmt = ServerStatement(f"{PREFIX}{next(_names)}")
        self.by_key[key] = stmt
        self.unconfirmed.append(key)
        return stmt

    def confirm(self) -> None:
        """Everything sent so far was answered without an error."""
        self.unconfirmed.clear()

    def invalidate_unconfirmed(self) -> None:
        """An error came back: any Parse not yet confirmed may have failed."""
        for key in self.unconfirmed:
            stmt = self.by_key.pop(key, None)
            if stmt is not None:
                self.orphans.append(stmt.name)
        self.unconfirmed.clear()

    def invalidate_all(self) -> None:
        """A statement went stale (0A000): prepare every statement afresh when next used."""
        self.orphans.extend(stmt.name for stmt in self.by_key.values())
        self.by_key.clear()
        self.unconfirmed.clear()

    def clear(self) -> None:
        """The server dropped all its statements (DISCARD ALL, DEALLOCATE ALL)."""
        self.by_key.clear()
        self.orphans.clear()
        self.unconfirmed.clear()

    def take_evictions(self, keep: set[bytes]) -> list[str]:
        """Names to close now: orphans, then the least recently used beyond the limit."""
        out, self.orphans = self.orphans, []
        excess = len(self.by_key) - self.limit
        if excess > 0:
            for key in list(self.by_key):
                if excess <= 0:
                    break
                if key not in keep:
                    out.append(self.by_key.pop(key).name)
                    excess -= 1
        return out


@dataclass
class Rewritten:
    """A client batch made fit for one server connection."""

    data: bytes
    entries: list[object]                 # FORWARD / Amend / Emit, in reply order
    skipping: bool = False                # an error: the server skips messages up to Sync
    used: set[bytes] = field(default_factory=set)


def _split_cstr(body: bytes, start: int = 0) -> tuple[str, int]:
    end = body.index(0, start)
    return body[start:end].decode(), end + 1


def needs_rewrite(tag: int, body: bytes) -> bool:
    """Whether a client message involves a named statement (or DEALLOCATE)."""
    if tag == _P:
        return body[:1] != b"\x00"
    if tag == _B:
        portal_end = body.find(0)
        return portal_end >= 0 and body[portal_end + 1:portal_end + 2] not in (b"\x00", b"")
    if tag == _D or tag == _C:
        return body[:1] == b"S" and body[1:2] != b"\x00"
    if tag == _Q:
        return _DEALLOCATE_WORD.search(body) is not None
    return False


def missing_error(name: str) -> bytes:
    """PostgreSQL's ErrorResponse for a statement name that does not exist."""
    return messages.error_response("26000", f'prepared statement "{name}" does not exist')


class _Batch:
    """Rewriting state for one client batch (see :func:`rewrite`)."""

    __slots__ = ("amend", "at_start", "client", "entries", "forward", "out", "parses",
                 "server", "skipping", "used")

    def __init__(self, client: dict[str, ClientStatement], server: ServerStatements,
                 forward: object, at_start: bool, skipping: bool) -> None:
        self.client = client
        self.server = server
        self.forward = forward
        self.at_start = at_start    # nothing sent since the last Sync awaits a reply
        self.skipping = skipping
        self.out: list[bytes] = []
        self.entries: list[object] = []
        self.used: set[bytes] = set()
        self.amend: Amend | None = None  # the current sub-batch's reply changes
        self.parses = 0                  # Parse messages sent in the current sub-batch

    def amended(self) -> Amend:
        if self.amend is None:
            self.amend = Amend()
        return self.amend

    def synced(self, frame: bytes) -> None:
        """A Sync (or a message that answers with ReadyForQuery) ends the sub-batch."""
        self.out.append(frame)
        self.entries.append(self.amend if self.amend is not None else self.forward)
        self.amend = None
        self.parses = 0
        self.at_start = True

    def fail(self, error: bytes, frame: bytes | None = None) -> None:
        """Make the server fail here (a message about MISSING), then skip to Sync."""
        if frame is None:
            frame = messages.bind("", MISSING, [])
        self.out.append(frame)
        self.amended().error = error
        self.at_start = False
        self.skipping = True

    def send_parse(self, frame: bytes, *, drop: bool) -> None:
        if drop:
            self.amended().drop_parses.add(self.parses)
        self.parses += 1
        self.out.append(frame)

    def target(self, stmt: ClientStatement, *, describe: bool = False) -> ServerStatement | None:
        """The server statement for ``stmt``, prepared in line if missing; None when the
        client must get 0A000 (what it was told no longer matches)."""
        server_stmt = self.server.get(stmt.key)
        if server_stmt is None:
            server_stmt = self.server.add(stmt.key)
            self.send_parse(_parse(server_stmt.name, stmt.key), drop=True)
        elif (stmt.desc is not None and server_stmt.desc is not None
              and server_stmt.desc != stmt.desc and not describe):
            return None
        return server_stmt


def rewrite(frames: Sequence[bytes], client: dict[str, ClientStatement],
            server: ServerStatements, forward: object, *, batch_start: bool,
            skipping: bool = False) -> Rewritten:
    """Rewrite framed client messages for ``server``; update the client's statements.

    ``batch_start``: the first frame starts a batch (no unsynced messages before it).
    ``forward`` is the pending-queue entry for a reply the client gets from the server
    unchanged. ``skipping``: the server is skipping to Sync after an error the proxy made.
    """
    batch = _Batch(client, server, forward, batch_start, skipping)
    described: set[str] | None = None
    for frame in frames:
        tag = frame[0]
        body = frame[5:]
        if batch.skipping:
            if tag == _S:
                batch.skipping = False
                batch.synced(frame)
            continue
        if tag == _P:
            name, rest_at = _split_cstr(body)
            if not name:
                batch.send_parse(frame, drop=False)
                batch.at_start = False
                continue
            key = body[rest_at:]
            batch.used.add(key)
            if name in client:
                batch.fail(messages.error_response(
                    "42P05", f'prepared statement "{name}" already exists'))
                continue
            client[name] = ClientStatement(key)
            if described is None:
                described = _described(frames)
            if batch.at_start and name not in described and server.get(key) is not None:
                batch.entries.append(Emit(messages.parse_complete()))
                continue
            batch.send_parse(_parse(server.add(key).name, key), drop=False)
            batch.at_start = False
        elif tag == _B:
            portal, stmt_at = _split_cstr(body)
            name, rest_at = _split_cstr(body, stmt_at)
            if not name:
                batch.out.append(frame)
            else:
                target = _target(batch, name)
                if target is not None:
                    batch.out.append(messages.frame(
                        _B, _cstr(portal) + _cstr(target.name) + body[rest_at:]))
            batch.at_start = False
        elif tag == _D and body[:1] == b"S":
            name, _ = _split_cstr(body, 1)
            if not name:
                batch.out.append(frame)
            else:
                target = _target(batch, name, describe=True)
                if target is not None:
                    batch.amended().targets.append((client[name], target))
                    batch.out.append(messages.describe(b"S", target.name))
            batch.at_start = False
        elif tag == _C and body[:1] == b"S":
            name, _ = _split_cstr(body, 1)
            if name and client.pop(name, None) is not None and batch.at_start:
                batch.entries.append(Emit(messages.close_complete()))
                continue
            batch.out.append(messages.close(b"S", MISSING) if name else frame)
            batch.at_start = False
        elif tag == _S or tag == _F:
            batch.synced(frame)
        elif tag == _Q:
            _deallocate(batch, frame)
        elif tag == _H:
            batch.out.append(frame)
        else:
            batch.out.append(frame)
            batch.at_start = False
    return Rewritten(b"".join(batch.out), batch.entries, batch.skipping, batch.used)


def _described(frames: Sequence[bytes]) -> set[str]:
    """Names the batch describes (Describe S): the client is preparing them."""
    out = set()
    for frame in frames:
        if frame[0] == _D and frame[5:6] == b"S":
            out.add(frame[6:frame.index(0, 6)].decode())
    return out


def _target(batch: _Batch, name: str, describe: bool = False) -> ServerStatement | None:
    """The server statement for the client's ``name``; None after making the server fail
    (an unknown name: 26000; a stale description: 0A000)."""
    stmt = batch.client.get(name)
    if stmt is None:
        frame = messages.describe(b"S", MISSING) if describe else None
        batch.fail(missing_error(name), frame)
        return None
    batch.used.add(stmt.key)
    target = batch.target(stmt, describe=describe)
    if target is None:
        batch.fail(_STALE)
    return target


def to_verify(frames: Sequence[bytes], client: dict[str, ClientStatement],
              server: ServerStatements) -> list[bytes]:
    """Keys to prepare and describe on ``server`` before the batch may be sent.

    A client statement with a known description, bound or described in the batch, whose
    server statement is missing, has no known description, or was described before the
    client's own description was seen (it may be stale). Statements the batch itself
    parses are not checked.
    """
    keys: list[bytes] = []
    for frame in frames:
        tag = frame[0]
        if tag == _B:
            start = frame.index(0, 5) + 1
        elif tag == _D and frame[5:6] == b"S":
            start = 6
        else:
            continue
        name = frame[start:frame.index(0, start)].decode()
        stmt = client.get(name)
        if stmt is None or stmt.desc is None or stmt.key in keys:
            continue
        server_stmt = server.by_key.get(stmt.key)
        if (server_stmt is None or server_stmt.desc is None
                or (server_stmt.desc != stmt.desc and server_stmt.seen < stmt.seen)):
            keys.append(stmt.key)
    return keys


def verify_batch(server: ServerStatements, keys: list[bytes], keep: set[bytes]
                 ) -> tuple[bytes, list[ServerStatement]]:
    """An internal batch preparing ``keys`` afresh and describing them, ending in Sync;
    evictions are closed first. Returns the bytes and the new statements, in order."""
    parts = [messages.close(b"S", name) for name in server.take_evictions(keep | set(keys))]
    made = []
    for key in keys:
        stmt = server.add(key)
        made.append(stmt)
        parts.append(_parse(stmt.name, key))
        parts.append(messages.describe(b"S", stmt.name))
    parts.append(messages.sync())
    return b"".join(parts), made


def verified(made: list[ServerStatement], replies: list[tuple[int, bytes]]) -> None:
    """Record the descriptions in the replies to a :func:`verify_batch`."""
    params: bytes | None = None
    pending = iter(made)
    for tag, body in replies:
        if tag == _PARAMS:
            params = messages.frame(tag, body)
        elif (tag == _ROWS or tag == _NO_DATA) and params is not None:
            stmt = next(pending, None)
            if stmt is not None:
                stmt.observed(description(params + messages.frame(tag, body)))
            params = None


def _deallocate(batch: _Batch, frame: bytes) -> None:
    """A Query: DEALLOCATE of one of the client's names, or ALL, becomes a stand-in that
    answers as PostgreSQL would without touching the proxy's statements; other queries
    mentioning DEALLOCATE pass unless they hold a DEALLOCATE statement, refused."""
    body = frame[5:]
    client = batch.client
    m = _DEALLOCATE.match(body)
    if m is None:
        if _has_deallocate(body):
            batch.amended().error = _DEALLOCATE_NOT_ALONE
            batch.synced(_MISSING_QUERY)
        else:
            batch.synced(frame)
        return
    quoted, plain = m.groups()
    name = quoted.replace(b'""', b'"').decode() if quoted else plain.decode().lower()
    amend = batch.amended()
    if not quoted and name == "all":
        amend.drop_completes = 1
        amend.complete = _COMPLETE_ALL
        amend.on_complete = client.clear
        batch.synced(_STAND_IN)
    elif name in client:
        amend.drop_completes = 1
        amend.on_complete = lambda: client.pop(name, None)
        batch.synced(_STAND_IN)
    else:
        amend.error = missing_error(name)
        batch.synced(_MISSING_QUERY)


def _has_deallocate(body: bytes) -> bool:
    """Whether a query text holds a DEALLOCATE statement (not just the word)."""
    from pglast import parser

    try:
        tree = parser.parse_sql_json(body[:-1].decode())
    except (parser.ParseError, UnicodeDecodeError):
        return False  # PostgreSQL reports the syntax error
    return '"DeallocateStmt"' in tree


def internal_batch(evict: list[str]) -> bytes:
    """Close evicted statements, ending with Sync."""
    return b"".join(messages.close(b"S", name) for name in evict) + messages.sync()


def _cstr(s: str) -> bytes:
    return s.encode() + b"\x00"


def _parse(name: str, key: bytes) -> bytes:
    return messages.frame(_P, _cstr(name) + key)
