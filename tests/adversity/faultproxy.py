"""A fault-injecting TCP relay for tests: put it between pgtenant and PostgreSQL.

``FaultRelay(target_host, target_port).start()`` listens on 127.0.0.1 (``relay.port``)
and forwards every accepted connection to the target, byte for byte, on its own event
loop in a daemon thread. Faults, each applied from the test thread and effective when
the call returns:

- ``cut()``: abort every open connection now (both sides see a reset/EOF);
- ``stall()`` / ``resume()``: stop forwarding in both directions, sockets stay open
  (a black-holed network); new connections are accepted but stall too;
- ``half_close(toward)``: shut down the write side toward ``"proxy"`` or toward
  ``"postgres"`` on every open connection (the peer reads EOF; the other direction
  keeps flowing);
- ``refuse(True)``: close new connections as soon as they are accepted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from tests.support import call_in_loop

T = TypeVar("T")
Direction = Literal["proxy", "postgres"]

_CHUNK = 64 * 1024


@dataclass(eq=False)
class _Link:
    """One relayed connection: the side facing the proxy and the side facing PostgreSQL."""

    proxy_writer: asyncio.StreamWriter
    postgres_writer: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Directions whose write side was shut down by half_close: data for them is dropped.
    shut: set[str] = field(default_factory=set)

    def abort(self) -> None:
        for writer in (self.proxy_writer, self.postgres_writer):
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class FaultRelay:
    """A TCP relay to ``target_host:target_port`` that can cut, stall and half-close."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self.port = 0
        self.accepted = 0
        self._links: set[_Link] = set()
        self._flowing: asyncio.Event | None = None
        self._refusing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._stopped = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="fault-relay", daemon=True)

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> FaultRelay:
        self._thread.start()
        self._ready.result(timeout=10)
        return self

    def close(self) -> None:
        if self._loop is not None and not self._stopped.is_set():
            self._stopped.set()
            self._loop.call_soon_threadsafe(self._stop.set)  # type: ignore[union-attr]
            self._thread.join(timeout=10)

    def __enter__(self) -> FaultRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._flowing = asyncio.Event()
            self._stop = asyncio.Event()
            self._flowing.set()
            self._server = await asyncio.start_server(self._accept, self.host, 0)
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        await self._stop.wait()
        self._server.close()
        for link in list(self._links):
            link.abort()
        await asyncio.sleep(0)

    # -- faults (called from the test thread) -------------------------------------------

    @property
    def open_connections(self) -> int:
        return self._call(lambda: len(self._links))

    def cut(self) -> int:
        """Abort every open connection; return how many were cut."""
        def cut_all() -> int:
            links = list(self._links)
            self._links.clear()
            for link in links:
                link.abort()
            return len(links)
        return self._call(cut_all)

    def stall(self) -> None:
        """Stop forwarding bytes in both directions; sockets stay open."""
        self._call(lambda: self._flowing.clear())  # type: ignore[union-attr]

    def resume(self) -> None:
        """Forward again, starting with whatever was held back during the stall."""
        self._call(lambda: self._flowing.set())  # type: ignore[union-attr]

    def refuse(self, on: bool = True) -> None:
        """Close new connections at once (``on``), or accept them again."""
        def set_refusing() -> None:
            self._refusing = on
        self._call(set_refusing)

    def half_close(self, toward: Direction) -> int:
        """Shut down the write side toward the proxy or toward PostgreSQL on every link."""
        def shut_all() -> int:
            for link in self._links:
                writer = link.proxy_writer if toward == "proxy" else link.postgres_writer
                link.shut.add(toward)
                if writer.can_write_eof() and not writer.is_closing():
                    writer.write_eof()
            return len(self._links)
        return self._call(shut_all)

    def _call(self, fn: Callable[[], T]) -> T:
        assert self._loop is not None
        return call_in_loop(self._loop, fn)

    # -- relaying -------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(proxy_writer=writer, postgres_writer=up_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pump(link, reader, up_writer, "postgres")),
            asyncio.create_task(self._pump(link, up_reader, writer, "proxy")),
        ]
        await asyncio.gather(*link.tasks, return_exceptions=True)
        self._links.discard(link)
        link.abort()

    async def _pump(self, link: _Link, source: asyncio.StreamReader,
                    sink: asyncio.StreamWriter, toward: Direction) -> None:
        assert self._flowing is not None
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while True:
                data = await source.read(_CHUNK)
                # A stall holds this chunk (and, through TCP, everything behind it).
                await self._flowing.wait()
                if not data:
                    if sink.can_write_eof() and not sink.is_closing():
                        sink.write_eof()
                    return
                if toward in link.shut:
                    continue  # shut down: the bytes are lost, like a dead network path
                sink.write(data)
                await sink.drain()
