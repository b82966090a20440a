"""Transaction mode: a client keeps its clean server between transactions while nobody
else needs one (no lease per transaction), and a kept server behaves exactly like an idle
pooled one: taken back the moment another client needs it, checked after
server_check_delay, closed after server_idle_timeout, taken back by PAUSE, forgotten
without a word to its client when it dies, untouched by a cancel between transactions."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.proxy_harness import ThreadedProxy
from tests.support import wait_for

pytestmark = pytest.mark.usefixtures("clean_items")


@pytest.fixture
def proxy_with(start_proxy: Callable[..., ThreadedProxy]) -> Callable[..., ThreadedProxy]:
    """Factory: a transaction-mode proxy; keyword arguments set database keys."""
    return lambda **db: start_proxy(pool_mode="transaction", database=db)


def _pool(proxy: ThreadedProxy) -> Any:
    assert proxy.app is not None
    return proxy.app.pools["app"]


def _who(conn: psycopg.Connection[Any]) -> tuple[int, str]:
    row = conn.execute("SELECT pg_backend_pid(), current_setting('app.current_tenant')"
                       ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def test_a_lone_client_keeps_its_server_and_leases_once(
        proxy_with: Callable[..., ThreadedProxy]) -> None:
    proxy = proxy_with(pool_size=4)
    pool = _pool(proxy)
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
        first = _who(conn)
        leases = proxy.call(lambda: pool.stats.leases)
        for _ in range(50):
            assert _who(conn) == first
        with conn.transaction():
            conn.execute("INSERT INTO items (name) VALUES ('kept')")
        assert proxy.call(lambda: pool.stats.leases) == leases
        assert proxy.call(lambda: pool.stats.kept_reuses) >= 51
        # Between transactions the client counts as idle and the server as idle.
        assert proxy.call(lambda: (len(pool.kept), len(pool.active), pool.idle_count)
                          ) == (1, 0, 1)


def test_another_client_takes_the_kept_server_with_a_scrub(
        proxy_with: Callable[..., ThreadedProxy]) -> None:
    # One server: each client's next transaction takes it back from the other one, a
    # tenant switch each time; every statement still runs as its own tenant, never waits
    # for query_wait_timeout.
    proxy = proxy_with(pool_size=1, query_wait_timeout=5.0)
    pool = _pool(proxy)
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as acme, \
         psycopg.connect(proxy.dsn("globex"), autocommit=True) as globex:
        acme.execute("CREATE TEMP TABLE IF NOT EXISTS pg_temp.left_behind (x int) "
                     "ON COMMIT DROP")
        for i in range(10):
            for conn, tenant in ((acme, "acme"), (globex, "globex")):
                backend, seen = _who(conn)
                assert seen == tenant
                assert conn.execute("SELECT count(*) FROM items WHERE tenant_id <> %s",
                                    (tenant,)).fetchone() == (0,)
                if i == 0 and tenant == "acme":
                    only = backend
                assert backend == only
    stats = proxy.call(lambda: (pool.stats.kept_reclaimed, pool.stats.leases, pool.size))
    assert stats[0] >= 19 and stats[2] == 1


def test_clients_waiting_get_kept_servers_at_once(
        proxy_with: Callable[..., ThreadedProxy]) -> None:
    # 2 servers, each kept by an idle client; 6 busy clients must be served by them, not
    # wait for query_wait_timeout while the idle clients hold them.
    proxy = proxy_with(pool_size=2, min_pool_size=2, query_wait_timeout=3.0)
    pool = _pool(proxy)
    proxy.wait_until(lambda app: len(pool.idle) == 2)
    idle = [psycopg.connect(proxy.dsn(t), autocommit=True) for t in ("acme", "globex")]
    try:
        for conn in idle:
            conn.execute("SELECT 1")
        assert proxy.call(lambda: len(pool.kept)) == 2

        def busy(tenant: str) -> int:
            with psycopg.connect(proxy.dsn(tenant), autocommit=True) as conn:
                for _ in range(20):
                    assert _who(conn)[1] == tenant
            return 20

        with concurrent.futures.ThreadPoolExecutor(6) as pool_threads:
            done = sum(pool_threads.map(busy, ["acme", "globex", "initech"] * 2))
        assert done == 120
        for conn, tenant in zip(idle, ("acme", "globex"), strict=True):
            assert _who(conn)[1] == tenant  # and the idle clients are served again
        assert proxy.call(lambda: (pool.size, pool.stats.acquire_timeouts)) == (2, 0)
    finally:
        for conn in idle:
            conn.close()


def test_a_kept_server_that_dies_is_replaced_silently(
        proxy_with: Callable[..., ThreadedProxy],
        superuser_conn: psycopg.Connection[Any]) -> None:
    proxy = proxy_with(pool_size=2)
    pool = _pool(proxy)
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
        dead, _ = _who(conn)
        superuser_conn.execute("SELECT pg_terminate_backend(%s)", (dead,))
        proxy.wait_until(lambda app: not pool.kept)
        backend, tenant = _who(conn)  # no error: as if the server had been idle
        assert tenant == "acme" and backend != dead


def test_a_kept_server_unused_for_server_check_delay_is_checked_first(
        proxy_with: Callable[..., ThreadedProxy]) -> None:
    proxy = proxy_with(pool_size=1, server_check_delay=0.3)
    pool = _pool(proxy)
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
        first = _who(conn)
        leases = proxy.call(lambda: pool.stats.leases)
        time.sleep(0.5)
        assert _who(conn) == first
        assert proxy.call(lambda: pool.stats.servers_failed_check) == 0
        # It went back to the pool, was checked (an empty query), leased again.
        assert proxy.call(lambda: pool.stats.leases) == leases + 1


def test_server_check_delay_zero_keeps_nothing(
        proxy_with: Callable[..., ThreadedProxy]) -> None:
    proxy = proxy_with(pool_size=1, server_check_delay=0.0)
    pool = _pool(proxy)
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
        for _ in range(3):
            _who(conn)
        assert proxy.call(lambda: (len(pool.kept), pool.stats.kept_reuses)) == (0, 0)


def test_a_kept_server_past_server_idle_timeout_is_closed(
        proxy_with: Callable[..., ThreadedProxy]) -> None:
    proxy = proxy_with(pool_size=2, server_idle_timeout=0.5)
    pool = _pool(proxy)
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
        first, _ = _who(conn)
        # Maintenance runs every second: the kept server goes back, then is closed.
        proxy.wait_until(lambda app: pool.size == 0, timeout=5)
        backend, tenant = _who(conn)
        assert tenant == "acme" and backend != first


def test_pause_takes_kept_servers_back(proxy_with: Callable[..., ThreadedProxy]) -> None:
    proxy = proxy_with(pool_size=2)
    pool = _pool(proxy)
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
        _who(conn)
        assert proxy.call(lambda: len(pool.kept)) == 1
        proxy.call(pool.pause)
        # Nothing in use: a console PAUSE would complete at once.
        assert proxy.call(lambda: (len(pool.kept), pool.in_use, len(pool.idle))) == (0, 0, 1)
        with concurrent.futures.ThreadPoolExecutor(1) as background:
            pending = background.submit(_who, conn)
            proxy.wait_until(lambda app: pool.paused_waiting == 1)
            assert not pending.done()
            proxy.call(pool.resume)
            assert pending.result(10)[1] == "acme"


def test_a_cancel_between_transactions_touches_nothing(
        proxy_with: Callable[..., ThreadedProxy]) -> None:
    proxy = proxy_with(pool_size=1)
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
        first = _who(conn)
        conn.cancel_safe()  # the blocking cancel would hold the GIL from the proxy thread
        wait_for(lambda: proxy.call(lambda: not _pool(proxy).active),
                 "no server held for the cancel")
        assert _who(conn) == first
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_client_that_ran_set_does_not_keep_its_server(
        proxy_with: Callable[..., ThreadedProxy]) -> None:
    # Its server is reset (RESET ALL) on release, as before: the setting never outlives
    # the transaction in a way that depends on whether the server happened to be kept.
    proxy = proxy_with(pool_size=1)
    pool = _pool(proxy)
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
        conn.execute("SET work_mem = '7MB'")
        assert proxy.call(lambda: len(pool.kept)) == 0
        assert conn.execute("SHOW work_mem").fetchone() != ("7MB",)
