"""Encoders and decoders for the messages of a session: queries, their replies, errors.

The authentication exchange (Authentication*, PasswordMessage, SASL) is in
:mod:`proxy.wire.authentication`: it runs once per connection, in the login and the
server handshake, and shares only the field helpers below (:func:`frame`, :func:`cstr`,
:func:`read_cstr`, :func:`expect_end`) with the messages here.

Encoders return the whole message (tag, Int32 length, body) as ``bytes``; strings are
UTF-8 and NUL-terminated. A string argument containing NUL would end the field early
and shift every field after it, so encoders refuse it with ValueError (a bug in the
caller), except the error and notice encoders, which must never fail while reporting an
error and replace NUL with U+FFFD instead.

Decoders take a message body (what the framers return) and raise only
ProtocolViolation on malformed input. They are strict: every string must be
NUL-terminated, valid UTF-8, and the body must be consumed exactly, so what the proxy
inspects is exactly what the server will execute (a Query with text after an embedded
NUL is refused, as PostgreSQL refuses it).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from proxy.wire.errors import ProtocolViolation
from proxy.wire.startup import (
    CANCEL_REQUEST_CODE,
    MAX_CANCEL_KEY_SIZE,
    MIN_CANCEL_KEY_SIZE,
    SSL_REQUEST_CODE,
)
from proxy.wire.tags import BackendTag, FrontendTag

if TYPE_CHECKING:
    from mypy_extensions import i64  # (compiled: machine integers; interpreted: int)

_INT32: Final = struct.Struct("!i")
_UINT32: Final = struct.Struct("!I")
_UINT16: Final = struct.Struct("!H")
_NULL: Final = b"\xff\xff\xff\xff"  # Int32 -1: a NULL parameter or column value
# RowDescription field after the name: table oid, column number, type oid (text),
# type size (variable), type modifier (none), format (text).
_TEXT_FIELD: Final = struct.Struct("!IhIhih").pack(0, 0, 25, -1, -1, 0)
_PROTOCOL_3: Final = 3 << 16

# ---- encoding helpers ---------------------------------------------------------------


def header(tag: i64, length: i64) -> bytes:
    """A message's tag byte and Int32 length field (``length`` counts itself and the
    body, not the tag), unchecked: :func:`frame` checks both."""
    # One int to bytes (compiled: i64 arithmetic and a C call; a Struct's pack is a
    # generic call).
    return int((tag << 32) | length).to_bytes(5, "big")


def frame(tag: int, body: bytes) -> bytes:
    """Prefix ``body`` with its tag byte and Int32 length."""
    size = len(body) + 4
    if not 0 <= tag <= 0xFF or size > 0x7FFFFFFF:
        raise ValueError(f"cannot frame a message of type {tag} and {size - 4} bytes")
    return header(tag, size) + body


def cstr(text: str) -> bytes:
    """``text`` as a NUL-terminated UTF-8 field; a NUL inside it is a caller's bug."""
    if "\0" in text:
        raise ValueError(f"string for the wire contains NUL: {text[:40]!r}")
    return text.encode() + b"\0"


def _safe_cstr(text: str) -> bytes:
    return text.replace("\0", "\ufffd").encode() + b"\0"


def _kind(kind: bytes) -> bytes:
    if kind != b"S" and kind != b"P":
        raise ValueError(f"kind must be b'S' (statement) or b'P' (portal), not {kind!r}")
    return kind


def _minor(minor: int) -> int:
    if not 0 <= minor <= 0xFFFF:
        raise ValueError(f"protocol minor version must fit 16 bits, not {minor}")
    return minor


_READY: Final = {s: frame(BackendTag.READY_FOR_QUERY, s) for s in (b"I", b"T", b"E")}
_EMPTY_QUERY: Final = frame(BackendTag.EMPTY_QUERY_RESPONSE, b"")
_PARSE_COMPLETE: Final = frame(BackendTag.PARSE_COMPLETE, b"")
_CLOSE_COMPLETE: Final = frame(BackendTag.CLOSE_COMPLETE, b"")
_SYNC: Final = frame(FrontendTag.SYNC, b"")
_FLUSH: Final = frame(FrontendTag.FLUSH, b"")
_TERMINATE: Final = frame(FrontendTag.TERMINATE, b"")
_SSL_REQUEST: Final = struct.pack("!ii", 8, SSL_REQUEST_CODE)

# ---- backend messages (proxy → client) ----------------------------------------------


def parameter_status(name: str, value: str) -> bytes:
    """ParameterStatus reporting a run-time parameter's current value."""
    return frame(BackendTag.PARAMETER_STATUS, cstr(name) + cstr(value))


