"""What a batch of client messages asks of a server, without I/O.

The client connection frames what it received (``FrontendFramer``), lets the guard filter
it (``proxy.frontend.guarding``), then asks :func:`classify` what the batch means for
the server connection: how many ReadyForQuery replies it will bring (one per Query, Sync
and FunctionCall), whether it leaves the server mid extended-protocol batch, whether it
names prepared statements the proxy must rewrite (transaction mode), and where it must
stop: at a Terminate, or at a message PostgreSQL would end the session for. The client
then sends ``block`` (``proxy.backend.routing.BackendSession.send``) and acts on the stop.
Pure: ``tests/unit/test_requests.py`` pairs it with a BackendSession and drives both by
bytes.
"""

from __future__ import annotations

from typing import Final

from proxy.backend.prepared import needs_rewrite
from proxy.wire.framing import frame_end
from proxy.wire.tags import (
    F_BIND,
    F_CLOSE,
    F_COPY_DATA,
    F_COPY_DONE,
    F_COPY_FAIL,
    F_DESCRIBE,
    F_EXECUTE,
    F_FLUSH,
    F_FUNCTION_CALL,
    F_PARSE,
    F_QUERY,
    F_SYNC,
)

# What each tag byte means here, one lookup per message (compiled, indexing bytes is a C
# array access; a frozenset test boxes the int): bits of _KINDS[tag].
_READY: Final = 1     # ends in ReadyForQuery: Query, Sync, FunctionCall
_EXTENDED: Final = 2  # extended protocol: the server is mid-batch until the next Sync
_COPY: Final = 4      # outside COPY FROM STDIN PostgreSQL ignores these
_NAMED: Final = 8     # may name a prepared statement (or DEALLOCATE one)
# A tag with no bit (Terminate, or not a frontend message at all) is where a batch stops.


def _kinds() -> bytes:
    kinds = bytearray(256)
    for tag in (F_QUERY, F_SYNC, F_FUNCTION_CALL):
        kinds[tag] |= _READY
    for tag in (F_PARSE, F_BIND, F_DESCRIBE,
                F_EXECUTE, F_CLOSE, F_FLUSH):
        kinds[tag] |= _EXTENDED
    for tag in (F_COPY_DATA, F_COPY_DONE, F_COPY_FAIL):
        kinds[tag] |= _COPY
    for tag in (F_PARSE, F_BIND, F_DESCRIBE,
                F_CLOSE, F_QUERY):
        kinds[tag] |= _NAMED
    return bytes(kinds)


_KINDS: Final = _kinds()

NO_STOP: Final = -1


def classify(block: bytes, unsynced: bool, named: bool, rewrites: bool
             ) -> tuple[bytes, int, bool, bool, int]:
    """``(block, replies, unsynced, named, stop)`` for a framed batch.

    ``block``: whole messages, as the framer hands them out; ``unsynced``: the stream
    was already mid extended-protocol batch; ``named``: a batch being rewritten goes on
    (``rewrites``: the client's statements are tracked, transaction mode). The block
    returned is what to send: all of it, or what precedes the ``stop`` message's tag (a
    Terminate, or a message type PostgreSQL would end the session for); ``stop`` is
    :data:`NO_STOP` otherwise.
    """
    replies = 0
    kinds = _KINDS
    size = len(block)
    start = 0
    while start < size:
        tag = block[start]
        end = frame_end(block, start)
        kind = kinds[tag]
        if kind & _READY:
            replies += 1
            unsynced = False
        elif kind & _EXTENDED:
            unsynced = True
        elif not kind & _COPY:  # Terminate, or not a frontend message at all
            return block[:start], replies, unsynced, named, tag
        if rewrites and not named and kind & _NAMED:
            named = needs_rewrite(tag, block, start + 5, end)
        start = end
    return block, replies, unsynced, named, NO_STOP


def drop_first_request(blocks: list[bytes]) -> list[bytes] | None:
    """Queued message ``blocks`` (whole messages each) without their first request: the
    messages up to and including the first that ends in ReadyForQuery (a Query, a Sync,
    a FunctionCall). None when no request in them is complete yet (an extended-protocol
    batch still waiting for its Sync). A cancelled request that never reached a server is
    dropped this way (``ClientRelay.cancel_queued``)."""
    kinds = _KINDS
    for i, block in enumerate(blocks):
        pos = 0
        size = len(block)
        while pos < size:
            tag = block[pos]
            pos += 1 + int.from_bytes(block[pos + 1:pos + 5], "big")
            if kinds[tag] & _READY:
                rest = blocks[i + 1:]
                return [block[pos:], *rest] if pos < size else rest
    return None
