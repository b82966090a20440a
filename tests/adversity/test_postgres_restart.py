"""PostgreSQL restarts (fast and immediate shutdown) while clients loop queries.

A dedicated cluster, so the session's shared server is never disturbed. What must hold:
work in flight ends with a connection-class error (08xxx, or 57P01/57P02/57P03 from the
server's shutdown or startup), nothing hangs, new work succeeds once the server is back,
and after recovery no dead server connection is ever handed out.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from proxy.devtools import EmbeddedPostgres, provision_app
from tests.proxy_harness import ThreadedProxy, make_config
from tests.support import AppDatabase, wait_for

pytestmark = pytest.mark.restarts_postgres

CLIENTS = 6
RECOVERY_SECONDS = 20
CLEAN_SQLSTATES = {"57P01", "57P02", "57P03"}


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[tuple[EmbeddedPostgres, AppDatabase]]:
    with EmbeddedPostgres() as server:
        password = secrets.token_urlsafe(18)
        provision_app(server.superuser_dsn, dbname="restarts", app_user="restarts_app",
                      app_password=password, tenants=("acme", "globex"))
        db = AppDatabase(host=server.host, port=server.port, dbname="restarts",
                         user="restarts_app", password=password,
                         superuser_dsn=server.dsn("restarts"),
                         superuser_password=server.superuser_password)
        yield server, db


def _clean(exc: psycopg.Error) -> bool:
    """A connection-class error a driver can act on (retry/reconnect)."""
    state = exc.sqlstate
    if state is not None:
        return state.startswith("08") or state in CLEAN_SQLSTATES
    text = str(exc)
    if isinstance(exc, psycopg.OperationalError) and "server closed the connection" in text:
        # libpq's own words when the socket is already closed as it sends the next query
        # (the proxy's FATAL was queued behind the close): the same as with a direct
        # connection to a PostgreSQL that restarted while the client was idle.
        return True
    # libpq drops the SQLSTATE of errors during connection startup; the message remains.
    return "connection failed" in text and any(
        words in text for words in ("upstream", "shutting down", "starting up", "recovery"))


class Worker(threading.Thread):
    """Loops: connect, query its tenant a few times, repeat; records every outcome."""

    def __init__(self, proxy: ThreadedProxy, tenant: str) -> None:
        super().__init__(daemon=True)
        self.proxy, self.tenant = proxy, tenant
        self.stop = threading.Event()
        self.successes: list[float] = []   # monotonic times of successful queries
        self.errors: list[tuple[float, psycopg.Error]] = []
        self.wrong: list[Any] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with psycopg.connect(self.proxy.dsn(self.tenant), autocommit=True,
                                     connect_timeout=10) as conn:
                    for _ in range(20):
                        if self.stop.is_set():
                            return
                        row = conn.execute(
                            "SELECT current_setting('app.current_tenant'), "
                            "coalesce(bool_and(tenant_id = %s), true) FROM items",
                            (self.tenant,)).fetchone()
                        if row != (self.tenant, True):
                            self.wrong.append(row)
                        self.successes.append(time.monotonic())
            except psycopg.Error as exc:
                self.errors.append((time.monotonic(), exc))
                time.sleep(0.05)


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
@pytest.mark.parametrize("shutdown", ["fast", "immediate"])
def test_restart_under_load(own_postgres: tuple[EmbeddedPostgres, AppDatabase],
                            pool_mode: str, shutdown: str) -> None:
    server, app_db = own_postgres
    proxy = ThreadedProxy(make_config(app_db, pool_mode=pool_mode, pool_size=8,
                                      query_wait_timeout=5.0)).start()
    workers = [Worker(proxy, ("acme", "globex")[i % 2]) for i in range(CLIENTS)]
    try:
        for worker in workers:
            worker.start()
        wait_for(lambda: all(w.successes for w in workers), "traffic before the restart")
        restart_began = time.monotonic()
        server.restart(shutdown)  # type: ignore[arg-type]
        back = time.monotonic()
        # Every worker gets work done again within the recovery window.
        deadline = back + RECOVERY_SECONDS
        while time.monotonic() < deadline and not all(
                w.successes and w.successes[-1] > back for w in workers):
            time.sleep(0.1)
        recovered = time.monotonic()
        assert all(w.successes and w.successes[-1] > back for w in workers), \
            f"not every client recovered within {RECOVERY_SECONDS}s of the restart"
        # From here on, every query must succeed on its first try.
        errors_before = sum(len(w.errors) for w in workers)
        time.sleep(2.0)
        with psycopg.connect(proxy.dsn("acme"), autocommit=True) as fresh:
            for _ in range(20):
                assert fresh.execute("SELECT current_setting('app.current_tenant')"
                                     ).fetchone() == ("acme",)
        late = [exc for w in workers for t, exc in w.errors if t > recovered]
        assert not late, f"errors after recovery: {late[:3]}"
        assert sum(len(w.errors) for w in workers) == errors_before
    finally:
        for worker in workers:
            worker.stop.set()
        for worker in workers:
            worker.join(15)
        proxy.stop()
    assert not any(w.is_alive() for w in workers), "a client hung"
    assert not any(w.wrong for w in workers), [w.wrong for w in workers]
    all_errors = [exc for w in workers for _, exc in w.errors]
    unclean = [(exc.sqlstate, str(exc)) for exc in all_errors if not _clean(exc)]
    assert not unclean, f"errors outside the connection class: {unclean[:5]}"
    states = sorted({exc.sqlstate or "startup" for exc in all_errors})
    print(f"\n{shutdown}/{pool_mode}: restart {back - restart_began:.2f}s, recovered "
          f"{recovered - back:.2f}s after; {len(all_errors)} client errors {states}")