def backend_key_data(process_id: int, secret_key: bytes) -> bytes:
    """BackendKeyData: the pair a client sends back in a CancelRequest."""
    if not MIN_CANCEL_KEY_SIZE <= len(secret_key) <= MAX_CANCEL_KEY_SIZE:
        raise ValueError(f"cancel key must be 4 to 256 bytes, not {len(secret_key)}")
    return frame(BackendTag.BACKEND_KEY_DATA, _UINT32.pack(process_id) + secret_key)


def ready_for_query(status: bytes) -> bytes:
    """ReadyForQuery with transaction status b"I", b"T" or b"E"."""
    try:
        return _READY[status]
    except KeyError:
        raise ValueError(f"invalid transaction status {status!r}") from None


def _notice_fields(
    sqlstate: str, message: str, severity: str, detail: str | None, hint: str | None
) -> bytes:
    if len(sqlstate) != 5 or not sqlstate.isascii() or not sqlstate.isalnum():
        raise ValueError(f"invalid SQLSTATE {sqlstate!r}")
    sev = _safe_cstr(severity)
    # S is the (possibly localized) severity, V the non-localized one; we never localize.
    parts = [b"S", sev, b"V", sev, b"C", _safe_cstr(sqlstate), b"M", _safe_cstr(message)]
    if detail is not None:
        parts += (b"D", _safe_cstr(detail))
    if hint is not None:
        parts += (b"H", _safe_cstr(hint))
    parts.append(b"\0")
    return b"".join(parts)


