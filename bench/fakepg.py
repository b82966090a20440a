"""A fake PostgreSQL 15 for the engine bench (``bench/engine/``): the protocol bytes,
a backend that answers what the proxy sends with the exact replies PostgreSQL gives, the
fake transports and the engine that delivers bytes between them. No sockets.

The bytes are written here, not taken from ``proxy.wire``: the fake must not share the
proxy's encoder.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import struct
from collections.abc import Sequence
from typing import Any, Protocol

ABALANCE = b"0"  # pgbench_accounts.abalance after pgbench -i

# ======================================================================================
# Protocol v3 bytes (written here, not taken from proxy.wire: the fake must not share
# the proxy's encoder).
# ======================================================================================


def frame(tag: bytes, body: bytes = b"") -> bytes:
    return tag + struct.pack("!I", len(body) + 4) + body


def _cstr(text: str | bytes) -> bytes:
    return (text.encode() if isinstance(text, str) else text) + b"\x00"


def startup_message(params: dict[str, str]) -> bytes:
    body = struct.pack("!I", 196608) + b"".join(_cstr(k) + _cstr(v) for k, v in params.items())
    return struct.pack("!I", len(body) + 5) + body + b"\x00"


def password_message(password: str) -> bytes:
    return frame(b"p", _cstr(password))


def query(sql: str) -> bytes:
    return frame(b"Q", _cstr(sql))


def parse(name: str, sql: str) -> bytes:
    return frame(b"P", _cstr(name) + _cstr(sql) + struct.pack("!H", 0))


def bind(portal: str, statement: str, params: Sequence[bytes]) -> bytes:
    body = [_cstr(portal), _cstr(statement), struct.pack("!HH", 0, len(params))]
    body.extend(struct.pack("!i", len(p)) + p for p in params)
    body.append(struct.pack("!H", 0))
    return frame(b"B", b"".join(body))


def describe(kind: bytes, name: str) -> bytes:
    return frame(b"D", kind + _cstr(name))


def execute(portal: str = "") -> bytes:
    return frame(b"E", _cstr(portal) + struct.pack("!i", 0))


def sync() -> bytes:
    return frame(b"S")


def terminate() -> bytes:
    return frame(b"X")


INT4_OID = 23
TEXT_OID = 25

PARSE_COMPLETE = frame(b"1")
BIND_COMPLETE = frame(b"2")
CLOSE_COMPLETE = frame(b"3")
NO_DATA = frame(b"n")
EMPTY_QUERY = frame(b"I")
READY_IDLE = frame(b"Z", b"I")


def row_description(columns: Sequence[tuple[str, int]]) -> bytes:
    body = [struct.pack("!H", len(columns))]
    for name, oid in columns:
        size = 4 if oid == INT4_OID else -1
        body.append(_cstr(name) + struct.pack("!IhIhih", 0, 0, oid, size, -1, 0))
    return frame(b"T", b"".join(body))


def data_row(values: Sequence[bytes | None]) -> bytes:
    body = [struct.pack("!H", len(values))]
    body.extend(struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
                for v in values)
    return frame(b"D", b"".join(body))


def command_complete(tag: str) -> bytes:
    return frame(b"C", _cstr(tag))


def error_response(sqlstate: str, message: str) -> bytes:
    return frame(b"E", b"SERROR\x00VERROR\x00C" + _cstr(sqlstate) + b"M" + _cstr(message)
                + b"\x00")


# ======================================================================================
# A fake PostgreSQL backend: the replies PostgreSQL 15 gives to what the proxy sends.
# ======================================================================================

_SERVER_PARAMS = {
    "application_name": "", "client_encoding": "UTF8", "DateStyle": "ISO, MDY",
    "default_transaction_read_only": "off", "in_hot_standby": "off",
    "integer_datetimes": "on", "IntervalStyle": "postgres", "is_superuser": "off",
    "server_encoding": "UTF8", "server_version": "15.0 (engine bench)",
    "session_authorization": "app_user", "standard_conforming_strings": "on",
    "TimeZone": "UTC",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    """What a statement returns: columns (name, type oid), rows, CommandComplete tag."""

    columns: tuple[tuple[str, int], ...]
    rows: tuple[tuple[bytes | None, ...], ...]
    tag: str


class PostgresError(LookupError):
    """What the fake PostgreSQL answers with an ErrorResponse."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def statement_result(sql: str, params: Sequence[bytes | None], abalance: bytes) -> Result:
    """PostgreSQL's answer to the statements of this benchmark; anything else is an error."""
    text = sql.strip().rstrip(";").strip()
    lowered = text.lower()
    if lowered.startswith("select abalance from pgbench_accounts where aid ="):
        return Result((("abalance", INT4_OID),), ((abalance,),), "SELECT 1")
    if "set_config(" in lowered:  # the proxy's tenant context: one column per setting
        values = tuple(params[1::2])
        return Result(tuple(("set_config", TEXT_OID) for _ in values), (values,), "SELECT 1")
    if "rolbypassrls" in lowered:  # the pool's check of the upstream role
        return Result((("?column?", TEXT_OID),), ((b"false false",),), "SELECT 1")
    if lowered in ("discard all", "reset all", "deallocate all"):
        return Result((), (), {"discard all": "DISCARD ALL", "reset all": "RESET",
                               "deallocate all": "DEALLOCATE ALL"}[lowered])
    raise PostgresError("42601", f"engine bench fake PostgreSQL does not know: {text[:200]!r}")


