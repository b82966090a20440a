"""A bare asyncio byte pipe: the floor under any proxy built on this event loop.

Run: ``python -m bench.pipe --port P --upstream HOST:PORT``. Each client connection gets
its own upstream connection and bytes are copied both ways, nothing parsed, nothing
pooled: one ``data_received`` and one ``transport.write`` per read, which is the least a
Python proxy on uvloop (or asyncio where uvloop is missing) does per message. Its CPU per
transaction, next to PgBouncer's and pgtenant's (``bench.cpu_profile --targets
pipe,pgtenant,pgbouncer``), shows how much of pgtenant's cost is its own code and how much
the event loop and the sockets cost any proxy written this way. It has no flow control
(a full peer buffer does not pause reading): a measuring instrument, not a proxy.

:class:`PipeTarget` runs it as a benchmark target: a client logs in as it would directly
(the pipe forwards the handshake too).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from collections.abc import Sequence
from typing import IO, cast

from bench.database import APP_DB, APP_USER
from bench.environment import REPO
from bench.processes import spawn
from bench.targets import ConnInfo, ProcessTarget


class _Half(asyncio.Protocol):
    """One side of a pipe: what it receives is written to its peer's transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.pending: list[bytes] = []  # received before the peer was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    def attach(self, peer: _Half) -> None:
        """From now on write to ``peer``, starting with what arrived before it was there."""
        self.peer = peer
        if peer.transport is not None:
            for data in self.pending:
                peer.transport.write(data)
        self.pending.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class _Client(_Half):
    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__()
        self.upstream = upstream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, server = await loop.create_connection(_Half, *self.upstream)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        self.attach(server)
        server.attach(self)  # (the server may have spoken before this task resumed)


async def _serve(port: int, upstream: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(upstream), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipe",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="HOST:PORT of PostgreSQL")
    args = parser.parse_args(argv)
    host, _, upstream_port = args.upstream.rpartition(":")
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(_serve(args.port, (host, int(upstream_port))))
    except KeyboardInterrupt:
        pass
    return 0


class PipeTarget(ProcessTarget):
    """:mod:`bench.pipe` in front of the benchmark's PostgreSQL, as a subprocess."""

    name = "pipe"

    def conninfo(self, tenant: str) -> ConnInfo:
        return ConnInfo("127.0.0.1", self.port, APP_DB, APP_USER, self.db.app_password)

    def _launch(self, log_file: IO[bytes]) -> subprocess.Popen[bytes]:
        return spawn(
            [sys.executable, "-m", "bench.pipe", "--port", str(self.port),
             "--upstream", f"{self.db.host}:{self.db.port}"],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO,
        )

    def describe(self) -> dict[str, object]:
        return {"event_loop": "uvloop", "pooling": "none (one upstream per client)"}


if __name__ == "__main__":
    sys.exit(main())
