"""The console's control channel and the supervisor's fan-out, with scripted workers.

Each fake worker is a real control socket (:func:`proxy.admin.control.serve`) whose
console is a small script, so the merge and undo rules run without a proxy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from proxy.admin import control
from proxy.admin.cluster import ClusterConsole
from proxy.admin.commands import Answer, ConsoleError, parse

Script = Callable[[str], Awaitable[Answer]]


def show_pools(worker: int) -> Answer:
    return Answer("SHOW 1", ["database", "paused"], [["app", f"no-{worker}"]])


async def with_workers(tmp_path: Path, scripts: dict[int, Script], count: int,
                       body: Callable[[ClusterConsole], Awaitable[None]]) -> None:
    servers = [await control.serve(str(tmp_path / f"control-{i}.sock"), script)
               for i, script in scripts.items()]
    sockets = [(i, str(tmp_path / f"control-{i}.sock")) for i in range(count)]
    try:
        await body(ClusterConsole(lambda: sockets, count, lambda: None))
    finally:
        for server in servers:
            server.close()


def test_show_merges_rows_with_a_worker_column_and_names_a_silent_worker(
        tmp_path: Path) -> None:
    async def worker0(statement: str) -> Answer:
        return show_pools(0)

    async def body(cluster: ClusterConsole) -> None:
        answer = await cluster.run("SHOW POOLS")
        assert answer.columns == ["worker", "database", "paused"]
        assert answer.rows == [["0", "app", "no-0"]]
        assert answer.tag == "SHOW 1"
        assert len(answer.notices) == 1 and "worker 1 did not answer" in answer.notices[0]

    # Worker 1 has no socket: it is restarting.
    asyncio.run(with_workers(tmp_path, {0: worker0}, 2, body))


def test_a_pause_that_fails_on_one_worker_is_resumed_on_the_others(tmp_path: Path) -> None:
    heard: list[tuple[int, str]] = []

    async def worker0(statement: str) -> Answer:
        heard.append((0, statement))
        return Answer("PAUSE", paused=["app"]) if statement == "PAUSE" else Answer("RESUME")

    async def worker1(statement: str) -> Answer:
        heard.append((1, statement))
        raise ConsoleError("57014", "PAUSE did not complete within pause_timeout (1s)", "hint")

    async def body(cluster: ClusterConsole) -> None:
        with pytest.raises(ConsoleError) as info:
            await cluster.run("PAUSE")
        assert info.value.sqlstate == "57014" and info.value.hint == "hint"
        assert str(info.value).startswith("PAUSE failed on 1 of 2 workers: worker 1: PAUSE "
                                          "did not complete")
        assert "what the other workers paused was resumed" in str(info.value)

    asyncio.run(with_workers(tmp_path, {0: worker0, 1: worker1}, 2, body))
    assert sorted(heard) == [(0, "PAUSE"), (0, "RESUME app"), (1, "PAUSE")]


def test_an_asker_that_hangs_up_cancels_the_command(tmp_path: Path) -> None:
    cancelled = asyncio.Event()
    started = asyncio.Event()

    async def slow(statement: str) -> Answer:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Answer("PAUSE")

    async def main() -> None:
        path = str(tmp_path / "control-0.sock")
        server = await control.serve(path, slow)
        try:
            asking = asyncio.ensure_future(control.ask(path, "PAUSE"))
            await asyncio.wait_for(started.wait(), 5)
            asking.cancel()  # the admin went away
            await asyncio.wait_for(cancelled.wait(), 5)
        finally:
            server.close()

    asyncio.run(main())


def test_kill_client_goes_to_the_worker_that_owns_the_id(tmp_path: Path) -> None:
    heard: list[int] = []

    def worker(index: int) -> Script:
        async def run(statement: str) -> Answer:
            heard.append(index)
            return Answer("KILL_CLIENT")
        return run

    async def body(cluster: ClusterConsole) -> None:
        assert (await cluster.run("KILL_CLIENT 129")).tag == "KILL_CLIENT"  # 2 x 64 + 1
        with pytest.raises(ConsoleError) as info:
            await cluster.run("KILL_CLIENT 130")  # worker 2 does not exist
        assert info.value.sqlstate == "42704"

    asyncio.run(with_workers(tmp_path, {0: worker(0), 1: worker(1)}, 2, body))
    assert heard == [1]


@pytest.mark.parametrize("statement", ["KILL_CLIENT abc", "KILL_CLIENT -1", "KILL_CLIENT ١٢",
                                       "PAUSE a b", "SHOW NOTHING", "SELECT 1"])
def test_malformed_commands_are_refused_before_any_worker_is_asked(statement: str) -> None:
    with pytest.raises(ConsoleError) as info:
        parse(statement)
    assert info.value.sqlstate == "42601"
