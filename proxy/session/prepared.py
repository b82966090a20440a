"""Named prepared statements in transaction mode.

A client's statement names mean nothing on a pooled server connection: the next
transaction may run on another one. So, like PgBouncer since 1.21, the proxy keeps each
client's statements (name → the Parse message's text and parameter types, the *key*) and
gives each server connection statements of its own, named by the proxy and shared by
every client that prepares the same key. A client's batch is rewritten before it goes out:

- ``Parse(name, …)``: remembered for the client. If the server already has the key and
  the Parse starts a batch (nothing before it awaits a reply), the proxy answers
  ParseComplete itself; otherwise the Parse goes out under a new proxy name.
- ``Bind``/``Describe`` of a named statement: renamed. A statement the server lacks is
  prepared first, in an internal batch of the proxy's own sent just before the client's
  (only when the client's data starts a batch; mid-batch, the statement keeps the
  client's name and PostgreSQL answers 26000, which the client can retry).
- ``Close`` of a named statement: forgotten for the client; the server keeps its copy
  for other clients. Answered by the proxy at the start of a batch, otherwise sent as a
  Close of a name that does not exist (which PostgreSQL answers with CloseComplete).
- ``Parse`` of a name the client already has, at the start of a batch: ErrorResponse
  42P05 as PostgreSQL would send, then the client's messages up to Sync are dropped.
- ``DEALLOCATE name`` (simple query) of a known statement: forgotten, and the query is
  replaced by one that prepares and deallocates a throwaway statement, so the client
  still sees a DEALLOCATE command tag.

Each server connection keeps at most ``max_prepared_statements`` statements (LRU); the
evicted ones are closed in the next internal batch. This module is pure: no I/O.
"""

from __future__ import annotations

import itertools
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from proxy.wire import messages
from proxy.wire.tags import FrontendTag

_P = FrontendTag.PARSE
_B = FrontendTag.BIND
_D = FrontendTag.DESCRIBE
_C = FrontendTag.CLOSE
_S = FrontendTag.SYNC
_Q = FrontendTag.QUERY
_F = FrontendTag.FUNCTION_CALL
_H = FrontendTag.FLUSH

_names = itertools.count(1)
# A statement name no client statement is ever renamed to (Close of it is a no-op).
_NO_SUCH_STATEMENT = "pgtenant_no_such_statement"
_DEALLOCATE = re.compile(
    rb"\s*deallocate\s+(?:prepare\s+)?(?:\"((?:[^\"]|\"\")+)\"|([A-Za-z_][A-Za-z0-9_$]*))"
    rb"\s*;?\s*\x00$", re.IGNORECASE)
_DEALLOCATE_STAND_IN = messages.query(
    "PREPARE pgtenant_deallocate AS SELECT; DEALLOCATE pgtenant_deallocate")