class FakePostgres:
    """One backend: startup, simple and extended protocol, named statements and portals.

    Replies are computed once per distinct request in a given state of the named
    statements, then served from a memo: the fake's cost stays out of the measurement.
    """

    def __init__(self, backend_pid: int, abalance: bytes = ABALANCE) -> None:
        self.backend_pid = backend_pid
        self.abalance = abalance
        self._buffer = b""
        self._started = False
        self.statements: dict[str, tuple[str, int]] = {}  # name → (sql, parameter count)
        self._portals: dict[str, tuple[str, tuple[bytes | None, ...]]] = {}
        self._failed = False  # an error in an extended batch: skip to Sync
        self._memo: dict[bytes, bytes] = {}
        self.computed = 0  # requests answered by the model, not from the memo

    def receive(self, data: bytes) -> bytes:
        """Bytes the proxy wrote → the bytes PostgreSQL sends back."""
        reply = self._memo.get(data)
        if reply is not None and not self._buffer:
            return reply
        self.computed += 1
        before = self._state()
        reply = self._answer(data)
        if self._state() == before and not self._buffer:
            self._memo[data] = reply
        else:
            self._memo.clear()
        return reply

    def _state(self) -> tuple[object, ...]:
        return (dict(self.statements), dict(self._portals), self._failed, self._started)

    def _answer(self, data: bytes) -> bytes:
        buf = self._buffer + data
        out: list[bytes] = []
        pos = 0
        if not self._started:
            if len(buf) < 4:
                self._buffer = buf
                return b""
            (length,) = struct.unpack_from("!I", buf, 0)
            if len(buf) < length:
                self._buffer = buf
                return b""
            self._started = True
            pos = length
            out.append(frame(b"R", struct.pack("!I", 0)))  # trust: AuthenticationOk
            out.extend(frame(b"S", _cstr(k) + _cstr(v)) for k, v in _SERVER_PARAMS.items())
            out.append(frame(b"K", struct.pack("!I", self.backend_pid) + b"key!"))
            out.append(READY_IDLE)
        while len(buf) - pos >= 5:
            tag = buf[pos:pos + 1]
            (length,) = struct.unpack_from("!I", buf, pos + 1)
            if len(buf) - pos < length + 1:
                break
            body = buf[pos + 5:pos + 1 + length]
            pos += 1 + length
            out.append(self._message(tag, body))
        self._buffer = buf[pos:]
        return b"".join(out)

    def _message(self, tag: bytes, body: bytes) -> bytes:
        if tag == b"S":
            self._failed = False
            self._portals.clear()  # the implicit transaction ends
            return READY_IDLE
        if tag == b"X":
            return b""
        if self._failed:
            return b""  # PostgreSQL skips to the next Sync after an error
        try:
            if tag == b"Q":
                return self._query(body[:-1].decode())
            return self._extended(tag, body)
        except LookupError as exc:
            reply = error_response(getattr(exc, "sqlstate", "XX000"), str(exc))
            if tag == b"Q":
                return reply + READY_IDLE
            self._failed = True
            return reply

    def _query(self, sql: str) -> bytes:
        if not sql.strip():
            return EMPTY_QUERY + READY_IDLE
        result = statement_result(sql, (), self.abalance)
        out = [row_description(result.columns)] if result.columns else []
        out.extend(data_row(row) for row in result.rows)
        out.append(command_complete(result.tag))
        out.append(READY_IDLE)
        return b"".join(out)

    def _extended(self, tag: bytes, body: bytes) -> bytes:
        if tag == b"P":
            name, rest = _split_cstr(body)
            sql, rest = _split_cstr(rest)
            if name and name in self.statements:
                raise PostgresError("42P05", f'prepared statement "{name}" already exists')
            statement_result(sql, (b"",) * 64, self.abalance)  # known, or an error now
            self.statements[name] = (sql, len(set(re.findall(r"\$(\d+)", sql))))
            return PARSE_COMPLETE
        if tag == b"B":
            portal, rest = _split_cstr(body)
            statement, rest = _split_cstr(rest)
            if statement not in self.statements:
                raise PostgresError("26000",
                                    f'prepared statement "{statement}" does not exist')
            (nformats,) = struct.unpack_from("!H", rest, 0)
            at = 2 + 2 * nformats
            (nparams,) = struct.unpack_from("!H", rest, at)
            at += 2
            values: list[bytes | None] = []
            for _ in range(nparams):
                (size,) = struct.unpack_from("!i", rest, at)
                at += 4
                if size < 0:
                    values.append(None)
                else:
                    values.append(rest[at:at + size])
                    at += size
            self._portals[portal] = (self.statements[statement][0], tuple(values))
            return BIND_COMPLETE
        if tag == b"D":
            kind, name = body[:1], body[1:-1].decode()
            if kind == b"S":
                if name not in self.statements:
                    raise PostgresError("26000", f'prepared statement "{name}" does not exist')
                sql, nparams = self.statements[name]
                params_desc = frame(b"t", struct.pack("!H", nparams)
                                   + struct.pack("!I", TEXT_OID) * nparams)
                result = statement_result(sql, (b"",) * 64, self.abalance)
                return params_desc + (row_description(result.columns) if result.columns
                                      else NO_DATA)
            sql, params = self._portal(name)
            result = statement_result(sql, params, self.abalance)
            return row_description(result.columns) if result.columns else NO_DATA
        if tag == b"E":
            name, _rest = _split_cstr(body)
            sql, params = self._portal(name)
            result = statement_result(sql, params, self.abalance)
            return b"".join([*(data_row(row) for row in result.rows),
                             command_complete(result.tag)])
        if tag == b"C":
            kind, name = body[:1], body[1:-1].decode()
            (self.statements if kind == b"S" else self._portals).pop(name, None)
            return CLOSE_COMPLETE
        if tag == b"H":
            return b""
        raise PostgresError("08P01",
                            f"engine bench fake PostgreSQL: message {tag!r} not supported")

    def _portal(self, name: str) -> tuple[str, tuple[bytes | None, ...]]:
        portal = self._portals.get(name)
        if portal is None:
            raise PostgresError("34000", f'portal "{name}" does not exist')
        return portal


