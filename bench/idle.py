"""The idle-connections test: thousands of clients log in, then sit idle.

Raw sockets on one asyncio loop (not a thread per client): each client sends a
StartupMessage, completes authentication (cleartext for pgtenant's JWT, SCRAM-SHA-256
for PgBouncer, md5 just in case), waits for ReadyForQuery and then sends nothing.
Meanwhile we read the proxy's resident memory and its CPU use while every client idles.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import resource
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.procstat import cpu_seconds, rss_bytes

_PROTOCOL_VERSION = 196608  # 3.0
_HANDSHAKE_TIMEOUT = 60.0
_SAMPLE_SIZE = 10

# AuthenticationRequest codes (PostgreSQL protocol docs).
_AUTH_OK = 0
_AUTH_CLEARTEXT = 3
_AUTH_MD5 = 5
_AUTH_SASL = 10
_AUTH_SASL_CONTINUE = 11
_AUTH_SASL_FINAL = 12


class LoginError(RuntimeError):
    """A client could not log in (server error, closed connection, unknown auth)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    user: str
    password: str
    database: str


@dataclass(frozen=True, slots=True)
class IdleOutcome:
    """What the idle test measured for one target."""

    clients: int
    opened: int
    first_error: str | None
    connect_seconds: float
    rss_before: int
    rss_after: int
    idle_seconds: float
    idle_cpu_seconds: float
    sample_size: int
    sample_ok: int

    @property
    def failed(self) -> int:
        return self.clients - self.opened

    @property
    def rss_per_client(self) -> float | None:
        if self.opened == 0:
            return None
        return (self.rss_after - self.rss_before) / self.opened

    @property
    def idle_cpu_percent(self) -> float:
        return 100.0 * self.idle_cpu_seconds / self.idle_seconds if self.idle_seconds else 0.0


def raise_open_files_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE towards ``wanted`` (children inherit it); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    if hard != resource.RLIM_INFINITY and hard < wanted and os.geteuid() == 0:
        with open("/proc/sys/fs/nr_open") as nr_open:
            ceiling = int(nr_open.read())
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, ceiling),) * 2)
            return min(wanted, ceiling)
    new_soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
    return new_soft


def _message(tag: bytes, body: bytes) -> bytes:
    return tag + (len(body) + 4).to_bytes(4, "big") + body


def _startup_packet(credentials: Credentials) -> bytes:
    pairs = (
        ("user", credentials.user),
        ("database", credentials.database),
        ("application_name", "pgtenant-bench-idle"),
    )
    body = _PROTOCOL_VERSION.to_bytes(4, "big")
    body += b"".join(f"{key}\0{value}\0".encode() for key, value in pairs) + b"\0"
    return (len(body) + 4).to_bytes(4, "big") + body


def _error_text(body: bytes) -> str:
    fields = {
        chunk[:1]: chunk[1:].decode(errors="replace") for chunk in body.split(b"\0") if chunk
    }
    return f"{fields.get(b'C', '?')}: {fields.get(b'M', 'unknown error')}"


class _ScramClient:
    """Client side of SCRAM-SHA-256 (RFC 5802, RFC 7677) without channel binding.

    The salted password is cached per (salt, iterations): a server that keeps the
    same verifier costs one PBKDF2 for all clients.
    """

    def __init__(self, password: str, cache: dict[tuple[bytes, int], bytes]) -> None:
        self._password = password.encode()
        self._cache = cache
        self._nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self._first_bare = f"n=,r={self._nonce}"
        self._server_signature = b""

    def first_message(self) -> bytes:
        return f"n,,{self._first_bare}".encode()

    def final_message(self, server_first: str) -> bytes:
        attributes = dict(item.split("=", 1) for item in server_first.split(","))
        nonce, salt, iterations = attributes["r"], attributes["s"], int(attributes["i"])
        if not nonce.startswith(self._nonce):
            raise LoginError("SCRAM: the server's nonce does not extend ours")
        salted = self._salted(base64.b64decode(salt), iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self._first_bare},{server_first},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        self._server_signature = hmac.digest(server_key, auth_message, "sha256")
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def check_final(self, server_final: str) -> None:
        if not server_final.startswith("v="):
            raise LoginError(f"SCRAM: server refused the proof ({server_final})")
        if not hmac.compare_digest(base64.b64decode(server_final[2:]), self._server_signature):
            raise LoginError("SCRAM: the server's signature does not verify")

    def _salted(self, salt: bytes, iterations: int) -> bytes:
        key = (salt, iterations)
        salted = self._cache.get(key)
        if salted is None:
            salted = hashlib.pbkdf2_hmac("sha256", self._password, salt, iterations)
            self._cache[key] = salted
        return salted


