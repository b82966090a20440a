"""The one exception the wire codec raises for bad input."""

from __future__ import annotations

from typing import ClassVar


class ProtocolViolation(Exception):
    """The peer sent bytes that are not valid protocol v3.

    The message is a sentence a person can read in a log or an ErrorResponse, for
    example ``invalid message length -3 for message type 'Q'``. Decoders and framers
    raise nothing else for malformed input (no IndexError, struct.error or
    UnicodeDecodeError escapes), so callers catch exactly this.
    """

    # ClassVar: mypyc drops a plain class-level default on an Exception subclass.
    sqlstate: ClassVar[str] = "08P01"
