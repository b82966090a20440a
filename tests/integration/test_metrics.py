"""/metrics, /healthz and /readyz of a proxy in front of real PostgreSQL.

Scrapes are parsed with prometheus-client's own parser: the tests read samples, not text.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

import proxy.metrics.http as metrics_http
from proxy.auth.jwt import mint_token
from tests.proxy_harness import ThreadedProxy, startup_refusal
from tests.support import free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
StartProxy = Callable[..., ThreadedProxy]


def metrics_port(proxy: ThreadedProxy) -> int:
    assert proxy.app is not None and proxy.app.metrics_server is not None
    return int(proxy.app.metrics_server.address.rpartition(":")[2])


def get(proxy: ThreadedProxy, path: str, method: str = "GET") -> tuple[int, str, str]:
    """``(status, content type, body)`` of one request to the metrics endpoint."""
    conn = http.client.HTTPConnection("127.0.0.1", metrics_port(proxy), timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read().decode()
    finally:
        conn.close()


def scrape(proxy: ThreadedProxy) -> Samples:
    status, content_type, body = get(proxy, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def app_pool(proxy: ThreadedProxy) -> dict[str, str]:
    """The labels of database app's own pool (per-pool metrics carry user and kind)."""
    return {"database": "app", "user": proxy.config.databases["app"].user, "kind": "tenant"}


def raw_exchange(proxy: ThreadedProxy, data: bytes) -> bytes:
    """Send ``data`` on a fresh socket, half-close, return all the server answered."""
    with socket.create_connection(("127.0.0.1", metrics_port(proxy)), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass  # closed with part of an oversized request unread: the kernel sends RST
    return b"".join(chunks)


@pytest.fixture
def metrics_proxy(start_proxy: StartProxy) -> ThreadedProxy:
    return start_proxy(server_metrics_listen="127.0.0.1:0")


def test_saturated_pool_shows_saturation_and_waiting_clients(start_proxy: StartProxy) -> None:
    proxy = start_proxy(pool_mode="session", pool_size=2,
                        server_metrics_listen=f"127.0.0.1:{free_port()}")
    holders = [psycopg.connect(proxy.dsn("acme"), autocommit=True) for _ in range(2)]
    before = scrape(proxy)
    waits_before = value(before, "pgtenant_pool_wait_seconds_count", database="app")
    served: list[Any] = []
    errors: list[BaseException] = []

    def wait_for_a_server() -> None:
        try:
            with psycopg.connect(proxy.dsn("globex"), autocommit=True) as conn:
                served.append(conn.execute("SELECT 1").fetchone())
        except BaseException as exc:
            errors.append(exc)

    waiters = [threading.Thread(target=wait_for_a_server) for _ in range(3)]
    try:
        for t in waiters:
            t.start()
        proxy.wait_until(lambda app: len(app.pools["app"].waiters) == 3)
        saturated = scrape(proxy)
    finally:
        for conn in holders:
            conn.close()
        for t in waiters:
            t.join(timeout=30)
    assert not errors
    assert len(served) == 3

    pool = app_pool(proxy)
    assert value(saturated, "pgtenant_pool_saturation", **pool) == 1.0
    assert value(saturated, "pgtenant_pool_size", **pool) == 2
    assert value(saturated, "pgtenant_server_connections", **pool, state="active") == 2
    assert value(saturated, "pgtenant_clients", **pool, state="waiting") == 3
    assert value(saturated, "pgtenant_clients", **pool, state="active") == 2
    assert value(saturated, "pgtenant_pool_wait_max_seconds", database="app") > 0

    after = scrape(proxy)
    waits_after = value(after, "pgtenant_pool_wait_seconds_count", database="app")
    assert waits_after >= waits_before + 3
    assert value(after, "pgtenant_pool_wait_seconds_bucket", database="app",
                 le="+Inf") == waits_after
    assert value(after, "pgtenant_pool_wait_seconds_sum", database="app") > 0
    assert value(after, "pgtenant_clients", **pool, state="waiting") == 0
    assert value(after, "pgtenant_pool_wait_max_seconds", database="app") == 0


def test_bad_token_moves_auth_failures_by_one_with_its_reason(
        metrics_proxy: ThreadedProxy) -> None:
    before = scrape(metrics_proxy)
    forged = mint_token("not-the-secret-" * 4, "acme")
    sqlstate, _ = startup_refusal(metrics_proxy.dsn(forged, raw_token=True))
    assert sqlstate == "28P01"
    after = scrape(metrics_proxy)

    def failures(samples: Samples) -> dict[str, float]:
        return {dict(labels)["reason"]: v for (name, labels), v in samples.items()
                if name == "pgtenant_auth_failures_total"}

    moved = {reason: n - failures(before).get(reason, 0)
             for reason, n in failures(after).items()}
    assert {reason: n for reason, n in moved.items() if n} == {"bad_signature": 1}


def test_every_documented_family_is_exported(metrics_proxy: ThreadedProxy) -> None:
    with psycopg.connect(metrics_proxy.dsn("acme"), autocommit=True) as conn:
        conn.execute("SELECT 1")
    samples = scrape(metrics_proxy)
    names = {name for name, _ in samples}
    expected = {
        "pgtenant_uptime_seconds", "pgtenant_config_reloads_total",
        "pgtenant_config_reload_failures_total", "pgtenant_build_info",
        "pgtenant_server_connections", "pgtenant_pool_size", "pgtenant_pool_saturation",
        "pgtenant_pool_paused",
        "pgtenant_pool_wait_max_seconds", "pgtenant_pool_wait_seconds_bucket",
        "pgtenant_pool_acquire_timeouts_total", "pgtenant_server_errors_total",
        "pgtenant_servers_opened_total", "pgtenant_servers_closed_total",
        "pgtenant_pool_leases_total", "pgtenant_pool_context_sets_total",
        "pgtenant_clients", "pgtenant_client_connections", "pgtenant_client_connections_max",
        "pgtenant_queries_total", "pgtenant_transactions_total", "pgtenant_errors_total",
        "pgtenant_client_received_bytes_total", "pgtenant_client_sent_bytes_total",
        "pgtenant_transaction_duration_seconds_bucket",
        "pgtenant_tenant_queries_total", "pgtenant_tenant_transactions_total",
        "pgtenant_tenant_errors_total", "pgtenant_tenant_wait_seconds_total",
        "pgtenant_tenants_tracked", "pgtenant_tenant_label_limit",
        "pgtenant_suspended_tenant_attempts_total",
    }
    assert expected <= names, sorted(expected - names)
    assert value(samples, "pgtenant_servers_opened_total", **app_pool(metrics_proxy)) >= 1
    assert value(samples, "pgtenant_pool_leases_total", **app_pool(metrics_proxy)) >= 1
    assert value(samples, "pgtenant_tenant_queries_total", tenant="_other") >= 0
    assert value(samples, "pgtenant_uptime_seconds") > 0


def test_healthz_answers_ok(metrics_proxy: ThreadedProxy) -> None:
    assert get(metrics_proxy, "/healthz")[::2] == (200, "ok\n")


def test_readyz_is_ready_when_postgres_is_reachable(metrics_proxy: ThreadedProxy) -> None:
    status, _, body = get(metrics_proxy, "/readyz")
    assert (status, body) == (200, "ready\n")


def test_readyz_is_503_when_the_upstream_port_is_closed(start_proxy: StartProxy) -> None:
    closed = free_port()
    proxy = start_proxy(port=closed, server_metrics_listen="127.0.0.1:0")
    status, _, body = get(proxy, "/readyz")
    assert status == 503
    assert "no upstream reachable" in body and f":{closed}" in body


def test_unknown_path_is_404_and_other_methods_405(metrics_proxy: ThreadedProxy) -> None:
    assert get(metrics_proxy, "/nope")[0] == 404
    status = get(metrics_proxy, "/metrics", method="POST")[0]
    assert status == 405


@pytest.mark.parametrize("garbage", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) + b"\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET /metrics HTTP/9.9\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    b"GET /metri",
    b"",
], ids=["tls-hello", "no-target", "bad-version", "bad-header", "huge-head", "truncated",
        "empty"])
