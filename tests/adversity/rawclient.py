"""A minimal asyncio PostgreSQL client for load tests: startup, JWT password, simple queries."""

from __future__ import annotations

import asyncio
import struct

from proxy.wire import messages
from tests.proxy_harness import token


class RawClient:
    """One connection to the proxy, logged in as ``tenant`` (cheap: no driver machinery)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def login(cls, port: int, tenant: str, jwt: str | None = None) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        writer.write(messages.startup_message({"user": "u", "database": "app"}))
        tag, _ = await client.message()
        assert tag == b"R", tag
        writer.write(messages.password_message((jwt or token(tenant)).encode() + b"\0"))
        await client.until_ready()
        return client

    async def message(self) -> tuple[bytes, bytes]:
        header = await self.reader.readexactly(5)
        (length,) = struct.unpack("!i", header[1:])
        return header[:1], await self.reader.readexactly(length - 4)

    async def until_ready(self) -> list[tuple[bytes, bytes]]:
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
