"""Run a pgtenant proxy for tests: in a thread of the test process, or as a subprocess."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from proxy.app import ProxyApp
from proxy.auth.jwt import mint_token
from proxy.config import AuthConfig, Config, DatabaseConfig, JwtConfig, ServerConfig

T = TypeVar("T")

JWT_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
JWT_SECRET_ENV = "PGTENANT_TEST_JWT_SECRET"
UPSTREAM_PASSWORD_ENV = "PGTENANT_TEST_UPSTREAM_PASSWORD"


def token(tenant: str, **kw: Any) -> str:
    """A valid test JWT for ``tenant``."""
    return mint_token(JWT_SECRET, tenant, **kw)


def startup_refusal(dsn: str) -> tuple[str, str]:
    """Connect with asyncpg, expect a refusal; return its ``(sqlstate, message)``.

    libpq (and so psycopg) drops the SQLSTATE of an error received during startup;
    asyncpg keeps it.
    """
    import asyncpg

    async def attempt() -> tuple[str, str]:
        try:
            conn = await asyncpg.connect(dsn, timeout=10, ssl=False)
        except asyncpg.PostgresError as exc:
            return str(exc.sqlstate), str(exc)
        await conn.close()
        raise AssertionError("the connection was accepted")

    return asyncio.run(attempt())


def make_config(app_db: Any, **db_overrides: Any) -> Config:
    """A config in front of the test database; ``server_*`` keys override [server]."""
    os.environ[JWT_SECRET_ENV] = JWT_SECRET
    os.environ[UPSTREAM_PASSWORD_ENV] = app_db.password
    server_kw = {k[len("server_"):]: db_overrides.pop(k) for k in list(db_overrides)
                 if k.startswith("server_")}
    db_kw: dict[str, Any] = {"host": app_db.host, "port": app_db.port, "dbname": app_db.dbname,
                             "user": app_db.user, "password_env": UPSTREAM_PASSWORD_ENV,
                             "sslmode": "disable", "pool_size": 4,
                             "query_wait_timeout": 10.0}
    db_kw.update(db_overrides)
    return Config(
        path="<test>",
        server=ServerConfig(**{"listen": "127.0.0.1:0", **server_kw}),
        auth=AuthConfig(jwt=JwtConfig(secret_env=JWT_SECRET_ENV)),
        databases={"app": DatabaseConfig(name="app", **db_kw)},
    )


def with_database_keys(config: Config, **keys: Any) -> Config:
    """``config`` with keys of its ``app`` entry replaced: the ``server_*`` database keys
    (server_check_delay, server_idle_timeout, ...) that make_config reads as [server]."""
    app = dataclasses.replace(config.databases["app"], **keys)
    return dataclasses.replace(config, databases={"app": app})


class ThreadedProxy:
    """The proxy on its own event loop (uvloop) in a daemon thread."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop: asyncio.AbstractEventLoop | None = None
        self.app: ProxyApp | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._main, name="pgtenant-proxy", daemon=True)
        self._started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._stop: asyncio.Event | None = None

    def start(self) -> ThreadedProxy:
        self._thread.start()
        self._started.result(timeout=30)
        return self

    def _main(self) -> None:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(self._serve())

    async def _serve(self) -> None:
        try:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.app = ProxyApp(self.config)
            await self.app.start()
            self.port = self.app.sockets[0][1]
        except BaseException as exc:
            self._started.set_exception(exc)
            return
        self._started.set_result(None)
        await self._stop.wait()
        await self.app.stop()

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the proxy's loop (to inspect pools safely) and return its result."""
        from tests.support import call_in_loop

        assert self.loop is not None
        return call_in_loop(self.loop, fn)

    def wait_until(self, predicate: Callable[[ProxyApp], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.call(lambda: predicate(self.app)):  # type: ignore[arg-type]
                return
            time.sleep(0.02)
        raise AssertionError("condition not reached in time")

    def dsn(self, tenant_or_token: str, *, raw_token: bool = False, user: str = "tester",
            dbname: str = "app", **params: str) -> str:
        tok = tenant_or_token if raw_token else token(tenant_or_token)
        extra = "".join(f"&{k}={v}" for k, v in params.items())
        return f"postgresql://{user}:{tok}@127.0.0.1:{self.port}/{dbname}?sslmode=disable{extra}"

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=15)


def write_config_file(path: Path, config: Config) -> Path:
    """Write ``config`` as TOML (only what tests set) for ``pgtenant serve`` subprocesses."""
    lines = ["[server]"]
    for f in dataclasses.fields(config.server):
        value = getattr(config.server, f.name)
        if value != f.default:
            lines.append(f"{f.name} = {_toml(value)}")
    lines.append("[auth.jwt]")
    lines.append(f"secret_env = {_toml(config.auth.jwt.secret_env)}")
    for name, db in config.databases.items():
        lines.append(f"[databases.{name}]")
        for f in dataclasses.fields(db):
            value = getattr(db, f.name)
            if f.name != "name" and value != f.default:
                lines.append(f"{f.name} = {_toml(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def launch_serve(config_path: Path, log_path: Path, port: int) -> subprocess.Popen[bytes]:
    """Start ``pgtenant serve --config config_path`` (log to ``log_path``) and return once
    ``port`` accepts connections; on failure stop it and fail with its log."""
    from tests.support import wait_for_port

    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config_path)],
            stdout=log_file, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        wait_for_port("127.0.0.1", port, timeout=20)
    except Exception:
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"pgtenant did not start:\n{log_path.read_text()}") from None
    return proc


@contextlib.contextmanager
def subprocess_proxy(config: Config,
                     workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``pgtenant serve`` as a child process on a free port; yields ``(process, port)``.

    Its log goes to ``workdir/pgtenant.log`` (a pipe nobody reads could fill and stall it).
    """
    from tests.support import free_port

    port = free_port()
    config = dataclasses.replace(
        config, server=dataclasses.replace(config.server, listen=f"127.0.0.1:{port}"))
    config_path = write_config_file(workdir / "pgtenant.toml", config)
    proc = launch_serve(config_path, workdir / "pgtenant.log", port)
    try:
        yield proc, port
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes], children: Sequence[int] = ()) -> None:
    """SIGTERM ``proc`` (if it still runs), SIGKILL it after 15 s; then SIGKILL the
    ``children`` it may have left behind (a supervisor's workers)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
