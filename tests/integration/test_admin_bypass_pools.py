"""Bypass service accounts' pools in the admin console: their own rows in SHOW POOLS and
SHOW SERVERS, their own metric series, and PAUSE of a database holding them too."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from proxy.config import ServiceAccountConfig
from proxy.config.scram_verifier import make_scram_verifier
from tests.integration.admin_console import console
from tests.proxy_harness import UPSTREAM_PASSWORD_ENV, ThreadedProxy

REPORTER_PASSWORD = "reporter-scram-password-for-tests"


@pytest.fixture
def bypass_proxy(start_admin_proxy: Callable[..., ThreadedProxy], app_db: Any
                 ) -> ThreadedProxy:
    """A proxy with a bypass account whose pool logs in as the database's own role (the
    labels must still tell the two pools apart)."""
    proxy = start_admin_proxy(pool_mode="transaction", pool_size=2,
                              server_metrics_listen="127.0.0.1:0")
    app = proxy.app
    assert app is not None
    account = ServiceAccountConfig(
        name="reporter", scram_verifier=make_scram_verifier(REPORTER_PASSWORD),
        bypass_tenancy=True, upstream_user=app_db.user,
        upstream_password_env=UPSTREAM_PASSWORD_ENV)
    config = dataclasses.replace(app.config, users={"reporter": account})
    proxy.call(lambda: app.reload(config))
    return proxy


def reporter_dsn(proxy: ThreadedProxy) -> str:
    return (f"postgresql://reporter:{REPORTER_PASSWORD}@127.0.0.1:{proxy.port}/app"
            "?sslmode=disable")


def test_bypass_pools_show_in_show_pools_and_show_servers(bypass_proxy: ThreadedProxy,
                                                          app_db: Any) -> None:
    with psycopg.connect(reporter_dsn(bypass_proxy)) as reporter, \
         psycopg.connect(bypass_proxy.dsn("acme"), autocommit=True) as tenant:
        reporter.execute("SELECT 1")  # in a transaction: holds its bypass server
        tenant.execute("SELECT 1")
        pools = {p["kind"]: p for p in console(bypass_proxy, "SHOW POOLS")}
        assert set(pools) == {"tenant", "bypass"}
        assert pools["bypass"]["database"] == "app" and pools["bypass"]["user"] == app_db.user
        assert (pools["bypass"]["cl_active"], pools["bypass"]["sv_active"]) == ("1", "1")
        assert (pools["tenant"]["cl_active"], pools["tenant"]["sv_idle"]) == ("0", "1")
        servers = {s["kind"]: s for s in console(bypass_proxy, "SHOW SERVERS")}
        assert servers["bypass"]["state"] == "active" and servers["tenant"]["tenant"] == "acme"
        reporter.commit()


def test_bypass_pools_have_their_own_metric_series(bypass_proxy: ThreadedProxy,
                                                   app_db: Any) -> None:
    from tests.integration.test_metrics import scrape, value

    with psycopg.connect(reporter_dsn(bypass_proxy), autocommit=True) as reporter:
        for _ in range(3):
            reporter.execute("SELECT 1")
        samples = scrape(bypass_proxy)
    bypass = {"database": "app", "user": app_db.user, "kind": "bypass"}
    tenant = {**bypass, "kind": "tenant"}
    # The first lease is kept by the client between its transactions (nobody waits).
    assert value(samples, "pgtenant_pool_leases_total", **bypass) >= 1
    assert (value(samples, "pgtenant_pool_leases_total", **bypass)
            + value(samples, "pgtenant_pool_kept_reuses_total", **bypass)) >= 3
    assert value(samples, "pgtenant_pool_leases_total", **tenant) == 0
    assert value(samples, "pgtenant_pool_size", **bypass) == 2
    assert value(samples, "pgtenant_server_connections", **bypass, state="idle") == 1
    assert value(samples, "pgtenant_clients", **bypass, state="idle") == 1
    assert value(samples, "pgtenant_pool_paused", **bypass) == 0


def test_pause_of_a_database_holds_its_bypass_pool_too(bypass_proxy: ThreadedProxy) -> None:
    with psycopg.connect(reporter_dsn(bypass_proxy)) as reporter, \
         concurrent.futures.ThreadPoolExecutor(2) as background:
        reporter.execute("SELECT 1")
        pausing = background.submit(console, bypass_proxy, "PAUSE app")
        bypass_proxy.wait_until(lambda a: all(p.paused for p in a.service_pools.values()))
        time.sleep(0.3)
        assert not pausing.done(), "PAUSE app did not wait for the bypass pool's transaction"
        reporter.commit()
        assert pausing.result(timeout=10) == []
        paused = {p["kind"]: p["paused"] for p in console(bypass_proxy, "SHOW POOLS")}
        assert paused == {"tenant": "yes", "bypass": "yes"}
        later = background.submit(lambda: reporter.execute("SELECT 5").fetchone())
        bypass_proxy.wait_until(
            lambda a: sum(p.paused_waiting for p in a.service_pools.values()) == 1)
        console(bypass_proxy, "RESUME app")
        assert later.result(timeout=10) == (5,)
        reporter.commit()


def test_a_bypass_pool_opened_during_pause_starts_paused(bypass_proxy: ThreadedProxy) -> None:
    assert console(bypass_proxy, "PAUSE app") == []
    with concurrent.futures.ThreadPoolExecutor(1) as background:
        login = background.submit(psycopg.connect, reporter_dsn(bypass_proxy), autocommit=True)
        bypass_proxy.wait_until(
            lambda a: sum(p.paused_waiting for p in a.service_pools.values()) == 1)
        assert not login.done(), "a bypass account logged in to a paused database"
        console(bypass_proxy, "RESUME app")
        with login.result(timeout=10) as reporter:
            assert reporter.execute("SELECT 8").fetchone() == (8,)
