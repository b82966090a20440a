"""Startup edge cases, cancel, disconnects and pool behaviour, with raw sockets and psycopg."""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from proxy.wire import authentication, messages
from tests import rawclient
from tests.proxy_harness import ThreadedProxy, token
from tests.support import wait_for_query


def test_ssl_and_gssenc_requests_are_declined_without_tls(session_proxy: ThreadedProxy) -> None:
    with rawclient.connect(session_proxy.port) as sock:
        sock.sendall(struct.pack("!ii", 8, 80877104))  # GSSENCRequest
        assert rawclient.read_exact(sock, 1) == b"N"
        sock.sendall(struct.pack("!ii", 8, 80877103))  # SSLRequest
        assert rawclient.read_exact(sock, 1) == b"N"
        sock.sendall(messages.startup_message({"user": "u", "database": "app"}))
        tag, body = rawclient.read_message(sock)
        assert tag == b"R" and struct.unpack("!i", body)[0] == 3  # cleartext password


def test_protocol_3_2_gets_negotiate_protocol_version(session_proxy: ThreadedProxy) -> None:
    with rawclient.connect(session_proxy.port) as sock:
        sock.sendall(messages.startup_message(
            {"user": "u", "database": "app", "_pq_.future_option": "on"}, protocol_minor=2))
        tag, body = rawclient.read_message(sock)
        assert tag == b"v"
        assert messages.decode_negotiate_protocol_version(body) == (0, ["_pq_.future_option"])
        tag, body = rawclient.read_message(sock)
        assert tag == b"R"
        sock.sendall(authentication.password_message(token("acme").encode() + b"\0"))
        seen = set()
        while True:
            tag, body = rawclient.read_message(sock)
            seen.add(tag)
            if tag == b"Z":
                break
        assert {b"R", b"S", b"K"} <= seen


