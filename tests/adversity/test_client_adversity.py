"""Hostile and broken clients: random bytes, too many connections, a client that stops reading.

The proxy answers garbage with an ErrorResponse or by closing, never crashes (no
unhandled exception is logged), and keeps serving well-behaved clients on clean servers.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.wire import messages
from tests import rawclient
from tests.proxy_harness import ThreadedProxy, startup_refusal
from tests.support import wait_for_query

FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

# Frontend message tags, so that some random messages get past the framer.
FRONTEND_TAGS = b"QPBEDSHCFXdcfp"


def _drain(sock: socket.socket, quiet: float = 0.2) -> bytes:
    """Read until the proxy closes, or says nothing for ``quiet`` seconds."""
    sock.settimeout(quiet)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return got


def _answer_is_error_or_close(got: bytes) -> None:
    """What the proxy sent back, if anything, is well-framed backend messages."""
    pos = 0
    while pos + 5 <= len(got):
        tag = got[pos:pos + 1]
        (length,) = struct.unpack_from("!i", got, pos + 1)
        assert (length >= 4 and tag.isalpha()) or tag == b"N", got
        pos += 1 + length
    # A lone 'N' or 'S' answers an SSL/GSSENC request; anything else is whole messages.
    assert pos == len(got) or got in (b"N", b"S") or len(got) - pos < 5, got


def _assert_serves_cleanly(proxy: ThreadedProxy) -> None:
    for tenant in ("acme", "globex"):
        with psycopg.connect(proxy.dsn(tenant), autocommit=True, connect_timeout=10) as conn:
            row = conn.execute("SELECT current_setting('app.current_tenant'), "
                               "coalesce(bool_and(tenant_id = %s), true) FROM items",
                               (tenant,)).fetchone()
            # Its tenant, only its rows, and no transaction left open by a fuzzed client.
            assert row == (tenant, True)
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def _crashes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR and (r.exc_info or r.name == "asyncio")]


@pytest.fixture
def fuzz_proxy(start_proxy: Callable[..., ThreadedProxy]) -> ThreadedProxy:
    return start_proxy(pool_mode="transaction", pool_size=2, server_client_login_timeout=2.0)


startup_bytes = st.one_of(
    st.binary(max_size=120),
    # A plausible length prefix followed by random content.
    st.builds(lambda n, body: struct.pack("!i", n) + body,
              st.integers(-10, 300), st.binary(max_size=120)),
    # A real startup packet with random parameters, then random trailing bytes.
    st.builds(lambda params, tail: messages.startup_message(params) + tail,
              st.dictionaries(st.text("abcuserdatabs_", min_size=1, max_size=8),
                              st.text(max_size=8).filter(lambda v: "\0" not in v),
                              max_size=3),
              st.binary(max_size=40)),
)


def test_random_startup_bytes_never_crash_the_proxy(
        fuzz_proxy: ThreadedProxy, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)

    @FUZZ
    @given(data=startup_bytes)
    def one(data: bytes) -> None:
        with socket.create_connection(("127.0.0.1", fuzz_proxy.port), timeout=5) as sock:
            sock.sendall(data)
            _answer_is_error_or_close(_drain(sock))

    one()
    assert not _crashes(caplog)
    _assert_serves_cleanly(fuzz_proxy)


post_login_bytes = st.one_of(
    st.binary(min_size=1, max_size=200),
    st.lists(st.builds(lambda tag, body: bytes([tag]) + struct.pack("!i", len(body) + 4) + body,
                       st.sampled_from(FRONTEND_TAGS), st.binary(max_size=60)),
             min_size=1, max_size=5).map(b"".join),
)


def test_random_bytes_after_login_never_crash_or_dirty_a_server(
        fuzz_proxy: ThreadedProxy, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)

    @FUZZ
    @given(data=post_login_bytes)
    def one(data: bytes) -> None:
        with rawclient.logged_in(fuzz_proxy.port, "acme") as sock:
            sock.sendall(data)
            _answer_is_error_or_close(_drain(sock))

    one()
    assert not _crashes(caplog)
    _assert_serves_cleanly(fuzz_proxy)


def test_max_client_conn_refuses_only_the_extra_clients(
        start_proxy: Callable[..., ThreadedProxy]) -> None:
    proxy = start_proxy(pool_mode="transaction", pool_size=2, server_max_client_conn=5)
    conns = [psycopg.connect(proxy.dsn("acme"), autocommit=True) for _ in range(5)]
    try:
        for _ in range(3):
            sqlstate, message = startup_refusal(proxy.dsn("globex"))
            assert sqlstate == "53300", message
        for conn in conns:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        conns.pop().close()
        deadline = time.monotonic() + 5
        while True:  # the freed slot is counted as soon as the proxy sees the close
            try:
                with psycopg.connect(proxy.dsn("globex")) as conn:
                    assert conn.execute("SELECT 2").fetchone() == (2,)
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        for conn in conns:
            conn.close()


def test_client_that_stops_reading_blocks_no_one_else(
        start_proxy: Callable[..., ThreadedProxy], app_db: Any) -> None:
    proxy = start_proxy(pool_mode="transaction", pool_size=2)
    with rawclient.logged_in(proxy.port, "acme") as stuck:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        huge = "SELECT repeat('x', 1000) FROM generate_series(1, 200000)"  # ~200 MB
        stuck.sendall(messages.query(huge))  # and never read
        wait_for_query(app_db.superuser_dsn, huge)
        began = time.monotonic()
        with psycopg.connect(proxy.dsn("globex"), autocommit=True) as other:
            for _ in range(50):
                assert other.execute("SELECT current_setting('app.current_tenant')"
                                     ).fetchone() == ("globex",)
        assert time.monotonic() - began < 5
    # The stuck client is gone: its server must not come back mid-result. Both servers
    # must serve, inside transactions held at the same time.
    with psycopg.connect(proxy.dsn("acme")) as a, psycopg.connect(proxy.dsn("globex")) as b:
        assert a.execute("SELECT count(*) FROM items WHERE tenant_id <> 'acme'"
                         ).fetchone() == (0,)
        assert b.execute("SELECT current_setting('app.current_tenant')").fetchone() == ("globex",)