def _split_cstr(data: bytes) -> tuple[str, bytes]:
    end = data.index(b"\x00")
    return data[:end].decode(), data[end + 1:]


# ======================================================================================
# Fake transports and the engine that delivers bytes between them.
# ======================================================================================


class _Receiving(Protocol):
    def data_received(self, data: bytes) -> None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...


class FakeTransport:
    """What the proxy uses of an asyncio transport; writes are recorded."""

    def __init__(self, protocol: _Receiving, peer: tuple[str, int]) -> None:
        self.protocol = protocol
        self.peer = peer
        self.chunks: list[bytes] = []
        self.closed = False
        self.reading_paused = False

    def write(self, data: bytes) -> None:
        if data:
            self.chunks.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False

    def is_reading(self) -> bool:
        return not self.reading_paused

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.peer
        if name == "sockname":
            return ("127.0.0.1", 6432)
        return default

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None


class FakeServerTransport(FakeTransport):
    """A server connection's socket: writes go to its FakePostgres, whose reply waits
    in the engine's outbox until the current callback has returned (``sync`` delivery),
    or is delivered by a callback of the event loop (``loop`` delivery)."""

    def __init__(self, protocol: _Receiving, engine: Engine, postgres: FakePostgres) -> None:
        super().__init__(protocol, ("127.0.0.1", 5432))
        self.engine = engine
        self.postgres = postgres

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        reply = self.postgres.receive(data)
        if reply:
            if not self.chunks:
                if self.engine.through_loop:
                    asyncio.get_running_loop().call_soon(self.deliver)
                else:
                    self.engine.outbox.append(self)
            self.chunks.append(reply)

    def deliver(self) -> None:
        """One ``data_received`` with everything the server has sent since the last."""
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if data and not self.closed:
            self.protocol.data_received(data)


class Engine:
    """Delivers the fake servers' replies to the proxy, one callback per connection."""

    def __init__(self, abalance: bytes = ABALANCE, delivery: str = "sync") -> None:
        self.outbox: list[FakeServerTransport] = []
        self.servers: list[FakeServerTransport] = []
        self.abalance = abalance
        self.through_loop = delivery == "loop"

    def server_transport(self, protocol: _Receiving) -> FakeServerTransport:
        transport = FakeServerTransport(
            protocol, self, FakePostgres(10_000 + len(self.servers), self.abalance))
        self.servers.append(transport)
        return transport

    def pump(self) -> None:
        """Deliver every reply written so far, and those the deliveries cause."""
        while self.outbox:
            batch, self.outbox = self.outbox, []
            for transport in batch:
                transport.deliver()
