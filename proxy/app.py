"""Wires config, authentication, pools and listeners together; owns shared server state."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import ssl
from typing import TYPE_CHECKING

from proxy.auth.jwt import JwtVerifier
from proxy.config import Config, parse_listen, resolve_secret
from proxy.metrics.http import MetricsServer
from proxy.pool.pool import ServerPool
from proxy.session.client import ClientConnection
from proxy.session.server import FORWARD, ServerConnection
from proxy.stats import ProxyStats
from proxy.tasks import TaskSet
from proxy.wire import messages

if TYPE_CHECKING:
    from proxy.auth.errors import AuthError

log = logging.getLogger("pgtenant.app")

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


class ProxyApp:
    """One proxy process: listeners, pools, clients, cancel keys."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.verifier = JwtVerifier.from_config(config.auth.jwt, config.tenancy)
        # Hot-path counters, read by the metrics collector at scrape time.
        self.auth_failures: dict[str, int] = {}
        self.stats = ProxyStats(config.databases, auth_failures=self.auth_failures)
        self.metrics_server: MetricsServer | None = None
        self.pools: dict[str, ServerPool] = {}
        for name, db in config.databases.items():
            password = resolve_secret(db.password_env, db.password_file,
                                      f"databases.{name}.password")
            self.pools[name] = ServerPool(db, password, self.stats)
        self.client_ssl_context = self._client_ssl_context()
        self.clients: set[ClientConnection] = set()
        self._open_client_sockets: set[ClientConnection] = set()
        self._client_sockets_closed: asyncio.Event | None = None  # set by stop()
        self._cancel_keys: dict[int, ClientConnection] = {}
        self._client_ids = 0
        self._servers: list[asyncio.AbstractServer] = []
        self._maintenance: asyncio.Task[None] | None = None
        self._cancel_tasks = TaskSet()
        self._protected = config.tenancy.protected_prefixes

    def _client_ssl_context(self) -> ssl.SSLContext | None:
        srv = self.config.server
        if not srv.tls_cert_file:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(srv.tls_cert_file, srv.tls_key_file)
        return ctx

    # ---- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the listeners (and fail loudly if the address is taken)."""
        loop = asyncio.get_running_loop()
        srv = self.config.server
        host, port = parse_listen(srv.listen)
        server = await loop.create_server(lambda: ClientConnection(self), host, port,
                                          reuse_address=True, backlog=2048)
        self._servers.append(server)
        if srv.unix_socket_dir:
            path = os.path.join(srv.unix_socket_dir, f".s.PGSQL.{port}")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            self._servers.append(await loop.create_unix_server(
                lambda: ClientConnection(self), path))
        if host not in _LOOPBACK and not self.client_ssl_context:
            if srv.allow_insecure_password:
                log.warning("listening on %s without TLS and allow_insecure_password = true: "
                            "tokens cross the network in cleartext", srv.listen)
            else:
                log.warning("listening on %s without TLS: only loopback clients can log in",
                            srv.listen)
        self._maintenance = loop.create_task(self._maintain())
        # --- metrics endpoint ---
        if srv.metrics_listen:
            self.metrics_server = MetricsServer(self)
            await self.metrics_server.start(srv.metrics_listen)
        # --- end metrics ---
        log.info("pgtenant listening on %s (databases: %s)", srv.listen,
                 ", ".join(f"{n} [{p.db.pool_mode}]" for n, p in self.pools.items()))

    @property
    def sockets(self) -> list[tuple[str, int]]:
        out = []
        for server in self._servers:
            for sock in getattr(server, "sockets", ()):
                name = sock.getsockname()
                if isinstance(name, tuple):
                    out.append((str(name[0]), int(name[1])))
        return out

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for pool in self.pools.values():
                try:
                    pool.maintain()
                except Exception:
                    log.exception("pool maintenance failed for %s", pool.db.name)

    async def stop(self) -> None:
        """Stop accepting, close clients with 57P01, close server connections."""
        self._client_sockets_closed = asyncio.Event()
        for server in self._servers:
            server.close()
        for client in list(self.clients):
            client.fatal("57P01", "terminating connection due to administrator command")
        if self._maintenance is not None:
            self._maintenance.cancel()
        for pool in self.pools.values():
            await pool.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        # Let the client sockets finish closing before the loop goes away.
        if self._open_client_sockets:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._client_sockets_closed.wait()
        # --- metrics endpoint: last, so /readyz answers 503 while the proxy drains ---
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        # --- end metrics ---

    # ---- clients ----------------------------------------------------------------------

    def next_client_id(self) -> int:
        self._client_ids += 1
        return self._client_ids

    def client_connected(self, client: ClientConnection) -> None:
        self.clients.add(client)
        self._open_client_sockets.add(client)

    def client_disconnected(self, client: ClientConnection) -> None:
        self.clients.discard(client)
        if self._cancel_keys.get(client.cancel_pid) is client:
            del self._cancel_keys[client.cancel_pid]

    def client_transport_closed(self, client: ClientConnection) -> None:
        self._open_client_sockets.discard(client)
        if not self._open_client_sockets and self._client_sockets_closed is not None:
            self._client_sockets_closed.set()

    def too_many_clients(self) -> bool:
        return len(self.clients) > self.config.server.max_client_conn

    def is_protected_setting(self, name: str) -> bool:
        lowered = name.lower()
        return any(lowered.startswith(prefix) for prefix in self._protected)

    def auth_failed(self, client: ClientConnection, exc: AuthError) -> None:
        self.auth_failures[exc.reason] = self.auth_failures.get(exc.reason, 0) + 1
        log.info("client #%s (%s): authentication failed: %s", client.id, client.peer, exc.reason)

    # ---- cancel -----------------------------------------------------------------------

    def register_cancel_key(self, client: ClientConnection) -> tuple[int, bytes]:
        """The proxy's own BackendKeyData for a client; never a real backend's."""
        while True:
            pid = secrets.randbelow(2**31 - 2) + 1
            if pid not in self._cancel_keys:
                break
        self._cancel_keys[pid] = client
        return pid, secrets.token_bytes(4)

    def cancel(self, pid: int, secret: bytes) -> None:
        """Forward a CancelRequest to the backend running this client's request, if any."""
        client = self._cancel_keys.get(pid)
        if client is None or not hmac.compare_digest(client.cancel_secret, secret):
            log.info("cancel request with an unknown key ignored")
            return
        if client.server is not None:
            self.cancel_server(client.server)

    def cancel_server(self, server: ServerConnection) -> None:
        """Cancel what the server runs, but only while it runs a client's request.

        Never the proxy's own context set (a cancelled set could leave the previous
        context in place), never an idle server that may already serve someone else.
        """
        if not server.pending or server.pending[0] is not FORWARD:
            return
        self._cancel_tasks.spawn(
            self._send_cancel(server.db.host, server.db.port, server.backend_pid,
                              server.backend_key))

    async def _send_cancel(self, host: str, port: int, pid: int, key: bytes) -> None:
        try:
            async with asyncio.timeout(5):
                if host.startswith("/"):
                    reader, writer = await asyncio.open_unix_connection(
                        f"{host}/.s.PGSQL.{port}")
                else:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(messages.cancel_request(pid, key))
                await writer.drain()
                await reader.read()  # the server closes when done
                writer.close()
        except (OSError, TimeoutError) as exc:
            log.warning("could not forward cancel request: %s", exc)