class Emit:
    """A reply the proxy writes to the client itself, in its place among the server's."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Emit({self.data[:1]!r})"


class ServerStatements:
    """The proxy-named statements prepared on one server connection, least recent first."""

    __slots__ = ("by_key", "limit", "orphans", "unconfirmed")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.by_key: OrderedDict[bytes, str] = OrderedDict()
        self.orphans: list[str] = []          # names to close: replaced or evicted
        self.unconfirmed: list[bytes] = []    # keys whose Parse has not been answered yet

    def get(self, key: bytes) -> str | None:
        name = self.by_key.get(key)
        if name is not None:
            self.by_key.move_to_end(key)
        return name

    def add(self, key: bytes) -> str:
        """A new proxy name for ``key`` on this server (the caller sends the Parse)."""
        old = self.by_key.pop(key, None)
        if old is not None:
            self.orphans.append(old)
        name = f"pgtenant_{next(_names)}"
        self.by_key[key] = name
        self.unconfirmed.append(key)
        return name

    def confirm(self) -> None:
        """Everything sent so far was answered without an error."""
        self.unconfirmed.clear()

    def invalidate_unconfirmed(self) -> None:
        """An error came back: any Parse not yet confirmed may have failed."""
        for key in self.unconfirmed:
            name = self.by_key.pop(key, None)
            if name is not None:
                self.orphans.append(name)
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
                    out.append(self.by_key.pop(key))
                    excess -= 1
        return out


@dataclass
class Rewritten:
    """A client batch made fit for one server connection."""

    data: bytes
    entries: list[object]                 # FORWARD / Emit, in reply order
    prepare: bytes = b""                  # Close/Parse messages for an internal batch
    skipping: bool = False                # a proxy-made error: drop messages up to Sync
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
        return body[:24].lstrip()[:10].lower() == b"deallocate"
    return False


def rewrite(frames: Sequence[bytes], client: dict[str, bytes], server: ServerStatements,
            forward: object, *, batch_start: bool, skipping: bool = False) -> Rewritten:
    """Rewrite framed client messages for ``server``; update the client's statements.

    ``batch_start``: the first frame starts a batch (no unsynced messages before it).
    ``forward`` is the pending-queue entry for a reply the client gets from the server.
    ``skipping``: a proxy-made error earlier in this batch; messages up to Sync are dropped.
    """
    out: list[bytes] = []
    entries: list[object] = []
    prepare: list[bytes] = []
    used: set[bytes] = set()
    at_start = batch_start      # nothing sent since the last Sync awaits a reply
    for frame in frames:
        tag = frame[0]
        body = frame[5:]
        if skipping:
            if tag == _S:
                skipping = False
                out.append(frame)
                entries.append(forward)
                at_start = True
            continue
        if tag == _P:
            name, rest_at = _split_cstr(body)
            if not name:
                out.append(frame)
                at_start = False
                continue
            key = body[rest_at:]
            used.add(key)
            if name in client and at_start:
                entries.append(Emit(messages.error_response(
                    "42P05", f'prepared statement "{name}" already exists')))
                skipping = True
                continue
            client[name] = key
            if at_start and server.get(key) is not None:
                entries.append(Emit(messages.parse_complete()))
                continue
            out.append(messages.frame(_P, _cstr(server.add(key)) + key))
            at_start = False
        elif tag == _B:
            portal, stmt_at = _split_cstr(body)
            stmt, rest_at = _split_cstr(body, stmt_at)
            target = _server_name(stmt, client, server, prepare, used, batch_start)
            out.append(frame if target == stmt else
                       messages.frame(_B, _cstr(portal) + _cstr(target) + body[rest_at:]))
            at_start = False
        elif tag == _D and body[:1] == b"S":
            stmt, _ = _split_cstr(body, 1)
            target = _server_name(stmt, client, server, prepare, used, batch_start)
            out.append(frame if target == stmt else messages.describe(b"S", target))
            at_start = False
        elif tag == _C and body[:1] == b"S":
            stmt, _ = _split_cstr(body, 1)
            if stmt and client.pop(stmt, None) is not None and at_start:
                entries.append(Emit(messages.close_complete()))
                continue
            out.append(messages.close(b"S", _NO_SUCH_STATEMENT) if stmt else frame)
            at_start = False
        elif tag == _S or tag == _F:
            out.append(frame)
            entries.append(forward)
            at_start = True
        elif tag == _Q:
            out.append(_deallocate(body, client) or frame)
            entries.append(forward)
            at_start = True
        elif tag == _H:
            out.append(frame)
        else:
            out.append(frame)
            at_start = False
    return Rewritten(b"".join(out), entries, b"".join(prepare), skipping, used)


def _server_name(stmt: str, client: dict[str, bytes], server: ServerStatements,
                 prepare: list[bytes], used: set[bytes], batch_start: bool) -> str:
    """The server's name for the client's statement ``stmt`` (preparing it if need be)."""
    if not stmt:
        return stmt
    key = client.get(stmt)
    if key is None:
        return stmt  # unknown: PostgreSQL reports 26000 with the client's own name
    used.add(key)
    name = server.get(key)
    if name is not None:
        return name
    if not batch_start:
        return stmt  # cannot prepare mid-batch: 26000, the client may retry
    name = server.add(key)
    prepare.append(messages.frame(_P, _cstr(name) + key))
    return name


def _deallocate(body: bytes, client: dict[str, bytes]) -> bytes | None:
    """The stand-in for ``DEALLOCATE name`` of a statement the client has, else None."""
    m = _DEALLOCATE.match(body)
    if m is None:
        return None
    quoted, plain = m.groups()
    name = quoted.replace(b'""', b'"').decode() if quoted else plain.decode().lower()
    if client.pop(name, None) is None:
        return None
    return _DEALLOCATE_STAND_IN


def internal_batch(prepare: bytes, evict: list[str]) -> bytes:
    """Close evicted statements and prepare missing ones, ending with Sync."""
    closes = b"".join(messages.close(b"S", name) for name in evict)
    return closes + prepare + messages.sync()


def _cstr(s: str) -> bytes:
    return s.encode() + b"\x00"

