"""A throwaway PostgreSQL cluster, for ``pgtenant demo``, the tests and the benchmarks.

:class:`EmbeddedPostgres` runs ``initdb`` into a fresh temporary directory and starts
``postgres`` on 127.0.0.1 on a free port, with its Unix socket and its log file in the
same directory. PostgreSQL refuses to run as root, so when we are root the cluster runs
as the unprivileged ``postgres`` OS user and the directory belongs to that user.

Authentication: SCRAM-SHA-256 for every TCP connection; over the Unix socket (a 0700
directory) only the superuser is trusted. Settings suit a small test box (no fsync, no
full-page writes, asynchronous commit): a crash or ``stop("immediate")`` may lose the
last fraction of a second of commits, which throwaway data can afford.

Where the binaries come from and which OS user runs them: :mod:`proxy.devtools.host`.
The demo application database inside it: :mod:`proxy.devtools.provisioning`.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, LiteralString, Self
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.abc import Params

from proxy.devtools.host import (
    EmbeddedPostgresError,
    find_bindir,
    free_port,
    server_account,
    server_environment,
)

log = logging.getLogger("pgtenant.embedded")

ShutdownMode = Literal["smart", "fast", "immediate"]
Statement = LiteralString | bytes | sql.SQL | sql.Composed

# PostgreSQL's shutdown modes are chosen by the signal sent to the postmaster.
_SHUTDOWN_SIGNALS: Mapping[str, signal.Signals] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}

DEFAULT_SETTINGS: Mapping[str, str] = {
    "shared_buffers": "128MB",
    "max_connections": "300",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "password_encryption": "scram-sha-256",
    "logging_collector": "off",          # postgres writes to stderr, which goes to our log file
    "log_destination": "stderr",
    "log_min_messages": "warning",
    "log_line_prefix": "%m [%p] %q%u@%d ",
}
"""Server settings of every embedded cluster; ``EmbeddedPostgres(settings=...)`` overrides."""

_STARTUP_TIMEOUT = 30.0
_STOP_TIMEOUT = 60.0
_PORT_ATTEMPTS = 3
_LOG_TAIL_LINES = 40


class _PortInUseError(EmbeddedPostgresError):
    """Another process took the port between our probe and the postmaster's bind."""



@dataclass(slots=True)
class _Cluster:
    """What must be cleaned up; shared with the finalizer, which must not hold the owner."""

    root: Path
    process: subprocess.Popen[bytes] | None = None


def _discard(cluster: _Cluster) -> None:
    """Kill the postmaster (immediate shutdown) and delete the cluster's directory."""
    _stop_process(cluster, signal.SIGQUIT)
    shutil.rmtree(cluster.root, ignore_errors=True)


class EmbeddedPostgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1; a context manager (start, then close).

    ``restart()`` keeps the port and the data directory, so clients can reconnect to
    the same DSN; ``close()`` stops the server and deletes everything.
    """

    def __init__(
        self,
        *,
        bindir: str | os.PathLike[str] | None = None,
        settings: Mapping[str, str] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = _STARTUP_TIMEOUT,
        hba_lines: Sequence[str] = (),
    ) -> None:
        """Prepare (but do not start) a cluster.

        ``bindir``: PostgreSQL binaries (default: :func:`find_bindir`). ``settings``:
        server settings added to or replacing :data:`DEFAULT_SETTINGS`. ``base_dir``:
        where the temporary directory goes (default: /tmp when root, else the system
        temporary directory); the server's OS user must be able to reach it.
        ``hba_lines``: pg_hba.conf lines placed before the defaults (first match wins).
        """
        self._bindir = Path(bindir) if bindir is not None else None
        self._settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self._base_dir = Path(base_dir) if base_dir is not None else None
        self._startup_timeout = startup_timeout
        self._hba_lines = tuple(hba_lines)
        self._password = secrets.token_urlsafe(24)
        self._port: int | None = None
        self._cluster: _Cluster | None = None
        self._finalizer: weakref.finalize[[_Cluster], EmbeddedPostgres] | None = None
        self._closed = False
        # As root, the server runs as the postgres OS user (uid, gid, no supplementary
        # groups); otherwise as ourselves (all None: subprocess changes nothing).
        self._owner = server_account()
        self._uid: int | None = self._owner[0] if self._owner else None
        self._gid: int | None = self._owner[1] if self._owner else None
        self._extra_groups: list[int] | None = [] if self._owner else None

    # -- context manager -------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- addresses and credentials ---------------------------------------------------

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedPostgresError("the cluster has not been started")
        return self._port

    @property
    def superuser(self) -> str:
        return "postgres"

    @property
    def superuser_password(self) -> str:
        return self._password

    @property
    def superuser_dsn(self) -> str:
        """Superuser, database ``postgres``, over TCP with SCRAM."""
        return self.dsn()

    def dsn(
        self, dbname: str = "postgres", user: str | None = None, password: str | None = None
    ) -> str:
        """A libpq URI for this cluster over TCP.

        ``user`` defaults to the superuser, whose password is filled in; other users'
        passwords are included only when given.
        """
        user = user or self.superuser
        if password is None and user == self.superuser:
            password = self._password
        userinfo = quote(user, safe="")
        if password is not None:
            userinfo += ":" + quote(password, safe="")
        return f"postgresql://{userinfo}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    # -- where things are --------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The temporary directory: data directory, Unix socket and log file."""
        if self._cluster is None:
            raise EmbeddedPostgresError("the cluster has not been created")
        return self._cluster.root

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs."""
        process = self._cluster.process if self._cluster else None
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        """Create the cluster on first use, start the server and wait until it accepts logins."""
        if self._closed:
            raise EmbeddedPostgresError("the cluster has been closed")
        if self.running:
            return
        began = time.monotonic()
        first_start = self._cluster is None
        if first_start:
            self._create()
        try:
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                try:
                    self._launch()
                    break
                except _PortInUseError:
                    # Only a first start may move: restart() promises the same port.
                    if not first_start or attempt == _PORT_ATTEMPTS:
                        raise
                    self._port = free_port(self.host)
                    self._write_settings()
        except BaseException:
            if first_start:
                self.close()
            raise
        log.info(
            "PostgreSQL started on %s:%s in %.2fs (%s)",
            self.host, self.port, time.monotonic() - began, self.root,
        )

    def stop(self, mode: ShutdownMode = "fast") -> None:
        """Stop the server ("smart" waits for clients, "fast" disconnects them,
        "immediate" aborts and recovers on the next start). Keeps the data."""
        if self._cluster is not None:
            _stop_process(self._cluster, _SHUTDOWN_SIGNALS[mode])

    def restart(self, mode: ShutdownMode = "fast") -> None:
        """Stop, then start again on the same port with the same data directory."""
        self.stop(mode)
        self.start()

    def close(self) -> None:
        """Stop the server and delete its directory. Idempotent."""
        self._closed = True
        if self._finalizer is not None:
            self._finalizer()  # runs _discard once, then detaches

    def execute(
        self, query: Statement, dbname: str = "postgres", *, params: Params | None = None
    ) -> list[tuple[Any, ...]]:
        """Run one statement (or several, without params) as the superuser in autocommit
        mode; return its rows, or [] when it returns none."""
        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description is not None else []

    def write_file(self, name: str, content: str | bytes) -> Path:
        """Write a file (a TLS certificate, say) into the cluster's directory, readable
        only by the server's OS user; return its path."""
        if self._cluster is None:
            raise EmbeddedPostgresError("the cluster is not created yet; call start() first")
        path = self.root / name
        self._write_owned(path, content)
        return path

    # -- internals --------------------------------------------------------------------

    def _create(self) -> None:
        bindir = self._bindir or find_bindir()
        self._bindir = bindir
        base = self._base_dir or (Path("/tmp") if self._owner else None)
        root = Path(tempfile.mkdtemp(prefix="pgtenant-pg-", dir=base))
        self._cluster = _Cluster(root)
        self._finalizer = weakref.finalize(self, _discard, self._cluster)
        try:
            self._chown(root)
            os.chmod(root, 0o700)
            password_file = root / "superuser.password"
            self._write_owned(password_file, self._password + "\n")
            try:
                done = self._run_as_server(
                    bindir / "initdb",
                    "--pgdata", str(self.data_dir),
                    "--username", self.superuser,
                    "--pwfile", str(password_file),
                    "--encoding", "UTF8",
                    "--locale", "C",
                    "--auth-local", "trust",
                    "--auth-host", "scram-sha-256",
                    "--no-sync",
                )
            finally:
                password_file.unlink(missing_ok=True)
            if done.returncode != 0:
                raise EmbeddedPostgresError(
                    f"initdb failed with exit code {done.returncode}:\n{done.stdout}{done.stderr}"
                )
            hba = "".join(f"{line}\n" for line in self._hba_lines)
            hba += _PG_HBA.format(superuser=self.superuser)
            self._write_owned(self.data_dir / "pg_hba.conf", hba)
            with (self.data_dir / "postgresql.conf").open("a") as conf:
                conf.write("\n# pgtenant's embedded cluster:\ninclude 'pgtenant.conf'\n")
            self._write_owned(self.log_path, "")
            self._port = free_port(self.host)
            self._write_settings()
        except BaseException:
            self.close()
            raise

    def _write_settings(self) -> None:
        settings = {
            **self._settings,
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
        }
        lines = [f"{name} = {_quote_setting(value)}" for name, value in settings.items()]
        self._write_owned(self.data_dir / "pgtenant.conf", "\n".join(lines) + "\n")

    def _launch(self) -> None:
        """Start the postmaster and wait until the superuser can log in over TCP."""
        assert self._cluster is not None and self._bindir is not None
        log_offset = self.log_path.stat().st_size
        with self.log_path.open("ab") as log_file:
            self._cluster.process = subprocess.Popen(
                [str(self._bindir / "postgres"), "-D", str(self.data_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env=server_environment(),
                start_new_session=True,  # a terminal's Ctrl-C is for us; close() stops the server
                user=self._uid,
                group=self._gid,
                extra_groups=self._extra_groups,
            )
        process = self._cluster.process
        deadline = time.monotonic() + self._startup_timeout
        last_error: Exception | None = None
        while True:
            if process.poll() is not None:
                output = self._log_since(log_offset)
                self._cluster.process = None
                error = (
                    _PortInUseError if "could not bind" in output or "could not create any TCP/IP"
                    in output else EmbeddedPostgresError
                )
                raise error(
                    f"postgres exited with code {process.returncode} during start-up "
                    f"(port {self.port}); log:\n{_tail(output)}"
                )
            try:
                with psycopg.connect(self.superuser_dsn, connect_timeout=2, autocommit=True):
                    return
            except psycopg.OperationalError as exc:
                last_error = exc
            if time.monotonic() > deadline:
                self.stop("immediate")
                raise EmbeddedPostgresError(
                    f"PostgreSQL did not accept connections on {self.host}:{self.port} within "
                    f"{self._startup_timeout:.0f}s (last error: {last_error}); log:\n"
                    f"{_tail(self._log_since(log_offset))}"
                )
            time.sleep(0.05)

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log_file:
                log_file.seek(offset)
                return log_file.read().decode(errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"

    def _run_as_server(self, program: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(program), *args],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            cwd=self.root,  # initdb fails when it cannot read the current directory
            env=server_environment(),
            timeout=120,
            user=self._uid,
            group=self._gid,
            extra_groups=self._extra_groups,
        )

    def _write_owned(self, path: Path, content: str | bytes) -> None:
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        os.chmod(path, 0o600)
        self._chown(path)

    def _chown(self, path: Path) -> None:
        if self._owner is not None:
            os.chown(path, *self._owner)


_PG_HBA = """\
# pgtenant embedded cluster: only the superuser is trusted, and only over the Unix
# socket (its directory is 0700); everything over TCP authenticates with SCRAM.
# TYPE  DATABASE  USER         ADDRESS       METHOD
local   all       {superuser}  trust
local   all       all          scram-sha-256
host    all       all          127.0.0.1/32  scram-sha-256
host    all       all          ::1/128       scram-sha-256
"""


def _stop_process(cluster: _Cluster, sig: signal.Signals) -> None:
    """Signal the postmaster and wait for it; escalate if it does not go."""
    process, cluster.process = cluster.process, None
    if process is None:
        return
    for current, timeout in ((sig, _STOP_TIMEOUT), (signal.SIGQUIT, 10.0), (signal.SIGKILL, None)):
        if process.poll() is not None:
            return
        process.send_signal(current)
        try:
            process.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            log.warning("postgres (pid %s) ignored %s for %ss", process.pid, current.name, timeout)


def _quote_setting(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "''")
    return f"'{escaped}'"


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty)"
