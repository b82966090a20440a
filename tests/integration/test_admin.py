"""The admin console (database ``pgtenant``) through psql and psycopg, on a real PostgreSQL."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from proxy.auth.scram_server import ScramExchange, ScramFailed
from proxy.config import AdminConfig, AdminUserConfig, ServiceAccountConfig
from proxy.config.scram_verifier import make_scram_verifier, parse_scram_verifier
from tests.proxy_harness import (
    JWT_SECRET,
    UPSTREAM_PASSWORD_ENV,
    ThreadedProxy,
    make_config,
    startup_refusal,
    token,
)
from tests.support import wait_for

ADMIN = "admin"
ADMIN_PASSWORD = "console-password-for-tests"


def admin_config() -> AdminConfig:
    return AdminConfig(users={ADMIN: AdminUserConfig(
        name=ADMIN, scram_verifier=make_scram_verifier(ADMIN_PASSWORD))})


@pytest.fixture
def start_admin_proxy(app_db: Any) -> Iterator[Callable[..., ThreadedProxy]]:
    """Factory: a threaded proxy with an admin user; keyword arguments as make_config."""
    started: list[ThreadedProxy] = []

    def start(**overrides: Any) -> ThreadedProxy:
        config = dataclasses.replace(make_config(app_db, **overrides), admin=admin_config())
        proxy = ThreadedProxy(config).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def admin_proxy(start_admin_proxy: Callable[..., ThreadedProxy]) -> ThreadedProxy:
    return start_admin_proxy(pool_mode="transaction", pool_size=2)


def admin_dsn(proxy: ThreadedProxy, password: str = ADMIN_PASSWORD, user: str = ADMIN) -> str:
    return f"postgresql://{user}:{password}@127.0.0.1:{proxy.port}/pgtenant?sslmode=disable"


def console(proxy: ThreadedProxy, command: str) -> list[dict[str, str | None]]:
    """Run a command over the simple query protocol; rows as dicts."""
    with psycopg.connect(admin_dsn(proxy), autocommit=True) as conn:
        return simple(conn, command)


def simple(conn: psycopg.Connection[Any], command: str) -> list[dict[str, str | None]]:
    result = conn.pgconn.exec_(command.encode())
    if result.status not in (psycopg.pq.ExecStatus.TUPLES_OK,
                             psycopg.pq.ExecStatus.COMMAND_OK):
        error = psycopg.errors.error_from_result(result)
        raise error
    names = [result.fname(i).decode() for i in range(result.nfields)]  # type: ignore[union-attr]
    rows = []
    for r in range(result.ntuples):
        values = [result.get_value(r, c) for c in range(result.nfields)]
        rows.append({n: None if v is None else v.decode() for n, v in
                     zip(names, values, strict=True)})
    return rows


def psql(proxy: ThreadedProxy, command: str, password: str = ADMIN_PASSWORD
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["psql", "-X", admin_dsn(proxy, password), "-c", command],
                          capture_output=True, text=True, timeout=30, check=False)


# ---- login -----------------------------------------------------------------------------


def test_show_pools_renders_as_a_table_in_psql(admin_proxy: ThreadedProxy) -> None:
    done = psql(admin_proxy, "SHOW POOLS")
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[0]
    for column in ("database", "pool_mode", "paused", "cl_active", "sv_idle", "pool_size"):
        assert column in header
    assert " app " in done.stdout and "transaction" in done.stdout
    assert "(1 row)" in done.stdout


def test_commands_are_case_insensitive_with_optional_semicolon(
        admin_proxy: ThreadedProxy) -> None:
    done = psql(admin_proxy, "show clients;")
    assert done.returncode == 0, done.stderr
    assert "pgtenant" in done.stdout  # the admin itself, database pgtenant


def test_wrong_admin_password_is_refused_with_28P01(admin_proxy: ThreadedProxy) -> None:
    state, message = startup_refusal(admin_dsn(admin_proxy, "wrong-password"))
    assert state == "28P01"
    assert "password authentication failed" in message


def test_unknown_admin_user_gets_the_same_refusal(admin_proxy: ThreadedProxy) -> None:
    state, message = startup_refusal(admin_dsn(admin_proxy, ADMIN_PASSWORD, user="mallory"))
    assert state == "28P01"
    assert "password authentication failed for user \"mallory\"" in message


def test_a_tenant_jwt_cannot_open_the_console(admin_proxy: ThreadedProxy) -> None:
    jwt_token = token("acme")
    state, _ = startup_refusal(admin_dsn(admin_proxy, jwt_token, user="tester"))
    assert state in ("28P01", "28000")
    # Not even as the admin's user name.
    state, _ = startup_refusal(admin_dsn(admin_proxy, jwt_token, user=ADMIN))
    assert state in ("28P01", "28000")
    failures = admin_proxy.call(lambda: dict(admin_proxy.app.auth_failures))  # type: ignore[union-attr]
    assert failures.get("admin_console") == 2


def test_console_is_closed_without_admin_users(start_proxy: Callable[..., ThreadedProxy]
                                               ) -> None:
    proxy = start_proxy()
    state, _ = startup_refusal(admin_dsn(proxy))
    assert state == "28P01"


# ---- commands --------------------------------------------------------------------------


def test_every_show_command_answers_rows_over_psycopg(admin_proxy: ThreadedProxy) -> None:
    with psycopg.connect(admin_proxy.dsn("acme"), autocommit=True) as tenant:
        tenant.execute("SELECT count(*) FROM items").fetchone()
        with psycopg.connect(admin_dsn(admin_proxy), autocommit=True) as conn:
            pools = simple(conn, "SHOW POOLS")
            assert pools[0]["database"] == "app" and pools[0]["pool_size"] == "2"
            clients = simple(conn, "SHOW CLIENTS")
            assert {c["database"] for c in clients} == {"app", "pgtenant"}
            assert [c["tenant"] for c in clients if c["database"] == "app"] == ["acme"]
            assert [c["self"] for c in clients if c["database"] == "pgtenant"] == ["yes"]
            servers = simple(conn, "SHOW SERVERS")
            assert servers and servers[0]["tenant"] == "acme"
            assert int(servers[0]["backend_pid"] or 0) > 0
            tenants = {t["tenant"]: t for t in simple(conn, "SHOW TENANTS")}
            assert tenants["acme"]["clients"] == "1"
            assert int(tenants["acme"]["queries"] or 0) >= 1
            stats = simple(conn, "SHOW STATS")
            assert stats[0]["database"] == "app" and int(stats[0]["queries"] or 0) >= 1
            assert simple(conn, "SHOW HELP")[0]["command"] == "SHOW POOLS"


def test_show_config_shows_settings_but_no_secrets(admin_proxy: ThreadedProxy,
                                                   app_db: Any) -> None:
    rows = {r["key"]: r["value"] for r in console(admin_proxy, "SHOW CONFIG")}
    assert rows["databases.app.pool_size"] == "2"
    assert rows["server.shutdown_timeout"] == "30.0"
    assert rows["admin.users"] == ADMIN
    text = repr(rows)
    assert "SCRAM-SHA-256$" not in text
    assert JWT_SECRET not in text and app_db.password not in text


def test_unknown_command_is_42601_with_a_hint(admin_proxy: ThreadedProxy) -> None:
    with psycopg.connect(admin_dsn(admin_proxy), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.SyntaxError) as info:
            simple(conn, "SELECT 1")
        assert info.value.diag.sqlstate == "42601"
        assert "SHOW POOLS" in (info.value.diag.message_hint or "")
        assert simple(conn, "SHOW HELP")  # still usable


def test_extended_protocol_is_refused_clearly(admin_proxy: ThreadedProxy) -> None:
    with psycopg.connect(admin_dsn(admin_proxy), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported) as info:
            conn.execute("SHOW POOLS", prepare=True)  # Parse/Bind/Execute/Sync
        assert "simple query protocol" in str(info.value)
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("SELECT %s", [1])  # parameters: the extended protocol too
        # psycopg sends a query without parameters as a simple Query: that works.
        assert conn.execute("SHOW POOLS").fetchone()[0] == "app"  # type: ignore[index]
        assert simple(conn, "SHOW POOLS")[0]["database"] == "app"


def test_kill_client_ends_that_client_with_57P01(admin_proxy: ThreadedProxy) -> None:
    with psycopg.connect(admin_proxy.dsn("acme"), autocommit=True) as victim, \
         psycopg.connect(admin_proxy.dsn("globex"), autocommit=True) as bystander, \
         psycopg.connect(admin_dsn(admin_proxy), autocommit=True) as conn:
        victim.execute("SELECT 1")
        clients = simple(conn, "SHOW CLIENTS")
        victim_id = next(c["id"] for c in clients if c["tenant"] == "acme")
        simple(conn, f"KILL_CLIENT {victim_id}")
        with pytest.raises(psycopg.OperationalError) as info:
            victim.execute("SELECT 1")
        assert "terminating connection due to administrator command" in str(info.value)
        assert bystander.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.errors.UndefinedObject):
            simple(conn, f"KILL_CLIENT {victim_id}")


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


def test_reload_without_a_config_file_is_refused_and_counted(
        admin_proxy: ThreadedProxy) -> None:
    # The threaded proxy's config was built in memory ("<test>"): there is no file to read.
    with pytest.raises(psycopg.Error) as info:
        console(admin_proxy, "RELOAD")
    assert info.value.diag.sqlstate == "F0000"
    app = admin_proxy.app
    assert app is not None
    assert admin_proxy.call(lambda: app.stats.config_reload_failures) == 1
    assert console(admin_proxy, "SHOW POOLS")[0]["pool_size"] == "2"


def test_reload_applies_pool_size_and_new_databases(admin_proxy: ThreadedProxy,
                                                    app_db: Any) -> None:
    app = admin_proxy.app
    assert app is not None
    old = app.config
    new_app = dataclasses.replace(old.databases["app"], pool_size=3)
    second = dataclasses.replace(new_app, name="app2")
    admin_proxy.call(lambda: app.reload(dataclasses.replace(
        old, databases={"app": new_app, "app2": second})))
    pools = {p["database"]: p for p in console(admin_proxy, "SHOW POOLS")}
    assert pools["app"]["pool_size"] == "3" and "app2" in pools
    with psycopg.connect(admin_proxy.dsn("acme", dbname="app2"), autocommit=True) as conn:
        assert conn.execute("SELECT current_setting('app.current_tenant')").fetchone() == (
            "acme",)
    assert admin_proxy.call(lambda: app.stats.config_reloads) == 1


# ---- SCRAM server, against scramp's client -------------------------------------------


def test_scram_exchange_accepts_the_right_password_only() -> None:
    import scramp

    secret = parse_scram_verifier(make_scram_verifier("pw-1"))
    for password, ok in (("pw-1", True), ("pw-2", False)):
        client = scramp.ScramClient(["SCRAM-SHA-256"], "ignored", password)
        exchange = ScramExchange(secret)
        client.set_server_first(exchange.client_first(client.get_client_first()))
        if ok:
            client.set_server_final(exchange.client_final(client.get_client_final()))
        else:
            with pytest.raises(ScramFailed):
                exchange.client_final(client.get_client_final())


@pytest.mark.parametrize("first", ["p=tls-server-end-point,,n=,r=abc", "n,a=x,n=,r=abc",
                                   "n,,n=,r=abc,m=ext", "n,,r=abc", "garbage"])
def test_scram_exchange_refuses_unsupported_client_first(first: str) -> None:
    exchange = ScramExchange(parse_scram_verifier(make_scram_verifier("pw")))
    with pytest.raises(ScramFailed):
        exchange.client_first(first)


def test_console_works_over_tls(start_admin_proxy: Callable[..., ThreadedProxy],
                                tmp_path: Any) -> None:
    from tests.support import self_signed_cert

    cert, key = self_signed_cert(tmp_path)
    proxy = start_admin_proxy(server_tls_cert_file=cert, server_tls_key_file=key)
    dsn = admin_dsn(proxy).replace("sslmode=disable", "sslmode=require")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        clients = simple(conn, "SHOW CLIENTS")
        assert [c["tls"] for c in clients if c["self"] == "yes"] == ["yes"]


# ---- bypass service accounts' pools ----------------------------------------------------

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
