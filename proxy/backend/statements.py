"""The prepared statements of one server connection and of each client (transaction mode).

The registries (:class:`ClientStatement`, :class:`ServerStatement`,
:class:`ServerStatements`: the server's statements by key, LRU-bounded) and the reply
side of the rewrite: :class:`Amend` changes a reply message by message (statement names
the client never sees, PostgreSQL's errors with the client's names), :class:`Emit` is a
reply the proxy makes itself. How a client's batch is rewritten is
``proxy.backend.prepared``. Pure: no I/O.
"""

from __future__ import annotations

import itertools
import secrets
import struct
from collections import deque
from collections.abc import Callable
from typing import Final

from proxy.wire import messages
from proxy.wire.tags import (
    B_COMMAND_COMPLETE,
    B_ERROR_RESPONSE,
    B_NO_DATA,
    B_PARAMETER_DESCRIPTION,
    B_PARSE_COMPLETE,
    B_ROW_DESCRIPTION,
    F_PARSE,
)

#: Every statement the proxy names starts with this; random per process so that no
#: client can guess it, and starting with ``pgtenant_`` so SQL can refuse the namespace.
PREFIX: Final = f"pgtenant_{secrets.token_hex(8)}_"
#: A statement that never exists: Bind/Describe/DEALLOCATE of it fails with 26000.
MISSING: Final = PREFIX + "missing"
_MISSING_QUOTED: Final = f'"{MISSING}"'.encode()
# Numbers for the names of the proxy's statements (shared with the DEALLOCATE stand-in).
statement_numbers: Final = itertools.count(1)
# Order in which descriptions were seen: the later one reflects the newer schema.
_seen: Final = itertools.count(1)

_FIELD_TAIL: Final = struct.Struct("!IhIhih")


# Statement and portal names are bytes in the client's encoding (which need not be UTF-8):
# they are decoded so that they encode back to exactly the same bytes.
NAME_ERRORS: Final = "surrogateescape"


class ClientStatement:
    """One of a client's statements: its key and the description it was told, if any."""

    __slots__ = ("desc", "key", "seen")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.desc: bytes | None = None  # ParameterDescription + RowDescription/NoData
        self.seen = 0                   # when desc was observed (see _seen)


