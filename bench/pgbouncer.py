"""The PgBouncer target: its configuration, its SCRAM auth file, finding or installing it.

PgBouncer is the baseline proxy the benchmark compares pgtenant with (transaction mode,
the same pool size); everything specific to it is here, the common life cycle of a
process target in :mod:`bench.targets`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import IO

from bench.database import APP_DB, APP_USER, BenchDatabase
from bench.processes import spawn
from bench.targets import PROXY_POOL_SIZE, ConnInfo, ProcessTarget, TargetUnavailable
from proxy.devtools import EmbeddedPostgresError, server_account

log = logging.getLogger("pgtenant.bench.targets")


class PgbouncerTarget(ProcessTarget):
    """PgBouncer in transaction mode, pool 20, SCRAM for clients: the usual setup, where
    the application itself runs ``BEGIN; SELECT set_config(...); …; COMMIT``."""

    name = "pgbouncer"
    holds_idle_clients = True

    def __init__(
        self, db: BenchDatabase, workdir: Path, *, binary: str, max_client_conn: int
    ) -> None:
        super().__init__(db, workdir / "pgbouncer")
        self.binary = binary
        self.max_client_conn = max_client_conn
        self.version = pgbouncer_version(binary)
        self._owner = _server_account()
        self.workdir.mkdir(mode=0o700)
        # The auth_file holds the role's SCRAM verifier (as production setups copy it from
        # pg_authid), not the password: PgBouncer then checks clients without PBKDF2 and
        # logs into PostgreSQL with the keys the client's SCRAM exchange proved.
        self._write("userlist.txt", f'"{APP_USER}" "{_scram_verifier(db)}"\n')
        self._write("pgbouncer.ini", self.config_text())
        self.log_path.touch()
        if self._owner is not None:
            os.chown(self.workdir, *self._owner)
            for path in self.workdir.iterdir():
                os.chown(path, *self._owner)

    def _write(self, name: str, text: str) -> None:
        path = self.workdir / name
        path.write_text(text)
        path.chmod(0o600)

    def config_text(self) -> str:
        return (
            "[databases]\n"
            # No user= here: a forced user could not reuse the client's SCRAM keys.
            f"{APP_DB} = host={self.db.host} port={self.db.port} dbname={APP_DB}\n"
            "\n[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = scram-sha-256\n"
            f"auth_file = {self.workdir / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {PROXY_POOL_SIZE}\n"
            "min_pool_size = 0\n"
            "reserve_pool_size = 0\n"
            f"max_client_conn = {self.max_client_conn}\n"
            "listen_backlog = 4096\n"
            "server_tls_sslmode = disable\n"
            "client_tls_sslmode = disable\n"
            "ignore_startup_parameters = extra_float_digits\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
            "stats_period = 3600\n"
        )

    def conninfo(self, tenant: str) -> ConnInfo:
        return ConnInfo("127.0.0.1", self.port, APP_DB, APP_USER, self.db.app_password)

    def _launch(self, log_file: IO[bytes]) -> subprocess.Popen[bytes]:
        # PgBouncer refuses to run as root: as root it runs as the postgres OS user.
        return spawn(
            [self.binary, str(self.workdir / "pgbouncer.ini")],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=self.workdir, as_user=self._owner,
        )

    def describe(self) -> dict[str, object]:
        return {
            "version": self.version,
            "pool_mode": "transaction",
            "default_pool_size": PROXY_POOL_SIZE,
            "max_client_conn": self.max_client_conn,
            "auth_type": "scram-sha-256",
            "restarts": self.restarts,
        }


def _scram_verifier(db: BenchDatabase) -> str:
    rows = db.pg.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                         params=[APP_USER])
    verifier = rows[0][0] if rows else None
    if not isinstance(verifier, str) or not verifier.startswith("SCRAM-SHA-256$"):
        raise TargetUnavailable(f"pgbouncer: {APP_USER} has no SCRAM-SHA-256 verifier")
    return verifier


def _server_account() -> tuple[int, int] | None:
    """PgBouncer refuses root: run it as PostgreSQL's OS user (the same lookup)."""
    try:
        return server_account()
    except EmbeddedPostgresError as exc:
        raise TargetUnavailable(f"pgbouncer: refuses to run as root; {exc}") from None


def pgbouncer_version(binary: str) -> str:
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10,
                          check=False, stdin=subprocess.DEVNULL)
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0] if first else "unknown"


def find_pgbouncer() -> str | None:
    found = shutil.which("pgbouncer")
    if found:
        return found
    debian = Path("/usr/sbin/pgbouncer")
    return str(debian) if os.access(debian, os.X_OK) else None


def ensure_pgbouncer() -> str:
    """The pgbouncer binary; as root, installed with apt-get when missing.

    Raises TargetUnavailable("PgBouncer missing: skipped …") when it cannot be had.
    """
    found = find_pgbouncer()
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise TargetUnavailable(
            "PgBouncer missing: skipped (install it: apt-get install pgbouncer)"
        )
    log.info("PgBouncer missing: installing it with apt-get (one-time)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "pgbouncer"]
    for step in (install, ["apt-get", "update", "-q"], install):
        done = subprocess.run(step, env=env, capture_output=True, text=True, timeout=600,
                              check=False, stdin=subprocess.DEVNULL)
        if step is install and done.returncode == 0:
            break
    found = find_pgbouncer()
    if found is None:
        raise TargetUnavailable(
            f"PgBouncer missing: skipped (apt-get install failed: {done.stderr.strip()[-300:]})"
        )
    _stop_distro_service()
    return found


def _stop_distro_service() -> None:
    """The package may start its own pgbouncer service; we run our own instance only."""
    if not Path("/etc/init.d/pgbouncer").exists():
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["service", "pgbouncer", "stop"], capture_output=True, timeout=30,
                       check=False, stdin=subprocess.DEVNULL)