def test_garbage_requests_do_not_hurt_the_proxy(metrics_proxy: ThreadedProxy,
                                                garbage: bytes) -> None:
    answer = raw_exchange(metrics_proxy, garbage)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400 ")
    assert get(metrics_proxy, "/healthz")[0] == 200
    with psycopg.connect(metrics_proxy.dsn("acme"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_silent_client_is_dropped_after_the_request_timeout(
        metrics_proxy: ThreadedProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_http, "REQUEST_TIMEOUT", 0.3)
    with socket.create_connection(("127.0.0.1", metrics_port(metrics_proxy)),
                                  timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # and then nothing
        assert sock.recv(1024) == b""  # closed by the server, not by our 10 s timeout
    assert get(metrics_proxy, "/healthz")[0] == 200


@pytest.mark.usefixtures("clean_items")
@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_traffic_and_rls_refusals_are_counted_per_tenant(start_proxy: StartProxy,
                                                         pool_mode: str) -> None:
    proxy = start_proxy(server_metrics_listen="127.0.0.1:0", pool_mode=pool_mode)
    before = scrape(proxy)
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
        for _ in range(5):
            conn.execute("SELECT count(*) FROM items").fetchone()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO items (tenant_id, name) VALUES ('globex', 'planted')")
    after = scrape(proxy)

    def moved(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after[key] - before.get(key, 0.0)

    assert moved("pgtenant_tenant_queries_total", tenant="acme") == 6
    assert moved("pgtenant_tenant_transactions_total", tenant="acme") == 6
    assert moved("pgtenant_tenant_errors_total", tenant="acme") == 1
    assert moved("pgtenant_rls_violation_attempts_total", tenant="acme", kind="rls_policy") == 1
    assert moved("pgtenant_queries_total", database="app") == 6
    assert moved("pgtenant_client_sent_bytes_total", database="app") > 0
    assert moved("pgtenant_transaction_duration_seconds_count", database="app") == 6
