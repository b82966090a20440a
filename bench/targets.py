"""What the benchmark talks to: PostgreSQL directly, pgtenant, PgBouncer.

This module holds what every target shares (:class:`Target`, a child process's life
cycle in :class:`ProcessTarget`, :class:`ConnInfo`) and the direct and pgtenant
targets; PgBouncer's is :mod:`bench.pgbouncer`, starting and stopping child processes
:mod:`bench.processes`.

Each target is started once per benchmark run and stays up (pools warm) while the
workloads interleave over the targets. A target that cannot start, or that dies and
cannot be restarted, is reported as unavailable; the others carry on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import psycopg

from bench.baseline import Baseline, serve_argv, serve_env, verify
from bench.database import APP_DB, APP_USER, BenchDatabase
from bench.environment import REPO
from bench.processes import spawn, tail, terminate
from proxy.auth.jwt import mint_token
from proxy.devtools import free_port

log = logging.getLogger("pgtenant.bench.targets")

PoolMode = Literal["session", "transaction"]

# Environment variables through which pgtenant gets its secrets (never the config file).
JWT_SECRET_ENV = "PGTENANT_BENCH_JWT_SECRET"
UPSTREAM_PASSWORD_ENV = "PGTENANT_BENCH_UPSTREAM_PASSWORD"

PROXY_POOL_SIZE = 20
_READY_TIMEOUT = 30.0
_TOKEN_TTL = 7 * 24 * 3600  # outlives any benchmark run


class TargetUnavailable(RuntimeError):
    """The target cannot be used in this run; the message says why."""


@dataclass(frozen=True, slots=True)
class ConnInfo:
    """Where and as whom a client logs in; handed to libpq through PG* variables."""

    host: str
    port: int
    dbname: str
    user: str
    password: str

    def env(self) -> dict[str, str]:
        """libpq environment variables (keeps the password out of argv)."""
        return {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGDATABASE": self.dbname,
            "PGUSER": self.user,
            "PGPASSWORD": self.password,
            "PGSSLMODE": "disable",
            "PGCONNECT_TIMEOUT": "15",
        }


def wait_for_port(host: str, port: int, process: subprocess.Popen[bytes], what: str) -> None:
    """Wait until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + _READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise TargetUnavailable(f"{what} exited with code {process.returncode} at start-up")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.05)
    raise TargetUnavailable(f"{what} did not listen on {host}:{port} within {_READY_TIMEOUT:.0f}s")


class Target(ABC):
    """One thing the workloads run against."""

    name: str
    #: The proxy sets the tenant itself, so tenant clients send only their statement.
    sets_tenant: bool = False
    #: Takes the idle-connections test: idle clients hold no server connection.
    holds_idle_clients: bool = False

    def __init__(self, db: BenchDatabase) -> None:
        self.db = db

    @abstractmethod
    def conninfo(self, tenant: str) -> ConnInfo:
        """How a client of ``tenant`` logs in."""

    @abstractmethod
    def start(self) -> None:
        """Start the target and check that a client can log in and query."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the target; idempotent."""

    def restart(self) -> None:
        self.stop()
        self.start()

    def alive(self) -> bool:
        return True

    def proxy_pids(self) -> list[int]:
        """Processes whose CPU and memory are the proxy's (none for direct)."""
        return []

    def log_files(self) -> list[Path]:
        return []

    def describe(self) -> dict[str, object]:
        """Settings and versions for the report."""
        return {}

    def check_login(self, tenant: str) -> None:
        """Log in as a client of ``tenant`` and run a query; TargetUnavailable if not."""
        info = self.conninfo(tenant)
        try:
            with psycopg.connect(
                host=info.host, port=info.port, dbname=info.dbname, user=info.user,
                password=info.password, sslmode="disable", connect_timeout=10,
                autocommit=True,
            ) as conn:
                row = conn.execute("SELECT current_setting('app.current_tenant', true)").fetchone()
        except psycopg.Error as exc:
            raise TargetUnavailable(f"{self.name}: login or query failed: {exc}") from None
        if self.sets_tenant and (row is None or row[0] != tenant):
            raise TargetUnavailable(
                f"{self.name}: the server connection's tenant is {row!r}, expected {tenant!r}"
            )


class DirectTarget(Target):
    """PostgreSQL itself, as the application role."""

    name = "direct"

    def conninfo(self, tenant: str) -> ConnInfo:
        return ConnInfo(self.db.host, self.db.port, APP_DB, APP_USER, self.db.app_password)

    def start(self) -> None:
        self.check_login(self.db.tenants[0].tenant)

    def stop(self) -> None:
        """PostgreSQL belongs to the run, not to this target."""

    def describe(self) -> dict[str, object]:
        return {"max_connections": self.db.pg.execute("SHOW max_connections")[0][0]}