@pytest.mark.parametrize("length", [-5, 0, 3, 2**31 - 1])
def test_bad_message_length_gets_protocol_violation(session_proxy: ThreadedProxy,
                                                    length: int) -> None:
    with rawclient.logged_in(session_proxy.port, "acme") as sock:
        sock.sendall(b"Q" + struct.pack("!i", length))
        tag, body = rawclient.read_message(sock)
        assert tag == b"E"
        assert messages.decode_error_fields(body)["C"] == "08P01"
        assert sock.recv(1) == b""
    # The proxy keeps serving others.
    with psycopg.connect(session_proxy.dsn("acme")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_bad_startup_packet_length_is_refused(session_proxy: ThreadedProxy) -> None:
    for packet in (struct.pack("!i", 4), struct.pack("!ii", 100000, 196608)):
        with rawclient.connect(session_proxy.port) as sock:
            sock.sendall(packet)
            tag, body = rawclient.read_message(sock)
            assert tag == b"E" and messages.decode_error_fields(body)["C"] == "08P01"


def test_login_timeout_ends_a_silent_client(start_proxy: Callable[..., ThreadedProxy]) -> None:
    proxy = start_proxy(server_client_login_timeout=0.5)
    with rawclient.connect(proxy.port) as sock:
        sock.sendall(b"\x00\x00")  # a trickled, never-finished startup packet
        tag, body = rawclient.read_message(sock)
        assert tag == b"E" and messages.decode_error_fields(body)["C"] == "57014"


def _running(proxy: ThreadedProxy, dsn: str, sql: str, result: dict[str, Any]) -> threading.Thread:
    def run() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                result["pid"] = conn.info.backend_pid
                result["conn"] = conn
                conn.execute(sql)
                result["ok"] = True
        except psycopg.Error as exc:
            result["error"] = exc
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_flush_keeps_the_server_until_sync(start_proxy: Callable[..., ThreadedProxy]) -> None:
    # Parse/Describe/Flush leaves the server mid-batch: in transaction mode it must stay
    # with this client (replies included) until Sync, even while others want a server.
    proxy = start_proxy(pool_mode="transaction", pool_size=2)
    pool = proxy.app.pools["app"]  # type: ignore[union-attr]
    with (rawclient.logged_in(proxy.port, "acme") as sock,
          rawclient.logged_in(proxy.port, "globex") as other):
        other.sendall(messages.query("BEGIN"))  # holds the one open server
        rawclient.read_until(other, b"Z")
        # A fresh server: its context set is pipelined in front of the batch.
        sock.sendall(messages.parse("", "SELECT current_setting('app.current_tenant')")
                     + messages.describe(b"S", "") + messages.flush())
        assert [t for t, _ in rawclient.read_until(sock, b"T")] == [b"1", b"t", b"T"]
        time.sleep(0.1)
        assert proxy.call(lambda: len(pool.active)) == 2
        other.sendall(messages.query("COMMIT"))
        rawclient.read_until(other, b"Z")
        for _ in range(5):  # the other client's transactions run on the other server
            other.sendall(messages.query("SELECT 1"))
            rawclient.read_until(other, b"Z")
        sock.sendall(messages.bind("", "", []) + messages.execute() + messages.sync())
        replies = rawclient.read_until(sock, b"Z")
        assert [t for t, _ in replies] == [b"2", b"D", b"C", b"Z"]
        assert b"acme" in replies[1][1]
        proxy.wait_until(lambda app: len(pool.active) == 0)


def test_cancel_reaches_only_its_own_query(proxy: ThreadedProxy) -> None:
    # asyncpg cancels a timed-out query with a CancelRequest on a new connection. (libpq's
    # blocking PQcancel keeps the GIL, which would freeze this in-process proxy.)
    import asyncpg

    async def scenario() -> tuple[float, str | None, bool]:
        a = await asyncpg.connect(proxy.dsn("acme"), ssl=False)
        b = await asyncpg.connect(proxy.dsn("globex"), ssl=False)
        try:
            other = asyncio.ensure_future(b.fetchval("SELECT true FROM pg_sleep(1.5)"))
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await a.execute("SELECT pg_sleep(20)", timeout=0.5)
            tenant = await a.fetchval("SELECT current_setting('app.current_tenant')")
            elapsed = time.monotonic() - started
            return elapsed, tenant, await other
        finally:
            await a.close()
            await b.close()

    elapsed, tenant, other_ok = asyncio.run(scenario())
    assert elapsed < 10          # the sleep was cancelled, not waited out
    assert tenant == "acme"      # and the connection goes on in its tenant
    assert other_ok is True      # the other client's query was not cancelled


def test_cancel_with_a_forged_key_cancels_nothing(proxy: ThreadedProxy, app_db: Any) -> None:
    result: dict[str, Any] = {}
    thread = _running(proxy, proxy.dsn("acme"), "SELECT pg_sleep(1)", result)
    wait_for_query(app_db.superuser_dsn, "SELECT pg_sleep(1)")
    for key in (b"\0\0\0\0", b"\xff\xff\xff\xff"):
        with rawclient.connect(proxy.port) as sock:
            sock.sendall(messages.cancel_request(result["pid"], key))
            assert sock.recv(1) == b""  # the proxy closes without an answer
    thread.join(10)
    assert result.get("ok") is True


def test_client_disconnect_mid_query_leaves_no_busy_server(
        start_proxy: Callable[..., ThreadedProxy], app_db: Any) -> None:
    proxy = start_proxy(pool_mode="session", pool_size=1)
    with rawclient.logged_in(proxy.port, "acme") as sock:
        sock.sendall(messages.query("SELECT pg_sleep(30)"))
        wait_for_query(app_db.superuser_dsn, "SELECT pg_sleep(30)")
    # The only server connection was busy: it must be cancelled/closed, not handed out busy.
    started = time.monotonic()
    with psycopg.connect(proxy.dsn("globex")) as conn:
        tenant = conn.execute("SELECT current_setting('app.current_tenant')").fetchone()
        assert tenant == ("globex",)
    assert time.monotonic() - started < 10
    with psycopg.connect(app_db.superuser_dsn, autocommit=True) as su:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            busy = su.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE "
                              "'SELECT pg_sleep(30)%' AND state = 'active'").fetchone()
            if busy == (0,):
                break
            time.sleep(0.1)
        assert busy == (0,)


def test_wait_queue_times_out_with_57014(start_proxy: Callable[..., ThreadedProxy]) -> None:
    proxy = start_proxy(pool_mode="session", pool_size=1, query_wait_timeout=0.5)
    with psycopg.connect(proxy.dsn("acme")) as holder:
        holder.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(proxy.dsn("globex"), connect_timeout=10)
        assert "query_wait_timeout" in str(info.value)
        assert holder.execute("SELECT 2").fetchone() == (2,)


