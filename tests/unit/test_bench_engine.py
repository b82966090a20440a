"""The engine bench (``bench/engine/``): the whole client → pool → server path of the real
proxy, in process, against a fake PostgreSQL, with every reply checked byte for byte.
A sockets-free test of that path too. No timing assertions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import fakepg
from bench.__main__ import main as bench_main
from bench.engine import cli
from bench.engine.adapter import POOL_SIZE, compiled_modules
from bench.engine.drive import EngineBenchError
from bench.engine.measure import run_engine
from bench.engine.workloads import AIDS, WORKLOADS, Workload


@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w.name)
def test_each_workload_gets_postgres_replies_with_the_guard_on_and_off(
        workload: Workload) -> None:
    results = run_engine([workload], [True, False], transactions=256, repeats=1,
                                warmup=40, harness=False)
    assert [r.guard for r in results] == [True, False]
    for result in results:
        assert result.transactions == 256  # (whole rounds: a multiple of every client count)
        # warm-up, the timed repeat and the profiled run: every reply compared
        assert result.checked >= 2 * result.transactions
        # interleaved clients each hold a server at once: one server per client, up to
        # pool_size (more clients wait)
        assert result.servers_opened == min(workload.clients, POOL_SIZE)
        # the fake PostgreSQL answers from its memo: its cost stays out of the numbers
        # (beyond each server's first few requests: startup, context sets, and the first
        # of each aid's query)
        assert (result.fake_replies_computed
                < result.transactions / 4 + (4 + len(AIDS)) * result.servers_opened)
        # a compiled build's own functions are invisible to the profiler
        assert result.proxy_calls_per_tx > 0 or compiled_modules()
        assert result.us_per_tx > 0


@pytest.mark.parametrize("name", ["simple-c8", "prepared-c8", "session-simple-c1"])
def test_replies_delivered_by_the_event_loop_are_checked_too(name: str) -> None:
    chosen = [w for w in WORKLOADS if w.name == name]
    (result,) = run_engine(chosen, [True], transactions=80, repeats=1, warmup=16,
                                  delivery="loop", harness=False)
    assert result.delivery == "loop"
    assert result.checked >= 2 * result.transactions


def test_the_tenant_workload_makes_clients_of_several_tenants_wait() -> None:
    """tenant-c32: more clients than pool_size, of 8 tenants, each sending its next
    transaction once its reply is in: clients wait in the pool, and are served."""
    (workload,) = [w for w in WORKLOADS if w.name == "tenant-c32"]
    assert workload.tenants == 8 and workload.clients > POOL_SIZE
    (result,) = run_engine([workload], [True], transactions=320, repeats=1,
                                  warmup=64, harness=False)
    assert result.delivery == "loop"  # only the event loop serves waiting clients
    assert result.checked >= 2 * result.transactions
    assert result.pool_waits_per_tx > 0
    assert result.servers_opened == POOL_SIZE


def test_the_64_client_workload_hands_each_server_to_a_waiting_client() -> None:
    """simple-c64: 64 clients for 20 servers, one round at a time: the clients without a
    server wait, and each server's ReadyForQuery hands it to one of them."""
    (workload,) = [w for w in WORKLOADS if w.name == "simple-c64"]
    assert workload.clients > POOL_SIZE
    (result,) = run_engine([workload], [True], transactions=640, repeats=1, warmup=128,
                           harness=False)
    assert result.checked >= 2 * result.transactions
    assert result.servers_opened == POOL_SIZE
    # 44 of each round's 64 transactions wait; the other 20 take the servers kept by
    # the clients of the round before
    assert result.pool_waits_per_tx == pytest.approx(44 / 64, abs=0.02)


def test_a_wrong_data_row_fails_the_run() -> None:
    """The check is real: a fake PostgreSQL whose row differs from the expected one."""
    with pytest.raises(EngineBenchError, match="wrong reply"):
        run_engine([WORKLOADS[0]], [True], transactions=16, repeats=1,
                          warmup=8, abalance=b"42", harness=False)
    with pytest.raises(EngineBenchError, match="wrong reply"):
        run_engine([w for w in WORKLOADS if w.name == "tenant-c32"], [True],
                          transactions=64, repeats=1, warmup=32, abalance=b"42",
                          harness=False)


def test_an_error_reply_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """An ErrorResponse instead of the rows (here: PostgreSQL does not know the table)
    is a failed run, not a fast measurement."""
    known = fakepg.statement_result

    def no_pgbench_tables(sql: str, params: object, abalance: bytes) -> fakepg.Result:
        if "pgbench_accounts" in sql:
            raise LookupError('relation "pgbench_accounts" does not exist')
        return known(sql, params, abalance)  # type: ignore[arg-type]

    monkeypatch.setattr(fakepg, "statement_result", no_pgbench_tables)
    for workload in ("simple-c1", "extended-c8", "tenant-c32"):
        chosen = [w for w in WORKLOADS if w.name == workload]
        with pytest.raises(EngineBenchError, match="pgbench_accounts"):
            run_engine(chosen, [False], transactions=16, repeats=1, warmup=8,
                              harness=False)


def test_dev_bench_engine_prints_the_table_and_writes_json_when_asked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "engine.json"
    assert bench_main(["--engine", "--transactions", "16", "--repeats", "1", "--workloads",
                       "simple-c8", "--guard", "on", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pure build" in printed or "compiled build" in printed
    assert "simple-c8" in printed and "harness (no proxy)" in printed
    document = json.loads(out.read_text())
    assert document["build"] in ("pure", "compiled")
    assert [r["workload"] for r in document["results"]] == ["harness (no proxy)", "simple-c8"]
    assert document["results"][1]["guard"] is True


def test_without_output_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "_RESULTS_DIR", tmp_path)
    assert cli.main(["--transactions", "8", "--repeats", "1", "--workloads",
                        "session-simple-c1", "--guard", "off"]) == 0
    assert list(tmp_path.iterdir()) == []
    assert "session-simple-c1" in capsys.readouterr().out
