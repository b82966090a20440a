"""A client's named prepared statements in transaction mode, on whichever server it has.

:class:`NamedStatementRelay`, a base of :class:`proxy.frontend.relay.ClientRelay`: sends
the client's messages that name prepared statements rewritten onto the server's own
statements (``proxy.backend.prepared``); statements the client described on another
server are prepared and described again first (``_verify``), its messages queued behind
them; a DISCARD ALL or DEALLOCATE ALL the client ran forgets its statements
(``statements_cleared``). Like the relay, it calls no event-loop function.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from proxy.backend.prepared import bound, internal_batch, rewrite
from proxy.backend.server import FORWARD, Collect, ServerConnection, Skip
from proxy.backend.statements import ClientStatement, ServerStatement
from proxy.backend.verification import to_verify, verified, verify_batch
from proxy.frontend.leasing import ClientLeasing
from proxy.wire.framing import split_frames

if TYPE_CHECKING:
    import asyncio


class NamedStatementRelay(ClientLeasing):
    """A client's prepared statements by name (see the module docstring); its messages
    wait in the queue of :class:`ClientLeasing` while a check runs."""

    __slots__ = ("_rewriting", "statements")

    def __init__(self) -> None:
        super().__init__()
        # Transaction mode: the client's prepared statements by name, from its first one.
        self.statements: dict[str, ClientStatement] | None = None
        self._rewriting = False         # a batch the proxy rewrites goes on until Sync

    def _new_future(self) -> asyncio.Future[list[tuple[int, bytes]]]:
        """A future of the event loop (ClientConnection provides it)."""
        raise NotImplementedError

    def _send_rewritten(self, server: ServerConnection, blocks: list[bytes],
                        batch_start: bool, verify: bool = True) -> None:
        """Transaction mode with named statements: see proxy.backend.prepared."""
        statements = self.statements
        if statements is None:
            statements = self.statements = {}
        if verify and batch_start and len(blocks) == 1:
            data = bound(blocks[0], statements, server.statements)
            if data is not None:  # the common batch: a prepared statement run again
                self._rewriting = False
                server.send(data, 1, self._unsynced)
                return
        frames = [frame for block in blocks for frame in split_frames(block)]
        try:
            if verify and batch_start:
                keys = to_verify(frames, statements, server.statements)
                if keys:
                    self._verify(server, frames, keys)
                    return
            done = rewrite(frames, statements, server.statements, FORWARD,
                           batch_start=batch_start,
                           aborted=server.tx_status == b"E" and not server.pending)
        except ValueError:  # a name without its terminator
            self.fatal("08P01", "invalid message format: malformed statement or portal name")
            return
        self._rewriting = done.carry
        if batch_start:
            evict = server.statements.take_evictions(done.used)
            if evict:
                server.send_internal(internal_batch(evict), Skip(None))
        server.send_entries(done.data, done.entries, self._unsynced)  # type: ignore[arg-type]

    def _verify(self, server: ServerConnection, frames: list[bytes], keys: list[bytes]
                ) -> None:
        """Prepare and describe statements the client described elsewhere before sending
        ``frames`` (held in the queue meanwhile): what it decodes with must still hold."""
        data, made = verify_batch(server.statements, keys, set(keys))
        fut: asyncio.Future[list[tuple[int, bytes]]] = self._new_future()
        server.send_internal(data, Collect(fut))
        self._queue.insert(0, b"".join(frames))
        self._queue_named = True
        self._queue_batch_start = True
        self._leasing = True  # later messages queue behind these
        fut.add_done_callback(functools.partial(self._verified, server, keys, made))

    def _verified(self, server: ServerConnection, keys: list[bytes],
                  made: list[ServerStatement],
                  fut: asyncio.Future[list[tuple[int, bytes]]]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self._leasing = False
            return  # the server is gone: server_lost reports it
        verified(server.statements, keys, made, fut.result())
        self._send_queued(server, verify=False)  # a failed prepare: its error, in line

    def statements_cleared(self) -> None:
        # DISCARD ALL / DEALLOCATE ALL ran for this client: its statements are gone too.
        if self.statements is not None:
            self.statements.clear()
