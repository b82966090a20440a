"""Message tags, transaction status and authentication codes of protocol v3.

Tags need two enums because the same byte means different messages in each direction
(``D`` is Describe from the client but DataRow from the server). Values are the tag byte
as an ``int``, which is what indexing a ``bytes`` object yields, so ``data[0] == tag``
compares without conversion.

Each tag is also a module constant, a plain ``int``: ``F_*`` for the frontend (client)
messages, ``B_*`` for the backend (server) ones, so that the direction is in the name
(``S`` is ``F_SYNC`` from a client and ``B_PARAMETER_STATUS`` from a server). Hot paths
use these: compiled, mypyc puts an imported ``Final`` int literal in the importing
module's C code as a constant and compares natively, where an enum member costs a dict
lookup, a getattr and an object compare. The enums' values are the constants.
"""

from __future__ import annotations

from enum import Enum, IntEnum
from typing import Final

# Frontend: messages from the client.
F_BIND: Final = 0x42  # B
F_CLOSE: Final = 0x43  # C
F_COPY_DATA: Final = 0x64  # d
F_COPY_DONE: Final = 0x63  # c
F_COPY_FAIL: Final = 0x66  # f
F_DESCRIBE: Final = 0x44  # D
F_EXECUTE: Final = 0x45  # E
F_FLUSH: Final = 0x48  # H
F_FUNCTION_CALL: Final = 0x46  # F
F_PARSE: Final = 0x50  # P
F_PASSWORD: Final = 0x70  # p
F_QUERY: Final = 0x51  # Q
F_SYNC: Final = 0x53  # S
F_TERMINATE: Final = 0x58  # X
# Backend: messages from the server.
B_AUTHENTICATION: Final = 0x52  # R
B_BACKEND_KEY_DATA: Final = 0x4B  # K
B_BIND_COMPLETE: Final = 0x32  # 2
B_CLOSE_COMPLETE: Final = 0x33  # 3
B_COMMAND_COMPLETE: Final = 0x43  # C
B_COPY_DATA: Final = 0x64  # d
B_COPY_DONE: Final = 0x63  # c
B_COPY_IN_RESPONSE: Final = 0x47  # G
B_COPY_OUT_RESPONSE: Final = 0x48  # H
B_COPY_BOTH_RESPONSE: Final = 0x57  # W
B_DATA_ROW: Final = 0x44  # D
B_EMPTY_QUERY_RESPONSE: Final = 0x49  # I
B_ERROR_RESPONSE: Final = 0x45  # E
B_FUNCTION_CALL_RESPONSE: Final = 0x56  # V
B_NEGOTIATE_PROTOCOL_VERSION: Final = 0x76  # v
B_NO_DATA: Final = 0x6E  # n
B_NOTICE_RESPONSE: Final = 0x4E  # N
B_NOTIFICATION_RESPONSE: Final = 0x41  # A
B_PARAMETER_DESCRIPTION: Final = 0x74  # t
B_PARAMETER_STATUS: Final = 0x53  # S
B_PARSE_COMPLETE: Final = 0x31  # 1
B_PORTAL_SUSPENDED: Final = 0x73  # s
B_READY_FOR_QUERY: Final = 0x5A  # Z
B_ROW_DESCRIPTION: Final = 0x54  # T


class FrontendTag(IntEnum):
    """Tag byte of a message sent by the client (frontend) after startup."""

    BIND = F_BIND
    CLOSE = F_CLOSE
    COPY_DATA = F_COPY_DATA
    COPY_DONE = F_COPY_DONE
    COPY_FAIL = F_COPY_FAIL
    DESCRIBE = F_DESCRIBE
    EXECUTE = F_EXECUTE
    FLUSH = F_FLUSH
    FUNCTION_CALL = F_FUNCTION_CALL
    PARSE = F_PARSE
    # Also SASLInitialResponse, SASLResponse and GSSResponse: context tells them apart.
    PASSWORD = F_PASSWORD
    QUERY = F_QUERY
    SYNC = F_SYNC
    TERMINATE = F_TERMINATE


class BackendTag(IntEnum):
    """Tag byte of a message sent by the server (backend)."""

    AUTHENTICATION = B_AUTHENTICATION
    BACKEND_KEY_DATA = B_BACKEND_KEY_DATA
    BIND_COMPLETE = B_BIND_COMPLETE
    CLOSE_COMPLETE = B_CLOSE_COMPLETE
    COMMAND_COMPLETE = B_COMMAND_COMPLETE
    COPY_DATA = B_COPY_DATA
    COPY_DONE = B_COPY_DONE
    COPY_IN_RESPONSE = B_COPY_IN_RESPONSE
    COPY_OUT_RESPONSE = B_COPY_OUT_RESPONSE
    COPY_BOTH_RESPONSE = B_COPY_BOTH_RESPONSE
    DATA_ROW = B_DATA_ROW
    EMPTY_QUERY_RESPONSE = B_EMPTY_QUERY_RESPONSE
    ERROR_RESPONSE = B_ERROR_RESPONSE
    FUNCTION_CALL_RESPONSE = B_FUNCTION_CALL_RESPONSE
    NEGOTIATE_PROTOCOL_VERSION = B_NEGOTIATE_PROTOCOL_VERSION
    NO_DATA = B_NO_DATA
    NOTICE_RESPONSE = B_NOTICE_RESPONSE
    NOTIFICATION_RESPONSE = B_NOTIFICATION_RESPONSE
    PARAMETER_DESCRIPTION = B_PARAMETER_DESCRIPTION
    PARAMETER_STATUS = B_PARAMETER_STATUS
    PARSE_COMPLETE = B_PARSE_COMPLETE
    PORTAL_SUSPENDED = B_PORTAL_SUSPENDED
    READY_FOR_QUERY = B_READY_FOR_QUERY
    ROW_DESCRIPTION = B_ROW_DESCRIPTION


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
