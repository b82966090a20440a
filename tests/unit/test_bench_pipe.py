"""bench.pipe, the bare byte pipe that bench.cpu_profile and ``./dev bench --targets pipe``
use as the floor under a Python proxy: bytes go both ways unchanged, bytes that either
side sends before the pipe has linked the two are not lost, and a client's close reaches
the upstream. An in-process upstream stands in for PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from bench import pipe, summary
from bench.runner import PIPE_TARGET, planned_targets
from proxy.devtools import free_port


async def _upstream(received: list[bytes], closed: asyncio.Event) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hi")  # speaks first: may reach the pipe before it links the two
        while data := await reader.read(65536):
            received.append(data)
            writer.write(data.upper())
            await writer.drain()
        writer.close()
        closed.set()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def _through_pipe() -> None:
    received: list[bytes] = []
    closed = asyncio.Event()
    upstream = await _upstream(received, closed)
    port = free_port()
    upstream_port = upstream.sockets[0].getsockname()[1]
    serving = asyncio.create_task(pipe._serve(port, ("127.0.0.1", upstream_port)))
    try:
        for _ in range(100):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.01)
        # Sent at once: may arrive before the pipe has its upstream connection.
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.readexactly(2), 5) == b"hi"
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"HELLO"
        writer.write(b"x" * 200_000)
        assert await asyncio.wait_for(reader.readexactly(200_000), 5) == b"X" * 200_000
        assert b"".join(received) == b"hello" + b"x" * 200_000
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(closed.wait(), 5)  # the client's close reached upstream
    finally:
        serving.cancel()
        upstream.close()


def test_pipe_forwards_both_ways_and_loses_nothing() -> None:
    asyncio.run(_through_pipe())


def test_pipe_is_a_target_only_when_named() -> None:
    assert pipe.PipeTarget.name == PIPE_TARGET == summary.FLOOR  # one name, three places
    assert "pipe" in planned_targets(["pipe", "pgbouncer"])
    with pytest.raises(ValueError, match="unknown target"):
        planned_targets(["pipes"])


class _Recording:
    """Stands in for a transport: what was written to it."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_what_a_side_received_before_it_was_linked_goes_out_when_it_is() -> None:
    client, server = pipe._Half(), pipe._Half()
    client.transport, server.transport = _Recording(), _Recording()  # type: ignore[assignment]
    client.data_received(b"startup")  # before the upstream connection was up
    server.data_received(b"greeting")  # the server spoke before the pipe linked the two
    client.attach(server)
    server.attach(client)
    server.data_received(b"reply")
    assert server.transport.written == [b"startup"]  # type: ignore[attr-defined]
    assert client.transport.written == [b"greeting", b"reply"]  # type: ignore[attr-defined]
    assert client.pending == server.pending == []
