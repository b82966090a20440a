"""Network faults between pgtenant and PostgreSQL, injected by a relay (faultproxy.py).

What the proxy promises, and what these tests hold it to:

- a cut or half-closed server connection ends the client that was using it with a
  FATAL 08006 naming the problem ("server connection lost"), at once;
- a server that does not answer a new connection is given up after
  ``server_connect_timeout`` (the client gets 08006 naming that setting);
- idle server connections that died in the pool are never handed out: after any fault
  clears, the next query succeeds on its first try;
- clients of an unaffected upstream keep working throughout.

A *stalled* in-flight query (the network black-holes bytes, sockets stay open) is
detected only with ``query_timeout`` (off by default; see test_dead_servers.py), since
PostgreSQL's ``statement_timeout`` cannot reach the client through a stalled path. Without
it the client's own timeout is the remedy; the test checks that a client giving up
(timeout, then close) releases everything and that the pool heals once the network does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from proxy.config import Config
from tests.adversity.faultproxy import FaultRelay
from tests.proxy_harness import ThreadedProxy, make_config, startup_refusal, token
from tests.support import wait_for_query

# DatabaseConfig fields; server_connect_timeout is set after make_config, which would
# take its "server_" prefix for a [server] key.
FAST_TIMEOUTS = {"server_connect_timeout": 2.0, "query_wait_timeout": 3.0}


@pytest.fixture
def relay(app_db: Any) -> Iterator[FaultRelay]:
    with FaultRelay(app_db.host, app_db.port) as r:
        yield r


@pytest.fixture
def relayed_proxy(app_db: Any, relay: FaultRelay,
                  run_proxy: Callable[[Config], ThreadedProxy]) -> Callable[..., ThreadedProxy]:
    """Factory: a proxy whose database ``app`` goes through the relay and ``direct`` does not."""

    def start(**overrides: Any) -> ThreadedProxy:
        db_fields = {**FAST_TIMEOUTS, **overrides}
        connect_timeout = db_fields.pop("server_connect_timeout")
        config = make_config(app_db, host=relay.host, port=relay.port, **db_fields)
        app = dataclasses.replace(config.databases["app"],
                                  server_connect_timeout=connect_timeout)
        direct = dataclasses.replace(app, name="direct", host=app_db.host, port=app_db.port)
        return run_proxy(Config(path=config.path, server=config.server, auth=config.auth,
                                databases={"app": app, "direct": direct}))

    return start


def _tenant_of(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_setting('app.current_tenant')").fetchone()
    assert row is not None
    return str(row[0])


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``fn`` in a thread; the dict gets ``result`` or ``error`` and ``elapsed``."""
    out: dict[str, Any] = {}

    def run() -> None:
        began = time.monotonic()
        try:
            out["result"] = fn()
        except Exception as exc:
            out["error"] = exc
        out["elapsed"] = time.monotonic() - began

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _sleeping_query(proxy: ThreadedProxy, seconds: float = 30
                    ) -> tuple[Callable[[], Any], str]:
    """A client's sleeping query, and its text as pg_stat_activity shows it: unique, so
    that ``wait_for_query`` cannot match the backend of an earlier test still sleeping
    (PostgreSQL notices a cut client only when the sleep ends; matching that one made
    the cut land while this client was still logging in)."""
    sql = f"SELECT pg_sleep({seconds}) /* {uuid.uuid4().hex} */"

    def query() -> Any:
        with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
            return conn.execute(sql).fetchone()
    return query, sql


def _assert_lost(out: dict[str, Any], *, within: float) -> None:
    error = out.get("error")
    assert isinstance(error, psycopg.OperationalError), out
    assert error.sqlstate == "08006", (error.sqlstate, str(error))
    assert "server connection lost" in str(error)
    assert out["elapsed"] < within, out


def _assert_healed(proxy: ThreadedProxy, clients: int = 6) -> None:
    """Fresh clients, and more queries than the pool has connections: all first-try."""
    conns = [psycopg.connect(proxy.dsn(("acme", "globex")[i % 2]), autocommit=True)
             for i in range(clients)]
    try:
        for _round in range(3):
            for i, conn in enumerate(conns):
                assert _tenant_of(conn) == ("acme", "globex")[i % 2]
    finally:
        for conn in conns:
            conn.close()


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_cut_connections_give_08006_and_the_pool_heals(
        relayed_proxy: Callable[..., ThreadedProxy], relay: FaultRelay, pool_mode: str,
        app_db: Any) -> None:
    proxy = relayed_proxy(pool_mode=pool_mode, pool_size=4)
    with psycopg.connect(proxy.dsn("globex"), autocommit=True) as idle, \
            psycopg.connect(proxy.dsn("globex", dbname="direct"), autocommit=True) as direct:
        assert _tenant_of(idle) == "globex"
        query, sql = _sleeping_query(proxy)
        thread, out = _in_thread(query)
        wait_for_query(app_db.superuser_dsn, sql)
        began = time.monotonic()
        assert relay.cut() >= 1
        thread.join(10)
        _assert_lost(out, within=5)
        assert time.monotonic() - began < 3
        # The other upstream never noticed.
        assert _tenant_of(direct) == "globex"
        if pool_mode == "transaction":
            # Its server connection died idle in the pool: a fresh one serves the next query.
            assert _tenant_of(idle) == "globex"
        else:
            # The session's own server died: that client is affected, with a clear error.
            with pytest.raises(psycopg.OperationalError) as info:
                _tenant_of(idle)
            assert info.value.sqlstate == "08006"
    _assert_healed(proxy, clients=4)


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_a_cut_during_login_gives_08006_or_a_working_session(
        relayed_proxy: Callable[..., ThreadedProxy], relay: FaultRelay, pool_mode: str) -> None:
    # The cut lands at different points of the login (connecting, authenticating, the
    # context set, the greeting): the client is told 08006 in a FATAL (asyncpg shows the
    # SQLSTATE libpq drops during startup) or gets in; never a bare close or a hang.
    proxy = relayed_proxy(pool_mode=pool_mode, pool_size=4)
    for delay in (0.0, 0.002, 0.005, 0.01, 0.02):
        thread, out = _in_thread(lambda: startup_refusal(proxy.dsn("acme")))
        time.sleep(delay)
        relay.cut()
        thread.join(10)
        assert not thread.is_alive() and out["elapsed"] < 5, out
        error = out.get("error")
        if error is not None:  # startup_refusal: "the connection was accepted"
            assert isinstance(error, AssertionError) and "accepted" in str(error), out
        else:
            sqlstate, message = out["result"]
            assert sqlstate == "08006", out
            assert "upstream" in message, out
    _assert_healed(proxy, clients=4)


