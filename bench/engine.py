"""The proxy's own cost per transaction, in process: no sockets, no PostgreSQL.

Run: ``./dev bench --engine`` or ``.venv/bin/python -m bench.engine [--help]``.

The real :class:`proxy.app.ProxyApp`, its client connections (fed through their
``asyncio.Protocol`` callbacks from fake transports) and its pool, whose server
connections log in to a fake PostgreSQL in this file through the real handshake. The
fake answers every request with the bytes PostgreSQL would send, from a per-connection
memo once it has seen a request, so the time measured is the proxy's Python (and this
file's small harness, measured on its own as the ``harness`` row).

Delivery is synchronous like socket callbacks: a client's bytes go in with one
``data_received`` call; the server replies the proxy wrote during that call are
delivered afterwards, one ``data_received`` per server connection (``--delivery loop``:
by ``call_soon``, through the event loop). With 8 clients a round sends all 8
requests first (8 leases), then delivers the 8 replies: the pool works as under
``pgbench -c 8``. Each transaction's reply is compared byte for byte with what
PostgreSQL would send the client (RowDescription, DataRow, CommandComplete,
ReadyForQuery), so an error path cannot pass for a measurement.

Reported per workload: CPU µs per transaction (this thread's CPU time for a block of
transactions, median over repeats; wall time beside it), proxy Python calls per
transaction (``sys.setprofile``, one extra run; a compiled module's functions do not
count), and whether the proxy runs compiled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import functools
import gc
import json
import os
import platform
import secrets
import statistics
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import uvloop

import proxy
import proxy.wire.framing
from bench.fakepg import (
    ABALANCE,
    BIND_COMPLETE,
    INT4_OID,
    PARSE_COMPLETE,
    READY_IDLE,
    Engine,
    FakePostgres,
    FakeServerTransport,
    FakeTransport,
    bind,
    command_complete,
    data_row,
    describe,
    execute,
    frame,
    parse,
    password_message,
    query,
    row_description,
    startup_message,
    sync,
    terminate,
)
from proxy.app import ProxyApp
from proxy.auth.jwt import mint_token
from proxy.backend.server import ServerConnection
from proxy.config import parse_config
from proxy.frontend.client import ClientConnection

_RESULTS_DIR = Path(__file__).resolve().parent / "results"

TENANT = "acme"
AID = 123
SELECT_SIMPLE = f"SELECT abalance FROM pgbench_accounts WHERE aid = {AID};"
SELECT_PARAM = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
PREPARED_NAME = "P0_1"


class EngineBenchError(Exception):
    """The proxy did not answer as PostgreSQL would: the run measured nothing valid."""


# ======================================================================================
# Adapter: every place this file touches the proxy (with the proxy imports at the top of
# the file). When proxy internals move, fix here.
#
# - ProxyApp(config): the app, never started (no listener is bound).
# - ClientConnection(app): one client, an asyncio.Protocol fed by a fake transport.
# - The event loop's create_connection: ServerConnection.connect() opens its socket
#   through it; NoSocketLoop hands it a fake transport to the fake PostgreSQL instead
#   (for a ServerConnection protocol only: anything else is refused).
#   Everything after (handshake, the pool's role check, leases, context sets) is the
#   proxy's own code talking to FakePostgres. No proxy class is patched, so this works
#   the same on a compiled (mypyc) build.
# - bench/fakepg.py statement_result() knows the proxy's own statements by their text: the
#   context set (set_config), the pool's role check (rolbypassrls), DISCARD/RESET ALL.
# ======================================================================================

_JWT_SECRET_ENV = "PGTENANT_ENGINE_BENCH_JWT_SECRET"


def _config_toml(pool_mode: str, guard: bool) -> str:
    return f"""
