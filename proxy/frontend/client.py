"""A client connection: startup, TLS, JWT authentication, then relaying to a server.

Flow: StartupMessage (SSLRequest/GSSENCRequest/CancelRequest answered on the way) →
AuthenticationCleartextPassword → the JWT arrives as the password and is verified →
a server connection is leased and given the client's tenant context before the greeting
→ ReadyForQuery. Session mode keeps that server until the client leaves; transaction
mode returns it on every ReadyForQuery 'I' and leases one again at the next message.

The client holds its server as a ``proxy.pool.lease.Lease``. Where the tenant is set:
the lease (``Lease.begin``/``context_ready`` pipeline the set when a failed one could not
leave another tenant in place; ``Lease.set_context`` sends one the client waits for, at
login and on a switch from another tenant) — before any client message is written to a
server connection whose context is not this client's; the bytes are built in one place,
``proxy.backend.context``. Where a server goes back to the pool: the lease too
(``Lease.release``; ``Lease.keep`` between transactions). A linked client ends its lease
in :meth:`ClientConnection._release_server`.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import ipaddress
import logging
import ssl
import time
from typing import TYPE_CHECKING

from proxy.auth.errors import AuthError
from proxy.auth.identity import Identity
from proxy.auth.service_accounts import ServiceAccountLogin
from proxy.backend.context import TenantContext
from proxy.backend.prepared import (
    internal_batch,
    rewrite,
    to_verify,
    verified,
    verify_batch,
)
from proxy.backend.server import (
    FORWARD,
    BackendSession,
    Collect,
    ServerConnection,
    ServerError,
    ServerState,
    Skip,
)
from proxy.backend.statements import ClientStatement, ServerStatement
from proxy.config import ADMIN_DATABASE
from proxy.frontend.guarding import StreamGuard
from proxy.frontend.requests import NO_STOP, classify
from proxy.guard import Refusal
from proxy.placement import PlacementRefused  # --- placement ---
from proxy.pool.lease import Lease
from proxy.pool.pool import PoolTimeoutError, ServerPool
from proxy.stats import TrafficStats
from proxy.tasks import TaskSet
from proxy.wire import messages
from proxy.wire.errors import ProtocolViolation
from proxy.wire.framing import FrontendFramer, split_frames
from proxy.wire.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupFramer,
    StartupMessage,
    parse_startup_packet,
)
from proxy.wire.tags import BackendTag, FrontendTag

if TYPE_CHECKING:
    from proxy.app import ProxyApp

log = logging.getLogger("pgtenant.client")

_Q = FrontendTag.QUERY
_S = FrontendTag.SYNC
_F = FrontendTag.FUNCTION_CALL
_X = FrontendTag.TERMINATE
_P = FrontendTag.PASSWORD
# query_timeout: how long the server may take to answer the proxy's cancel, at most.
_QUERY_TIMEOUT_GRACE = 5.0

# Startup parameters that are connection plumbing, not session settings.
_NOT_SETTINGS = frozenset({"user", "database", "options", "replication"})
# Pause reading from the client when this much is queued waiting for a server.
_QUEUE_HIGH_WATER = 256 * 1024


def is_loopback(host: str) -> bool:
    """True for a loopback peer address (127.0.0.0/8, ::1, and IPv4-mapped forms)."""
    try:
        addr = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


_NO_TRAFFIC = TrafficStats()  # placeholder counters before the database is known
_NO_STARTUP = StartupFramer()  # shared placeholder once startup is over
_SETTLED: dict[str, str] = {}  # shared placeholder for settings once in the context; never written
_PAUSE_BITS = {"queue": 1, "server": 2}


class ClientState(enum.Enum):
    STARTUP = "startup"
    TLS = "tls"
    AUTH = "auth"
    LOGIN = "login"
    READY = "ready"
    CANCEL = "cancel"  # a cancel connection waiting for its request to be handled
    CLOSED = "closed"


class ClientError(Exception):
    """An error a client caused; ends the connection with a FATAL ErrorResponse."""

    def __init__(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.hint = hint


def parse_options(options: str) -> dict[str, str]:
    """Parse the ``options`` startup parameter (``-c name=value`` / ``--name=value``)."""
    words: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in options:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch.isspace():
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(ch)
    if current:
        words.append("".join(current))
    result: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-c" and i + 1 < len(words):
            pair = words[i + 1]
            i += 2
        elif word.startswith("-c"):
            pair = word[2:]
            i += 1
        elif word.startswith("--"):
            pair = word[2:]
            i += 1
        else:
            raise ClientError("08P01", f"unsupported option in the options parameter: {word!r}",
                              "pgtenant accepts only -c name=value options")
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ClientError("08P01", f"malformed option {pair!r} in the options parameter")
        result[name.replace("-", "_")] = value
    return result


class ClientConnection(asyncio.Protocol):
    """One client of the proxy."""

    # One object per connected client, idle ones included: no per-instance __dict__.
    __slots__ = ("_guard", "_idle_timeouts", "_idle_timer", "_leasing",
                 "_login_timer", "_queue", "_queue_batch_start", "_queue_named",
                 "_queue_replies", "_queued_bytes", "_reading_paused_for",
                 "_rewriting", "_service_login", "_tasks", "_touched", "_tx_started",
                 "_unsynced",
                 "_writing_paused", "app",
                 "cancel_pid", "cancel_secret", "context", "database", "framer", "id",
                 "identity", "is_local", "lease", "peer", "pool", "settings", "startup",
                 "state", "statements", "stats_tenant", "tls", "traffic", "transaction_mode",
                 "transport")

    def __init__(self, app: ProxyApp) -> None:
        self.app = app
        self.id = app.next_client_id()
        self.state = ClientState.STARTUP
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.is_local = False
        self.tls = False
        self.startup = StartupFramer()
        self.framer: FrontendFramer | None = None
        self.database = ""
        self.pool: ServerPool | None = None
        self.transaction_mode = False
        self.identity: Identity | None = None
        self.context: TenantContext | None = None
        self.settings: dict[str, str] = {}
        self.lease: Lease | None = None  # the server connection the pool lent it
        self.cancel_pid = 0
        self.cancel_secret = b""
        self._queue: list[bytes] = []   # message blocks waiting for a server
        self._queue_replies = 0
        self._queue_named = False       # the queue holds named-statement messages
        self._queue_batch_start = True  # the queue's first frame starts a batch
        # Transaction mode: the client's prepared statements by name.
        self.statements: dict[str, ClientStatement] | None = None
        self._rewriting = False         # a batch the proxy rewrites goes on until Sync
        self._touched = False  # what goes out next may change the tenant setting (guard)
        self._guard: StreamGuard | None = None  # created at the first message after login
        self.traffic = _NO_TRAFFIC      # the database's counters, once it is known
        self.stats_tenant = "_unknown"  # the tenant label for counters
        self._tx_started = 0.0          # monotonic time the current transaction began
        self._idle_timeouts = False     # idle_transaction_timeout or client_idle_timeout set
        self._idle_timer: asyncio.TimerHandle | None = None
        self._unsynced = False  # the client's stream is mid extended-protocol batch
        self._queued_bytes = 0
        self._leasing = False
        self._writing_paused = False
        self._reading_paused_for = 0  # bits of _PAUSE_BITS: why reading is paused
        self._login_timer: asyncio.TimerHandle | None = None
        self._tasks = TaskSet(self._internal_error)
        self._service_login: ServiceAccountLogin | None = None  # a [users.NAME] SCRAM login

    @property
    def server(self) -> ServerConnection | None:
        """The server connection its lease lends it, if any."""
        lease = self.lease
        return None if lease is None else lease.server

    @property
    def is_active(self) -> bool:
        """Linked to a server connection that works for it (one it kept between
        transactions does not count: the client is idle)."""
        lease = self.lease
        return lease is not None and lease.server.state is not ServerState.KEPT

    def _holds(self, server: BackendSession) -> bool:
        lease = self.lease
        return lease is not None and lease.server is server

    def __repr__(self) -> str:
        tenant = self.identity.tenant if self.identity else None
        return f"<Client #{self.id} {self.state.value} {self.peer} tenant={tenant}>"

    # ---- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            host = str(peer[0])
            self.peer = f"{host}:{peer[1]}"
            self.is_local = is_loopback(host)
        else:  # a Unix socket: local by definition
            self.peer = "unix"
            self.is_local = True
        self.app.client_connected(self)
        self._login_timer = asyncio.get_running_loop().call_later(
            self.app.config.server.client_login_timeout, self._login_timed_out)

    def data_received(self, data: bytes) -> None:
        try:
            if self.state is ClientState.READY:
                assert self.framer is not None
                self.traffic.bytes_in += len(data)
                self.framer.feed(data)
                self._relay_messages()
            elif self.state is ClientState.STARTUP:
                self.startup.feed(data)
                self._startup_packets()
            elif self.state in (ClientState.AUTH, ClientState.LOGIN):
                assert self.framer is not None
                self.framer.feed(data)
                if self.state is ClientState.AUTH:
                    self._password_message()
                elif self.framer.buffered() > _QUEUE_HIGH_WATER:
                    self._pause_reading("queue", True)
        except ProtocolViolation as violation:
            self.fatal("08P01", str(violation))
        except ClientError as error:
            self.fatal(error.sqlstate, str(error), error.hint)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._shutdown()
        self.app.client_transport_closed(self)

    def pause_writing(self) -> None:
        # The client reads slower than the server sends: stop reading from the server.
        self._writing_paused = True
        if self.lease is not None:
            self.lease.server.pause_reading(True)

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.lease is not None:
            self.lease.server.pause_reading(False)

    # ---- startup ----------------------------------------------------------------------

    def _startup_packets(self) -> None:
        while self.state is ClientState.STARTUP:
            body = self.startup.next_packet()
            if body is None:
                return
            packet = parse_startup_packet(body)
            if isinstance(packet, SSLRequest):
                self._ssl_request()
            elif isinstance(packet, GSSENCRequest):
                self._write(b"N")
            elif isinstance(packet, CancelRequest):
                self._cancel_request(packet)
                return
            elif isinstance(packet, StartupMessage):
                self._startup_message(packet)

    def _cancel_request(self, packet: CancelRequest) -> None:
        """Pass the cancel on; close this connection only once it has been handled."""
        done = self.app.cancel(packet.process_id, packet.secret_key)
        if done is None or done.done():
            self._close_transport()
            return
        self.state = ClientState.CANCEL  # nothing more is read from it
        done.add_done_callback(lambda _: self._close_transport())

    def _ssl_request(self) -> None:
        ctx = self.app.client_ssl_context
        if ctx is None or self.tls:
            self._write(b"N")
            return
        if self.startup.buffered():
            # Bytes after SSLRequest before the handshake: a classic injection attempt.
            raise ClientError("08P01", "received unencrypted data after SSL request")
        self._write(b"S")
        self.state = ClientState.TLS
        self._tasks.spawn(self._start_tls(ctx))

    async def _start_tls(self, ctx: ssl.SSLContext) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        try:
            new = await loop.start_tls(self.transport, self, ctx, server_side=True)
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            log.info("client #%s: TLS handshake failed: %s", self.id, exc)
            self._close_transport()
            return
        if new is None:
            self._close_transport()
            return
        self.transport = new  # type: ignore[assignment]
        self.tls = True
        self.state = ClientState.STARTUP

    def _startup_message(self, packet: StartupMessage) -> None:
        params = packet.parameters
        app = self.app
        if packet.protocol_minor > 0 or packet.protocol_options:
            # We speak 3.0; report unknown _pq_ options instead of failing (as PostgreSQL does).
            self._write(messages.negotiate_protocol_version(0, list(packet.protocol_options)))
        if "replication" in params and params["replication"].lower() not in ("false", "0", "off"):
            raise ClientError("0A000", "replication connections are not supported by pgtenant")
        user = params.get("user")
        if not user:
            raise ClientError("28000", "no PostgreSQL user name specified in startup packet")
        self.database = params.get("database") or user
        if app.too_many_clients():
            raise ClientError("53300", "sorry, too many clients already",
                              "the proxy's max_client_conn is reached")
        # --- admin console (proxy/admin): database "pgtenant" takes over the socket ---
        if self.database == ADMIN_DATABASE:
            from proxy.admin.session import open_admin_session
            open_admin_session(self, user, self.startup.remaining())
            return
        # --- end admin console ---
        pool = app.router.front_pool(self.database)  # --- placement --- (was app.pools.get)
        if pool is None:
            raise ClientError("3D000", f"database \"{self.database}\" does not exist",
                              "the database name must be one configured in pgtenant")
        self.pool = pool
        self.traffic = pool.traffic
        self.transaction_mode = pool.db.pool_mode == "transaction"
        if self.transaction_mode:
            self.statements = {}
        settings = {k: v for k, v in params.items() if k not in _NOT_SETTINGS}
        if "options" in params:
            settings.update(parse_options(params["options"]))
        for name in settings:
            if app.is_protected_setting(name):
                app.stats.record_violation("_unknown", "startup_option")
                raise ClientError("42501", f"setting \"{name}\" cannot be set by a client",
                                  "pgtenant sets the tenant context itself")
        if app.guard is not None:
            refusal = app.guard.check_startup(settings)
            if refusal is not None:
                app.stats.record_violation("_unknown", refusal.kind)
                raise ClientError(refusal.sqlstate, refusal.message, refusal.hint)
        self.settings = settings
        if not (self.tls or self.is_local or app.config.server.allow_insecure_password):
            raise ClientError("28000", "pgtenant accepts a password only over an encrypted "
                              "connection", "connect with sslmode=require")
        self.state = ClientState.AUTH
        self.framer = FrontendFramer(app.config.server.max_message_size)
        self.framer.feed(self.startup.remaining())
        self.startup = _NO_STARTUP  # done with startup packets (one less buffer per client)
        # --- service accounts ([users.NAME], proxy/auth/service_accounts.py) ---
        # The method follows from the user name alone, never from the client: a service
        # account's name always gets SCRAM, so a JWT sent for it is never read as one.
        account = app.config.users.get(user)
        if account is not None:
            self._service_login = ServiceAccountLogin(account, self.database)
            self._write(self._service_login.start())
            self._password_message()
            return
        # --- end service accounts ---
        self._write(messages.authentication_cleartext_password())
        self._password_message()

    def _password_message(self) -> None:
        assert self.framer is not None
        msg = self.framer.next_message()
        if msg is None:
            return
        tag, body = msg
        if tag != _P:
            raise ClientError("08P01", f"expected a password message, got type {chr(tag)!r}")
        if self._service_login is not None:
            self._service_account_message(body)
            return
        try:
            token = messages.decode_password(body).decode("utf-8")
        except UnicodeDecodeError:
            raise ClientError("28P01", "password authentication failed: the password is not "
                              "a valid token") from None
        verifier = self.app.verifier
        try:
            identity = verifier.verify(token)
        except AuthError as exc:
            if exc.reason == "no_key" and verifier.may_refresh_for(token):
                # A key id the identity provider's set lacks: it may have rotated.
                self.state = ClientState.LOGIN  # buffer anything else the client sends
                self._tasks.spawn(self._verify_after_refresh(token))
                return
            self.app.auth_failed(self, exc)
            raise ClientError(exc.sqlstate, str(exc)) from None
        self._authenticated(identity)

    async def _verify_after_refresh(self, token: str) -> None:
        verifier = self.app.verifier
        assert verifier.remote is not None
        await verifier.remote.refresh()
        if self.state is not ClientState.LOGIN:
            return
        try:
            identity = verifier.verify(token)
        except AuthError as exc:
            self.app.auth_failed(self, exc)
            self.fatal(exc.sqlstate, str(exc))
            return
        self._authenticated(identity)

    # --- service accounts ([users.NAME]): SCRAM-SHA-256, then the same login as a JWT ---
    def _service_account_message(self, body: bytes) -> None:
        login = self._service_login
        assert login is not None
        try:
            reply, identity = login.step(body)
        except AuthError as exc:
            self.app.auth_failed(self, exc)
            raise ClientError(exc.sqlstate, str(exc)) from None
        self._write(reply)
        if identity is None:
            self._password_message()  # the SASLResponse, if it is already buffered
            return
        self._service_login = None
        if identity.bypass_tenancy:
            # Its own upstream role and pool, never the database's default pool.
            # --- placement --- (was self.database: it may name a placement, not an entry)
            assert self.pool is not None
            self.pool = self.app.service_pool(self.pool.db.name, login.account)
        self._authenticated(identity)
    # --- end service accounts ---

    def _authenticated(self, identity: Identity) -> None:
        """The client proved ``identity``: build its tenant context and log in."""
        self.identity = identity
        self.stats_tenant = identity.tenant if identity.tenant is not None else "_bypass"
        tenancy = self.app.config.tenancy
        if tenancy.schema_per_tenant and identity.tenant is not None:
            # `pgtenant tenants create ID --schema` made schema tenant_ID. A convenience for
            # unqualified names, not a boundary: RLS still confines the rows.
            self.settings["search_path"] = f'"tenant_{identity.tenant}", public'
        self.context = TenantContext.make(
            tenancy.setting, identity.tenant, self.settings, self.app.proof_key,
            tenancy.proof_setting)
        self.state = ClientState.LOGIN
        self._tasks.spawn(self._login())

    async def _login(self) -> None:
        """Lease a server, give it our context, greet the client with its parameters."""
        assert self.pool is not None and self.context is not None
        # --- placement (proxy/placement.py): the tenant's own cluster, known only now ---
        try:
            placed = await self.app.router.place(self)
        except PlacementRefused as refused:
            self.fatal(refused.sqlstate, str(refused))
            return
        if placed is not None:
            self.pool, self.traffic = placed, placed.traffic
        # --- end placement ---
        try:
            lease = await self.pool.acquire(self.context.tenant)
        except (PoolTimeoutError, ServerError) as no_server:
            self.fatal(no_server.sqlstate, str(no_server))
            return
        if self.state is not ClientState.LOGIN:
            lease.release()
            return
        self._link(lease)
        server = lease.server
        # The context (and the scrub, when the server last served another tenant) first:
        # even the proxy's own registry query runs on a clean backend.
        try:
            await self._apply_context(lease)
        except ClientError as not_set:
            self.fatal(not_set.sqlstate, str(not_set))
            return
        if self.state is not ClientState.LOGIN:
            return
        if (self.app.config.tenancy.require_registered_tenant and self.context.tenant
                and placed is None):  # --- placement --- (the router checked the registry)
            try:
                status = await self._registry_status(server, self.context.tenant)
            except ServerError as no_registry:
                self.fatal(no_registry.sqlstate, str(no_registry))
                return
            if status != "active":
                self.app.stats.security.suspended_tenant_attempts += 1
                what = "is suspended" if status == "suspended" else "is not registered"
                log.info("client #%s (%s): tenant %s %s", self.id, self.peer,
                         self.context.tenant, what, extra=self._log_fields("tenant_refused"))
                self.fatal("28000", f"tenant \"{self.context.tenant}\" {what}")
                return
        # Canonical spellings (client_encoding 'utf-8' → 'UTF8') as the server reports them.
        changed = False
        for name in self.settings:
            value = server.params.get(name)
            if value is not None and value != self.settings[name]:
                self.settings[name] = value
                changed = True
        if changed:
            self.context = self.context.with_settings(self.settings)
            lease.context_changed(self.context)
        self.cancel_pid, self.cancel_secret = self.app.register_cancel_key(self)
        greeting = [messages.authentication_ok()]
        greeting.extend(messages.parameter_status(k, v) for k, v in server.params.items())
        greeting.append(messages.backend_key_data(self.cancel_pid, self.cancel_secret))
        greeting.append(messages.ready_for_query(b"I"))
        self._write(b"".join(greeting))
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        self.state = ClientState.READY
        self.settings = _SETTLED  # from now on they live in self.context only
        if self.transaction_mode:
            self._release_server()
        db = self.pool.db
        self._idle_timeouts = bool(db.idle_transaction_timeout or db.client_idle_timeout)
        if self._idle_timeouts:
            self._arm_idle_timer(b"I")
        self._pause_reading("queue", False)
        self._relay_messages()

    async def _registry_status(self, server: ServerConnection, tenant: str) -> str | None:
        """The tenant's status in pgtenant.tenants, cached for registry_cache_seconds."""
        registry = self.app.registry
        now = time.monotonic()
        cached = registry.get(tenant)
        if cached is not None and cached[1] > now:
            return cached[0]
        rows = await server.query("SELECT pgtenant.tenant_status($1)", [tenant.encode()])
        status: str | None = None
        for tag, body in rows:
            if tag == BackendTag.ERROR_RESPONSE:
                fields = messages.decode_error_fields(body)
                raise ServerError(f"could not read the tenant registry: {fields.get('M', '')}",
                                  "08006")
            if tag == BackendTag.DATA_ROW and body[2:6] != b"\xff\xff\xff\xff":
                status = body[6:].decode()
        registry[tenant] = (status, now + self.app.config.tenancy.registry_cache_seconds)
        return status

    def _login_timed_out(self) -> None:
        if self.state in (ClientState.STARTUP, ClientState.TLS, ClientState.AUTH,
                          ClientState.LOGIN):
            self.fatal("57014", "canceling authentication due to timeout",
                       "client_login_timeout expired before the client authenticated")

    # ---- relaying client → server -----------------------------------------------------

    def _relay_messages(self) -> None:
        """Frame what the client sent; write it to the server in one write."""
        framer = self.framer
        assert framer is not None
        batch = framer.next_batch()
        if batch is None:
            return
        block, index = batch
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self.app.guard is not None:
            if self._guard is None:
                self._guard = StreamGuard(self.app.guard, self.app.parse_verdicts,
                                          self._refused,
                                          transaction_mode=self.transaction_mode,
                                          on_state_change=self._session_state_changed)
            block, index = self._guard.filter(
                block, index, self.identity.tenant if self.identity is not None else None)
        block, replies, unsynced, named, stop = classify(
            block, index, self._unsynced, self._rewriting, self.statements is not None)
        self._flush(block, replies, unsynced, named)
        if stop == _X:
            self._close_transport()
        elif stop != NO_STOP:
            # PostgreSQL would end the session for it (and a pooled backend with it):
            # answer as it would, without forwarding it.
            self.fatal("08P01", f"invalid frontend message type {stop}")

    def _session_state_changed(self) -> None:
        """The guard let through a message that may change session settings (an own-tenant
        re-statement, set_config of another setting, ...): once it is sent, the proxy no
        longer trusts its idea of the server's context and re-sets it before the next
        transaction (defence in depth behind the guard's refusals)."""
        self._touched = True

    def _refused(self, refusal: Refusal, tag: int) -> None:
        tenant = self.stats_tenant
        self.app.stats.record_violation(tenant, refusal.kind)
        log.warning("client #%s (%s) tenant=%s: %s refused by the guard (%s)",
                    self.id, self.peer, tenant, chr(tag), refusal.kind,
                    extra=self._log_fields("guard_refusal"))

    def _flush(self, block: bytes, replies: int, unsynced: bool, named: bool) -> None:
        """Send the client's messages to its server, or queue them until it has one."""
        if replies:
            self.app.stats.record_queries(self.traffic, self.stats_tenant, replies)
        if not block:
            return
        batch_start = not self._unsynced
        self._unsynced = unsynced
        if not self._tx_started:
            self._tx_started = time.monotonic()
        context = self.context
        assert context is not None
        lease = self.lease
        ready: bool | None = False
        if lease is not None and not self._queue:
            # Resumes a kept server; sets the context, pipelined when it may be.
            ready = lease.begin(context, self._tx_started)
            if ready is None:  # kept, but not leasable as it is: lease another
                self._release_server()
                lease = None
        if lease is None and not self._queue and not self._leasing:
            lease = self._lease_now()
            if lease is not None:
                ready = lease.context_ready(context)
        if ready:
            assert lease is not None
            server = lease.server
            if named:
                self._send_rewritten(server, [block], batch_start)
            else:
                server.send(block, replies, unsynced)
            if self._touched:
                self._touched = False
                lease.context_touched()
            return
        if not self._queue:
            self._queue_batch_start = batch_start
        self._queue.append(block)
        self._queue_replies += replies
        self._queue_named |= named
        self._queued_bytes += len(block)
        if self._queued_bytes > _QUEUE_HIGH_WATER:
            self._pause_reading("queue", True)
        if self._leasing:
            return
        self._leasing = True
        if lease is not None:
            self._deliver(lease)
        elif self.pool is not None and self.pool.paused:
            self._tasks.spawn(self._lease_when_resumed())
        else:
            assert self.pool is not None
            self.pool.wait_for_server(context.tenant, self._leased)

    def _lease_now(self) -> Lease | None:
        """Transaction mode fast path: an idle server, when nobody is waiting for one."""
        assert self.pool is not None and self.context is not None
        lease = self.pool.try_acquire(self.context.tenant)
        if lease is not None:
            self._link(lease)
        return lease

    async def _lease_when_resumed(self) -> None:
        """Transaction mode while the pool is paused (admin PAUSE): wait for RESUME."""
        assert self.pool is not None and self.context is not None
        try:
            lease = await self.pool.acquire(self.context.tenant)
        except (PoolTimeoutError, ServerError) as exc:
            self._leasing = False
            self.fatal(exc.sqlstate, str(exc))
            return
        self._got_server(lease)

    def _leased(self, waiter: asyncio.Future[Lease]) -> None:
        """The pool decided our wait (transaction mode; no task involved)."""
        if waiter.cancelled():
            self._leasing = False
            return
        exc = waiter.exception()
        if exc is not None:
            self._leasing = False
            self.fatal(getattr(exc, "sqlstate", "08006"), str(exc))
            return
        self._got_server(waiter.result())

    def _got_server(self, lease: Lease) -> None:
        if self.state is ClientState.CLOSED:
            self._leasing = False
            lease.release()
            return
        self._link(lease)
        self._deliver(lease)

    def _deliver(self, lease: Lease) -> None:
        """Send the queued messages as soon as the lent server carries our context."""
        assert self.context is not None
        server = lease.server
        if lease.context_ready(self.context):
            self._send_queued(server)
            return
        # A switch from another tenant: the set must succeed before anything else runs.
        fut = lease.set_context(self.context)
        assert fut is not None  # not ready, so not set
        fut.add_done_callback(functools.partial(self._context_set, server))

    def _context_set(self, server: ServerConnection,
                     fut: asyncio.Future[dict[str, str] | None]) -> None:
        if not self._holds(server):
            return  # lost while the set was on its way: server_lost decided what follows
        if fut.cancelled() or fut.exception() is not None:
            self._leasing = False
            return  # the server is gone: server_lost reports it
        error = fut.result()
        if error is not None:
            self._leasing = False
            self.fatal(error.get("C", "08006"),
                       f"could not set the session context: {error.get('M', '')}")
            return
        self._send_queued(server)

    def _send_queued(self, server: ServerConnection, verify: bool = True) -> None:
        self._leasing = False
        lease = self.lease
        if lease is None or lease.server is not server or self.state is ClientState.CLOSED:
            return
        if self._queue:
            frames = self._queue
            replies = self._queue_replies
            named = self._queue_named
            self._queue = []
            self._queue_replies = 0
            self._queue_named = False
            self._queued_bytes = 0
            if named:
                self._send_rewritten(server, frames, self._queue_batch_start, verify)
            else:
                server.send(b"".join(frames), replies, self._unsynced)
            if self._touched:
                self._touched = False
                lease.context_touched()
        else:
            server.flush_cork()
        self._pause_reading("queue", False)

    async def _apply_context(self, lease: Lease) -> None:
        """Set our context on the lent server and wait for it (login)."""
        assert self.context is not None
        fut = lease.set_context(self.context, counted=False)
        if fut is None:  # same tenant and settings: nothing to set
            return
        try:
            error = await fut
        except ServerError as exc:
            raise ClientError(exc.sqlstate, str(exc)) from None
        if error is not None:
            raise ClientError(error.get("C", "08006"),
                              f"could not set the session context: {error.get('M', '')}")

    def _pipelined_context_done(self, fut: asyncio.Future[dict[str, str] | None]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return  # the server is gone; server_lost reports it
        error = fut.result()
        if error is not None:
            # The client's pipelined messages ran with no tenant at all (fail-closed) and
            # their replies cannot be trusted to match the client's expectations: end it.
            self.fatal("08006", f"could not set the session context: {error.get('M', '')}")

    def _send_rewritten(self, server: ServerConnection, blocks: list[bytes],
                        batch_start: bool, verify: bool = True) -> None:
        """Transaction mode with named statements: see proxy.backend.prepared."""
        assert self.statements is not None
        frames = [frame for block in blocks for frame in split_frames(block)]
        try:
            if verify and batch_start:
                keys = to_verify(frames, self.statements, server.statements)
                if keys:
                    self._verify(server, frames, keys)
                    return
            done = rewrite(frames, self.statements, server.statements, FORWARD,
                           batch_start=batch_start,
                           aborted=server.tx_status == b"E" and not server.pending)
        except ValueError:  # a name without its terminator
            self.fatal("08P01", "invalid message format: malformed statement or portal name")
            return
        self._rewriting = done.carry
        if batch_start:
            evict = server.statements.take_evictions(done.used)
            if evict:
                server.send_internal(internal_batch(evict), Skip(None))
        server.send_entries(done.data, done.entries, self._unsynced)  # type: ignore[arg-type]

    def _verify(self, server: ServerConnection, frames: list[bytes], keys: list[bytes]
                ) -> None:
        """Prepare and describe statements the client described elsewhere before sending
        ``frames`` (held in the queue meanwhile): what it decodes with must still hold."""
        data, made = verify_batch(server.statements, keys, set(keys))
        fut: asyncio.Future[list[tuple[int, bytes]]] = (
            asyncio.get_running_loop().create_future())
        server.send_internal(data, Collect(fut))
        self._queue.insert(0, b"".join(frames))
        self._queue_named = True
        self._queue_batch_start = True
        self._leasing = True  # later messages queue behind these
        fut.add_done_callback(functools.partial(self._verified, server, keys, made))

    def _verified(self, server: ServerConnection, keys: list[bytes],
                  made: list[ServerStatement],
                  fut: asyncio.Future[list[tuple[int, bytes]]]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self._leasing = False
            return  # the server is gone: server_lost reports it
        verified(server.statements, keys, made, fut.result())
        self._send_queued(server, verify=False)  # a failed prepare: its error, in line

    def statements_cleared(self) -> None:
        # DISCARD ALL / DEALLOCATE ALL ran for this client: its statements are gone too.
        if self.statements is not None:
            self.statements.clear()

    # ---- server side callbacks ----------------------------------------------------------

    def _link(self, lease: Lease) -> None:
        self.lease = lease
        lease.on_pipelined_set = self._pipelined_context_done
        server = lease.server
        server.receiver = self
        if self._writing_paused:
            server.pause_reading(True)
        assert self.pool is not None
        self.pool.stats.leases += 1

    def unsolicited(self, data: bytes) -> None:
        """Server messages that answer nothing this client sent. In session mode, once
        the client is greeted, they are its own (LISTEN notifications, notices). Before the
        greeting (a backend dying during login sends a notice first) and in transaction
        mode (the server is between transactions) they are dropped; if the server is going
        away, server_lost tells the client properly."""
        if self.state is ClientState.READY and not self.transaction_mode:
            self.forward_to_client(data)

    def forward_to_client(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.traffic.bytes_out += len(data)
            transport.write(data)

    def server_error(self, body: bytes) -> None:
        """An ErrorResponse from the server on its way to this client."""
        stats = self.app.stats
        stats.record_error(self.traffic, self.stats_tenant)
        if b"C42501\x00" in body and b"row-level security" in body:
            # PostgreSQL's own RLS refusal: a write aimed at another tenant's rows.
            stats.record_violation(self.stats_tenant, "rls_policy")

    def forged_context(self) -> None:
        """pgtenant.current_tenant() warned of a tenant setting its proof does not vouch
        for: something set it past the guard. The server re-sets it (see ServerConnection);
        here it is counted and logged."""
        self.app.stats.record_violation(self.stats_tenant, "forged_context")
        log.warning("client #%s (%s) tenant=%s: forged tenant context seen by the database",
                    self.id, self.peer, self.stats_tenant,
                    extra=self._log_fields("forged_context"))

    def server_ready(self, server: BackendSession) -> None:
        """The server answered everything we sent (pending queue empty)."""
        if server.tx_status == b"I" and self._tx_started:
            # last_used: when the server's ReadyForQuery came in (one clock read for both)
            self.app.stats.record_transaction(self.traffic, self.stats_tenant,
                                              server.last_used - self._tx_started)
            self._tx_started = 0.0
        lease = self.lease
        if (self.transaction_mode and not self._queue and self.state is ClientState.READY
                and lease is not None and not lease.keep()):
            self._release_server()  # its transaction is over and the pool wants it back
        if self._idle_timeouts and not self._queue and not server.unsynced:
            self._arm_idle_timer(server.tx_status)

    def _arm_idle_timer(self, tx_status: bytes) -> None:
        """Wait for the client's next message at most idle_transaction_timeout (inside a
        transaction) or client_idle_timeout (outside one); 0 disables either."""
        assert self.pool is not None
        db = self.pool.db
        in_tx = tx_status != b"I"
        delay = db.idle_transaction_timeout if in_tx else db.client_idle_timeout
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if delay > 0:
            self._idle_timer = asyncio.get_running_loop().call_later(
                delay, self._idle_timed_out, in_tx)

    def _idle_timed_out(self, in_tx: bool) -> None:
        self._idle_timer = None
        if in_tx:
            # The server connection is closed, not reused: PostgreSQL rolls the work back.
            self.fatal("25P03", "terminating connection due to idle-in-transaction timeout",
                       "idle_transaction_timeout expired while the client held a transaction")
        else:
            self.fatal("57P05", "terminating connection due to idle-session timeout",
                       "client_idle_timeout expired")

    def server_reclaimed(self, server: BackendSession) -> None:
        """The pool took back the server this client kept between transactions (or it
        died there): the next transaction leases one, as if it had been released."""
        if self._holds(server):
            self.lease = None

    def server_lost(self, server: BackendSession, reason: str) -> None:
        if not self._holds(server):
            return
        self.lease = None
        if (self._leasing and self._queue and self.transaction_mode
                and self.state is ClientState.READY and self.pool is not None
                and self.context is not None):
            # It died (or failed its scrub) before any of the queued messages reached it:
            # they go to another server, and the client never knows.
            log.info("client #%s: server #%s lost before use (%s); leasing another",
                     self.id, server.id, reason, extra=self._log_fields("server_replaced"))
            self.pool.wait_for_server(self.context.tenant, self._leased)
            return
        self.fatal("08006", f"server connection lost: {reason}")

    def query_timed_out(self, server: BackendSession) -> None:
        """query_timeout: a request of ours waited that long for its reply. Cancel it (the
        client gets PostgreSQL's 57014); if the server does not answer within a grace
        period either, close it and end this client with FATAL 08006."""
        lease = self.lease
        if lease is None or lease.server is not server:
            return
        held = lease.server
        timeout = held.db.query_timeout
        log.warning("client #%s (%s): no reply within query_timeout (%gs); cancelling",
                    self.id, self.peer, timeout, extra=self._log_fields("query_timeout"))
        self.app.cancel_server(held)
        asyncio.get_running_loop().call_later(
            min(timeout, _QUERY_TIMEOUT_GRACE), self._query_timeout_grace_over, held,
            held.waiting_since)

    def _query_timeout_grace_over(self, server: ServerConnection, since: float) -> None:
        if self._holds(server) and server.waiting_since == since:
            self.fatal("08006", f"query_timeout ({server.db.query_timeout:g}s) expired and "
                       "the server did not answer the cancel; its connection was closed")

    def server_paused_writing(self, paused: bool) -> None:
        self._pause_reading("server", paused)

    def parameter_changed(self, name: str, value: str) -> None:
        # The client changed a reported setting (SET TimeZone ...): carry it to later servers.
        # Its settings live in its context once it is logged in (self.settings is not kept).
        context = self.context
        if context is None:
            return
        settings = dict(context.settings)
        if settings.get(name) != value:
            settings[name] = value
            self.context = context.with_settings(settings)
            if self.lease is not None:
                self.lease.context_changed(self.context)

    def _release_server(self) -> None:
        """The one place this client ends its lease (``Lease.release``: the server goes
        back to the pool)."""
        lease = self.lease
        if lease is None:
            return
        self.lease = None
        server = lease.server
        if self._writing_paused:
            server.pause_reading(False)
        if not server.is_clean:
            # The client left mid-request: stop the backend's work before the pool closes it.
            self.app.cancel_server(server)
        # Session mode ends with a reset; a dirty server is closed by the pool.
        lease.release(reset=not self.transaction_mode)

    # ---- helpers ----------------------------------------------------------------------

    def _pause_reading(self, why: str, paused: bool) -> None:
        """Stop reading from the client while any reason ("queue", "server") holds."""
        bit = _PAUSE_BITS[why]
        before = self._reading_paused_for
        after = before | bit if paused else before & ~bit
        self._reading_paused_for = after
        transport = self.transport
        if bool(before) == bool(after) or transport is None or transport.is_closing():
            return
        if after:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _internal_error(self, exc: BaseException) -> None:
        self.fatal("XX000", "internal error in pgtenant; the connection was closed")

    def _log_fields(self, event: str) -> dict[str, object]:
        """Context for structured (log_format = "json") log lines; never a secret."""
        tenant = self.identity.tenant if self.identity is not None else None
        return {"client_id": self.id, "tenant": tenant, "database": self.database,
                "event": event}

    def fatal(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        """Send a FATAL ErrorResponse and close the connection."""
        if self.state is ClientState.CLOSED:
            return
        log.info("client #%s (%s) closed: %s [%s]", self.id, self.peer, message, sqlstate,
                 extra=self._log_fields("client_closed"))
        self._write(messages.error_response(sqlstate, message, severity="FATAL", hint=hint))
        self._close_transport()

    def _close_transport(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self._shutdown()

    def _shutdown(self) -> None:
        if self.state is ClientState.CLOSED:
            return
        self.state = ClientState.CLOSED
        if self._login_timer is not None:
            self._login_timer.cancel()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._tasks.cancel_all()
        self._release_server()
        self.app.client_disconnected(self)
