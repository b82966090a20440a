"""Helpers the tests share: plain functions and classes (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, urlencode

import psycopg
from psycopg.conninfo import conninfo_to_dict

from proxy.devtools import DEFAULT_TENANTS, ShutdownMode, free_port

T = TypeVar("T")

__all__ = [
    "AppDatabase",
    "ExternalPostgres",
    "PostgresServer",
    "call_in_loop",
    "free_port",
    "libpq_uri",
    "rss_kib",
    "run",
    "self_signed_cert",
    "wait_for",
    "wait_for_port",
    "wait_for_query",
]


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Return once something accepts TCP connections on host:port; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing accepted connections on {host}:{port} "
                                   f"within {timeout}s ({exc})") from exc
        time.sleep(0.02)


def wait_for(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Return once ``condition()`` is true (polled); AssertionError naming ``what`` after
    ``timeout`` seconds. For tests that must not assume something happened in time."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g}s"
        time.sleep(0.01)


def wait_for_query(superuser_dsn: str, sql: str, timeout: float = 10.0) -> None:
    """Return once a backend runs ``sql`` (pg_stat_activity, as a superuser): the statement
    reached PostgreSQL and is executing. AssertionError after ``timeout`` seconds."""
    with psycopg.connect(superuser_dsn, autocommit=True) as su:
        wait_for(lambda: su.execute("SELECT count(*) FROM pg_stat_activity WHERE query = %s "
                                    "AND state = 'active'", (sql,)).fetchone() != (0,),
                 f"{sql!r} running on the server", timeout)


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident set size of a process in KiB (``VmHWM`` for its peak), from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(f"process {pid} reports no {field} (a zombie?)")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(
    cmd: Sequence[str], *, timeout: float = 60.0, check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run a command with a timeout and text output captured; no stdin unless ``input=``.

    With ``check`` (the default), a non-zero exit raises AssertionError showing the
    command and both outputs, which is what a failing test should print.
    """
    if "input" not in kwargs:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    done = subprocess.run(list(cmd), text=True, timeout=timeout, check=False, **kwargs)
    if check and done.returncode != 0:
        raise AssertionError(
            f"`{shlex.join(cmd)}` exited with {done.returncode}\n"
            f"--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"
        )
    return done


def libpq_uri(params: Mapping[str, str | int]) -> str:
    """A ``postgresql://`` URI from libpq connection parameters (psycopg and asyncpg read it).

    A Unix-socket directory as host goes into the query string, where both drivers accept it.
    """
    rest = {name: str(value) for name, value in params.items()}
    user, password = rest.pop("user", ""), rest.pop("password", None)
    host, port, dbname = rest.pop("host", ""), rest.pop("port", ""), rest.pop("dbname", "")
    userinfo = quote(user, safe="")
    if password is not None:
        userinfo += ":" + quote(password, safe="")
    if host.startswith("/"):
        rest["host"], host = host, ""
    elif ":" in host:
        host = f"[{host}]"  # IPv6 literal
    netloc = f"{userinfo}@{host}" + (f":{port}" if port else "")
    query = f"?{urlencode(rest)}" if rest else ""
    return f"postgresql://{netloc}/{quote(dbname, safe='')}{query}"


class PostgresServer(Protocol):
    """What the ``postgres`` fixture yields: EmbeddedPostgres or ExternalPostgres."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def superuser(self) -> str: ...
    @property
    def superuser_password(self) -> str | None: ...
    @property
    def superuser_dsn(self) -> str: ...
    def dsn(
        self, dbname: str = "postgres", user: str | None = None, password: str | None = None
    ) -> str: ...
    def restart(self, mode: ShutdownMode = "fast") -> None: ...


class ExternalPostgres:
    """A server the suite does not own, named by a superuser DSN (``PGTENANT_TEST_DSN``).

    Connects once on construction, so an unreachable server or a non-superuser DSN is
    reported at once, with the reason.
    """

    def __init__(self, superuser_dsn: str) -> None:
        params = {name: str(value) for name, value in conninfo_to_dict(superuser_dsn).items()}
        with psycopg.connect(superuser_dsn, connect_timeout=10) as conn:
            is_superuser = conn.execute(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
            if is_superuser != (True,):
                raise ValueError(f"PGTENANT_TEST_DSN must name a superuser; {conn.info.user} "
                                 "is not one (the suite creates databases and roles)")
            # Resolve what the DSN left to defaults (PGHOST, socket directory, ...).
            params.update(host=conn.info.host, port=str(conn.info.port), user=conn.info.user)
        self._params = params

    @property
    def host(self) -> str:
        return self._params["host"]

    @property
    def port(self) -> int:
        return int(self._params["port"])

    @property
    def superuser(self) -> str:
        return self._params["user"]

    @property
    def superuser_password(self) -> str | None:
        return self._params.get("password")  # None: the DSN relies on .pgpass, trust, ...

    @property
    def superuser_dsn(self) -> str:
        return self.dsn()

    def dsn(
        self, dbname: str = "postgres", user: str | None = None, password: str | None = None
    ) -> str:
        params = {**self._params, "dbname": dbname}
        if user is not None and user != params["user"]:
            params["user"] = user
            params.pop("password", None)
        if password is not None:
            params["password"] = password
        return libpq_uri(params)

    def restart(self, mode: ShutdownMode = "fast") -> None:
        raise RuntimeError(
            "cannot restart the server named by PGTENANT_TEST_DSN: the suite does not own it "
            "(mark the test with @pytest.mark.restarts_postgres so it is skipped there)"
        )


@dataclass(frozen=True, slots=True)
class AppDatabase:
    """The demo application database the ``app_db`` fixture provisions (see provision_app)."""

    host: str
    port: int
    dbname: str
    user: str                  # the upstream role: LOGIN, not superuser, not BYPASSRLS
    password: str
    superuser_dsn: str         # the superuser, connected to *this* database
    tenants: tuple[str, ...] = DEFAULT_TENANTS
    superuser: str = "postgres"
    superuser_password: str | None = None  # for configs that name the superuser upstream

    @property
    def upstream_dsn(self) -> str:
        """The app user's URI straight to PostgreSQL, bypassing any proxy."""
        return libpq_uri({"host": self.host, "port": self.port, "dbname": self.dbname,
                          "user": self.user, "password": self.password})


def self_signed_cert(directory: Path, name: str = "localhost") -> tuple[str, str]:
    """A self-signed certificate for ``name`` (and 127.0.0.1): ``(cert_path, key_path)``.

    It is its own CA, so the cert file also serves as ``sslrootcert``.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def call_in_loop(loop: Any, fn: Callable[[], T], timeout: float = 10) -> T:
    """Run ``fn`` on another thread's event loop and return its result (or raise)."""
    import concurrent.futures

    fut: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        try:
            fut.set_result(fn())
        except BaseException as exc:
            fut.set_exception(exc)

    loop.call_soon_threadsafe(run)
    return fut.result(timeout=timeout)


def require_tool(name: str, package: str) -> str:
    """The path of the program ``name``, or a failure naming the package to install.

    Only CI gets here with it missing: elsewhere tests/conftest.py has skipped the tests
    marked ``requires_programs`` at collection, with one line saying what to install."""
    import shutil

    import pytest

    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (Debian package: {package}; .ci/run installs "
                    "it)", pytrace=False)
    return path


class RecordingTransport:
    """A transport that only records what is written (a server connection without a
    socket, in unit tests)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True