[server]
listen = "127.0.0.1:0"
[auth.jwt]
secret_env = "{_JWT_SECRET_ENV}"
[tenancy]
guard = {"true" if guard else "false"}
[databases.app]
host = "127.0.0.1"
port = 5432
user = "app_user"
sslmode = "disable"
pool_mode = "{pool_mode}"
pool_size = {POOL_SIZE}
"""


POOL_SIZE = 20  # the config's pool_size (as in ./dev bench)


def build_app(pool_mode: str, guard: bool) -> tuple[ProxyApp, str]:
    """A ProxyApp for database ``app`` in ``pool_mode``, and a valid JWT for TENANT."""
    os.environ.setdefault(_JWT_SECRET_ENV, secrets.token_hex(32))
    config = parse_config(_config_toml(pool_mode, guard), "<engine bench>")
    return ProxyApp(config), token_for(TENANT)


def token_for(tenant: str) -> str:
    """A valid JWT for ``tenant`` (the app's secret)."""
    return mint_token(os.environ.setdefault(_JWT_SECRET_ENV, secrets.token_hex(32)), tenant)


def new_client(app: ProxyApp) -> asyncio.Protocol:
    """One client connection of ``app``, not yet connected."""
    return ClientConnection(app)


def pool_counters(app: ProxyApp) -> tuple[int, int, int]:
    """Database ``app``'s pool: waits, tenant context sets, kept servers reclaimed."""
    stats = app.pools["app"].stats
    return stats.waits, stats.leases_with_context_set, stats.kept_reclaimed


async def stop_app(app: ProxyApp) -> None:
    await app.stop()


def compiled_modules() -> list[str]:
    """The proxy modules loaded from a compiled extension (mypyc), sorted."""
    return sorted(name for name, module in list(sys.modules.items())
                  if name.split(".")[0] == "proxy"
                  and str(getattr(module, "__file__", "") or "").endswith((".so", ".pyd")))


def build_kind() -> str:
    return "compiled" if str(proxy.wire.framing.__file__).endswith((".so", ".pyd")) else "pure"


def proxy_source_dir() -> str:
    return os.path.dirname(os.path.abspath(str(proxy.__file__))) + os.sep


class NoSocketLoop(uvloop.Loop):
    """The proxy's loop (uvloop) whose outgoing connections go to FakePostgres."""

    engine: Engine | None = None

    async def create_connection(  # type: ignore[override]
            self, protocol_factory: Callable[[], asyncio.Protocol], host: str | None = None,
            port: int | None = None, **kwargs: Any) -> tuple[asyncio.Transport, asyncio.Protocol]:
        protocol = protocol_factory()
        if self.engine is None or not isinstance(protocol, ServerConnection):
            raise OSError(f"engine bench: no sockets ({host}:{port})")
        transport = self.engine.server_transport(protocol)
        protocol.connection_made(transport)  # type: ignore[arg-type]
        return transport, protocol  # type: ignore[return-value]

    async def create_unix_connection(  # type: ignore[override]
            self, protocol_factory: Callable[[], asyncio.Protocol], path: str | None = None,
            **kwargs: Any) -> Any:
        raise OSError(f"engine bench: no sockets ({path})")


# ======================================================================================
# Workloads
# ======================================================================================


@dataclasses.dataclass(frozen=True, slots=True)
class Workload:
    name: str
    protocol: str       # simple | extended | prepared
    clients: int
    pool_mode: str      # transaction | session
    # > 1: client i is of tenant i % tenants (its own JWT), and the clients run as
    # pgbench's do, each sending its next transaction once its reply is in (through the
    # event loop: more clients than pool_size wait in the pool).
    tenants: int = 1
    # Event-loop passes between a client's reply and its next transaction (pgbench-like
    # workloads): a client's think time, while its server may be kept for it.
    think: int = 0

    @property
    def pgbench_like(self) -> bool:
        return self.tenants > 1


WORKLOADS = (
    Workload("simple-c1", "simple", 1, "transaction"),
    Workload("simple-c8", "simple", 8, "transaction"),
    Workload("extended-c1", "extended", 1, "transaction"),
    Workload("extended-c8", "extended", 8, "transaction"),
    Workload("prepared-c1", "prepared", 1, "transaction"),
    Workload("prepared-c8", "prepared", 8, "transaction"),
    Workload("session-simple-c1", "simple", 1, "session"),
    Workload("session-simple-c8", "simple", 8, "session"),
    # ./dev bench's tenant-c32: 8 tenants x 4 clients, 32 clients for pool_size 20.
    Workload("tenant-c32", "extended", 32, "transaction", tenants=8, think=1),
)


def _request_and_reply(protocol: str) -> tuple[bytes, bytes]:
    """One pgbench -S transaction as the client sends it, and PostgreSQL's exact reply."""
    columns = row_description((("abalance", INT4_OID),))
    rows = data_row((ABALANCE,)) + command_complete("SELECT 1") + READY_IDLE
    aid = [str(AID).encode()]
    if protocol == "simple":
        return query(SELECT_SIMPLE), columns + rows
    if protocol == "extended":
        request = (parse("", SELECT_PARAM) + bind("", "", aid) + describe(b"P", "")
                   + execute() + sync())
        return request, PARSE_COMPLETE + BIND_COMPLETE + columns + rows
    if protocol == "prepared":
        request = bind("", PREPARED_NAME, aid) + describe(b"P", "") + execute() + sync()
        return request, BIND_COMPLETE + columns + rows
    raise ValueError(f"unknown protocol {protocol!r}")


@dataclasses.dataclass(slots=True)
class WorkloadResult:
    workload: str
    guard: bool
    clients: int
    pool_mode: str
    protocol: str
    transactions: int           # per repeat
    repeats_us: list[float]     # CPU µs per transaction (this thread), one per repeat
    us_per_tx: float            # median of repeats_us
    wall_us_per_tx: float       # median of the repeats' wall time per transaction
    proxy_calls_per_tx: float   # Python function calls in proxy/ (profiled run)
    builtin_calls_per_tx: float  # builtins (C functions, methods) called by proxy/ code
    all_calls_per_tx: float     # every Python function call, the harness's included
    loop_waits_per_tx: float    # extra event-loop passes a reply needed (0: none)
    checked: int                # transactions whose reply was compared byte for byte
    servers_opened: int
    fake_replies_computed: int  # fake PostgreSQL replies not from its memo (whole run)
    delivery: str = "sync"      # server replies: after each callback, or by the event loop
    # The pool, per transaction of the timed repeats: clients that waited for a server,
    # tenant context sets (a lease to another tenant's or a fresh server), kept servers
    # taken back from their client.
    pool_waits_per_tx: float = 0.0
    tenant_sets_per_tx: float = 0.0
    kept_reclaims_per_tx: float = 0.0
    top_calls: list[tuple[str, float]] = dataclasses.field(default_factory=list)


class _Client:
    __slots__ = ("protocol", "transport")

    def __init__(self, protocol: asyncio.Protocol, transport: _ClientTransport) -> None:
        self.protocol = protocol
        self.transport = transport


class _Run:
    """One workload on one ProxyApp: log in, warm up, then timed blocks of rounds."""

    def __init__(self, workload: Workload, guard: bool, abalance: bytes,
                 delivery: str = "sync") -> None:
        self.workload = workload
        self.guard = guard
        if workload.pgbench_like:
            delivery = "loop"  # clients wait in the pool: only the loop serves them
        self.delivery = delivery
        self.engine = Engine(abalance, delivery)
        self.request, self.expected = _request_and_reply(workload.protocol)
        self.clients: list[_Client] = []
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
            transport = _ClientTransport(protocol, ("127.0.0.1", 40_000 + i))
            protocol.connection_made(transport)  # type: ignore[arg-type]
            client = _Client(protocol, transport)
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

    async def block(self, rounds: int) -> None:
        """``rounds`` rounds: every client sends one transaction, then replies arrive.
        (A pgbench-like workload: ``rounds`` transactions per client, as they come.)"""
        if self.workload.pgbench_like:
            await self._pgbench_block(rounds * len(self.clients))
            return
        clients = self.clients
        request = self.request
        expected = self.expected
        pump = self.engine.pump
        through_loop = self.engine.through_loop
        for _ in range(rounds):
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
        driver = _Pgbench(self.request, self.expected, total, self.workload.name,
                          self.workload.think)
        for client in self.clients:
            client.transport.driver = driver
        try:
            for client in self.clients:
                driver.budget -= 1
                client.protocol.data_received(self.request)
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

    async def _complete(self, client: _Client) -> None:
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

    def _take(self, client: _Client) -> bytes:
        data = b"".join(client.transport.chunks)
        client.transport.chunks.clear()
        return data

    def _expect(self, client: _Client, expected: bytes, what: str) -> None:
        got = self._take(client)
        if got != expected:
            raise EngineBenchError(f"{self.workload.name}: {what}: got {_describe(got)}, "
                                   f"expected {_describe(expected)}")


class _Pgbench:
    """A pgbench-like block: checks every reply byte for byte as it arrives at a
    client, then has the client send its next transaction (until ``total``)."""

    __slots__ = ("budget", "checked", "done", "expected", "loop", "name", "request",
                 "think", "total")

    def __init__(self, request: bytes, expected: bytes, total: int, name: str,
                 think: int) -> None:
        self.think = think
        self.request = request
        self.expected = expected
        self.total = total
        self.budget = total  # transactions not yet sent
        self.checked = 0
        self.name = name
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()

    def wrote(self, transport: _ClientTransport) -> None:
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

    def send(self, transport: _ClientTransport, passes: int) -> None:
        """The client's next transaction, after ``passes`` more loop passes."""
        if passes:
            self.loop.call_soon(self.send, transport, passes - 1)
        else:
            transport.protocol.data_received(self.request)

    def fail(self, message: str) -> None:
        if not self.done.done():
            self.done.set_exception(EngineBenchError(message))


class _ClientTransport(FakeTransport):
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


# ======================================================================================
# Measuring
# ======================================================================================


class _CallCounter:
    """``sys.setprofile`` hook: Python function calls in proxy/ and in all, and calls of
    builtins (C functions and methods) made by proxy/ code."""

    def __init__(self, detail: bool) -> None:
        self.proxy_dir = proxy_source_dir()
        self.proxy = 0
        self.builtin = 0
        self.total = 0
        self.detail = detail
        self.functions: Counter[str] = Counter()
        self._in_proxy: dict[Any, bool] = {}

    def __call__(self, frame: FrameType, event: str, arg: object) -> None:
        if event == "call":
            self.total += 1
        elif event != "c_call":
            return
        code = frame.f_code
        inside = self._in_proxy.get(code)
        if inside is None:
            inside = self._in_proxy[code] = code.co_filename.startswith(self.proxy_dir)
        if inside and event == "c_call":  # a builtin called by proxy code
            self.builtin += 1
        elif inside:
            self.proxy += 1
            if self.detail:
                module = code.co_filename[len(self.proxy_dir):]
                self.functions[f"{module}:{code.co_firstlineno} {code.co_qualname}"] += 1


async def _measure(workload: Workload, guard: bool, transactions: int, repeats: int,
                   warmup: int, detail: int, abalance: bytes, delivery: str
                   ) -> WorkloadResult:
    run = _Run(workload, guard, abalance, delivery)
    await run.start()
    try:
        clients = workload.clients
        rounds = max(1, transactions // clients)
        await run.block(max(1, warmup // clients))
        run.loop_waits = 0
        assert run.app is not None
        before = pool_counters(run.app)
        cpu, wall = await run.timed(rounds, repeats)
        timed = repeats * rounds * clients
        pool = [(after - was) / timed for after, was in zip(pool_counters(run.app), before,
                                                            strict=True)]
        waits = run.loop_waits
        profiled_rounds = max(1, min(rounds, 2000 // clients))
        counter = _CallCounter(detail > 0)
        sys.setprofile(counter)
        try:
            await run.block(profiled_rounds)
        finally:
            sys.setprofile(None)
        profiled = profiled_rounds * clients
        top = [(name, count / profiled) for name, count in counter.functions.most_common(detail)]
        return WorkloadResult(
            workload=workload.name, guard=guard, clients=clients, pool_mode=workload.pool_mode,
            protocol=workload.protocol, transactions=rounds * clients, repeats_us=cpu,
            us_per_tx=statistics.median(cpu), wall_us_per_tx=statistics.median(wall),
            proxy_calls_per_tx=counter.proxy / profiled,
            builtin_calls_per_tx=counter.builtin / profiled,
            all_calls_per_tx=counter.total / profiled,
            loop_waits_per_tx=waits / (repeats * rounds * clients), checked=run.checked,
            servers_opened=len(run.engine.servers),
            fake_replies_computed=sum(t.postgres.computed for t in run.engine.servers),
            delivery=run.delivery, top_calls=top, pool_waits_per_tx=pool[0],
            tenant_sets_per_tx=pool[1], kept_reclaims_per_tx=pool[2])
    finally:
        await run.stop()


async def _measure_harness(transactions: int, repeats: int, delivery: str) -> WorkloadResult:
    """The same rounds with a stand-in that only passes bytes: the harness's own share."""
    engine = Engine(ABALANCE, delivery)

    class Relay:
        """Client side: what a client sends goes to the server as is."""

        def __init__(self, server: FakeServerTransport) -> None:
            self.server = server

        def data_received(self, data: bytes) -> None:
            self.server.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            return None

    class Back(Relay):
        """Server side: what the server answers goes to the client as is."""

        def __init__(self) -> None:
            self.client: FakeTransport | None = None

        def data_received(self, data: bytes) -> None:
            assert self.client is not None
            self.client.write(data)

    back = Back()
    server = FakeServerTransport(back, engine, FakePostgres(1))
    server.postgres.receive(startup_message({"user": "bench"}))
    relay = Relay(server)
    transport = back.client = _ClientTransport(relay, ("127.0.0.1", 1))
    run = _Run(Workload("harness", "simple", 1, "transaction"), False, ABALANCE)
    run.engine = engine
    run.clients = [_Client(relay, transport)]  # type: ignore[arg-type]
    cpu, wall = await run.timed(transactions, repeats)
    assert run.loop_waits == 0
    return WorkloadResult(
        workload="harness (no proxy)", guard=False, clients=1, pool_mode="-", protocol="simple",
        transactions=transactions, repeats_us=cpu, us_per_tx=statistics.median(cpu),
        wall_us_per_tx=statistics.median(wall),
        proxy_calls_per_tx=0.0, builtin_calls_per_tx=0.0, all_calls_per_tx=0.0,
        loop_waits_per_tx=0.0, checked=run.checked, servers_opened=0,
        fake_replies_computed=server.postgres.computed, delivery=delivery)


def run_engine(workloads: Sequence[Workload], guards: Sequence[bool], transactions: int,
               repeats: int, *, warmup: int = 500, detail: int = 0,
               abalance: bytes = ABALANCE, harness: bool = True, delivery: str = "sync",
               progress: Callable[[WorkloadResult], None] | None = None
               ) -> list[WorkloadResult]:
    """Measure each workload with the guard on and/or off; raises EngineBenchError when a
    reply is not what PostgreSQL would send. ``abalance``: the value the fake PostgreSQL
    returns (anything but ``ABALANCE`` makes every check fail: the checks are real).
    ``delivery``: ``sync`` (server replies right after each callback, no event loop in
    between: the proxy's cost alone) or ``loop`` (by ``call_soon``, one loop pass per
    round: the loop's share included)."""

    async def main() -> list[WorkloadResult]:
        results = []
        if harness:
            results.append(await _measure_harness(transactions, repeats, delivery))
            if progress is not None:
                progress(results[-1])
        for workload in workloads:
            for guard in guards:
                results.append(await _measure(workload, guard, transactions, repeats,
                                              warmup, detail, abalance, delivery))
                if progress is not None:
                    progress(results[-1])
        return results

    with asyncio.Runner(loop_factory=NoSocketLoop) as runner:
        return runner.run(main())


# ======================================================================================
# Command line
# ======================================================================================


def _row(result: WorkloadResult) -> str:
    spread = f"{min(result.repeats_us):.2f}-{max(result.repeats_us):.2f}"
    guard = "-" if result.pool_mode == "-" else ("on" if result.guard else "off")
    proxy = result.pool_mode != "-"
    calls = f"{result.proxy_calls_per_tx:.1f}" if proxy else "-"
    builtins = f"{result.builtin_calls_per_tx:.1f}" if proxy else "-"
    every = f"{result.all_calls_per_tx:.1f}" if proxy else "-"
    waits = f"{result.loop_waits_per_tx:.3f}" if proxy else "-"
    return (f"{result.workload:<20} {guard:>5} {result.us_per_tx:>7.2f} {spread:>13} "
            f"{result.wall_us_per_tx:>7.2f} {calls:>6} {builtins:>6} {every:>6} {waits:>6}")


_HEADER = (f"{'workload':<20} {'guard':>5} {'cpu us':>7} {'cpu range':>13} {'wall us':>7} "
           f"{'py':>6} {'C':>6} {'all py':>6} {'loop':>6}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.engine",
        description="The proxy's own cost per transaction (pgbench -S shaped), in process: "
                    "real ProxyApp, client and server connections, fake transports and a "
                    "fake PostgreSQL; no sockets. Also: ./dev bench --engine.")
    parser.add_argument("--transactions", type=int, default=20_000,
                        help="transactions per timed repeat (default 20000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (default 5)")
    parser.add_argument("--workloads", default=",".join(w.name for w in WORKLOADS),
                        help="comma-separated (default all): "
                             + ", ".join(w.name for w in WORKLOADS))
    parser.add_argument("--guard", choices=("on", "off", "both"), default="both",
                        help="SQL guard on (the default config), off, or both (default)")
    parser.add_argument("--delivery", choices=("sync", "loop"), default="sync",
                        help="server replies delivered right after each callback (sync, "
                             "default: the proxy alone) or by the event loop (loop: "
                             "call_soon, one loop pass per round)")
    parser.add_argument("--calls", type=int, default=0, metavar="N",
                        help="also list the N proxy functions called most per transaction")
    parser.add_argument("--output", nargs="?", type=Path, const=_RESULTS_DIR, default=None,
                        metavar="PATH",
                        help="write JSON: a file, or a directory for engine-<date>.json "
                             "(without PATH: bench/results/)")
    parser.add_argument("--quick", action="store_true",
                        help="2 repeats x 2000 transactions (a smoke run)")
    return parser


def _output_path(output: Path) -> Path:
    if output.suffix == ".json":
        return output
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    return output / f"engine-{stamp}.json"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = {w.name: w for w in WORKLOADS}
    try:
        workloads = [names[n.strip()] for n in args.workloads.split(",") if n.strip()]
    except KeyError as exc:
        print(f"bench.engine: unknown workload {exc}", file=sys.stderr)
        return 2
    transactions, repeats = (2000, 2) if args.quick else (args.transactions, args.repeats)
    if transactions < 8 or repeats < 1:
        print("bench.engine: --transactions must be >= 8 and --repeats >= 1", file=sys.stderr)
        return 2
    guards = {"on": [True], "off": [False], "both": [True, False]}[args.guard]
    kind = build_kind()
    compiled = compiled_modules()
    print(f"pgtenant engine bench: {kind} build"
          + (f" ({len(compiled)} compiled modules)" if compiled else "")
          + f", Python {platform.python_version()}, {repeats} x {transactions} transactions, "
          f"{args.delivery} delivery")
    print(_HEADER)

    def progress(result: WorkloadResult) -> None:
        print(_row(result), flush=True)
        if result.pool_waits_per_tx or result.tenant_sets_per_tx or result.kept_reclaims_per_tx:
            print(f"    pool per tx: {result.pool_waits_per_tx:.3f} waits, "
                  f"{result.tenant_sets_per_tx:.4f} tenant sets, "
                  f"{result.kept_reclaims_per_tx:.3f} kept servers reclaimed"
                  + (f" ({result.delivery} delivery)" if result.delivery != args.delivery
                     else ""))
        for name, per_tx in result.top_calls:
            print(f"    {per_tx:6.2f}  {name}")

    try:
        results = run_engine(workloads, guards, transactions, repeats, detail=args.calls,
                             delivery=args.delivery, progress=progress)
    except EngineBenchError as exc:
        print(f"bench.engine: {exc}", file=sys.stderr)
        return 1
    print("Per transaction: cpu us = CPU time of the bench thread (median, and range, of the "
          "repeats), wall us = wall time (median), both with the harness's share (its own "
          "row); calls: py = Python functions in proxy/ (a compiled module's are not seen), "
          "C = builtins called from them, all py = every Python function (harness too); "
          "loop = extra event-loop passes per transaction a reply needed (0: none)")
    if args.output is not None:
        path = _output_path(args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "commit": _git_commit(),
            "build": kind,
            "compiled_modules": compiled,
            "python": platform.python_version(),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "settings": {"transactions": transactions, "repeats": repeats,
                         "delivery": args.delivery},
            "results": [dataclasses.asdict(r) for r in results],
        }
        path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"results: {path}")
    return 0


def _git_commit() -> str | None:
    import subprocess

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10, check=False)
        if out.returncode == 0:
            return out.stdout.strip()
    return None


if __name__ == "__main__":
    sys.exit(main())
