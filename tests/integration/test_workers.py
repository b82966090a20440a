"""``[server] workers = 2``: a real ``pgtenant serve`` supervisor with two worker processes.

Tests that leave the supervisor as they found it share one (``served``, JSON logs, pool
size 12); the killed-worker test, which leaves it restarted and whole again, comes last of
those. SIGTERM and SIGHUP tests start their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.config import Config
from proxy.supervisor import WorkerRole
from tests.proxy_harness import (
    launch_serve,
    make_config,
    stop_process,
    token,
    write_config_file,
)
from tests.support import free_port


@dataclasses.dataclass
class Supervised:
    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    config_path: Path
    log_path: Path

    def dsn(self, tenant: str) -> str:
        return (f"postgresql://tester:{token(tenant)}@127.0.0.1:{self.port}/app"
                "?sslmode=disable")

    def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def samples(self, name: str) -> dict[str, float]:
        """Worker label → summed value of every sample called ``name``."""
        status, text = self.get("/metrics")
        assert status == 200, text
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name:
                    worker = sample.labels.get("worker", "")
                    out[worker] = out.get(worker, 0.0) + sample.value
        return out

    def workers(self) -> list[int]:
        """Process ids of the supervisor's live children (Linux /proc)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                fields = stat.rpartition(")")[2].split()
                if int(fields[1]) == self.proc.pid and fields[0] != "Z":
                    pids.append(int(entry))
        return sorted(pids)

    def listeners(self) -> int:
        """TCP sockets listening on the service port (Linux /proc/net)."""
        count = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(FileNotFoundError):
                for line in Path(table).read_text().splitlines()[1:]:
                    local, state = line.split()[1], line.split()[3]
                    count += state == "0A" and int(local.rpartition(":")[2], 16) == self.port
        return count

    def wait_ready(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while self.get("/readyz")[0] != 200:
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text()


def write(served_config: Config, path: Path, port: int, metrics_port: int) -> None:
    write_config_file(path, dataclasses.replace(served_config, server=dataclasses.replace(
        served_config.server, listen=f"127.0.0.1:{port}",
        metrics_listen=f"127.0.0.1:{metrics_port}")))


@contextlib.contextmanager
def supervise(config: Config, workdir: Path) -> Iterator[Supervised]:
    served = Supervised(proc=None, port=free_port(), metrics_port=free_port(),  # type: ignore[arg-type]
                        config_path=workdir / "pgtenant.toml", log_path=workdir / "pgtenant.log")
    write(config, served.config_path, served.port, served.metrics_port)
    served.proc = launch_serve(served.config_path, served.log_path, served.metrics_port)
    try:
        served.wait_ready()
        yield served
    finally:
        children = served.workers()
        stop_process(served.proc, children)


def two_workers(app_db: Any, **kw: Any) -> Config:
    return make_config(app_db, pool_mode="transaction", server_workers=2, **kw)


@pytest.fixture(scope="module")
def served(app_db: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervised]:
    """One supervisor shared by the tests that leave it as they found it."""
    config = two_workers(app_db, pool_size=12, server_log_format="json")
    with supervise(config, tmp_path_factory.mktemp("workers")) as supervised:
        yield supervised


def query_tenant(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SELECT current_setting('app.current_tenant')").fetchone()
        assert row is not None
        return str(row[0])


def test_short_connections_are_spread_over_both_workers_with_the_right_tenant(
        served: Supervised) -> None:
    assert len(served.workers()) == 2
    before = sum(served.samples("pgtenant_pool_leases_total").values())
    for i in range(40):
        tenant = ("acme", "globex")[i % 2]
        assert query_tenant(served.dsn(tenant)) == tenant
    leases = served.samples("pgtenant_pool_leases_total")
    assert set(leases) == {"0", "1"} and all(v > 0 for v in leases.values()), leases
    assert sum(leases.values()) - before >= 40
    assert served.samples("pgtenant_workers") == {"": 2.0}
    assert served.get("/healthz") == (200, "ok\n")
    assert served.get("/readyz") == (200, "ready\n")


def test_cancel_works_whichever_worker_receives_it(served: Supervised) -> None:
    async def cancel_by_timeout(dsn: str) -> int:
        conn = await asyncpg.connect(dsn, ssl=False)
        try:
            started = time.monotonic()
            try:
                await conn.execute("SELECT pg_sleep(10)", timeout=0.3)
            except TimeoutError:
                pass
            # The cancelled statement is gone: the connection answers at once.
            assert await conn.fetchval("SELECT 1") == 1
            assert time.monotonic() - started < 4
            return WorkerRole.owner_of(conn.get_server_pid())
        finally:
            await conn.close()

    async def main(served: Supervised) -> list[int]:
        return list(await asyncio.gather(*(cancel_by_timeout(served.dsn(t))
                                           for t in ["acme", "globex"] * 6)))

    owners = asyncio.run(main(served))
    assert set(owners) == {0, 1}  # clients of both workers were cancelled
    # 12 cancel connections, hashed over 2 workers: some landed on the other one.
    assert "cancel request passed on to worker" in served.log()


def test_sigterm_ends_every_worker_and_exits_zero(app_db: Any, tmp_path: Path) -> None:
    with supervise(two_workers(app_db), tmp_path) as served:
        children = served.workers()
        assert len(children) == 2
        assert query_tenant(served.dsn("acme")) == "acme"
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(20) == 0
        for pid in children:
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(
                f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[:1]


def test_a_second_supervisor_on_the_same_port_refuses_to_start(served: Supervised) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "serve", "--config", str(served.config_path)],
        capture_output=True, timeout=20, env=os.environ.copy())
    assert second.returncode == 1, second.stderr
    assert b"cannot listen" in second.stderr
    assert query_tenant(served.dsn("acme")) == "acme"


def test_sighup_reload_reaches_every_worker(app_db: Any, tmp_path: Path) -> None:
    with supervise(two_workers(app_db, pool_size=4), tmp_path) as served:
        write(two_workers(app_db, pool_size=3), served.config_path, served.port,
              served.metrics_port)
        served.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while served.samples("pgtenant_config_reloads_total") != {"0": 1.0, "1": 1.0}:
            assert time.monotonic() < deadline, served.log()
            time.sleep(0.1)
        assert served.samples("pgtenant_pool_size") == {"0": 3.0, "1": 3.0}


def test_json_logs_carry_context_and_never_the_token(served: Supervised) -> None:
    bad_token = token("acme") + "x"  # a broken signature
    dsn = f"postgresql://tester:{bad_token}@127.0.0.1:{served.port}/app?sslmode=disable"
    try:
        psycopg.connect(dsn, connect_timeout=5).close()
        raise AssertionError("a bad token was accepted")
    except psycopg.OperationalError:
        pass
    deadline = time.monotonic() + 5
    while '"auth_failed"' not in served.log():
        assert time.monotonic() < deadline, served.log()
        time.sleep(0.05)
    text = served.log()
    assert bad_token not in text and bad_token.split(".")[2] not in text
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    refused = [e for e in entries if e.get("event") == "auth_failed"]
    assert refused and {"timestamp", "level", "logger", "message", "client_id",
                        "worker"} <= set(refused[0])
    assert refused[0]["level"] == "info" and refused[0]["logger"] == "pgtenant.app"


def test_a_killed_worker_is_restarted_and_the_service_keeps_answering(
        served: Supervised) -> None:
    restarts = served.samples("pgtenant_worker_restarts_total")[""]
    before = served.workers()
    assert served.listeners() == 2
    os.kill(before[0], signal.SIGKILL)
    # Until the kernel has closed the dead worker's listener, SO_REUSEPORT may still hand
    # it a connection, which then dies with it; the process being gone does not mean the
    # socket is (in gVisor the socket outlives the process by some milliseconds).
    deadline = time.monotonic() + 5
    while before[0] in served.workers() or served.listeners() != 1:
        assert time.monotonic() < deadline, served.listeners()
        time.sleep(0.005)
    for i in range(10):  # the other worker keeps taking new connections
        tenant = ("acme", "globex")[i % 2]
        assert query_tenant(served.dsn(tenant)) == tenant
    deadline = time.monotonic() + 15
    while len(served.workers()) != 2 or before[0] in served.workers():
        assert time.monotonic() < deadline, served.log()
        time.sleep(0.05)
    served.wait_ready()
    assert served.samples("pgtenant_worker_restarts_total") == {"": restarts + 1}
    assert set(served.samples("pgtenant_uptime_seconds")) == {"0", "1"}
    assert "exited unexpectedly" in served.log()
