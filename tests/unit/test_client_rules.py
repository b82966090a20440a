"""Client session rules that need no server: which peers are local, who may send a password."""

from __future__ import annotations

import asyncio
import os

import pytest

from proxy.app import ProxyApp
from proxy.config import AuthConfig, Config, DatabaseConfig, JwtConfig, ServerConfig
from proxy.frontend.client import ClientConnection
from proxy.frontend.login import is_loopback
from proxy.wire import authentication, messages


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_loopback_peers(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["10.0.0.1", "192.168.1.5", "::ffff:10.0.0.1", "fe80::1%eth0",
                                  "2001:db8::1", "0.0.0.0", "localhost", ""])
def test_other_peers_are_not_local(host: str) -> None:
    assert not is_loopback(host)


class _FakeTransport:
    """Just enough of a transport for a ClientConnection fed by hand."""

    def __init__(self, peer: object) -> None:
        self.peer = peer
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": self.peer, "socket": object()}.get(name, default)

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _first_reply(peer: str, *, allow_insecure: bool) -> bytes:
    os.environ["PGTENANT_UNIT_SECRET"] = "x" * 40
    config = Config(
        path="<test>",
        server=ServerConfig(listen="0.0.0.0:6432", allow_insecure_password=allow_insecure),
        auth=AuthConfig(jwt=JwtConfig(secret_env="PGTENANT_UNIT_SECRET")),
        databases={"app": DatabaseConfig(name="app", password_env="PGTENANT_UNIT_SECRET")},
    )

    async def run() -> bytes:
        client = ClientConnection(ProxyApp(config))
        transport = _FakeTransport((peer, 40000))
        client.connection_made(transport)  # type: ignore[arg-type]
        client.data_received(messages.startup_message({"user": "u", "database": "app"}))
        client.connection_lost(None)
        return transport.written

    return asyncio.run(run())


def test_cleartext_password_is_refused_to_a_remote_peer_without_tls() -> None:
    reply = _first_reply("10.1.2.3", allow_insecure=False)
    assert reply[:1] == b"E"
    fields = messages.decode_error_fields(reply[5:])
    assert fields["C"] == "28000" and "encrypted" in fields["M"]


def test_allow_insecure_password_lets_a_remote_peer_authenticate() -> None:
    assert _first_reply("10.1.2.3", allow_insecure=True) == \
        authentication.authentication_cleartext_password()
    assert _first_reply("127.0.0.1", allow_insecure=False) == \
        authentication.authentication_cleartext_password()


def _client(peer: object) -> ClientConnection:
    """A client on a fake transport whose peer address is ``peer`` (not yet started)."""
    os.environ["PGTENANT_UNIT_SECRET"] = "x" * 40
    config = Config(
        path="<test>",
        server=ServerConfig(listen="127.0.0.1:6432"),
        auth=AuthConfig(jwt=JwtConfig(secret_env="PGTENANT_UNIT_SECRET")),
        databases={"app": DatabaseConfig(name="app", password_env="PGTENANT_UNIT_SECRET")},
    )
    client = ClientConnection(ProxyApp(config))
    client.transport = _FakeTransport(peer)  # type: ignore[arg-type,assignment]
    return client


def test_the_peer_is_read_from_the_socket() -> None:
    assert _client(("10.1.2.3", 40000)).peer == "10.1.2.3:40000"
    assert _client("").peer == "unix"  # a Unix socket's unnamed peer
    assert _client(None).peer == "?"  # the socket is gone


def test_the_cancel_key_reads_back_as_it_was_given() -> None:
    client = _client(("127.0.0.1", 40000))
    assert (client.cancel_pid, client.cancel_secret) == (0, b"")
    client.cancel_pid, client.cancel_secret = 2**31 - 1, b"\xff\x00\x01\x80"
    assert (client.cancel_pid, client.cancel_secret) == (2**31 - 1, b"\xff\x00\x01\x80")
    client.cancel_secret = b"\x00\x00\x00\x00"  # an all-zero secret stays four bytes
    assert (client.cancel_pid, client.cancel_secret) == (2**31 - 1, b"\x00\x00\x00\x00")