@pytest.mark.parametrize("toward", ["proxy", "postgres"])
def test_half_closed_server_connection_ends_the_query_with_08006(
        relayed_proxy: Callable[..., ThreadedProxy], relay: FaultRelay, toward: str,
        app_db: Any) -> None:
    proxy = relayed_proxy(pool_mode="transaction", pool_size=2)
    with psycopg.connect(proxy.dsn("globex"), autocommit=True) as bystander:
        assert _tenant_of(bystander) == "globex"
        query, sql = _sleeping_query(proxy, seconds=2)
        thread, out = _in_thread(query)
        wait_for_query(app_db.superuser_dsn, sql)
        began = time.monotonic()
        links = relay.half_close(toward)  # type: ignore[arg-type]
        thread.join(10)
        assert not thread.is_alive()
        if toward == "proxy":
            # The proxy reads EOF from its server at once: the query ends with 08006.
            _assert_lost(out, within=5)
        else:
            # PostgreSQL reads EOF only after pg_sleep(2): the reply still reaches the
            # client (or the loss does, as 08006); the backend then exits.
            assert out.get("result") == ("",) or out["error"].sqlstate == "08006", out
            # That server connection went back to the pool with its backend about to exit
            # on the EOF: wait until the proxy has seen every half-closed one go. (Handing
            # it out in that instant is a race no pooler can close without a check query.)
            pool = proxy.app.pools["app"]  # type: ignore[union-attr]
            proxy.wait_until(lambda app: pool.stats.servers_closed >= links)
        assert time.monotonic() - began < 4
        assert _tenant_of(bystander) == "globex"
    _assert_healed(proxy)


def test_stalled_upstream_refuses_new_work_within_server_connect_timeout(
        relayed_proxy: Callable[..., ThreadedProxy], relay: FaultRelay) -> None:
    proxy = relayed_proxy(pool_mode="transaction", pool_size=2)
    relay.stall()
    try:
        with psycopg.connect(proxy.dsn("acme", dbname="direct"), autocommit=True) as direct:
            # The first client of a pool waits for a server connection while logging in.
            began = time.monotonic()
            sqlstate, message = startup_refusal(proxy.dsn("acme"))
            elapsed = time.monotonic() - began
            assert sqlstate == "08006", message
            assert "server_connect_timeout" in message
            assert elapsed < FAST_TIMEOUTS["server_connect_timeout"] + 2
            # The stalled upstream blocks nothing else.
            for _ in range(20):
                assert _tenant_of(direct) == "acme"
    finally:
        relay.resume()
    _assert_healed(proxy)


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_client_timeout_on_a_stalled_query_releases_its_server(
        relayed_proxy: Callable[..., ThreadedProxy], relay: FaultRelay, pool_mode: str) -> None:
    proxy = relayed_proxy(pool_mode=pool_mode, pool_size=1)
    dsn = f"postgresql://u:{token('acme')}@127.0.0.1:{proxy.port}/app"

    async def stalled_client() -> None:
        conn = await asyncpg.connect(dsn, ssl=False, statement_cache_size=0, timeout=10)
        try:
            assert await conn.fetchval("SELECT 1") == 1
            relay.stall()
            # No answer will come: the network holds the bytes. The client's own timeout fires.
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval("SELECT 2", timeout=1)
        finally:
            conn.terminate()  # the client gives up on the connection: close, no goodbye

    began = time.monotonic()
    asyncio.run(stalled_client())
    assert time.monotonic() - began < 5
    relay.resume()
    # pool_size is 1: the next client is served only if the stalled server was let go
    # (closed, or drained and returned clean) - never handed out mid-query.
    deadline = time.monotonic() + 10
    with psycopg.connect(proxy.dsn("globex"), autocommit=True) as conn:
        assert _tenant_of(conn) == "globex"
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert time.monotonic() < deadline
    _assert_healed(proxy, clients=1 if pool_mode == "session" else 3)
