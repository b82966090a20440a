"""Dead or stalled server connections: never handed to a client, never waited on forever.

- a frontend message PostgreSQL would end the session for (an unknown type, a password
  message after login) is answered by the proxy with FATAL 08P01 and never forwarded: a
  forwarded one left a backend that was about to die looking clean to the pool;
- an idle server connection unused for server_check_delay is checked (an empty query)
  before it is leased; one that died while idle is replaced and the client never sees it;
- query_timeout: a request without its reply for that long is cancelled (the client gets
  PostgreSQL's 57014); a server that does not answer the cancel either is closed and the
  client gets FATAL 08006 naming query_timeout.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from proxy.wire import messages
from tests.adversity.faultproxy import FaultRelay
from tests.proxy_harness import ThreadedProxy
from tests.rawclient import RawClient
from tests.support import wait_for

MODES = ["session", "transaction"]


@pytest.fixture
def relay(app_db: Any) -> Iterator[FaultRelay]:
    with FaultRelay(app_db.host, app_db.port) as r:
        yield r


@pytest.fixture
def relayed(start_proxy: Callable[..., ThreadedProxy], relay: FaultRelay
            ) -> Callable[..., ThreadedProxy]:
    """Factory: a proxy whose database goes through ``relay``."""
    def start(server_check_delay: float = 30.0, **db: Any) -> ThreadedProxy:
        return start_proxy(host=relay.host, port=relay.port, **db, database={
            "server_connect_timeout": 5.0, "server_check_delay": server_check_delay})

    return start


def _pool(proxy: ThreadedProxy) -> Any:
    assert proxy.app is not None
    return proxy.app.pools["app"]


def _backend_and_tenant(proxy: ThreadedProxy, tenant: str) -> tuple[Any, ...]:
    with psycopg.connect(proxy.dsn(tenant), autocommit=True, connect_timeout=10) as conn:
        row = conn.execute("SELECT pg_backend_pid(), current_setting('app.current_tenant')"
                           ).fetchone()
    assert row is not None
    return tuple(row)


async def _send_then_read_to_close(port: int, tenant: str, data: bytes) -> bytes:
    client = await RawClient.login(port, tenant)
    client.writer.write(data)
    got = await client.reader.read()
    client.writer.close()
    return got


@pytest.mark.parametrize("tag", [ord("p"), 0x01, ord("x")])
def test_message_postgres_would_die_of_is_refused_and_never_forwarded(
        start_proxy: Callable[..., ThreadedProxy], tag: int) -> None:
    # One server connection: a forwarded message would have killed it, and the Terminate
    # right behind it used to put the dying backend back in the pool as clean.
    proxy = start_proxy(pool_mode="transaction", pool_size=1)
    backend = _backend_and_tenant(proxy, "acme")[0]
    for _ in range(3):
        body = b"garbage\0"
        got = asyncio.run(_send_then_read_to_close(
            proxy.port, "globex",
            bytes([tag]) + struct.pack("!i", len(body) + 4) + body + messages.terminate()))
        assert b"SFATAL\0" in got and b"C08P01\0" in got
        assert f"invalid frontend message type {tag}".encode() in got
        # The one backend is still the same, alive, serving each tenant as itself.
        assert _backend_and_tenant(proxy, "acme") == (backend, "acme")
        assert _backend_and_tenant(proxy, "globex") == (backend, "globex")


@pytest.mark.parametrize("mode", MODES)
def test_idle_server_that_died_is_replaced_before_the_client_sees_it(
        relayed: Callable[..., ThreadedProxy], relay: FaultRelay,
        superuser_conn: psycopg.Connection[Any], mode: str) -> None:
    # The backend is terminated while the network holds back its goodbye, so the proxy
    # still counts it as idle and healthy; server_check_delay = 0 checks it at the lease.
    proxy = relayed(pool_mode=mode, pool_size=1, server_check_delay=0.0)
    pool = _pool(proxy)
    dead = _backend_and_tenant(proxy, "acme")[0]
    proxy.wait_until(lambda app: len(pool.idle) == 1)  # session mode: reset done
    relay.stall()
    superuser_conn.execute("SELECT pg_terminate_backend(%s)", (dead,))
    wait_for(lambda: superuser_conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (dead,)).fetchone() == (0,),
        "the terminated backend to end")
    outcome: dict[str, Any] = {}

    def client() -> None:
        try:
            outcome["row"] = _backend_and_tenant(proxy, "globex")
        except psycopg.Error as exc:
            outcome["error"] = repr(exc)

    thread = threading.Thread(target=client)
    thread.start()
    # The client waits while the check of the idle server is on its way (held back).
    proxy.wait_until(lambda app: not pool.idle and bool(pool.waiters))
    relay.resume()
    thread.join(30)
    assert "error" not in outcome, outcome
    backend, tenant = outcome["row"]
    assert tenant == "globex" and backend != dead
    assert pool.stats.servers_failed_check == 1


@pytest.mark.parametrize("mode", MODES)
def test_query_timeout_cancels_a_slow_statement_and_the_session_goes_on(
        start_proxy: Callable[..., ThreadedProxy], mode: str) -> None:
    proxy = start_proxy(pool_mode=mode, pool_size=2, query_timeout=0.5)
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
        for i in range(2):
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(60)")
            assert conn.execute("SELECT %s::int, current_setting('app.current_tenant')",
                                (i,)).fetchone() == (i, "acme")


@pytest.mark.parametrize("mode", MODES)
def test_query_timeout_closes_a_server_that_stalled_mid_query(
        relayed: Callable[..., ThreadedProxy], relay: FaultRelay, mode: str) -> None:
    proxy = relayed(pool_mode=mode, pool_size=2, query_timeout=0.5)
    pool = _pool(proxy)
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        relay.stall()  # the cancel is held back too: PostgreSQL never answers
        with pytest.raises(psycopg.OperationalError) as failed:
            conn.execute("SELECT 2")
    assert failed.value.sqlstate == "08006"
    assert "query_timeout" in str(failed.value)
    proxy.wait_until(lambda app: not pool.active)  # the stalled server was closed
    relay.resume()
    assert _backend_and_tenant(proxy, "globex")[1] == "globex"


def test_malformed_statement_name_is_a_protocol_error_not_a_crash(
        start_proxy: Callable[..., ThreadedProxy], caplog: pytest.LogCaptureFixture) -> None:
    # Transaction mode renames named statements; a name with no terminator (found by the
    # post-login fuzz test) used to escape as a ValueError from data_received.
    caplog.set_level(logging.WARNING)
    proxy = start_proxy(pool_mode="transaction", pool_size=1)
    for body in (b"stmt", b"\xff\xfe\0SELECT 1\0\0\0"):
        got = asyncio.run(_send_then_read_to_close(
            proxy.port, "acme", b"P" + struct.pack("!i", len(body) + 4) + body
            + messages.sync()))
        assert b"C08P01\0" in got
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert _backend_and_tenant(proxy, "acme")[1] == "acme"
