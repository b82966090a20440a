"""A cancel for a request still waiting in the proxy for a server connection.

From the client's side the request is running: it was sent, and no answer came. So a
cancel must end it as PostgreSQL would (ErrorResponse 57014, then ReadyForQuery), and it
must never run afterwards: the proxy drops it from the client's queue and, with nothing
left to send, leaves the pool's wait queue. Requests queued behind it still run, as a
cancel interrupts only what runs when it lands. The cancel key is checked first: a
wrong secret (a guess by another tenant) cancels nothing.

Raw protocol clients (transaction mode, one server connection held by another tenant's
open transaction), so the test controls exactly what is queued and what is read.
"""

from __future__ import annotations

import secrets
import socket
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from proxy.wire import authentication, messages
from tests.proxy_harness import ThreadedProxy, token
from tests.rawclient import STARTUP, connect, read_message, read_until

pytestmark = pytest.mark.usefixtures("clean_items")

Held = tuple[ThreadedProxy, socket.socket, int, bytes, psycopg.Connection[Any]]


@pytest.fixture
def one_server(start_proxy: Any) -> Iterator[tuple[ThreadedProxy, socket.socket, int, bytes,
                                                   psycopg.Connection[Any]]]:
    """A transaction-mode proxy of one server connection; a raw globex client logged in
    (with its cancel key), then acme holding the server in an open transaction."""
    proxy = start_proxy(pool_mode="transaction", pool_size=1)
    sock, pid, secret = _login(proxy.port, "globex")  # (a login needs the server too)
    with sock, psycopg.connect(proxy.dsn("acme")) as holder:
        holder.execute("SELECT 1")  # BEGIN went first: the server is acme's until COMMIT
        yield proxy, sock, pid, secret, holder


def _login(port: int, tenant: str) -> tuple[socket.socket, int, bytes]:
    """A raw client at its first ReadyForQuery, with the cancel key the proxy gave it."""
    sock = connect(port)
    sock.sendall(messages.startup_message(STARTUP))
    read_until(sock, b"R")
    sock.sendall(authentication.password_message(token(tenant).encode() + b"\0"))
    key = next(body for tag, body in read_until(sock, b"Z") if tag == b"K")
    pid, secret = messages.decode_backend_key_data(key)
    return sock, pid, secret


def _cancel(port: int, pid: int, secret: bytes) -> None:
    """Send a CancelRequest; return once the proxy closed the cancel connection (what
    libpq takes to mean "processed")."""
    with connect(port) as sock:
        sock.sendall(messages.cancel_request(pid, secret))
        assert sock.recv(1) == b""


def _answer(sock: socket.socket) -> list[tuple[bytes, dict[str, str] | bytes]]:
    """One request's answer, up to its ReadyForQuery (errors decoded)."""
    out: list[tuple[bytes, dict[str, str] | bytes]] = []
    for tag, body in read_until(sock, b"Z"):
        out.append((tag, messages.decode_error_fields(body) if tag == b"E" else body))
    return out


