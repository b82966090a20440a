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
from proxy.wire.tags import FrontendTag

_Q: Final[int] = FrontendTag.QUERY
_S: Final[int] = FrontendTag.SYNC
_F: Final[int] = FrontendTag.FUNCTION_CALL
# Messages that may name a prepared statement (or DEALLOCATE one).
_MAYBE_NAMED: Final = frozenset({FrontendTag.PARSE, FrontendTag.BIND, FrontendTag.DESCRIBE,
                          FrontendTag.CLOSE, FrontendTag.QUERY})
# Extended-protocol messages: after them the server is mid-batch until the next Sync.
_EXTENDED: Final = frozenset({FrontendTag.PARSE, FrontendTag.BIND, FrontendTag.DESCRIBE,
                       FrontendTag.EXECUTE, FrontendTag.CLOSE, FrontendTag.FLUSH})
# Outside COPY FROM STDIN PostgreSQL ignores these; every other tag gets an answer.
_COPY_TAGS: Final = frozenset({FrontendTag.COPY_DATA, FrontendTag.COPY_DONE, FrontendTag.COPY_FAIL})

NO_STOP: Final = -1


def classify(block: bytes, index: list[tuple[int, int, int]], unsynced: bool, named: bool,
             rewrites: bool) -> tuple[bytes, int, bool, bool, int]:
    """``(block, replies, unsynced, named, stop)`` for a framed batch.

    ``index`` is the framer's ``(tag, start, end)`` per message; ``unsynced``: the stream
    was already mid extended-protocol batch; ``named``: a batch being rewritten goes on
    (``rewrites``: the client's statements are tracked, transaction mode). The block
    returned is what to send: all of it, or what precedes the ``stop`` message's tag (a
    Terminate, or a message type PostgreSQL would end the session for); ``stop`` is
    :data:`NO_STOP` otherwise.
    """
    replies = 0
    for tag, start, end in index:
        if tag == _S or tag == _Q or tag == _F:  # each ends in ReadyForQuery
            replies += 1
            unsynced = False
        elif tag in _EXTENDED:
            unsynced = True
        elif tag not in _COPY_TAGS:  # Terminate, or not a frontend message at all
            return block[:start], replies, unsynced, named, tag
        if rewrites and not named and tag in _MAYBE_NAMED:
            named = needs_rewrite(tag, block[start + 5:end])
    return block, replies, unsynced, named, NO_STOP
