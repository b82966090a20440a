"""PAUSE and RESUME from the admin console: a pause waits for running transactions (or
sessions) and holds new ones, times out naming the holder, and is undone when interrupted
or when its admin hangs up."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable

import psycopg
import pytest

from tests.integration.admin_console import admin_dsn, console, simple
from tests.proxy_harness import ThreadedProxy
from tests.support import wait_for


def test_pause_holds_a_new_transaction_and_resume_releases_it(
        admin_proxy: ThreadedProxy) -> None:
    results: list[object] = []
    with psycopg.connect(admin_proxy.dsn("acme"), autocommit=True) as tenant, \
         psycopg.connect(admin_dsn(admin_proxy), autocommit=True) as conn:
        tenant.execute("SELECT 1")
        simple(conn, "PAUSE app")
        assert simple(conn, "SHOW POOLS")[0]["paused"] == "yes"

        def run() -> None:
            results.append(tenant.execute("SELECT count(*) FROM items").fetchone())

        worker = threading.Thread(target=run)
        worker.start()
        wait_for(lambda: simple(conn, "SHOW POOLS")[0]["cl_waiting"] == "1",
                 "the client waiting in the paused pool")
        assert not results, "a transaction started while the pool was paused"
        simple(conn, "RESUME")
        worker.join(10)
        assert results  # held until RESUME, then served
        assert simple(conn, "SHOW POOLS")[0]["paused"] == "no"


def test_pause_waits_until_a_running_transaction_commits(admin_proxy: ThreadedProxy) -> None:
    app = admin_proxy.app
    assert app is not None
    with psycopg.connect(admin_proxy.dsn("acme")) as tenant, \
         concurrent.futures.ThreadPoolExecutor(2) as background:
        tenant.execute("SELECT 1")  # BEGIN: the transaction holds its server
        pausing = background.submit(console, admin_proxy, "PAUSE")
        admin_proxy.wait_until(lambda a: a.pools["app"].paused)
        time.sleep(0.3)
        assert not pausing.done(), "PAUSE returned while a transaction held its server"
        assert tenant.execute("SELECT 2").fetchone() == (2,)  # the transaction goes on
        tenant.commit()
        assert pausing.result(timeout=10) == []
        pools = console(admin_proxy, "SHOW POOLS")[0]
        # Nothing in use, and the idle connections closed: PostgreSQL may restart now.
        assert (pools["paused"], pools["sv_active"], pools["sv_idle"]) == ("yes", "0", "0")

        later = background.submit(lambda: tenant.execute("SELECT 3").fetchone())
        admin_proxy.wait_until(lambda a: a.pools["app"].paused_waiting == 1)
        assert not later.done(), "a new transaction started while the pool was paused"
        assert console(admin_proxy, "SHOW POOLS")[0]["cl_waiting"] == "1"
        console(admin_proxy, "RESUME")
        assert later.result(timeout=10) == (3,)
        tenant.commit()


def test_a_client_queued_before_pause_waits_for_resume(
        start_admin_proxy: Callable[..., ThreadedProxy]) -> None:
    proxy = start_admin_proxy(pool_mode="transaction", pool_size=1)
    with psycopg.connect(proxy.dsn("acme")) as holder, \
         psycopg.connect(proxy.dsn("globex"), autocommit=True) as queued, \
         concurrent.futures.ThreadPoolExecutor(2) as background:
        holder.execute("SELECT 1")  # the pool's only server connection
        later = background.submit(lambda: queued.execute("SELECT 7").fetchone())
        proxy.wait_until(lambda a: len(a.pools["app"].waiters) == 1)
        pausing = background.submit(console, proxy, "PAUSE")
        proxy.wait_until(lambda a: a.pools["app"].paused)
        holder.commit()  # its server comes back: not to the queued client, PAUSE completes
        assert pausing.result(timeout=10) == []
        assert not later.done(), "a client queued before PAUSE got a server while paused"
        assert console(proxy, "SHOW POOLS")[0]["cl_waiting"] == "1"
        console(proxy, "RESUME")
        assert later.result(timeout=10) == (7,)


def test_pause_times_out_names_the_holder_and_undoes_itself(
        start_admin_proxy: Callable[..., ThreadedProxy]) -> None:
    proxy = start_admin_proxy(pool_mode="transaction", pool_size=2, server_pause_timeout=0.3)
    with psycopg.connect(proxy.dsn("acme")) as stuck, \
         psycopg.connect(proxy.dsn("globex"), autocommit=True) as other:
        stuck.execute("SELECT 1")  # idle in transaction: it holds its server
        holder = next(c["id"] for c in console(proxy, "SHOW CLIENTS") if c["tenant"] == "acme")
        with pytest.raises(psycopg.errors.QueryCanceled) as info:
            console(proxy, "PAUSE app")
        assert info.value.diag.sqlstate == "57014"
        message = str(info.value)
        assert "pause_timeout" in message and f"client {holder}" in message
        assert "undone" in message and "KILL_CLIENT" in (info.value.diag.message_hint or "")
        # Undone: nothing is paused, other clients go on at once.
        assert console(proxy, "SHOW POOLS")[0]["paused"] == "no"
        assert other.execute("SELECT 4").fetchone() == (4,)
        stuck.commit()


def test_resume_from_another_console_interrupts_a_waiting_pause(
        admin_proxy: ThreadedProxy) -> None:
    with psycopg.connect(admin_proxy.dsn("acme")) as tenant, \
         concurrent.futures.ThreadPoolExecutor(1) as background:
        tenant.execute("SELECT 1")
        pausing = background.submit(console, admin_proxy, "PAUSE")
        admin_proxy.wait_until(lambda a: a.pools["app"].paused)
        console(admin_proxy, "RESUME")
        with pytest.raises(psycopg.errors.QueryCanceled, match="interrupted"):
            pausing.result(timeout=10)
        assert console(admin_proxy, "SHOW POOLS")[0]["paused"] == "no"
        tenant.commit()


def test_an_admin_who_hangs_up_during_pause_leaves_nothing_paused(
        admin_proxy: ThreadedProxy) -> None:
    with psycopg.connect(admin_proxy.dsn("acme")) as tenant:
        tenant.execute("SELECT 1")
        admin = psycopg.connect(admin_dsn(admin_proxy), autocommit=True)
        admin.pgconn.send_query(b"PAUSE")
        admin_proxy.wait_until(lambda a: a.pools["app"].paused)
        admin.close()
        admin_proxy.wait_until(lambda a: not a.pools["app"].paused)
        tenant.commit()


def test_pause_in_session_mode_waits_for_sessions_to_end(
        start_admin_proxy: Callable[..., ThreadedProxy]) -> None:
    proxy = start_admin_proxy(pool_mode="session", pool_size=2)
    with concurrent.futures.ThreadPoolExecutor(1) as background:
        session = psycopg.connect(proxy.dsn("acme"), autocommit=True)
        session.execute("SELECT 1")
        pausing = background.submit(console, proxy, "PAUSE")
        proxy.wait_until(lambda a: a.pools["app"].paused)
        assert session.execute("SELECT 2").fetchone() == (2,)  # its lease is the session
        assert not pausing.done()
        session.close()
        assert pausing.result(timeout=10) == []
        console(proxy, "RESUME")


def test_pause_of_an_unknown_database_is_3D000(admin_proxy: ThreadedProxy) -> None:
    with pytest.raises(psycopg.errors.InvalidCatalogName):
        console(admin_proxy, "PAUSE nosuchdb")