def _count(proxy: ThreadedProxy, name: str) -> int:
    with psycopg.connect(proxy.dsn("globex"), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM items WHERE name = %s", (name,)).fetchone()
    assert row is not None
    return int(row[0])


def _insert_extended(name: str) -> bytes:
    return (messages.parse("", "INSERT INTO items (name) VALUES ($1)", [25])
            + messages.bind("", "", [name.encode()]) + messages.execute() + messages.sync())


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_a_cancelled_queued_request_is_answered_57014_and_never_runs(
        one_server: Held, protocol: str) -> None:
    proxy, sock, pid, secret, holder = one_server
    name = f"cancelled-{protocol}-{secrets.token_hex(4)}"
    sock.sendall(messages.query(f"INSERT INTO items (name) VALUES ('{name}')")
                 if protocol == "simple" else _insert_extended(name))
    proxy.wait_until(lambda app: len(app.pools["app"].waiters) == 1)
    _cancel(proxy.port, pid, secret)
    answer = _answer(sock)
    assert [tag for tag, _ in answer] == [b"E", b"Z"], answer
    error = answer[0][1]
    assert isinstance(error, dict) and error["C"] == "57014" and error["S"] == "ERROR"
    assert answer[1][1] == b"I"
    # Nothing left to send: the client left the pool's queue at once.
    proxy.wait_until(lambda app: not app.pools["app"].waiters)
    holder.commit()
    # The connection works on, and the cancelled insert never ran.
    sock.sendall(messages.query("SELECT current_setting('app.current_tenant')"))
    rows = [body for tag, body in _answer(sock) if tag == b"D"]
    assert rows and rows[0].endswith(b"globex")
    assert _count(proxy, name) == 0


def test_requests_queued_behind_the_cancelled_one_still_run(
        one_server: Held) -> None:
    proxy, sock, pid, secret, holder = one_server
    first, second = (f"queued-{i}-{secrets.token_hex(4)}" for i in range(2))
    sock.sendall(messages.query(f"INSERT INTO items (name) VALUES ('{first}')")
                 + _insert_extended(second))
    proxy.wait_until(lambda app: len(app.pools["app"].waiters) == 1)
    _cancel(proxy.port, pid, secret)
    cancelled = _answer(sock)
    assert [tag for tag, _ in cancelled] == [b"E", b"Z"], cancelled
    proxy.wait_until(lambda app: len(app.pools["app"].waiters) == 1)  # the second waits
    holder.commit()
    ran = _answer(sock)
    assert [tag for tag, _ in ran] == [b"1", b"2", b"C", b"Z"], ran
    assert (_count(proxy, first), _count(proxy, second)) == (0, 1)


def test_a_cancel_with_a_wrong_secret_cancels_nothing(
        one_server: Held) -> None:
    """Another tenant that guessed the process id still needs the secret."""
    proxy, sock, pid, secret, holder = one_server
    name = f"kept-{secrets.token_hex(4)}"
    sock.sendall(messages.query(f"INSERT INTO items (name) VALUES ('{name}')"))
    proxy.wait_until(lambda app: len(app.pools["app"].waiters) == 1)
    wrong = bytes(b ^ 0x01 for b in secret)
    _cancel(proxy.port, pid, wrong)
    proxy.wait_until(lambda app: len(app.pools["app"].waiters) == 1)
    holder.commit()
    answer = _answer(sock)
    assert [tag for tag, _ in answer] == [b"C", b"Z"], answer
    assert _count(proxy, name) == 1


def test_a_cancel_after_the_queued_request_was_answered_changes_nothing(
        one_server: Held) -> None:
    proxy, sock, pid, secret, holder = one_server
    holder.commit()
    sock.sendall(messages.query("SELECT 1"))
    assert [tag for tag, _ in _answer(sock)] == [b"T", b"D", b"C", b"Z"]
    _cancel(proxy.port, pid, secret)
    sock.sendall(messages.query("SELECT 2"))
    assert [tag for tag, _ in _answer(sock)] == [b"T", b"D", b"C", b"Z"]
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        read_message(sock)  # nothing stray was written


def test_a_driver_cancelling_its_waiting_statement_gets_query_canceled(
        start_proxy: Any) -> None:
    """psycopg (libpq) as the client: its cancel of a statement that waits for a server
    raises QueryCanceled, and the connection goes on."""
    proxy = start_proxy(pool_mode="transaction", pool_size=1)
    with psycopg.connect(proxy.dsn("globex"), autocommit=True) as waiter, \
            psycopg.connect(proxy.dsn("acme")) as holder:
        holder.execute("SELECT 1")
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                outcome["row"] = waiter.execute("SELECT 1").fetchone()
            except psycopg.errors.QueryCanceled as exc:
                outcome["cancelled"] = exc.sqlstate

        thread = threading.Thread(target=run)
        thread.start()
        proxy.wait_until(lambda app: len(app.pools["app"].waiters) == 1)
        waiter.cancel_safe()  # (libpq 17+: does not hold the GIL the proxy needs)
        thread.join(10)
        assert not thread.is_alive() and outcome == {"cancelled": "57014"}
        holder.commit()
        assert waiter.execute("SELECT current_setting('app.current_tenant')").fetchone() == (
            "globex",)
