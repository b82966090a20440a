"""Startup-phase packets: the untagged messages a client sends before the first tag.

Each packet is ``Int32 length (counting itself), Int32 code, payload``. The code is a
protocol version (``major << 16 | minor``) for a StartupMessage, or one of the magic
request codes below for SSLRequest, GSSENCRequest and CancelRequest.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TypeAlias

from proxy.wire.errors import ProtocolViolation
from proxy.wire.framing import ClientBytes

__all__ = [
    "CANCEL_REQUEST_CODE",
    "GSSENC_REQUEST_CODE",
    "SSL_REQUEST_CODE",
    "CancelRequest",
    "GSSENCRequest",
    "SSLRequest",
    "StartupFramer",
    "StartupMessage",
    "StartupPacket",
    "parse_startup_packet",
]

CANCEL_REQUEST_CODE = 80877102  # 1234 << 16 | 5678
SSL_REQUEST_CODE = 80877103  # 1234 << 16 | 5679
GSSENC_REQUEST_CODE = 80877104  # 1234 << 16 | 5680
PROTOCOL_OPTION_PREFIX = "_pq_."
# Protocol 3.0 uses a 4-byte cancel key; 3.2 allows up to 256 bytes.
MIN_CANCEL_KEY_SIZE = 4
MAX_CANCEL_KEY_SIZE = 256

_INT32 = struct.Struct("!i")
_UINT32 = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """The client asks to switch to TLS before the StartupMessage."""


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """The client asks to switch to GSSAPI encryption before the StartupMessage."""


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Cancel the query running on the backend identified by ``process_id``.

    ``secret_key`` is kept as bytes: 4 bytes in protocol 3.0, up to 256 in 3.2.
    """

    process_id: int
    secret_key: bytes = field(repr=False)  # a credential: keep it out of logs


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """The client's protocol version and connection parameters.

    ``parameters`` keeps the client's order; ``_pq_.`` protocol options are kept apart in
    ``protocol_options`` because they are not settings.
    """

    protocol_minor: int
    parameters: dict[str, str]
    protocol_options: dict[str, str]


StartupPacket: TypeAlias = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


class StartupFramer(ClientBytes):
    """Split the startup-phase byte stream into packets (each body after its length).

    A length below 8 or above ``max_size`` raises ProtocolViolation as soon as the four
    length bytes arrive; after that the framer refuses further work. When the startup
    phase ends, ``remaining()`` hands the unconsumed bytes to the next framer.
    """

    __slots__ = ()

    def __init__(self, max_size: int = 10000) -> None:
        super().__init__(max_size)

    def next_packet(self) -> bytes | None:
        """Return the next whole packet body (code and payload), or None if incomplete."""
        if self._error is not None:
            raise ProtocolViolation(self._error)
        buf = self._buf
        off = self._off
        if len(buf) - off < 4:
            return None
        (length,) = _INT32.unpack_from(buf, off)
        if length < 8 or length > self._max:
            self._error = f"invalid length {length} of startup packet"
            raise ProtocolViolation(self._error)
        end = off + length
        if end > len(buf):
            return None
        body = bytes(buf[off + 4 : end])
        # Startup packets are few and small: compacting every time is simplest.
        del buf[:end]
        self._off = 0
        return body

    def remaining(self) -> bytes:
        """Return and forget the bytes not consumed yet (for the next framer)."""
        rest = bytes(self._buf[self._off :])
        self._buf.clear()
        self._off = 0
        return rest


def parse_startup_packet(body: bytes) -> StartupPacket:
    """Decode a packet body returned by ``StartupFramer.next_packet``."""
    if len(body) < 4:
        raise ProtocolViolation("startup packet is too short to hold a request code")
    (code,) = _UINT32.unpack_from(body)
    if code == SSL_REQUEST_CODE or code == GSSENC_REQUEST_CODE:
        if len(body) != 4:
            raise ProtocolViolation("invalid length of encryption request packet")
        return SSLRequest() if code == SSL_REQUEST_CODE else GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        key_size = len(body) - 8
        if not MIN_CANCEL_KEY_SIZE <= key_size <= MAX_CANCEL_KEY_SIZE:
            raise ProtocolViolation("invalid length of cancel request packet")
        (process_id,) = _UINT32.unpack_from(body, 4)
        return CancelRequest(process_id, body[8:])
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise ProtocolViolation(
            f"unsupported frontend protocol {major}.{minor}: the proxy supports 3.x"
        )
    parameters, options = _parse_parameters(body)
    return StartupMessage(minor, parameters, options)


def _parse_parameters(body: bytes) -> tuple[dict[str, str], dict[str, str]]:
    """Read the NUL-terminated name/value pairs that end with an empty name."""
    parameters: dict[str, str] = {}
    options: dict[str, str] = {}
    end = len(body)
    pos = 4
    while True:
        nul = body.find(0, pos)
        if nul < 0:
            raise ProtocolViolation("invalid startup packet layout: missing terminator")
        if nul == pos:
            # The empty name terminates the list, and must be the packet's last byte.
            if nul != end - 1:
                raise ProtocolViolation(
                    "invalid startup packet layout: expected terminator as last byte"
                )
            return parameters, options
        value_end = body.find(0, nul + 1)
        if value_end < 0:
            raise ProtocolViolation("invalid startup packet layout: parameter without a value")
        name = _decode(body[pos:nul])
        value = _decode(body[nul + 1 : value_end])
        # A repeated name is ambiguous (which one would the server honour?): refuse it
        # rather than guess, since the proxy's checks and the server must agree.
        if name in parameters or name in options:
            raise ProtocolViolation(f'startup packet repeats parameter "{name}"')
        if name.startswith(PROTOCOL_OPTION_PREFIX):
            options[name] = value
        else:
            parameters[name] = value
        pos = value_end + 1


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation("startup packet parameter is not valid UTF-8") from None
