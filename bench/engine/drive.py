"""One workload driven through the real proxy: log in, rounds of transactions, checks.

A :class:`Run` logs its clients in through the real startup and authentication, then
sends rounds of transactions and compares every reply byte for byte with what
PostgreSQL would send (:class:`EngineBenchError` otherwise); a pgbench-like workload
is driven by its clients' own callbacks instead. Timing and call counting are
:mod:`bench.engine.measure`'s; this module only makes the traffic and checks it.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bench.engine.adapter import (
    NoSocketLoop,
    build_app,
    new_client,
    servers_opening,
    stop_app,
    token_for,
)
from bench.engine.workloads import (
    PREPARED_NAME,
    SELECT_PARAM,
    TENANT,
    Workload,
    requests_and_reply,
)
from bench.fakepg import (
    PARSE_COMPLETE,
    READY_IDLE,
    Engine,
    FakeTransport,
    frame,
    parse,
    password_message,
    startup_message,
    sync,
    terminate,
)

if TYPE_CHECKING:
    from proxy.app import ProxyApp


class EngineBenchError(Exception):
    """The proxy did not answer as PostgreSQL would: the run measured nothing valid."""



class Client:
    __slots__ = ("protocol", "transport")

    def __init__(self, protocol: asyncio.Protocol, transport: ClientTransport) -> None:
        self.protocol = protocol
        self.transport = transport


class Run:
    """One workload on one ProxyApp: log in, warm up, then timed blocks of rounds."""

    def __init__(self, workload: Workload, guard: bool, abalance: bytes,
                 delivery: str = "sync") -> None:
        self.workload = workload
        self.guard = guard
        if workload.pgbench_like:
            delivery = "loop"  # clients wait in the pool: only the loop serves them
        self.delivery = delivery
        self.engine = Engine(abalance, delivery)
        self.requests, self.expected = requests_and_reply(workload.protocol)
        self.sent = 0  # transactions sent, in all blocks: the next request is requests[sent % n]
        self.clients: list[Client] = []
        self.app: ProxyApp | None = None
        self.loop_waits = 0
        self.checked = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, NoSocketLoop), "run under NoSocketLoop"
        loop.engine = self.engine
        self.app, token = build_app(self.workload.pool_mode, self.guard)
        tenants = self.workload.tenants
        tokens = ([token] if tenants == 1
                  else [token_for(f"{TENANT}{t}") for t in range(tenants)])
        for i in range(self.workload.clients):
            token = tokens[i % tenants]
            protocol = new_client(self.app)
            transport = ClientTransport(protocol, ("127.0.0.1", 40_000 + i))
            protocol.connection_made(transport)  # type: ignore[arg-type]
            client = Client(protocol, transport)
            self.clients.append(client)
            protocol.data_received(startup_message({"user": "bench", "database": "app"}))
            self._expect(client, frame(b"R", struct.pack("!I", 3)), "AuthenticationCleartext")
            protocol.data_received(password_message(token))
            await self._settle(functools.partial(_ends_with_ready, transport), "login")
            greeting = self._take(client)
            if not greeting.startswith(frame(b"R", struct.pack("!I", 0))) \
                    or b"E" in _tags(greeting):
                raise EngineBenchError(f"login failed: {_describe(greeting)}")
            if self.workload.protocol == "prepared":  # pgbench -M prepared prepares first
                protocol.data_received(parse(PREPARED_NAME, SELECT_PARAM) + sync())
                await self._settle(functools.partial(_ends_with_ready, transport),
                                   "prepare")
                self._expect(client, PARSE_COMPLETE + READY_IDLE, "Parse of P0_1")

    async def stop(self) -> None:
        for client in self.clients:
            client.protocol.data_received(terminate())
        await asyncio.sleep(0)
        if self.app is not None:
            await stop_app(self.app)
        loop = asyncio.get_running_loop()
        assert isinstance(loop, NoSocketLoop)
        loop.engine = None

    async def warm_up(self, rounds: int) -> None:
        """``rounds`` rounds, until the pool has opened the servers the clients made it
        open, then ``rounds`` more: what is timed next is the steady state. (A released
        server goes to a waiting client at once, with no event-loop pass, so one server
        can carry every client of a round while the others are still connecting.)"""
        await self.block(rounds)
        assert self.app is not None
        await self._settle(functools.partial(_none_opening, self.app), "pool growth")
        await self.block(rounds)

    async def block(self, rounds: int) -> None:
        """``rounds`` rounds: every client sends one transaction, then replies arrive.
        (A pgbench-like workload: ``rounds`` transactions per client, as they come.)"""
        if self.workload.pgbench_like:
            await self._pgbench_block(rounds * len(self.clients))
            return
        clients = self.clients
        requests = self.requests
        expected = self.expected
        pump = self.engine.pump
        through_loop = self.engine.through_loop
        for _ in range(rounds):
            request = requests[self.sent % len(requests)]
            self.sent += 1
            for client in clients:
                client.protocol.data_received(request)
            if through_loop:
                await asyncio.sleep(0)  # one pass of the loop delivers the replies
            pump()
            for client in clients:
                chunks = client.transport.chunks
                if len(chunks) == 1 and chunks[0] == expected:
                    chunks.clear()
                    continue
                await self._complete(client)
        self.checked += rounds * len(clients)
        # Whatever the transactions left for the loop (future callbacks) runs in the block.
        await asyncio.sleep(0)
        pump()

    async def _pgbench_block(self, total: int, limit: float = 60.0) -> None:
        """``total`` transactions, as pgbench's clients send them: each its next one as
        soon as its reply is in (a callback of the event loop, as a socket's would be)."""
        driver = _Pgbench(self.requests, self.expected, total, self.workload.name,
                          self.workload.think)
        for client in self.clients:
            client.transport.driver = driver
        try:
            for client in self.clients:
                driver.budget -= 1
                client.protocol.data_received(driver.next_request())
            async with asyncio.timeout(limit):
                await driver.done
        except TimeoutError:
            raise EngineBenchError(f"{self.workload.name}: {driver.checked} of {total} "
                                   f"transactions answered within {limit:g}s") from None
        finally:
            for client in self.clients:
                client.transport.driver = None
        self.checked += driver.checked
        await asyncio.sleep(0)

    async def timed(self, rounds: int, repeats: int) -> tuple[list[float], list[float]]:
        """``repeats`` blocks of ``rounds``: CPU time of this thread (what the proxy
        spends: a shared machine's other processes do not count) and wall time, in µs
        per transaction."""
        cpu: list[float] = []
        wall: list[float] = []
        per_block = rounds * len(self.clients) * 1000
        for _ in range(repeats):
            gc.collect()
            started_cpu, started = time.thread_time_ns(), time.perf_counter_ns()
            await self.block(rounds)
            cpu.append((time.thread_time_ns() - started_cpu) / per_block)
            wall.append((time.perf_counter_ns() - started) / per_block)
        return cpu, wall

    async def _complete(self, client: Client) -> None:
        """A reply that did not arrive whole at once: check it, or let the loop run
        until more of it arrives (counted in ``loop_waits``)."""
        expected = self.expected
        transport = client.transport
        chunks = transport.chunks
        while True:
            got = b"".join(chunks)
            if got == expected:
                chunks.clear()
                return
            if len(got) >= len(expected) or not expected.startswith(got) or transport.closed:
                raise EngineBenchError(
                    f"{self.workload.name}: wrong reply: {_describe(got)}; expected "
                    f"{_describe(expected)}")
            self.loop_waits += 1
            await self._settle(functools.partial(_more_than, transport, len(got)),
                               "transaction")

    async def _settle(self, done: Callable[[], bool], what: str, limit: float = 10.0
                      ) -> None:
        """Deliver replies and run the event loop until ``done()``, for ``limit`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            self.engine.pump()
            if done():
                return
            if loop.time() > deadline:
                raise EngineBenchError(f"{self.workload.name}: no reply to {what} within "
                                       f"{limit:g}s")
            await asyncio.sleep(0.0005)

    def _take(self, client: Client) -> bytes:
        data = b"".join(client.transport.chunks)
        client.transport.chunks.clear()
        return data

    def _expect(self, client: Client, expected: bytes, what: str) -> None:
        got = self._take(client)
        if got != expected:
            raise EngineBenchError(f"{self.workload.name}: {what}: got {_describe(got)}, "
                                   f"expected {_describe(expected)}")


class _Pgbench:
    """A pgbench-like block: checks every reply byte for byte as it arrives at a
    client, then has the client send its next transaction (until ``total``)."""

    __slots__ = ("budget", "checked", "done", "expected", "loop", "name", "requests",
                 "sent", "think", "total")

    def __init__(self, requests: tuple[bytes, ...], expected: bytes, total: int, name: str,
                 think: int) -> None:
        self.think = think
        self.requests = requests
        self.sent = 0
        self.expected = expected
        self.total = total
        self.budget = total  # transactions not yet sent
        self.checked = 0
        self.name = name
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()

    def wrote(self, transport: ClientTransport) -> None:
        """The proxy wrote to a client: a whole reply is checked and answered."""
        chunks = transport.chunks
        got = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        expected = self.expected
        if got != expected:
            if len(got) >= len(expected) or not expected.startswith(got) or transport.closed:
                self.fail(f"{self.name}: wrong reply: {_describe(got)}; expected "
                          f"{_describe(expected)}")
            return  # more of it to come
        chunks.clear()
        self.checked += 1
        if self.budget > 0:
            self.budget -= 1
            self.loop.call_soon(self.send, transport, self.think)
        elif self.checked == self.total and not self.done.done():
            self.done.set_result(None)

    def send(self, transport: ClientTransport, passes: int) -> None:
        """The client's next transaction, after ``passes`` more loop passes."""
        if passes:
            self.loop.call_soon(self.send, transport, passes - 1)
        else:
            transport.protocol.data_received(self.next_request())

    def next_request(self) -> bytes:
        request = self.requests[self.sent % len(self.requests)]
        self.sent += 1
        return request

    def fail(self, message: str) -> None:
        if not self.done.done():
            self.done.set_exception(EngineBenchError(message))


class ClientTransport(FakeTransport):
    """A client's socket; in a pgbench-like block, each write goes to the driver."""

    def __init__(self, protocol: Any, peer: tuple[str, int]) -> None:
        super().__init__(protocol, peer)
        self.driver: _Pgbench | None = None

    def write(self, data: bytes) -> None:
        if data:
            self.chunks.append(data)
            if self.driver is not None:
                self.driver.wrote(self)

    def close(self) -> None:
        super().close()
        if self.driver is not None:
            self.driver.fail(f"{self.driver.name}: the proxy closed a client: "
                             f"{_describe(b''.join(self.chunks))}")


def _more_than(transport: FakeTransport, size: int) -> bool:
    return sum(map(len, transport.chunks)) > size or transport.closed


def _ends_with_ready(transport: FakeTransport) -> bool:
    data = b"".join(transport.chunks)
    return transport.closed or data.endswith(READY_IDLE) or b"E" in _tags(data)


def _tags(data: bytes) -> bytes:
    """The tag bytes of the whole messages in ``data``."""
    tags = bytearray()
    pos = 0
    while len(data) - pos >= 5:
        (length,) = struct.unpack_from("!I", data, pos + 1)
        tags += data[pos:pos + 1]
        pos += 1 + length
    return bytes(tags)


def _describe(data: bytes) -> str:
    """Tags of the messages, and the message of any ErrorResponse."""
    text = _tags(data).decode("latin-1")
    pos = data.find(b"\x00M")
    if b"E" in _tags(data) and pos >= 0:
        text += " (" + data[pos + 2:data.find(b"\x00", pos + 2)].decode(errors="replace") + ")"
    return repr(text) if data else "nothing"


def _none_opening(app: ProxyApp) -> bool:
    return servers_opening(app) == 0
