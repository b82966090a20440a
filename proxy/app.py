"""Wires config, authentication, pools and listeners together; owns shared server state.

Cancel keys and the forwarding of cancels are in :mod:`proxy.cancel` (the base of
:class:`ProxyApp`); ending a client once its transaction is over (graceful shutdown, a
tenant placement moved) in :mod:`proxy.draining`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from proxy.auth.jwt import JwtVerifier
from proxy.cancel import CancelForwarding
from proxy.config import (
    MAX_WORKERS,
    Config,
    ConfigError,
    DatabaseConfig,
    ServiceAccountConfig,
    load_config,
    parse_listen,
    resolve_secret,
)
from proxy.draining import ADMIN_SHUTDOWN, end_after_transaction
from proxy.frontend.client import ClientConnection
from proxy.frontend.guarding import ParseVerdicts
from proxy.guard import Guard
from proxy.metrics.http import MetricsServer
from proxy.placement import PlacementRouter  # --- placement ---
from proxy.pool.pool import ServerPool
from proxy.stats import ProxyStats
from proxy.tasks import TaskSet

if TYPE_CHECKING:
    from proxy.auth.errors import AuthError
    from proxy.supervisor import WorkerRole

log = logging.getLogger("pgtenant.app")

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


class ProxyApp(CancelForwarding):
    """One proxy process: listeners, pools, clients, cancel keys (its base,
    :class:`~proxy.cancel.CancelForwarding`, forwards the cancels)."""

    def __init__(self, config: Config, worker: WorkerRole | None = None) -> None:
        super().__init__()  # the cancel keys
        self.config = config
        self.worker: WorkerRole | None = worker  # set when this is one of [server] workers
        self.verifier = JwtVerifier.from_config(config.auth.jwt, config.tenancy)
        tenancy = config.tenancy
        proof_key = resolve_secret(tenancy.proof_key_env, tenancy.proof_key_file,
                                   "tenancy.proof_key")
        if proof_key is not None and len(proof_key.encode()) < 32:
            raise ConfigError("tenancy.proof_key: the signed-context key must be at least "
                              "32 bytes")
        self.proof_key = proof_key.encode() if proof_key is not None else None
        # The tenant registry (pgtenant.tenants), when required: tenant → (status, expiry).
        self.registry: dict[str, tuple[str | None, float]] = {}
        # Guard verdicts of Parse messages by (message body, tenant); see ClientConnection.
        self.parse_verdicts: ParseVerdicts = {}
        self.guard = (Guard(tenancy, cache_size=tenancy.guard_cache_size,
                            allowed_roles=frozenset(tenancy.allowed_roles))
                      if tenancy.guard else None)
        # Hot-path counters, read by the metrics collector at scrape time.
        self.auth_failures: dict[str, int] = {}
        self.stats = ProxyStats(config.databases, auth_failures=self.auth_failures)
        self.metrics_server: MetricsServer | None = None
        self.pools: dict[str, ServerPool] = {}
        for name, db in config.databases.items():
            password = resolve_secret(db.password_env, db.password_file,
                                      f"databases.{name}.password")
            self.pools[name] = ServerPool(db, password, self.stats)
        # --- placement: the tenant's cluster, chosen at login (proxy/placement.py) ---
        self.router = PlacementRouter(self, lambda db: resolve_secret(
            db.password_env, db.password_file, f"databases.{db.name}.password"),
            end_after_transaction)
        # --- service accounts: bypass_tenancy pools, (database, upstream_user) → pool ---
        # Never in self.pools (clients pick those by database name); created on first use.
        self.service_pools: dict[tuple[str, str], ServerPool] = {}
        self._service_passwords = self._resolve_service_passwords(config)
        # --- end service accounts ---
        self.client_ssl_context = self._client_ssl_context()
        self.clients: set[ClientConnection] = set()
        self._open_client_sockets: set[ClientConnection] = set()
        self._client_sockets_closed: asyncio.Event | None = None  # set by stop()
        self._client_ids = 0
        self._servers: list[asyncio.AbstractServer] = []
        self._maintenance: asyncio.Task[None] | None = None
        self._protected = config.tenancy.protected_prefixes
        # --- reload / graceful shutdown (see docs/operations.md) ---
        self._retired_pools: list[ServerPool] = []  # removed by a reload, still in use
        self._retired_closes = TaskSet()  # their closes, once the last client left
        self._shutdown_task: asyncio.Task[None] | None = None
        self._drain_cut = False   # a second SIGTERM: stop waiting for transactions
        self._stopping = False
        self.stopped = asyncio.Event()  # set when stop() has finished
        # --- end reload / shutdown ---

    def _client_ssl_context(self, config: Config | None = None) -> ssl.SSLContext | None:
        srv = (config or self.config).server
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
        # Workers share the port: the kernel spreads new connections over them.
        server = await loop.create_server(self._client_protocol, host, port,
                                          reuse_address=True, backlog=2048,
                                          reuse_port=self.worker is not None)
        self._servers.append(server)
        if self.worker is not None:
            # Other workers pass on the CancelRequests that belong to this one here.
            self._servers.append(await loop.create_unix_server(
                self._client_protocol, self.worker.cancel_socket()))
            # The supervisor runs console commands on every worker through this socket.
            from proxy.admin import control
            from proxy.admin.console import AdminConsole

            self._servers.append(await control.serve(self.worker.control_socket(),
                                                     AdminConsole(self).run_local))
        if srv.unix_socket_dir:
            path = os.path.join(srv.unix_socket_dir, f".s.PGSQL.{port}")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            self._servers.append(await loop.create_unix_server(
                self._client_protocol, path))
        if host not in _LOOPBACK and not self.client_ssl_context:
            if srv.allow_insecure_password:
                log.warning("listening on %s without TLS and allow_insecure_password = true: "
                            "tokens cross the network in cleartext", srv.listen)
            else:
                log.warning("listening on %s without TLS: only loopback clients can log in",
                            srv.listen)
        self._maintenance = loop.create_task(self._maintain())
        if self.verifier.remote is not None:  # an identity provider's JWKS URL
            await self.verifier.remote.start()
        # --- metrics endpoint ---
        if self.worker is not None:
            # Read (and aggregated) by the supervisor; bound last: it means "started".
            self.metrics_server = MetricsServer(self)
            await self.metrics_server.start_unix(self.worker.metrics_socket())
        elif srv.metrics_listen:
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
            for pool in [*self.pools.values(), *self.service_pools.values()]:
                try:
                    pool.maintain()
                    pool.trim()  # a reload may have made pool_size smaller
                except Exception:
                    log.exception("pool maintenance failed for %s", pool.db.name)
            self._close_retired_pools()

    async def stop(self) -> None:
        """Stop accepting, close clients with 57P01, close server connections.

        Immediate; :meth:`shutdown` first lets running transactions finish.
        """
        if self._stopping:
            await self.stopped.wait()
            return
        self._stopping = True
        self._client_sockets_closed = asyncio.Event()
        for server in self._servers:
            server.close()
        for client in list(self.clients):
            client.fatal("57P01", ADMIN_SHUTDOWN)
        if self._maintenance is not None:
            self._maintenance.cancel()
        if self.verifier.remote is not None:
            await self.verifier.remote.stop()
        await self.router.close()  # --- placement ---
        for pool in [*self.pools.values(), *self.service_pools.values(),
                     *self._retired_pools]:
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
        self.stopped.set()

    # ---- graceful shutdown (SIGTERM, console SHUTDOWN) ---------------------------------

    def request_shutdown(self) -> None:
        """Start :meth:`shutdown` (once); asked again, stop waiting for transactions."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.get_running_loop().create_task(self.shutdown())
        elif not self._drain_cut:
            log.warning("shutdown requested again: closing clients now")
            self._drain_cut = True

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting; let running transactions finish, then :meth:`stop`.

        Clients with no transaction in flight get FATAL 57P01 right away; the others
        when their transaction ends, or when ``grace`` seconds (default [server]
        shutdown_timeout) runs out. Pools are paused, so no new transaction starts.
        """
        if grace is None:
            grace = self.config.server.shutdown_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        log.info("shutting down: waiting up to %gs for running transactions", grace)
        try:
            for server in self._servers:
                server.close()
            for pool in [*self.pools.values(), *self.service_pools.values(),
                         *self._retired_pools]:
                pool.pause()
            while not self._stopping:
                for client in list(self.clients):
                    end_after_transaction(client)
                if not self.clients or self._drain_cut or loop.time() >= deadline:
                    break
                await asyncio.sleep(0.01)
            if self.clients:
                log.warning("shutdown: %d client(s) still in a transaction are closed",
                            len(self.clients))
        finally:
            await self.stop()

    # ---- reload (SIGHUP, console RELOAD) ---------------------------------------------

    def reload(self, config: Config | None = None) -> None:
        """Re-read the config file (or take ``config``), validate it, apply it.

        Applied without dropping clients: pool sizes, timeouts and limits, JWT keys,
        admin users, TLS certificates, databases added or removed (clients of a removed
        one finish; new ones are refused). Keys that need a restart (listen,
        unix_socket_dir, metrics_listen, log_level) keep their old value, with a warning.
        Raises :class:`ConfigError` (logged, counted) and keeps the old config when the
        new one is invalid or changes what cannot change live (tenancy, pool_mode).
        """
        try:
            new = load_config(self.config.path) if config is None else config
            apply = self._prepare_reload(new)
        except ConfigError as exc:
            self.stats.config_reload_failures += 1
            log.error("configuration reload refused, the old configuration stays: %s", exc)
            raise
        apply()
        self.stats.config_reloads += 1
        log.info("configuration reloaded from %s", new.path)

    def _prepare_reload(self, new: Config) -> Callable[[], None]:
        """Everything that can fail, before anything changes; returns the change."""
        old = self.config
        if new.tenancy != old.tenancy:
            raise ConfigError(f"{new.path}: tenancy: changes need a restart")
        for name, db in new.databases.items():
            pool = self.pools.get(name)
            if pool is not None and pool.db.pool_mode != db.pool_mode:
                raise ConfigError(f"{new.path}: databases.{name}.pool_mode: changes need a "
                                  "restart")
        passwords = {name: resolve_secret(db.password_env, db.password_file,
                                          f"databases.{name}.password")
                     for name, db in new.databases.items()}
        verifier = JwtVerifier.from_config(new.auth.jwt, new.tenancy, previous=self.verifier)
        service_passwords = self._resolve_service_passwords(new)
        restart_only = ("listen", "unix_socket_dir", "metrics_listen", "log_level",
                        "workers", "log_format")
        kept = {key: getattr(old.server, key) for key in restart_only}
        for key, value in kept.items():
            if getattr(new.server, key) != value:
                log.warning("reload: server.%s changes need a restart; keeping %r", key, value)
        config = dataclasses.replace(new, server=dataclasses.replace(new.server, **kept))
        try:
            ssl_context = self._client_ssl_context(config)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{new.path}: server.tls_cert_file: cannot load: {exc}") from None

        def apply() -> None:
            self.config = config
            old_remote, new_remote = self.verifier.remote, verifier.remote
            if old_remote is not new_remote:  # a new JWKS source: swap the refreshers
                if old_remote is not None:
                    old_remote.stop_soon()
                if new_remote is not None:
                    new_remote.start_soon()
            self.verifier = verifier
            self.client_ssl_context = ssl_context
            for name, db in config.databases.items():
                pool = self.pools.get(name)
                if pool is None:
                    self.pools[name] = ServerPool(db, passwords[name], self.stats)
                    log.info("reload: database %s added", name)
                else:
                    pool.reconfigure(db, passwords[name])
            for name in [n for n in self.pools if n not in config.databases]:
                self._retired_pools.append(self.pools.pop(name))
                log.info("reload: database %s removed; its clients may finish", name)
            self._service_passwords = service_passwords
            self._reconfigure_service_pools(config)

        return apply

    def _close_retired_pools(self) -> None:
        for pool in list(self._retired_pools):
            if not pool.active and not any(c.pool is pool for c in self.clients):
                self._retired_pools.remove(pool)
                self._retired_closes.spawn(pool.close())

    # ---- service accounts ([users.NAME] with bypass_tenancy) ----------------------------

    @staticmethod
    def _resolve_service_passwords(config: Config) -> dict[str, str | None]:
        """Upstream passwords of bypass accounts, read at start (and reload) to fail early."""
        return {name: resolve_secret(account.upstream_password_env,
                                     account.upstream_password_file,
                                     f"users.{name}.upstream_password")
                for name, account in config.users.items() if account.bypass_tenancy}

    @staticmethod
    def _service_db(config: Config, database: str,
                    account: ServiceAccountConfig) -> DatabaseConfig:
        # The database's entry with the account's own role; allow_privileged_upstream
        # comes from the account only, so it never widens the default pool.
        assert account.upstream_user is not None
        return dataclasses.replace(config.databases[database], user=account.upstream_user,
                                   min_pool_size=0,
                                   allow_privileged_upstream=account.allow_privileged_upstream)

    def service_pool(self, database: str, account: ServiceAccountConfig) -> ServerPool:
        """The pool of a bypass_tenancy account on ``database``: its own upstream role,
        keyed by (database, upstream_user), created on first use; never the default pool."""
        assert account.bypass_tenancy and account.upstream_user is not None
        key = (database, account.upstream_user)
        pool = self.service_pools.get(key)
        if pool is None:
            db = self._service_db(self.config, database, account)
            if db.allow_privileged_upstream:
                log.warning("service account %s: database %s runs as %s with "
                            "allow_privileged_upstream: row-level security may not apply "
                            "to this account", account.name, database, db.user)
            pool = ServerPool(db, self._service_passwords.get(account.name), self.stats)
            self.service_pools[key] = pool
            main = self.pools.get(database)
            if main is not None and main.paused:  # a PAUSE of the database holds it too
                pool.pause()
            log.info("service account %s: pool for database %s as %s opened", account.name,
                     database, db.user)
        return pool

    def pool_kind(self, pool: ServerPool) -> str:
        """``tenant`` for a database's own pool, ``bypass`` for a bypass account's pool."""
        return "tenant" if self.pools.get(pool.db.name) is pool else "bypass"

    def _reconfigure_service_pools(self, config: Config) -> None:
        """After a reload: keep the pools some bypass account still maps to, retire others."""
        wanted: dict[tuple[str, str], ServiceAccountConfig] = {}
        for account in config.users.values():
            if account.bypass_tenancy and account.upstream_user is not None:
                for database in account.databases or tuple(config.databases):
                    wanted.setdefault((database, account.upstream_user), account)
        for key in list(self.service_pools):
            wanted_by = wanted.get(key)
            if wanted_by is None or key[0] not in config.databases:
                self._retired_pools.append(self.service_pools.pop(key))
                log.info("reload: service pool for database %s as %s retired", *key)
            else:
                self.service_pools[key].reconfigure(
                    self._service_db(config, key[0], wanted_by),
                    self._service_passwords.get(wanted_by.name))

    # ---- admin console ----------------------------------------------------------------

    def kill_client(self, client_id: int) -> bool:
        """End one client with FATAL 57P01 (console KILL_CLIENT); False if unknown."""
        for client in self.clients:
            if client.id == client_id:
                client.fatal("57P01", ADMIN_SHUTDOWN)
                return True
        return False

    # ---- clients ----------------------------------------------------------------------

    def _client_protocol(self) -> asyncio.Protocol:
        """A new client for the event loop (ClientConnection has the protocol's methods;
        it does not inherit asyncio.Protocol: its base, ClientRelay, knows no event loop)."""
        return cast(asyncio.Protocol, ClientConnection(self))

    def next_client_id(self) -> int:
        self._client_ids += 1
        if self.worker is not None:  # unique across workers: the low bits name the worker
            return self._client_ids * MAX_WORKERS + self.worker.index
        return self._client_ids

    def client_connected(self, client: ClientConnection) -> None:
        self.clients.add(client)
        self._open_client_sockets.add(client)

    def client_disconnected(self, client: ClientConnection) -> None:
        self.clients.discard(client)
        self.router.forget(client)  # --- placement ---
        self.forget_cancel_key(client)

    def open_admin_session(self, client: ClientConnection, user: str, pending: bytes) -> None:
        """A client logging in to database "pgtenant": the admin console takes over."""
        from proxy.admin.session import open_admin_session
        open_admin_session(self, client, user, pending)

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
        log.info("client #%s (%s): authentication failed: %s", client.id, client.peer,
                 exc.reason, extra={"client_id": client.id, "event": "auth_failed"})
