"""Client TLS, and bounded proxy memory for big results (pgtenant as a real subprocess)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from proxy.wire import authentication, messages
from tests.proxy_harness import (
    ThreadedProxy,
    make_config,
    subprocess_proxy,
    token,
)
from tests.support import rss_kib, self_signed_cert


def test_sslmode_require_works_with_tls_configured(start_proxy: Callable[..., ThreadedProxy],
                                                   tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    proxy = start_proxy(server_tls_cert_file=cert, server_tls_key_file=key)
    dsn = f"postgresql://u:{token('acme')}@127.0.0.1:{proxy.port}/app?sslmode=require"
    with psycopg.connect(dsn) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_setting('app.current_tenant')").fetchone() == ("acme",)


@pytest.mark.slow
def test_100mb_result_with_a_slow_reader_keeps_proxy_memory_bounded(
        app_db: Any, tmp_path: Path) -> None:
    config = make_config(app_db, pool_mode="session")
    with subprocess_proxy(config, tmp_path) as (proc, port):
        with psycopg.connect(f"postgresql://u:{token('acme')}@127.0.0.1:{port}/app"
                             "?sslmode=disable") as warm:
            warm.execute("SELECT 1")
        before = rss_kib(proc.pid)
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(messages.startup_message({"user": "u", "database": "app"}))
        sock.recv(64)
        sock.sendall(authentication.password_message(token("acme").encode() + b"\0"))
        login = b""
        while not login.endswith(b"Z\x00\x00\x00\x05I"):
            login += sock.recv(4096)
        sock.sendall(messages.query(
            "SELECT repeat('x', 1000) FROM generate_series(1, 100000)"))
        received = 0
        stalled = False
        tail = b""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            chunk = sock.recv(256 * 1024)
            if not chunk:
                break
            received += len(chunk)
            tail = (tail + chunk)[-6:]
            if not stalled and received > 10_000_000:
                stalled = True
                time.sleep(2)  # the client stops reading: the proxy must stop reading too
            if tail == b"Z\x00\x00\x00\x05I":
                break
        sock.close()
        peak = rss_kib(proc.pid, "VmHWM")
        assert received > 100_000_000
        growth_mib = (peak - before) / 1024
        print(f"proxy RSS before {before} KiB, peak {peak} KiB, growth {growth_mib:.1f} MiB "
              f"for {received / 1e6:.0f} MB")
        assert growth_mib < 20
