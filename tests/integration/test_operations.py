"""Operating a running proxy: SIGHUP reload under load, SIGTERM and SHUTDOWN drain.

These run ``pgtenant serve`` as a child process and signal it, as an SRE would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from proxy.config import Config
from proxy.config.scram_verifier import make_scram_verifier
from tests.proxy_harness import launch_serve, make_config, token, write_config_file
from tests.support import free_port, wait_for, wait_for_query

ADMIN_PASSWORD = "operations-console-password"
VERIFIER = make_scram_verifier(ADMIN_PASSWORD)


@dataclasses.dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    config_path: Path
    log_path: Path

    def write_config(self, config: Config, extra: str = "") -> None:
        config = dataclasses.replace(config, server=dataclasses.replace(
            config.server, listen=f"127.0.0.1:{self.port}"))
        write_config_file(self.config_path, config)
        with self.config_path.open("a") as f:
            f.write(f'[admin.users.admin]\nscram_verifier = "{VERIFIER}"\n{extra}')

    def dsn(self, tenant: str) -> str:
        return (f"postgresql://tester:{token(tenant)}@127.0.0.1:{self.port}/app"
                "?sslmode=disable")

    def console(self, command: str) -> list[tuple[Any, ...]]:
        dsn = (f"postgresql://admin:{ADMIN_PASSWORD}@127.0.0.1:{self.port}/pgtenant"
               "?sslmode=disable")
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.execute(command)  # no parameters: psycopg sends a simple Query
            return cur.fetchall() if cur.description else []

    def pool_size(self) -> int:
        return int(self.console("SHOW POOLS")[0][9])

    def log(self) -> str:
        return self.log_path.read_text()


@contextlib.contextmanager
def serve(config: Config, workdir: Path) -> Iterator[Served]:
    """``pgtenant serve`` with an admin user, as a child process."""
    served = Served(proc=None, port=free_port(), config_path=workdir / "pgtenant.toml",  # type: ignore[arg-type]
                    log_path=workdir / "pgtenant.log")
    served.write_config(config)
    served.proc = launch_serve(served.config_path, served.log_path, served.port)
    try:
        yield served
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
        served.proc.wait(10)


class Load:
    """Several clients running queries in a loop; every failure is recorded."""

    def __init__(self, served: Served, clients: int = 4) -> None:
        self.served = served
        self.stop = threading.Event()
        self.queries = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(tenant,), daemon=True)
                         for tenant in (["acme", "globex"] * clients)[:clients]]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(15)

    def _run(self, tenant: str) -> None:
        try:
            with psycopg.connect(self.served.dsn(tenant), autocommit=True) as conn:
                while not self.stop.is_set():
                    row = conn.execute("SELECT count(*) FROM items").fetchone()
                    assert row is not None
                    with self._lock:
                        self.queries += 1
        except Exception as exc:
            with self._lock:
                self.failures.append(f"{tenant}: {exc!r}")


def wait_exit(proc: subprocess.Popen[bytes], timeout: float = 20) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError("pgtenant did not exit") from None


# ---- reload ------------------------------------------------------------------------------


def test_sighup_applies_a_new_pool_size_under_load_without_failed_queries(
        app_db: Any, tmp_path: Path) -> None:
    config = make_config(app_db, pool_mode="transaction", pool_size=4)
    with serve(config, tmp_path) as served, Load(served, clients=6) as load:
        wait_for(lambda: load.queries >= 30, "load before the reload")
        served.write_config(make_config(app_db, pool_mode="transaction", pool_size=2))
        served.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while served.pool_size() != 2:
            assert time.monotonic() < deadline, served.log()
            time.sleep(0.05)
        before = load.queries

        def servers() -> int:  # sv_active + sv_idle + sv_used in SHOW POOLS
            rows = served.console("SHOW POOLS")[0]
            return int(rows[6]) + int(rows[7]) + int(rows[8])

        # Maintenance closes idle connections beyond the new size.
        wait_for(lambda: servers() <= 2, "server connections down to the new pool_size")
        wait_for(lambda: load.queries > before, "load going on after the reload")
    assert not load.failures, load.failures
    assert "configuration reloaded" in served.log()


def test_console_reload_applies_the_file(app_db: Any, tmp_path: Path) -> None:
    with serve(make_config(app_db, pool_mode="transaction", pool_size=4), tmp_path) as served:
        served.write_config(make_config(app_db, pool_mode="transaction", pool_size=3))
        served.console("RELOAD")
        assert served.pool_size() == 3


def test_an_invalid_config_is_refused_and_the_old_keeps_serving(
        app_db: Any, tmp_path: Path) -> None:
    with serve(make_config(app_db, pool_mode="transaction", pool_size=4), tmp_path) as served, \
         Load(served, clients=2) as load:
        served.config_path.write_text("[server]\npool_size = 'not here'\n")
        served.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reload refused" in served.log(), "the refusal logged")
        assert served.proc.poll() is None
        assert served.pool_size() == 4
        # The console names the reason too, and the refusal is counted.
        with pytest.raises(psycopg.Error) as info:
            served.console("RELOAD")
        assert info.value.diag.sqlstate == "F0000"
        assert "unknown key" in str(info.value)
        before = load.queries
        wait_for(lambda: load.queries > before, "load going on after the refusal")
    assert not load.failures, load.failures
    log = served.log()
    assert "configuration reload refused" in log and "server.pool_size: unknown key" in log


def test_a_reload_that_changes_pool_mode_is_refused(app_db: Any, tmp_path: Path) -> None:
    with serve(make_config(app_db, pool_mode="transaction"), tmp_path) as served:
        served.write_config(make_config(app_db, pool_mode="session"))
        with pytest.raises(psycopg.Error, match="pool_mode: changes need a restart"):
            served.console("RELOAD")
        assert served.console("SHOW POOLS")[0][1] == "transaction"


# ---- shutdown ----------------------------------------------------------------------------


_NOTICES: weakref.WeakKeyDictionary[psycopg.Connection[Any], list[tuple[str | None, str | None]]
                                   ] = weakref.WeakKeyDictionary()


def watch(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """Record ``conn``'s notices: libpq reports an ErrorResponse that arrives while the
    connection is idle (the proxy's FATAL after a ReadyForQuery) as a notice."""
    notices: list[tuple[str | None, str | None]] = []
    conn.add_notice_handler(lambda d: notices.append((d.sqlstate, d.message_primary)))
    _NOTICES[conn] = notices
    return conn


def _expect_admin_shutdown(conn: psycopg.Connection[Any]) -> None:
    """The proxy ended ``conn`` with FATAL 57P01 (not just a cut socket)."""
    # Read what the proxy sent before writing: a write to a socket the proxy closed
    # draws a RST, and the kernel then drops unread data, the FATAL message included.
    notices = _NOTICES[conn]
    deadline = time.monotonic() + 5
    while (not notices and conn.pgconn.status == psycopg.pq.ConnStatus.OK
           and time.monotonic() < deadline):
        with contextlib.suppress(psycopg.OperationalError):
            conn.pgconn.consume_input()
            conn.pgconn.is_busy()  # parses what consume_input read
        time.sleep(0.01)
    assert ("57P01", "terminating connection due to administrator command") in notices
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")


@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
def test_sigterm_lets_running_transactions_finish_then_sends_57P01(
        app_db: Any, tmp_path: Path, pool_mode: str) -> None:
    with serve(make_config(app_db, pool_mode=pool_mode), tmp_path) as served, \
         watch(psycopg.connect(served.dsn("acme"))) as busy, \
         watch(psycopg.connect(served.dsn("globex"), autocommit=True)) as idle:
        idle.execute("SELECT 1")
        results: list[object] = []

        def transaction() -> None:
            try:
                busy.execute("SELECT pg_sleep(1)")
                busy.execute("INSERT INTO items (tenant_id, name) VALUES ('acme', %s)",
                             [f"during shutdown {pool_mode}"])
                busy.commit()
                results.append("committed")
            except Exception as exc:
                results.append(exc)

        worker = threading.Thread(target=transaction)
        worker.start()
        wait_for_query(app_db.superuser_dsn, "SELECT pg_sleep(1)")  # in flight
        served.proc.send_signal(signal.SIGTERM)
        _expect_admin_shutdown(idle)  # no transaction in flight: closed at once
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(served.dsn("acme"), connect_timeout=3)  # no longer accepting
        worker.join(10)
        assert results == ["committed"]
        _expect_admin_shutdown(busy)
        assert wait_exit(served.proc) == 0
    with psycopg.connect(app_db.superuser_dsn, autocommit=True) as direct:
        assert direct.execute("DELETE FROM items WHERE name = %s",
                              [f"during shutdown {pool_mode}"]).rowcount == 1


def test_sigterm_closes_a_transaction_that_outlives_shutdown_timeout(
        app_db: Any, tmp_path: Path) -> None:
    config = make_config(app_db, pool_mode="transaction", server_shutdown_timeout=0.5)
    with serve(config, tmp_path) as served, watch(psycopg.connect(served.dsn("acme"))) as stuck:
        stuck.execute("SELECT 1")  # BEGIN, then the client idles in its transaction
        started = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        assert wait_exit(served.proc) == 0
        assert 0.4 < time.monotonic() - started < 5
        _expect_admin_shutdown(stuck)


def test_console_shutdown_drains_and_exits_zero(app_db: Any, tmp_path: Path) -> None:
    with serve(make_config(app_db, pool_mode="transaction"), tmp_path) as served, \
         watch(psycopg.connect(served.dsn("acme"), autocommit=True)) as tenant:
        tenant.execute("SELECT 1")
        served.console("SHUTDOWN")
        assert wait_exit(served.proc) == 0
        _expect_admin_shutdown(tenant)
