"""The admin console with ``[server] workers = 2``: every command covers every worker.

A real ``pgtenant serve`` supervisor with two worker processes; the kernel decides which
worker each connection (the admin's too) lands on, so each test first makes sure the
clients it needs sit on both workers, and asserts the same whichever worker the admin got.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from proxy.config import Config
from proxy.config.scram_verifier import make_scram_verifier
from proxy.supervisor import WorkerRole
from tests.proxy_harness import (
    launch_serve,
    make_config,
    stop_process,
    token,
    write_config_file,
)
from tests.support import free_port

ADMIN_PASSWORD = "workers-console-password"
VERIFIER = make_scram_verifier(ADMIN_PASSWORD)

Rows = list[dict[str, str | None]]


@dataclasses.dataclass
class Supervised:
    proc: subprocess.Popen[bytes]
    port: int
    config_path: Path
    log_path: Path

    def write_config(self, config: Config) -> None:
        config = dataclasses.replace(config, server=dataclasses.replace(
            config.server, listen=f"127.0.0.1:{self.port}", workers=2))
        write_config_file(self.config_path, config)
        with self.config_path.open("a") as f:
            f.write(f'[admin.users.admin]\nscram_verifier = "{VERIFIER}"\n')

    def dsn(self, tenant: str) -> str:
        return (f"postgresql://tester:{token(tenant)}@127.0.0.1:{self.port}/app"
                "?sslmode=disable")

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(f"postgresql://admin:{ADMIN_PASSWORD}@127.0.0.1:{self.port}/"
                               "pgtenant?sslmode=disable", autocommit=True)

    def console(self, command: str) -> Rows:
        with self.admin() as conn:
            return run(conn, command)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_pools(self, column: str, values: set[str], timeout: float = 10) -> None:
        """Until SHOW POOLS' ``column`` holds exactly ``values`` over all workers' rows."""
        deadline = time.monotonic() + timeout
        while {str(p[column]) for p in self.console("SHOW POOLS")} != values:
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.05)

    def workers(self) -> list[int]:
        """Process ids of the supervisor's live children (Linux /proc)."""
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
                    if int(fields[1]) == self.proc.pid and fields[0] != "Z":
                        pids.append(int(entry))
        return sorted(pids)

    def wait_for_both_workers(self, timeout: float = 20) -> Rows:
        """SHOW POOLS once both workers answer; returns its rows."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(psycopg.Error):
                pools = self.console("SHOW POOLS")
                if {p["worker"] for p in pools} == {"0", "1"}:
                    return pools
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.1)


def run(conn: psycopg.Connection[Any], command: str) -> Rows:
    cur = conn.execute(command)  # no parameters: psycopg sends a simple Query
    if cur.description is None:
        return []
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


@contextlib.contextmanager
def supervise(config: Config, workdir: Path) -> Iterator[Supervised]:
    served = Supervised(proc=None, port=free_port(),  # type: ignore[arg-type]
                        config_path=workdir / "pgtenant.toml", log_path=workdir / "pgtenant.log")
    served.write_config(config)
    served.proc = launch_serve(served.config_path, served.log_path, served.port)
    children: list[int] = []
    try:
        served.wait_for_both_workers()
        children = served.workers()
        yield served
    finally:
        children += served.workers()
        stop_process(served.proc, children)


def worker_of(conn: psycopg.Connection[Any]) -> int:
    """The worker a client connection landed on: its cancel key names it."""
    return WorkerRole.owner_of(conn.info.backend_pid)


def local_address(conn: psycopg.Connection[Any]) -> str:
    """``host:port`` of the client's end, as SHOW CLIENTS' addr column shows it."""
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


@contextlib.contextmanager
def on_each_worker(served: Supervised, autocommit: bool = True
                   ) -> Iterator[tuple[dict[int, psycopg.Connection[Any]],
                                       list[psycopg.Connection[Any]]]]:
    """Client connections of tenant acme until one sits on each worker: yields
    ``({worker: conn}, every conn opened)``; closes them all at the end."""
    opened: list[psycopg.Connection[Any]] = []
    chosen: dict[int, psycopg.Connection[Any]] = {}
    try:
        while len(chosen) < 2:
            assert len(opened) < 40, "the kernel put 40 connections on one worker"
            conn = psycopg.connect(served.dsn("acme"), autocommit=autocommit)
            opened.append(conn)
            chosen.setdefault(worker_of(conn), conn)
        yield chosen, opened
    finally:
        for conn in opened:
            conn.close()


def config(app_db: Any, **kw: Any) -> Config:
    return make_config(app_db, **{"pool_mode": "transaction", "pool_size": 2, **kw})


# ---- SHOW --------------------------------------------------------------------------------


def test_show_commands_answer_for_every_worker_with_a_worker_column(
        app_db: Any, tmp_path: Path) -> None:
    with supervise(config(app_db), tmp_path) as served:
        with on_each_worker(served) as (_, opened):
            for conn in opened:
                conn.execute("SELECT 1")
            with served.admin() as admin:
                clients = run(admin, "SHOW CLIENTS")
                tenants_by_worker = {c["worker"] for c in clients if c["tenant"] == "acme"}
                assert tenants_by_worker == {"0", "1"}
                assert len([c for c in clients if c["tenant"] == "acme"]) == len(opened)
                ids = [c["id"] for c in clients]
                assert len(ids) == len(set(ids)), "client ids repeat across workers"
                me = [c for c in clients if c["self"] == "yes"]
                assert len(me) == 1 and me[0]["database"] == "pgtenant"
                pools = run(admin, "SHOW POOLS")
                assert sorted(p["worker"] for p in pools) == ["0", "1"]
                assert all(p["database"] == "app" and p["kind"] == "tenant" for p in pools)
                servers = run(admin, "SHOW SERVERS")
                assert {s["worker"] for s in servers} == {"0", "1"}
                stats = run(admin, "SHOW STATS")
                assert {s["worker"] for s in stats} == {"0", "1"}
                assert sum(int(s["queries"] or 0) for s in stats) >= len(opened)
                tenants = run(admin, "SHOW TENANTS")
                assert {t["worker"] for t in tenants if t["tenant"] == "acme"} == {"0", "1"}
                # Settings are the same everywhere: answered by the admin's own worker.
                config_rows = run(admin, "SHOW CONFIG")
                assert "worker" not in config_rows[0]


# ---- actions -----------------------------------------------------------------------------


def test_kill_client_ends_a_client_on_the_other_worker(app_db: Any, tmp_path: Path) -> None:
    with supervise(config(app_db), tmp_path) as served, served.admin() as admin:
        mine = next(int(str(c["worker"])) for c in run(admin, "SHOW CLIENTS")
                    if c["self"] == "yes")
        with on_each_worker(served) as (chosen, _):
            victim = chosen[1 - mine]
            victim.execute("SELECT 1")
            address = local_address(victim)
            row = next(c for c in run(admin, "SHOW CLIENTS") if c["addr"] == address)
            assert row["worker"] == str(1 - mine)
            run(admin, f"KILL_CLIENT {row['id']}")
            with pytest.raises(psycopg.OperationalError, match="administrator command"):
                victim.execute("SELECT 1")
            assert chosen[mine].execute("SELECT 2").fetchone() == (2,)
            with pytest.raises(psycopg.errors.UndefinedObject):
                run(admin, f"KILL_CLIENT {row['id']}")


def test_pause_waits_for_transactions_on_every_worker_and_resume_releases_both(
        app_db: Any, tmp_path: Path) -> None:
    with supervise(config(app_db), tmp_path) as served, \
         concurrent.futures.ThreadPoolExecutor(3) as background:
        with on_each_worker(served, autocommit=False) as (chosen, _):
            for conn in chosen.values():
                conn.execute("SELECT 1")  # a transaction on each worker holds its server
            pausing = background.submit(served.console, "PAUSE")
            served.wait_pools("paused", {"yes"})
            chosen[0].commit()
            time.sleep(0.3)
            assert not pausing.done(), "PAUSE returned while worker 1 had a transaction"
            chosen[1].commit()
            assert pausing.result(timeout=10) == []
            pools = served.console("SHOW POOLS")
            assert {(p["paused"], p["sv_active"], p["sv_idle"]) for p in pools} == {
                ("yes", "0", "0")}

            later = [background.submit(lambda c=c: c.execute("SELECT 3").fetchone())
                     for c in chosen.values()]
            deadline = time.monotonic() + 10
            while sum(int(p["cl_waiting"] or 0) for p in served.console("SHOW POOLS")) != 2:
                assert time.monotonic() < deadline, served.log()
                time.sleep(0.05)
            assert not any(f.done() for f in later)
            served.console("RESUME")
            assert [f.result(timeout=10) for f in later] == [(3,), (3,)]
            for conn in chosen.values():
                conn.commit()
            assert {p["paused"] for p in served.console("SHOW POOLS")} == {"no"}


def test_a_pause_that_times_out_on_one_worker_is_undone_on_both(
        app_db: Any, tmp_path: Path) -> None:
    with supervise(config(app_db, server_pause_timeout=0.5), tmp_path) as served:
        with on_each_worker(served, autocommit=False) as (chosen, _):
            chosen[1].execute("SELECT 1")  # only worker 1 has a transaction in flight
            with pytest.raises(psycopg.errors.QueryCanceled) as info:
                served.console("PAUSE app")
            message = str(info.value)
            assert "PAUSE failed on 1 of 2 workers: worker 1:" in message
            assert "pause_timeout" in message and "resumed" in message
            assert {p["paused"] for p in served.console("SHOW POOLS")} == {"no"}
            assert chosen[0].execute("SELECT 4").fetchone() == (4,)  # not held
            chosen[1].commit()
            chosen[0].commit()


def test_an_admin_who_hangs_up_during_pause_leaves_no_worker_paused(
        app_db: Any, tmp_path: Path) -> None:
    with supervise(config(app_db), tmp_path) as served:
        with on_each_worker(served, autocommit=False) as (chosen, _):
            chosen[0].commit()
            chosen[1].execute("SELECT 1")  # worker 1 cannot drain: worker 0 can, and does
            admin = served.admin()
            admin.pgconn.send_query(b"PAUSE")
            served.wait_pools("paused", {"yes"})
            admin.close()
            served.wait_pools("paused", {"no"})
            assert chosen[0].execute("SELECT 6").fetchone() == (6,)
            chosen[1].commit()


def test_console_reload_reaches_every_worker_and_reports_a_bad_file(
        app_db: Any, tmp_path: Path) -> None:
    with supervise(config(app_db), tmp_path) as served:
        served.write_config(config(app_db, pool_size=3))
        served.console("RELOAD")
        assert {p["pool_size"] for p in served.console("SHOW POOLS")} == {"3"}
        served.config_path.write_text("[server]\npool_size = 'not here'\n")
        with pytest.raises(psycopg.Error) as info:
            served.console("RELOAD")
        assert info.value.diag.sqlstate == "F0000"
        assert "RELOAD failed on 2 of 2 workers: workers 0, 1: configuration reload refused" in (
            str(info.value))
        assert {p["pool_size"] for p in served.console("SHOW POOLS")} == {"3"}


def test_a_worker_restarted_during_a_pause_comes_back_paused(
        app_db: Any, tmp_path: Path) -> None:
    with supervise(config(app_db), tmp_path) as served:
        served.console("PAUSE")
        before = served.workers()
        os.kill(before[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while True:
            workers = served.workers()
            pools = served.wait_for_both_workers()
            if len(workers) == 2 and before[0] not in workers and {
                    p["paused"] for p in pools} == {"yes"}:
                break
            assert time.monotonic() < deadline, (pools, served.log())
            time.sleep(0.1)
        assert "restarted while app is paused" in served.log()
        served.console("RESUME")
        with psycopg.connect(served.dsn("acme"), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_console_shutdown_stops_every_worker_and_the_supervisor(
        app_db: Any, tmp_path: Path) -> None:
    with supervise(config(app_db), tmp_path) as served:
        children = served.workers()
        assert len(children) == 2
        with served.admin() as admin:
            assert run(admin, "SHUTDOWN") == []
        assert served.proc.wait(20) == 0
        for pid in children:
            stat = Path(f"/proc/{pid}/stat")
            assert not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] == "Z"
