"""A raw PostgreSQL protocol client for tests: bytes exactly as a test writes them.

Two flavours of the same thing: blocking functions on a socket (a test that scripts the
protocol message by message) and :class:`RawClient` on asyncio streams (load tests that
want thousands of cheap connections without driver machinery). Both log in with a JWT
as the password, like every pgtenant client.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from proxy.wire import authentication, messages
from tests.proxy_harness import token

Message = tuple[bytes, bytes]  # (tag, body)

STARTUP = {"user": "u", "database": "app"}


# ---- blocking, on a socket -------------------------------------------------------------

def connect(port: int) -> socket.socket:
    """A plain TCP connection to the proxy on 127.0.0.1, nothing sent yet."""
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def read_message(sock: socket.socket) -> Message:
    header = read_exact(sock, 5)
    (length,) = struct.unpack("!i", header[1:])
    return header[:1], read_exact(sock, length - 4)


def read_until(sock: socket.socket, last: bytes) -> list[Message]:
    """Messages up to and including the first one tagged ``last``."""
    out = []
    while True:
        tag, body = read_message(sock)
        out.append((tag, body))
        if tag == last:
            return out


def logged_in(port: int, tenant: str) -> socket.socket:
    """A socket past startup and authentication as ``tenant``, at the first ReadyForQuery."""
    sock = connect(port)
    sock.sendall(messages.startup_message(STARTUP))
    read_until(sock, b"R")
    sock.sendall(authentication.password_message(token(tenant).encode() + b"\0"))
    read_until(sock, b"Z")
    return sock


# ---- asyncio ---------------------------------------------------------------------------

class RawClient:
    """One connection to the proxy, logged in as ``tenant`` (cheap: no driver machinery)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def login(cls, port: int, tenant: str, jwt: str | None = None) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        writer.write(messages.startup_message(STARTUP))
        tag, _ = await client.message()
        assert tag == b"R", tag
        writer.write(authentication.password_message((jwt or token(tenant)).encode() + b"\0"))
        await client.until_ready()
        return client

    async def message(self) -> Message:
        header = await self.reader.readexactly(5)
        (length,) = struct.unpack("!i", header[1:])
        return header[:1], await self.reader.readexactly(length - 4)

    async def until_ready(self) -> list[Message]:
        """Messages up to ReadyForQuery; an ErrorResponse raises with its fields."""
        out = []
        while True:
            tag, body = await self.message()
            if tag == b"E":
                raise RuntimeError(messages.decode_error_fields(body))
            out.append((tag, body))
            if tag == b"Z":
                return out

    async def query(self, sql: str) -> list[list[str | None]]:
        """Run a simple query; return its rows as text."""
        self.writer.write(messages.query(sql))
        rows = []
        for tag, body in await self.until_ready():
            if tag == b"D":
                (count,) = struct.unpack_from("!h", body)
                pos, row = 2, []
                for _ in range(count):
                    (size,) = struct.unpack_from("!i", body, pos)
                    pos += 4
                    row.append(None if size < 0 else body[pos:pos + size].decode())
                    pos += max(size, 0)
                rows.append(row)
        return rows

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.write(messages.terminate())
            self.writer.close()
