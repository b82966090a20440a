"""What a client keeps once it is logged in: none of its login's state (the Login object
of proxy/frontend/login.py is dropped and freed at once), and of its identity only the
tenant, shared with the other clients of that tenant."""

from __future__ import annotations

import gc
from collections.abc import Callable

import psycopg
import pytest

from proxy.frontend.client import ClientConnection, ClientState
from tests.proxy_harness import ThreadedProxy, token


def _clients(proxy: ThreadedProxy) -> list[ClientConnection]:
    return proxy.call(lambda: sorted(proxy.app.clients, key=lambda c: c.id))  # type: ignore[union-attr]


def _live_logins() -> int:
    return sum(1 for o in gc.get_objects() if type(o).__name__ == "Login")


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_a_logged_in_client_keeps_none_of_its_login(
        start_proxy: Callable[..., ThreadedProxy], pool_mode: str) -> None:
    proxy = start_proxy(pool_mode=pool_mode)
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        [client] = _clients(proxy)
        assert client.state is ClientState.READY
        assert client._login is None
        assert client._task_set is None  # the login's tasks were the login's own
        assert client.statements is None  # made at its first named statement
        assert client.database == "app" and client.peer.startswith("127.0.0.1:")
        assert not client.tls
        assert client.cancel_pid > 0 and len(client.cancel_secret) == 4


def test_clients_of_one_tenant_share_what_they_keep_of_their_identity(
        proxy: ThreadedProxy) -> None:
    first = token("acme", subject="alice")
    second = token("acme", subject="bob", ttl_seconds=600)
    other = token("globex", subject="carol")
    with psycopg.connect(proxy.dsn(first, raw_token=True), autocommit=True) as a, \
            psycopg.connect(proxy.dsn(second, raw_token=True), autocommit=True) as b, \
            psycopg.connect(proxy.dsn(other, raw_token=True), autocommit=True) as c:
        # Each still runs as its own tenant.
        for conn, tenant in ((a, "acme"), (b, "acme"), (c, "globex")):
            row = conn.execute("SELECT current_setting('app.current_tenant')").fetchone()
            assert row == (tenant,)
        alice, bob, carol = _clients(proxy)
        assert alice.identity is bob.identity
        assert alice.identity is not None and alice.identity.tenant == "acme"
        assert alice.identity.subject is None and alice.identity.expires_at is None
        assert carol.identity is not None and carol.identity.tenant == "globex"
        assert alice.stats_tenant == "acme" and carol.stats_tenant == "globex"


def test_a_finished_login_is_freed_without_the_garbage_collector(
        proxy: ThreadedProxy) -> None:
    # A Login in a reference cycle would live on, for every client, until a full
    # collection: with the collector off, none may be left once the clients are in.
    gc.collect()
    gc.disable()
    try:
        conns = [psycopg.connect(proxy.dsn("acme"), autocommit=True) for _ in range(3)]
        try:
            proxy.wait_until(lambda app: all(c.state is ClientState.READY for c in app.clients)
                             and len(app.clients) == 3)
            proxy.wait_until(lambda app: _live_logins() == 0)
        finally:
            for conn in conns:
                conn.close()
    finally:
        gc.enable()
