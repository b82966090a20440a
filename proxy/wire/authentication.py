"""The authentication exchange: Authentication* requests and the client's answers.

The proxy speaks it on both sides: to its clients (AuthenticationCleartextPassword for
the JWT, SCRAM-SHA-256 for service accounts and the admin console) and to PostgreSQL
(the server handshake). It runs once per connection, before any query, so it is kept
apart from the session's messages in :mod:`proxy.wire.messages`, whose field helpers
and conventions it shares: encoders return whole messages and refuse a string with a
NUL in it (ValueError); decoders raise only ProtocolViolation.
"""

from __future__ import annotations

import struct
from typing import Final

from proxy.wire.errors import ProtocolViolation
from proxy.wire.messages import cstr, expect_end, frame, read_cstr
from proxy.wire.tags import AuthCode, BackendTag, FrontendTag

_INT32: Final = struct.Struct("!i")


def _auth(code: AuthCode, payload: bytes = b"") -> bytes:
    return frame(BackendTag.AUTHENTICATION, _INT32.pack(code) + payload)


_AUTH_OK: Final = _auth(AuthCode.OK)
_AUTH_CLEARTEXT: Final = _auth(AuthCode.CLEARTEXT_PASSWORD)

# ---- requests (server or proxy → client) --------------------------------------------


def authentication_ok() -> bytes:
    """AuthenticationOk."""
    return _AUTH_OK


def authentication_cleartext_password() -> bytes:
    """AuthenticationCleartextPassword: ask the client for its password (our JWT)."""
    return _AUTH_CLEARTEXT


def authentication_sasl(mechanisms: list[str]) -> bytes:
    """AuthenticationSASL listing the mechanisms offered, in order of preference."""
    return _auth(AuthCode.SASL, b"".join(map(cstr, mechanisms)) + b"\0")


def authentication_sasl_continue(data: bytes) -> bytes:
    """AuthenticationSASLContinue carrying a server challenge."""
    return _auth(AuthCode.SASL_CONTINUE, data)


def authentication_sasl_final(data: bytes) -> bytes:
    """AuthenticationSASLFinal carrying the server's final message."""
    return _auth(AuthCode.SASL_FINAL, data)


# ---- answers (client → server or proxy) --------------------------------------------


def password_message(data: bytes) -> bytes:
    """PasswordMessage; for cleartext or MD5 pass the NUL-terminated password bytes."""
    return frame(FrontendTag.PASSWORD, data)


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    """SASLInitialResponse: the chosen mechanism and the client-first message."""
    return frame(FrontendTag.PASSWORD, cstr(mechanism) + _INT32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    """SASLResponse carrying the next client message of the exchange."""
    return frame(FrontendTag.PASSWORD, data)


# ---- decoders -----------------------------------------------------------------------


def decode_authentication(body: bytes) -> tuple[int, bytes]:
    """Authentication → (code, payload after the code); compare code with AuthCode."""
    if len(body) < 4:
        raise ProtocolViolation("authentication message is too short to hold its code")
    (code,) = _INT32.unpack_from(body)
    return code, body[4:]


def decode_sasl_mechanisms(payload: bytes) -> list[str]:
    """The mechanism list of AuthenticationSASL (the payload after the code)."""
    mechanisms: list[str] = []
    pos = 0
    while True:
        name, pos = read_cstr(payload, pos, "SASL mechanism name")
        if not name:
            expect_end(payload, pos, "AuthenticationSASL")
            return mechanisms
        mechanisms.append(name)


def decode_password(body: bytes) -> bytes:
    """PasswordMessage → the password bytes without their single terminating NUL."""
    if not body or body.find(0) != len(body) - 1:
        raise ProtocolViolation("password packet must be one NUL-terminated string")
    return body[:-1]


def decode_sasl_initial_response(body: bytes) -> tuple[str, bytes]:
    """SASLInitialResponse → (mechanism, client-first data; b"" when absent)."""
    mechanism, pos = read_cstr(body, 0, "SASL mechanism name")
    if len(body) - pos < 4:
        raise ProtocolViolation("SASLInitialResponse message is truncated")
    (size,) = _INT32.unpack_from(body, pos)
    pos += 4
    if size == -1:  # no initial response
        expect_end(body, pos, "SASLInitialResponse")
        return mechanism, b""
    if size < 0 or pos + size != len(body):
        raise ProtocolViolation("SASLInitialResponse message has an invalid length")
    return mechanism, body[pos:]