class ProcessTarget(Target):
    """A proxy that runs as our child process, logging into ``workdir``."""

    program = "proxy"

    def __init__(self, db: BenchDatabase, workdir: Path) -> None:
        super().__init__(db)
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @abstractmethod
    def _launch(self, log_file: IO[bytes]) -> subprocess.Popen[bytes]:
        """Start the process (its output goes to ``log_file``)."""

    def start(self) -> None:
        if self.alive():
            return
        with self.log_path.open("ab") as log_file:
            self.process = self._launch(log_file)
        try:
            wait_for_port("127.0.0.1", self.port, self.process, self.name)
            self.check_login(self.db.tenants[0].tenant)
        except TargetUnavailable as exc:
            self.stop()
            raise TargetUnavailable(f"{exc}; log tail:\n{tail(self.log_path)}") from None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            terminate(process)

    def restart(self) -> None:
        self.restarts += 1
        super().restart()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exit_code(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def proxy_pids(self) -> list[int]:
        return [self.process.pid] if self.alive() and self.process is not None else []

    def log_files(self) -> list[Path]:
        return [self.log_path]


class PgtenantTarget(ProcessTarget):
    """``pgtenant serve`` in session or transaction mode, as a subprocess: this checkout's,
    or with ``baseline`` the baseline's (same config, its own port)."""

    sets_tenant = True

    def __init__(
        self,
        db: BenchDatabase,
        workdir: Path,
        *,
        name: str,
        pool_mode: PoolMode,
        pool_size: int,
        max_client_conn: int,
        jwt_secret: str,
        workers: int | None = None,
        baseline: Baseline | None = None,
    ) -> None:
        self.name = name
        self.baseline = baseline
        # The code this target runs: this checkout's, or the baseline's.
        self.source = baseline.source if baseline is not None else REPO
        super().__init__(db, workdir)
        self.pool_mode: PoolMode = pool_mode
        # In session mode every logged-in client holds a server connection: thousands of
        # idle clients cannot exist there (nor in PostgreSQL), so only transaction mode
        # takes the idle test.
        self.holds_idle_clients = pool_mode == "transaction"
        self.pool_size = pool_size
        self.max_client_conn = max_client_conn
        self.workers = workers
        self._jwt_secret = jwt_secret
        self._tokens: dict[str, str] = {}
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(self.config_text())

    def config_text(self) -> str:
        workers = f"workers = {self.workers}\n" if self.workers is not None else ""
        return (
            "[server]\n"
            f'listen = "127.0.0.1:{self.port}"\n'
            f"max_client_conn = {self.max_client_conn}\n"
            'log_level = "warning"\n'
            f"{workers}"
            "\n[auth.jwt]\n"
            'algorithms = ["HS256"]\n'
            f'secret_env = "{JWT_SECRET_ENV}"\n'
            f"\n[databases.{APP_DB}]\n"
            f'host = "{self.db.host}"\n'
            f"port = {self.db.port}\n"
            f'dbname = "{APP_DB}"\n'
            f'user = "{APP_USER}"\n'
            f'password_env = "{UPSTREAM_PASSWORD_ENV}"\n'
            'sslmode = "disable"\n'
            f'pool_mode = "{self.pool_mode}"\n'
            f"pool_size = {self.pool_size}\n"
        )

    def conninfo(self, tenant: str) -> ConnInfo:
        token = self._tokens.get(tenant)
        if token is None:
            token = mint_token(self._jwt_secret, tenant, ttl_seconds=_TOKEN_TTL,
                               subject=f"bench-{tenant}")
            self._tokens[tenant] = token
        return ConnInfo("127.0.0.1", self.port, APP_DB, "bench", token)

    def _launch(self, log_file: IO[bytes]) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            JWT_SECRET_ENV: self._jwt_secret,
            UPSTREAM_PASSWORD_ENV: self.db.app_password,
        }
        # Current and baseline start the same way; only the directory differs. It is the
        # working directory too: the workers of [server] workers run `python -m proxy.cli`.
        argv = serve_argv(self.source, ["serve", "--config", str(self.config_path)])
        return spawn(argv, env=serve_env(env), stdout=log_file, stderr=subprocess.STDOUT,
                     cwd=self.source)

    def start(self) -> None:
        """Start; the process must have reported (in its log) that it runs ``source``."""
        super().start()
        where = verify(self.source, self.log_path.read_text(errors="replace"), self.name)
        log.info("%s runs %s", self.name, where)

    def describe(self) -> dict[str, object]:
        return {
            "pool_mode": self.pool_mode,
            "pool_size": self.pool_size,
            "max_client_conn": self.max_client_conn,
            "workers": self.workers if self.workers is not None else "default",
            "log_level": "warning",
            "restarts": self.restarts,
            **({"baseline": self.baseline.revision} if self.baseline is not None else {}),
        }
