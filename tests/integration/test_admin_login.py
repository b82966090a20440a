"""Logging in to the admin console (database ``pgtenant``): psql and psycopg get in with
the admin's password over plain TCP and TLS; a wrong password, an unknown user, a tenant's
JWT and a proxy without admin users are refused; the SCRAM exchange against scramp's
client."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from proxy.auth.scram_server import ScramExchange, ScramFailed
from proxy.config.scram_verifier import make_scram_verifier, parse_scram_verifier
from tests.integration.admin_console import ADMIN, ADMIN_PASSWORD, admin_dsn, simple
from tests.proxy_harness import ThreadedProxy, startup_refusal, token


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