class ServerStatement:
    """A statement the proxy prepared on one server connection."""

    __slots__ = ("desc", "name", "seen", "wire_name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.wire_name = name.encode() + b"\x00"  # as messages name it (names are ASCII)
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


# See Amend.deallocations.
Deallocation = tuple[bytes | None, Callable[[], object],
                     tuple[int, str, "ServerStatements"] | None]


class Amend:
    """A client's reply (up to one ReadyForQuery) forwarded with the proxy's changes.

    The server connection hands it every reply message whole (``message``), in order,
    and forwards what it returns: the ParseCompletes of statements the proxy prepared in
    line are dropped, a stand-in's extra CommandComplete is dropped or renamed, the 26000
    about :data:`MISSING` becomes the error PostgreSQL would have sent the client, and
    the descriptions the client is told are remembered.
    """

    __slots__ = ("_params", "_parses", "deallocations", "drop_parses", "drop_prepares",
                 "error", "held", "parsed", "parses", "targets")

    def __init__(self) -> None:
        self.parses = 0                     # Parse messages sent so far in its sub-batch
        self.drop_parses: set[int] = set()  # ordinals of ParseCompletes to drop
        # The client's Parses not yet answered: (ordinal, the client's statements, name,
        # statement); an error first means PostgreSQL never created them.
        self.parsed: deque[tuple[int, dict[str, ClientStatement], str, ClientStatement]] = (
            deque())
        self.drop_prepares = 0              # the stand-ins' CommandCompletes PREPARE
        # Per DEALLOCATE stand-in, in order: the CommandComplete to send instead (None: as
        # is), what to do once it succeeded, and its throwaway statement (extended
        # protocol: ParseComplete ordinal, name, where to close it if it outlives an error).
        self.deallocations: deque[Deallocation] = deque()
        # Replaces the error about MISSING: an ErrorResponse, or a quoted name to put there.
        self.error: bytes | None = None
        # Per Describe of a statement, in order: where its description goes (None: nowhere).
        self.targets: list[tuple[ClientStatement | None, ServerStatement] | None] = []
        self.held = b""                     # a message split across chunks (server side)
        self._parses = 0
        self._params: bytes | None = None

    def message(self, tag: int, data: bytes, body: bytes) -> bytes:
        """What to forward for ``data``: reply bytes ending with one whole message of
        type ``tag`` (``body`` its body), the bytes before it messages left as they are."""
        if tag == B_PARSE_COMPLETE:
            n = self._parses
            self._parses = n + 1
            if self.parsed and self.parsed[0][0] == n:
                self.parsed.popleft()
            return data[:-5] if n in self.drop_parses else data
        if tag == B_COMMAND_COMPLETE:
            if body == b"PREPARE\x00" and self.drop_prepares:
                self.drop_prepares -= 1
                return data[:-5 - len(body)]
            if body == b"DEALLOCATE\x00" and self.deallocations:
                complete, succeeded, _ = self.deallocations.popleft()
                succeeded()
                if complete is not None:
                    return data[:-5 - len(body)] + complete
        elif tag == B_ERROR_RESPONSE:
            for _, _, throwaway in self.deallocations:
                if throwaway is not None and throwaway[0] < self._parses:
                    throwaway[2].orphans.append(throwaway[1])  # prepared, not deallocated
            self.deallocations.clear()
            while self.parsed:
                _, client, name, stmt = self.parsed.popleft()
                if client.get(name) is stmt:
                    del client[name]
            if self.error is not None and _MISSING_QUOTED in body:
                before = data[:-5 - len(body)]
                if self.error[:1] == b'"':  # the client's name in PostgreSQL's own error
                    return before + messages.frame(
                        B_ERROR_RESPONSE, body.replace(_MISSING_QUOTED, self.error))
                return before + self.error
        elif tag == B_PARAMETER_DESCRIPTION:
            self._params = data[-5 - len(body):]
        elif (tag == B_ROW_DESCRIPTION or tag == B_NO_DATA) and self._params is not None:
            # The answer to a Describe of a statement (a portal has no ParameterDescription).
            desc = description(self._params + data[-5 - len(body):])
            self._params = None
            target = self.targets.pop(0) if self.targets else None
            if target is not None:
                client_stmt, server_stmt = target
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


# Bumped by every DDL a client runs through the proxy (ALTER/CREATE/DROP command tags):
# statements prepared before it are prepared afresh at their next use, on every server
# connection. One int, read per lookup.
_schema: Final = [0]


def schema_changed() -> None:
    """A client ran DDL: no statement prepared before now is reused."""
    _schema[0] += 1


class ServerStatements:
    """The proxy-named statements prepared on one server connection, least recent first."""

    __slots__ = ("by_key", "failed", "limit", "open", "orphans", "recent", "schema",
                 "skipping", "unconfirmed")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.schema = _schema[0]  # the schema generation its statements were prepared in
        # Least recently used first (a dict keeps insertion order: a use moves a key to
        # the end). Only add() inserts keys.
        self.by_key: dict[bytes, ServerStatement] = {}
        # The key last moved to the end or added: if still in by_key, it is the last key,
        # and a use of it moves nothing (the common case: one statement used again).
        self.recent: bytes | None = None
        self.orphans: list[str] = []          # names to close: replaced or evicted
        self.unconfirmed: list[bytes] = []    # keys whose Parse has not been answered yet
        # The batch in progress (no Sync yet), continued by the next rewrite: the entry
        # already queued for its reply, and whether the server skips to Sync (an error).
        self.open: Amend | None = None
        self.skipping = False
        # Keys :func:`verify_batch` could not prepare, and PostgreSQL's error: the next
        # rewrite answers the client's use of them with it.
        self.failed: dict[bytes, bytes] = {}

    def follow_schema(self) -> None:
        """At a batch start: after DDL (:func:`schema_changed`), forget every statement
        prepared before it (closed with the next evictions, prepared again when used)."""
        if self.schema != _schema[0]:
            self.schema = _schema[0]
            if self.by_key:
                self.invalidate_all()

    def get(self, key: bytes) -> ServerStatement | None:
        """The statement for ``key``, now the most recently used."""
        by_key = self.by_key
        stmt = by_key.get(key)
        if stmt is not None and key != self.recent:
            del by_key[key]
            by_key[key] = stmt
            self.recent = key
        return stmt

    def add(self, key: bytes) -> ServerStatement:
        """A new proxy-named statement for ``key`` (the caller sends the Parse)."""
        old = self.by_key.pop(key, None)
        if old is not None:
            self.orphans.append(old.name)
        stmt = ServerStatement(f"{PREFIX}{next(statement_numbers)}")
        self.by_key[key] = stmt
        self.recent = key
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


def statements_lost(error: bytes) -> bool:
    """Whether a server ErrorResponse body means statements of ours there are stale or
    gone: 0A000 (cached plan must not change result type) or a 26000 not about
    :data:`MISSING` (something the proxy did not see dropped one, e.g. DISCARD ALL run
    by a function). The caller prepares each afresh when next used."""
    if b"C0A000\x00" in error:
        return True
    return b"C26000\x00" in error and _MISSING_QUOTED not in error


def missing_error(name: str) -> bytes:
    """For :attr:`Amend.error`: PostgreSQL's own 26000, with the client's ``name``."""
    return f'"{name}"'.encode("utf-8", NAME_ERRORS)


def parse_frame(name: str, key: bytes | str, params: bytes = b"") -> bytes:
    """A Parse message naming ``name``: of ``key`` (text and parameter types, as a
    statement's key holds them) or of a text with ``params``."""
    if isinstance(key, str):
        key = key.encode("utf-8", NAME_ERRORS) + b"\x00" + params
    return messages.frame(F_PARSE, name.encode("utf-8", NAME_ERRORS) + b"\x00" + key)