def error_response(
    sqlstate: str,
    message: str,
    *,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """ErrorResponse with fields S, V, C, M and, when given, D and H."""
    return frame(
        BackendTag.ERROR_RESPONSE, _notice_fields(sqlstate, message, severity, detail, hint)
    )


def notice_response(
    sqlstate: str,
    message: str,
    *,
    severity: str = "NOTICE",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """NoticeResponse; same fields as ``error_response``."""
    return frame(
        BackendTag.NOTICE_RESPONSE, _notice_fields(sqlstate, message, severity, detail, hint)
    )


def negotiate_protocol_version(newest_minor: int, unsupported_options: list[str]) -> bytes:
    """NegotiateProtocolVersion: the newest 3.x we speak and the options we ignored.

    On the wire the version is the full ``3 << 16 | minor`` (what PostgreSQL sends and
    libpq checks), although the docs long described it as just the minor number.
    """
    body = struct.pack("!II", _PROTOCOL_3 | _minor(newest_minor), len(unsupported_options))
    return frame(
        BackendTag.NEGOTIATE_PROTOCOL_VERSION,
        body + b"".join(map(cstr, unsupported_options)),
    )


def command_complete(tag: str) -> bytes:
    """CommandComplete with its command tag (e.g. "SELECT 1")."""
    return frame(BackendTag.COMMAND_COMPLETE, cstr(tag))


def empty_query_response() -> bytes:
    """EmptyQueryResponse, the answer to an empty query string."""
    return _EMPTY_QUERY


def row_description(columns: list[str]) -> bytes:
    """RowDescription of text columns (type oid 25, text format)."""
    parts = [_UINT16.pack(len(columns))]
    for name in columns:
        parts += (cstr(name), _TEXT_FIELD)
    return frame(BackendTag.ROW_DESCRIPTION, b"".join(parts))


def data_row(values: list[str | None]) -> bytes:
    """DataRow of text values; None is SQL NULL."""
    parts = [_UINT16.pack(len(values))]
    for value in values:
        if value is None:
            parts.append(_NULL)
        else:
            raw = value.encode()
            parts += (_INT32.pack(len(raw)), raw)
    return frame(BackendTag.DATA_ROW, b"".join(parts))


def parse_complete() -> bytes:
    """ParseComplete."""
    return _PARSE_COMPLETE


def close_complete() -> bytes:
    """CloseComplete."""
    return _CLOSE_COMPLETE


# ---- frontend messages (proxy → server) ---------------------------------------------


def startup_message(parameters: dict[str, str], protocol_minor: int = 0) -> bytes:
    """StartupMessage for protocol 3.``protocol_minor`` with the given parameters."""
    parts = [_UINT32.pack(_PROTOCOL_3 | _minor(protocol_minor))]
    for name, value in parameters.items():
        if not name:
            raise ValueError("startup parameter name must not be empty")
        parts += (cstr(name), cstr(value))
    parts.append(b"\0")
    body = b"".join(parts)
    return _INT32.pack(len(body) + 4) + body


def ssl_request() -> bytes:
    """SSLRequest."""
    return _SSL_REQUEST


def cancel_request(process_id: int, secret_key: bytes) -> bytes:
    """CancelRequest for the backend identified by BackendKeyData."""
    if not MIN_CANCEL_KEY_SIZE <= len(secret_key) <= MAX_CANCEL_KEY_SIZE:
        raise ValueError(f"cancel key must be 4 to 256 bytes, not {len(secret_key)}")
    head = struct.pack("!iII", 12 + len(secret_key), CANCEL_REQUEST_CODE, process_id)
    return head + secret_key


def query(sql: str) -> bytes:
    """Query (simple query protocol)."""
    return frame(FrontendTag.QUERY, cstr(sql))


def parse(name: str, sql: str, param_oids: Sequence[int] = ()) -> bytes:
    """Parse: prepare ``sql`` as statement ``name`` ("" is the unnamed statement)."""
    n = len(param_oids)
    body = cstr(name) + cstr(sql) + struct.pack(f"!H{n}I", n, *param_oids)
    return frame(FrontendTag.PARSE, body)


def bind(
    portal: str,
    statement: str,
    params: Sequence[bytes | None],
    param_formats: Sequence[int] = (),
    result_formats: Sequence[int] = (),
) -> bytes:
    """Bind: create ``portal`` from ``statement`` with the given parameter values."""
    nf = len(param_formats)
    parts = [
        cstr(portal),
        cstr(statement),
        struct.pack(f"!H{nf}hH", nf, *param_formats, len(params)),
    ]
    for value in params:
        if value is None:
            parts.append(_NULL)
        else:
            parts += (_INT32.pack(len(value)), value)
    nr = len(result_formats)
    parts.append(struct.pack(f"!H{nr}h", nr, *result_formats))
    return frame(FrontendTag.BIND, b"".join(parts))


def describe(kind: bytes, name: str) -> bytes:
    """Describe a statement (kind b"S") or portal (b"P")."""
    return frame(FrontendTag.DESCRIBE, _kind(kind) + cstr(name))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    """Execute ``portal``; ``max_rows`` 0 means no limit."""
    return frame(FrontendTag.EXECUTE, cstr(portal) + _INT32.pack(max_rows))


def sync() -> bytes:
    """Sync."""
    return _SYNC


def flush() -> bytes:
    """Flush."""
    return _FLUSH


def close(kind: bytes, name: str) -> bytes:
    """Close a statement (kind b"S") or portal (b"P")."""
    return frame(FrontendTag.CLOSE, _kind(kind) + cstr(name))


def terminate() -> bytes:
    """Terminate."""
    return _TERMINATE


# ---- decoders -----------------------------------------------------------------------


def read_cstr(body: bytes, pos: int, what: str) -> tuple[str, int]:
    """Decode the NUL-terminated UTF-8 string at ``pos``; return it and the next offset."""
    nul = body.find(0, pos)
    if nul < 0:
        raise ProtocolViolation(f"{what} is not NUL-terminated")
    try:
        return body[pos:nul].decode(), nul + 1
    except UnicodeDecodeError:
        raise ProtocolViolation(f"{what} is not valid UTF-8") from None


def _only_cstr(body: bytes, what: str) -> str:
    text, end = read_cstr(body, 0, what)
    if end != len(body):
        raise ProtocolViolation(f"{what} has data after its terminating NUL")
    return text


def expect_end(body: bytes, pos: int, what: str) -> None:
    """Refuse a ``what`` message whose fields end before or after its body does."""
    if pos != len(body):
        raise ProtocolViolation(f"{what} message has an invalid length")


def decode_error_fields(body: bytes) -> dict[str, str]:
    """Fields of an ErrorResponse or NoticeResponse, keyed by their one-letter code.

    Values are decoded with replacement of invalid UTF-8: the server writes them in the
    client's encoding, which need not be UTF-8, and the proxy needs the SQLSTATE (ASCII)
    and a readable message, not a failure.
    """
    fields: dict[str, str] = {}
    pos = 0
    n = len(body)
    while pos < n:
        code = body[pos]
        if code == 0:
            expect_end(body, pos + 1, "error")
            return fields
        nul = body.find(0, pos + 1)
        if nul < 0:
            raise ProtocolViolation("error field is not NUL-terminated")
        fields[chr(code)] = body[pos + 1 : nul].decode("utf-8", "replace")
        pos = nul + 1
    raise ProtocolViolation("error message is missing its terminator")


def decode_parameter_status(body: bytes) -> tuple[str, str]:
    """ParameterStatus → (name, value)."""
    name, pos = read_cstr(body, 0, "parameter name")
    value, pos = read_cstr(body, pos, "parameter value")
    expect_end(body, pos, "ParameterStatus")
    return name, value


def decode_backend_key_data(body: bytes) -> tuple[int, bytes]:
    """BackendKeyData → (process_id, secret_key)."""
    if not MIN_CANCEL_KEY_SIZE <= len(body) - 4 <= MAX_CANCEL_KEY_SIZE:
        raise ProtocolViolation("BackendKeyData message has an invalid length")
    (process_id,) = _UINT32.unpack_from(body)
    return process_id, body[4:]


def decode_query(body: bytes) -> str:
    """Query → the SQL text."""
    return _only_cstr(body, "query string")


def decode_parse(body: bytes) -> tuple[str, str, list[int]]:
    """Parse → (statement name, SQL text, parameter type oids)."""
    name, pos = read_cstr(body, 0, "statement name")
    sql, pos = read_cstr(body, pos, "query string")
    if len(body) - pos < 2:
        raise ProtocolViolation("Parse message is truncated")
    (n,) = _UINT16.unpack_from(body, pos)
    pos += 2
    expect_end(body, pos + 4 * n, "Parse")
    return name, sql, list(struct.unpack_from(f"!{n}I", body, pos))


def decode_data_row(body: bytes) -> list[bytes | None]:
    """DataRow → the column values as sent (None for NULL)."""
    if len(body) < 2:
        raise ProtocolViolation("DataRow message is truncated")
    (n,) = _UINT16.unpack_from(body)
    pos = 2
    values: list[bytes | None] = []
    for _ in range(n):
        if len(body) - pos < 4:
            raise ProtocolViolation("DataRow message is truncated")
        (size,) = _INT32.unpack_from(body, pos)
        pos += 4
        if size == -1:
            values.append(None)
            continue
        if size < 0 or pos + size > len(body):
            raise ProtocolViolation("DataRow column has an invalid length")
        values.append(bytes(body[pos:pos + size]))
        pos += size
    expect_end(body, pos, "DataRow")
    return values


def decode_command_complete(body: bytes) -> str:
    """CommandComplete → the command tag."""
    return _only_cstr(body, "command tag")


def decode_ready_for_query(body: bytes) -> bytes:
    """ReadyForQuery → the status byte, b"I", b"T" or b"E" (see TxStatus)."""
    status = bytes(body)
    if status not in _READY:
        raise ProtocolViolation(f"invalid ReadyForQuery transaction status {status[:8]!r}")
    return status


def decode_negotiate_protocol_version(body: bytes) -> tuple[int, list[str]]:
    """NegotiateProtocolVersion → (newest supported 3.x minor, unrecognized options)."""
    if len(body) < 8:
        raise ProtocolViolation("NegotiateProtocolVersion message is truncated")
    version, count = struct.unpack_from("!II", body)
    if version >> 16 != 3:
        raise ProtocolViolation(
            f"server negotiated protocol {version >> 16}.{version & 0xFFFF}, not 3.x"
        )
    if count > len(body):  # each name takes at least its NUL
        raise ProtocolViolation("NegotiateProtocolVersion message has an invalid length")
    options: list[str] = []
    pos = 8
    for _ in range(count):
        name, pos = read_cstr(body, pos, "protocol option name")
        options.append(name)
    expect_end(body, pos, "NegotiateProtocolVersion")
    return version & 0xFFFF, options


def decode_bind_header(body: bytes) -> tuple[str, str]:
    """Bind → (portal, statement); the parameters after them are not examined."""
    portal, pos = read_cstr(body, 0, "portal name")
    statement, _ = read_cstr(body, pos, "statement name")
    return portal, statement


def decode_bind(body: bytes) -> tuple[str, str, list[int], list[bytes | None]]:
    """Bind → (portal, statement, parameter format codes, parameter values; None = NULL)."""
    portal, pos = read_cstr(body, 0, "portal name")
    statement, pos = read_cstr(body, pos, "statement name")
    try:
        (nformats,) = _UINT16.unpack_from(body, pos)
        pos += 2
        formats = list(struct.unpack_from(f"!{nformats}h", body, pos))
        pos += 2 * nformats
        (nparams,) = _UINT16.unpack_from(body, pos)
        pos += 2
        params: list[bytes | None] = []
        for _ in range(nparams):
            (size,) = _INT32.unpack_from(body, pos)
            pos += 4
            if size == -1:
                params.append(None)
                continue
            if size < 0 or pos + size > len(body):
                raise ProtocolViolation("invalid parameter length in Bind")
            params.append(body[pos:pos + size])
            pos += size
    except struct.error:
        raise ProtocolViolation("truncated Bind message") from None
    return portal, statement, formats, params


def decode_close_or_describe(body: bytes) -> tuple[bytes, str]:
    """Close or Describe → (kind b"S" or b"P", name)."""
    kind = body[:1]
    if kind != b"S" and kind != b"P":
        raise ProtocolViolation(f"invalid Close/Describe kind {kind!r}")
    name, pos = read_cstr(body, 1, "statement or portal name")
    expect_end(body, pos, "Close/Describe")
    return bytes(kind), name
