"""A client that speaks the protocol by hand, for the prepared-statement tests
(tests/integration/test_prepared_*.py), and how they read its replies. Their fixtures
(``unguarded``, ``wire``) are in conftest.py."""

from __future__ import annotations

from collections.abc import Callable

from proxy.wire import messages
from tests.proxy_harness import ThreadedProxy
from tests.rawclient import logged_in, read_message

Start = Callable[..., ThreadedProxy]
Replies = list[tuple[bytes, bytes]]


class Wire:
    """A client speaking the protocol by hand, to see every message the proxy sends."""

    def __init__(self, proxy: ThreadedProxy, tenant: str) -> None:
        self.sock = logged_in(proxy.port, tenant)

    def send(self, *parts: bytes) -> Replies:
        """Send messages ending in Sync or Query; return the replies up to ReadyForQuery."""
        self.sock.sendall(b"".join(parts))
        return self.until(b"Z")

    def until(self, last: bytes) -> Replies:
        out = []
        while True:
            tag, body = read_message(self.sock)
            if tag not in (b"N", b"S"):
                out.append((tag, body))
            if tag == last:
                return out

    def close(self) -> None:
        self.sock.close()


def tags(replies: Replies) -> str:
    return "".join(t.decode() for t, _ in replies)


def error(replies: Replies) -> dict[str, str]:
    (body,) = [b for t, b in replies if t == b"E"]
    return messages.decode_error_fields(body)


def status(replies: Replies) -> bytes:
    assert replies[-1][0] == b"Z"
    return replies[-1][1]


def run(name: str) -> bytes:
    return messages.bind("", name, []) + messages.execute() + messages.sync()


def proxy_names(w: Wire) -> list[str]:
    """What an attacker reads on a shared backend: the proxy's statement names."""
    replies = w.send(messages.query("SELECT name FROM pg_prepared_statements"))
    return [body[6:].decode() for t, body in replies if t == b"D"]