class _IdleClient:
    """One raw client socket and its receive buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()

    async def receive(self) -> tuple[bytes, bytes]:
        """The next backend message as (tag, body)."""
        loop = asyncio.get_running_loop()
        while True:
            if len(self._buffer) >= 5:
                end = 1 + int.from_bytes(self._buffer[1:5], "big")
                if len(self._buffer) >= end:
                    tag, body = bytes(self._buffer[:1]), bytes(self._buffer[5:end])
                    del self._buffer[:end]
                    return tag, body
            chunk = await loop.sock_recv(self.sock, 65536)
            if not chunk:
                raise LoginError("the server closed the connection")
            self._buffer += chunk

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def login(
        self, credentials: Credentials, scram_cache: dict[tuple[bytes, int], bytes]
    ) -> None:
        await self.send(_startup_packet(credentials))
        scram: _ScramClient | None = None
        while True:
            tag, body = await self.receive()
            if tag == b"E":
                raise LoginError(_error_text(body))
            if tag == b"Z":
                return
            if tag != b"R":
                continue  # ParameterStatus, BackendKeyData, NoticeResponse
            code = int.from_bytes(body[:4], "big")
            if code == _AUTH_CLEARTEXT:
                await self.send(_message(b"p", credentials.password.encode() + b"\0"))
            elif code == _AUTH_MD5:
                inner = hashlib.md5(
                    (credentials.password + credentials.user).encode()
                ).hexdigest()
                outer = hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                await self.send(_message(b"p", b"md5" + outer.encode() + b"\0"))
            elif code == _AUTH_SASL:
                if b"SCRAM-SHA-256\0" not in body[4:]:
                    raise LoginError("the server offers no SCRAM-SHA-256")
                scram = _ScramClient(credentials.password, scram_cache)
                first = scram.first_message()
                await self.send(_message(
                    b"p", b"SCRAM-SHA-256\0" + len(first).to_bytes(4, "big") + first
                ))
            elif code == _AUTH_SASL_CONTINUE and scram is not None:
                await self.send(_message(b"p", scram.final_message(body[4:].decode())))
            elif code == _AUTH_SASL_FINAL and scram is not None:
                scram.check_final(body[4:].decode())
            elif code != _AUTH_OK:
                raise LoginError(f"unsupported authentication request {code}")

    async def query_ok(self) -> bool:
        """Run ``SELECT 1``; whether it answered without error."""
        await self.send(_message(b"Q", b"SELECT 1\0"))
        ok = True
        while True:
            tag, _ = await self.receive()
            if tag == b"E":
                ok = False
            if tag == b"Z":
                return ok

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(_message(b"X", b""))
        self.sock.close()


async def _open_client(
    host: str,
    port: int,
    credentials: Credentials,
    scram_cache: dict[tuple[bytes, int], bytes],
    gate: asyncio.Semaphore,
) -> _IdleClient:
    async with gate:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        client = _IdleClient(sock)
        try:
            async with asyncio.timeout(_HANDSHAKE_TIMEOUT):
                await asyncio.get_running_loop().sock_connect(sock, (host, port))
                await client.login(credentials, scram_cache)
        except BaseException:
            sock.close()
            raise
        return client


async def measure(
    host: str,
    port: int,
    credentials: Sequence[Credentials],
    *,
    clients: int,
    proxy_pids: Callable[[], list[int]],
    concurrency: int = 200,
    settle_seconds: float = 2.0,
    idle_seconds: float = 5.0,
) -> IdleOutcome:
    """Open ``clients`` logged-in idle connections (client i uses credentials[i % n]),
    measure the proxy, check that a few of them still answer, then close them all."""
    gate = asyncio.Semaphore(concurrency)
    scram_cache: dict[tuple[bytes, int], bytes] = {}
    rss_before = rss_bytes(proxy_pids())
    began = time.monotonic()
    outcomes = await asyncio.gather(
        *(
            _open_client(host, port, credentials[i % len(credentials)], scram_cache, gate)
            for i in range(clients)
        ),
        return_exceptions=True,
    )
    connect_seconds = time.monotonic() - began
    opened = [outcome for outcome in outcomes if isinstance(outcome, _IdleClient)]
    errors = [outcome for outcome in outcomes if not isinstance(outcome, _IdleClient)]
    first_error = f"{type(errors[0]).__name__}: {errors[0]}" if errors else None
    try:
        await asyncio.sleep(settle_seconds)
        rss_after = rss_bytes(proxy_pids())
        cpu_before = cpu_seconds(proxy_pids())
        await asyncio.sleep(idle_seconds)
        idle_cpu = cpu_seconds(proxy_pids()) - cpu_before
        sample = opened[:: max(1, len(opened) // _SAMPLE_SIZE)][:_SAMPLE_SIZE]
        answered = await asyncio.gather(
            *(asyncio.wait_for(client.query_ok(), 30) for client in sample),
            return_exceptions=True,
        )
    finally:
        for client in opened:
            client.close()
    return IdleOutcome(
        clients=clients,
        opened=len(opened),
        first_error=first_error,
        connect_seconds=connect_seconds,
        rss_before=rss_before,
        rss_after=rss_after,
        idle_seconds=idle_seconds,
        idle_cpu_seconds=idle_cpu,
        sample_size=len(sample),
        sample_ok=sum(1 for ok in answered if ok is True),
    )
