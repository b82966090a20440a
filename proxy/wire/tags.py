"""Message tags, transaction status and authentication codes of protocol v3.

Tags need two enums because the same byte means different messages in each direction
(``D`` is Describe from the client but DataRow from the server). Values are the tag byte
as an ``int``, which is what indexing a ``bytes`` object yields, so ``data[0] == tag``
compares without conversion.
"""

from __future__ import annotations

from enum import Enum, IntEnum


class FrontendTag(IntEnum):
    """Tag byte of a message sent by the client (frontend) after startup."""

    BIND = ord("B")
    CLOSE = ord("C")
    COPY_DATA = ord("d")
    COPY_DONE = ord("c")
    COPY_FAIL = ord("f")
    DESCRIBE = ord("D")
    EXECUTE = ord("E")
    FLUSH = ord("H")
    FUNCTION_CALL = ord("F")
    PARSE = ord("P")
    # Also SASLInitialResponse, SASLResponse and GSSResponse: context tells them apart.
    PASSWORD = ord("p")
    QUERY = ord("Q")
    SYNC = ord("S")
    TERMINATE = ord("X")


class BackendTag(IntEnum):
    """Tag byte of a message sent by the server (backend)."""

    AUTHENTICATION = ord("R")
    BACKEND_KEY_DATA = ord("K")
    BIND_COMPLETE = ord("2")
    CLOSE_COMPLETE = ord("3")
    COMMAND_COMPLETE = ord("C")
    COPY_DATA = ord("d")
    COPY_DONE = ord("c")
    COPY_IN_RESPONSE = ord("G")
    COPY_OUT_RESPONSE = ord("H")
    COPY_BOTH_RESPONSE = ord("W")
    DATA_ROW = ord("D")
    EMPTY_QUERY_RESPONSE = ord("I")
    ERROR_RESPONSE = ord("E")
    FUNCTION_CALL_RESPONSE = ord("V")
    NEGOTIATE_PROTOCOL_VERSION = ord("v")
    NO_DATA = ord("n")
    NOTICE_RESPONSE = ord("N")
    NOTIFICATION_RESPONSE = ord("A")
    PARAMETER_DESCRIPTION = ord("t")
    PARAMETER_STATUS = ord("S")
    PARSE_COMPLETE = ord("1")
    PORTAL_SUSPENDED = ord("s")
    READY_FOR_QUERY = ord("Z")
    ROW_DESCRIPTION = ord("T")


class TxStatus(Enum):
    """Transaction status carried by ReadyForQuery.

    The value is the one-byte ``bytes`` status indicator exactly as on the wire (what
    ``messages.decode_ready_for_query`` returns), so ``TxStatus(status)`` converts.
    """

    IDLE = b"I"
    IN_TRANSACTION = b"T"
    FAILED = b"E"


class AuthCode(IntEnum):
    """The Int32 request code that starts every Authentication ('R') message."""

    OK = 0
    KERBEROS_V5 = 2
    CLEARTEXT_PASSWORD = 3
    MD5_PASSWORD = 5
    GSS = 7
    GSS_CONTINUE = 8
    SSPI = 9
    SASL = 10
    SASL_CONTINUE = 11
    SASL_FINAL = 12