def test_waiting_clients_are_served_in_arrival_order(
        start_proxy: Callable[..., ThreadedProxy]) -> None:
    # Tenants that the held server was never set for, so tenant affinity has no say.
    proxy = start_proxy(pool_mode="session", pool_size=1)
    pool = proxy.app.pools["app"]  # type: ignore[union-attr]
    arrivals = ["t1", "t2", "t3", "t4"]
    served: list[str] = []

    def client(tenant: str) -> None:
        with psycopg.connect(proxy.dsn(tenant), autocommit=True) as conn:
            row = conn.execute("SELECT current_setting('app.current_tenant')").fetchone()
            served.append(row[0] if row else "")

    with psycopg.connect(proxy.dsn("acme")) as holder:
        holder.execute("SELECT 1")
        threads = []
        for queued, tenant in enumerate(arrivals, 1):
            threads.append(threading.Thread(target=client, args=(tenant,)))
            threads[-1].start()
            proxy.wait_until(lambda app, queued=queued: len(pool.waiters) == queued)
        assert served == []
    for thread in threads:
        thread.join(10)
    assert served == arrivals


def test_dead_server_connection_is_replaced(start_proxy: Callable[..., ThreadedProxy],
                                            app_db: Any) -> None:
    proxy = start_proxy(pool_mode="transaction", pool_size=1)
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        with psycopg.connect(app_db.superuser_dsn, autocommit=True) as su:
            su.execute("SELECT pg_terminate_backend(%s)", (pid,))
        pool = proxy.app.pools["app"]  # type: ignore[union-attr]
        # The proxy saw it die: gone from the pool (it was kept by this client, which
        # counts as idle). Until then a query could still reach the dying backend, as it
        # could an idle pooled one.
        proxy.wait_until(lambda app: pool.size == 0)
        # The idle server died between transactions: the next one gets a fresh server.
        new_pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert new_pid != pid
        assert conn.execute("SELECT current_setting('app.current_tenant')").fetchone() == ("acme",)


def test_killed_server_mid_session_gives_clear_error(session_proxy: ThreadedProxy,
                                                     app_db: Any) -> None:
    with psycopg.connect(session_proxy.dsn("acme"), autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        with psycopg.connect(app_db.superuser_dsn, autocommit=True) as su:
            su.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    with psycopg.connect(session_proxy.dsn("acme")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_privileged_upstream_role_is_refused(start_proxy: Callable[..., ThreadedProxy],
                                             app_db: Any, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    monkeypatch.setenv("PGTENANT_TEST_SUPERUSER_PASSWORD", app_db.superuser_password)
    proxy = start_proxy(user="postgres", password_env="PGTENANT_TEST_SUPERUSER_PASSWORD")
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(proxy.dsn("acme"))
    assert "superuser or has BYPASSRLS" in str(info.value)


def test_unix_socket_listener(start_proxy: Callable[..., ThreadedProxy], tmp_path: Any) -> None:
    from tests.support import free_port

    port = free_port()
    proxy = start_proxy(server_listen=f"127.0.0.1:{port}", server_unix_socket_dir=str(tmp_path))
    assert proxy.port == port
    with psycopg.connect(host=str(tmp_path), port=port, user="u", dbname="app",
                         password=token("acme")) as conn:
        assert conn.execute("SELECT current_setting('app.current_tenant')").fetchone() == ("acme",)


def test_the_clients_unnamed_statement_survives_a_context_re_set(
        session_proxy: ThreadedProxy) -> None:
    """The unnamed statement lives until the client's next unnamed Parse, across batches;
    the proxy re-sets the context between two batches after a settings change (asyncpg's
    set_config('jit', ...) around type introspection) and must not use the unnamed
    statement for that (found with asyncpg's own test_introspection suite)."""
    sock = rawclient.logged_in(session_proxy.port, "acme")
    try:
        sock.sendall(messages.parse("", "SELECT $1::int + 1, current_setting('app.current_tenant')")
                     + messages.sync())
        assert [t for t, _ in rawclient.read_until(sock, b"Z")] == [b"1", b"Z"]
        # Through a named statement, as asyncpg does (a simple Query would itself drop the
        # unnamed statement, in PostgreSQL too).
        sock.sendall(messages.parse("jit", "SELECT set_config('jit', 'off', false)")
                     + messages.bind("", "jit", []) + messages.execute() + messages.sync())
        rawclient.read_until(sock, b"Z")
        sock.sendall(messages.bind("", "", [b"41"]) + messages.execute() + messages.sync())
        replies = rawclient.read_until(sock, b"Z")
        assert [t for t, _ in replies] == [b"2", b"D", b"C", b"Z"], replies
        assert b"42" in replies[1][1] and b"acme" in replies[1][1]
    finally:
        sock.close()
