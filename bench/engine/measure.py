"""Measuring a workload: CPU and wall time per transaction, calls, the pool's counters.

:func:`run_engine` runs each workload (:mod:`bench.engine.drive`) under the bench's
event loop: warm-up, timed repeats, one profiled pass (``sys.setprofile``) for the call
counts; and the harness alone, with a stand-in that only passes bytes, so its own share
of each row is known.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from bench.engine.adapter import NoSocketLoop, pool_counters, proxy_source_dir
from bench.engine.drive import Client, ClientTransport, Run
from bench.engine.workloads import Workload, WorkloadResult
from bench.fakepg import (
    ABALANCE,
    Engine,
    FakePostgres,
    FakeServerTransport,
    FakeTransport,
    startup_message,
)


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
    run = Run(workload, guard, abalance, delivery)
    await run.start()
    try:
        clients = workload.clients
        rounds = max(1, transactions // clients)
        await run.warm_up(max(1, warmup // clients))
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
    transport = back.client = ClientTransport(relay, ("127.0.0.1", 1))
    run = Run(Workload("harness", "simple", 1, "transaction"), False, ABALANCE)
    run.engine = engine
    run.clients = [Client(relay, transport)]  # type: ignore[arg-type]
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
