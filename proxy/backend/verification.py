"""Statements a client described, checked on the server connection it runs them on.

A client that described a statement (``Describe`` S) decodes its rows with that
description. Before a batch of the client's binds or describes such a statement on a
server connection whose copy is missing, undescribed or possibly older than what the client
was told (:func:`to_verify`), the proxy prepares and describes it there first
(:func:`verify_batch`), waits for the answer and records it (:func:`verified`); the
rewrite (:mod:`proxy.backend.prepared`) then answers a stale one with PostgreSQL's 0A000.
Pure: no I/O.
"""

from __future__ import annotations

from proxy.backend.prepared import STATEMENT, string_end
from proxy.backend.statements import (
    NAME_ERRORS,
    ClientStatement,
    ServerStatement,
    ServerStatements,
    description,
    parse_frame,
)
from proxy.wire import messages
from proxy.wire.tags import (
    B_ERROR_RESPONSE,
    B_NO_DATA,
    B_PARAMETER_DESCRIPTION,
    B_PARSE_COMPLETE,
    B_ROW_DESCRIPTION,
    F_BIND,
    F_DESCRIBE,
)


def to_verify(frames: list[bytes], client: dict[str, ClientStatement],
              server: ServerStatements) -> list[bytes]:
    """Keys to prepare and describe on ``server`` before the batch may be sent.

    A client statement with a known description, bound or described in the batch, whose
    server statement is missing, has no known description, or was described before the
    client's own description was seen (it may be stale). Statements the batch itself
    parses are not checked.
    """
    server.follow_schema()
    keys: list[bytes] = []
    for frame in frames:
        tag = frame[0]
        if tag == F_BIND:
            start = string_end(frame, 5) + 1
        elif tag == F_DESCRIBE and len(frame) > 5 and frame[5] == STATEMENT:
            start = 6
        else:
            continue
        end = string_end(frame, start)
        if end == start:
            continue  # the unnamed statement: never the client's
        stmt = client.get(frame[start:end].decode("utf-8", NAME_ERRORS))
        if stmt is None or stmt.desc is None or stmt.key in keys:
            continue
        server_stmt = server.by_key.get(stmt.key)
        if (server_stmt is None or server_stmt.desc is None
                or (server_stmt.desc != stmt.desc and server_stmt.seen < stmt.seen)):
            keys.append(stmt.key)
    return keys


def verify_batch(server: ServerStatements, keys: list[bytes], keep: set[bytes]
                 ) -> tuple[bytes, list[ServerStatement]]:
    """An internal batch preparing ``keys`` afresh and describing them, ending in Sync;
    evictions are closed first. Returns the bytes and the new statements, in order."""
    parts = [messages.close(b"S", name) for name in server.take_evictions(keep | set(keys))]
    made = []
    for key in keys:
        stmt = server.add(key)
        made.append(stmt)
        parts.append(parse_frame(stmt.name, key))
        parts.append(messages.describe(b"S", stmt.name))
    parts.append(messages.sync())
    return b"".join(parts), made


def verified(server: ServerStatements, keys: list[bytes], made: list[ServerStatement],
             replies: list[tuple[int, bytes]]) -> None:
    """Record the descriptions in the replies to a :func:`verify_batch`, or the error of
    the Parse that failed."""
    params: bytes | None = None
    pending = iter(made)
    parsed = 0
    for tag, body in replies:
        if tag == B_PARSE_COMPLETE:
            parsed += 1
        elif tag == B_ERROR_RESPONSE:
            # That Parse failed, the ones after it were skipped: none of them exists.
            for key, lost in zip(keys[parsed:], made[parsed:], strict=True):
                if server.by_key.get(key) is lost:
                    del server.by_key[key]
            if parsed < len(keys):
                server.failed[keys[parsed]] = messages.frame(tag, body)
            return
        elif tag == B_PARAMETER_DESCRIPTION:
            params = messages.frame(tag, body)
        elif (tag == B_ROW_DESCRIPTION or tag == B_NO_DATA) and params is not None:
            described = next(pending, None)
            if described is not None:
                described.observed(description(params + messages.frame(tag, body)))
            params = None
