"""A client's login: startup, TLS, authentication, its first server, the greeting.

Flow: StartupMessage (SSLRequest/GSSENCRequest/CancelRequest answered on the way) →
AuthenticationCleartextPassword → the JWT arrives as the password and is verified (a
``[users.NAME]`` service account gets SCRAM-SHA-256 instead) → a server connection is
leased and given the client's tenant context before the greeting → ReadyForQuery.

A :class:`Login` is made when the client connects and holds everything only a login
needs: the startup framer, the login timer, the startup settings, a SCRAM exchange, the
login's tasks. The client drops it once logged in (``LoginClient.logged_in``): an idle
client keeps none of it. It writes what the login decides into the client's fields
(database, pool, identity, context, ...), which the client relays with afterwards.

This module reads the client's bytes (startup, TLS, authentication); the last step, the
first server and the greeting, is :mod:`proxy.frontend.first_server`. The client's
states and the Protocols a login talks through are in :mod:`proxy.frontend.interfaces`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import sys

from proxy.auth.errors import AuthError
from proxy.auth.identity import Identity
from proxy.auth.service_accounts import ServiceAccountLogin
from proxy.backend.context import TenantContext
from proxy.config import ADMIN_DATABASE
from proxy.frontend.first_server import greet_on_first_server
from proxy.frontend.interfaces import ClientError, ClientState, LoginClient
from proxy.tasks import TaskSet
from proxy.wire import authentication, messages
from proxy.wire.framing import FrontendFramer
from proxy.wire.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupFramer,
    StartupMessage,
    parse_startup_packet,
)
from proxy.wire.tags import FrontendTag

log = logging.getLogger("pgtenant.client")

# Startup parameters that are connection plumbing, not session settings.
_NOT_SETTINGS = frozenset({"user", "database", "options", "replication"})
_NO_STARTUP = StartupFramer()  # shared placeholder once startup is over
_INTERN_LIMIT = 100_000
_tenant_identities: dict[tuple[str | None, bool], Identity] = {}
_LOGGING_IN = frozenset({ClientState.STARTUP, ClientState.TLS, ClientState.AUTH,
                         ClientState.LOGIN})


def is_loopback(host: str) -> bool:
    """True for a loopback peer address (127.0.0.0/8, ::1, and IPv4-mapped forms)."""
    try:
        addr = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


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


def tenant_identity(identity: Identity) -> Identity:
    """What a logged-in client keeps of ``identity``: its tenant, in an Identity shared by
    the clients of that tenant. The rest (subject, expiry, upstream role) served the
    login only; an idle client does not carry a copy of its token's claims."""
    key = (identity.tenant, identity.bypass_tenancy)
    kept = _tenant_identities.get(key)
    if kept is None:
        if len(_tenant_identities) >= _INTERN_LIMIT:
            _tenant_identities.clear()
        kept = _tenant_identities[key] = Identity(tenant=identity.tenant,
                                                  bypass_tenancy=identity.bypass_tenancy)
    return kept


class Login:
    """One client's login, from its first byte to its greeting (see the module doc)."""

    __slots__ = ("client", "is_local", "service", "settings", "startup", "tasks", "timer",
                 "tls")

    def __init__(self, client: LoginClient, is_local: bool) -> None:
        self.client = client
        self.is_local = is_local  # a loopback or Unix-socket peer
        self.tls = False
        self.startup = StartupFramer()
        self.settings: dict[str, str] = {}  # the client's startup settings
        self.service: ServiceAccountLogin | None = None  # a [users.NAME] SCRAM login
        # Reports to the client, not to this object: a Login in no reference cycle is
        # freed as soon as the client drops it, not at the next full garbage collection.
        self.tasks = TaskSet(client.internal_error)
        self.timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            client.app.config.server.client_login_timeout, self._timed_out)

    def received(self, data: bytes) -> None:
        """Bytes from the client before it is logged in (raises ClientError and
        ProtocolViolation for the client to end the connection with)."""
        client = self.client
        if client.state is ClientState.STARTUP:
            self.startup.feed(data)
            self._startup_packets()
        elif client.state is ClientState.AUTH:
            assert client.framer is not None
            client.framer.feed(data)
            self._password_message()

    def stop(self) -> None:
        """The client is closed: stop the timer and the login's tasks."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.tasks.cancel_all()

    def _timed_out(self) -> None:
        self.timer = None
        if self.client.state in _LOGGING_IN:
            self.client.fatal("57014", "canceling authentication due to timeout",
                              "client_login_timeout expired before the client authenticated")

    # ---- startup ----------------------------------------------------------------------

    def _startup_packets(self) -> None:
        client = self.client
        while client.state is ClientState.STARTUP:
            body = self.startup.next_packet()
            if body is None:
                return
            packet = parse_startup_packet(body)
            if isinstance(packet, SSLRequest):
                self._ssl_request()
            elif isinstance(packet, GSSENCRequest):
                client.write(b"N")
            elif isinstance(packet, CancelRequest):
                self._cancel_request(packet)
                return
            elif isinstance(packet, StartupMessage):
                self._startup_message(packet)

    def _cancel_request(self, packet: CancelRequest) -> None:
        """Pass the cancel on; close this connection only once it has been handled."""
        client = self.client
        done = client.app.cancel(packet.process_id, packet.secret_key)
        if done is None or done.done():
            client.close_transport()
            return
        client.state = ClientState.CANCEL  # nothing more is read from it
        done.add_done_callback(lambda _: client.close_transport())

    def _ssl_request(self) -> None:
        ctx = self.client.app.client_ssl_context
        if ctx is None or self.tls:
            self.client.write(b"N")
            return
        if self.startup.buffered():
            # Bytes after SSLRequest before the handshake: a classic injection attempt.
            raise ClientError("08P01", "received unencrypted data after SSL request")
        self.client.write(b"S")
        self.client.state = ClientState.TLS
        self.tasks.spawn(self._start_tls(ctx))

    async def _start_tls(self, ctx: ssl.SSLContext) -> None:
        client = self.client
        transport = client.transport
        assert transport is not None
        loop = asyncio.get_running_loop()
        try:
            new = await loop.start_tls(transport, transport.get_protocol(), ctx,
                                       server_side=True)
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            log.info("client #%s: TLS handshake failed: %s", client.id, exc)
            client.close_transport()
            return
        if new is None:
            client.close_transport()
            return
        client.transport = new  # type: ignore[assignment]
        self.tls = True
        client.state = ClientState.STARTUP

    def _startup_message(self, packet: StartupMessage) -> None:
        client = self.client
        params = packet.parameters
        app = client.app
        if packet.protocol_minor > 0 or packet.protocol_options:
            # We speak 3.0; report unknown _pq_ options instead of failing (as PostgreSQL does).
            client.write(messages.negotiate_protocol_version(0, list(packet.protocol_options)))
        if "replication" in params and params["replication"].lower() not in ("false", "0", "off"):
            raise ClientError("0A000", "replication connections are not supported by pgtenant")
        user = params.get("user")
        if not user:
            raise ClientError("28000", "no PostgreSQL user name specified in startup packet")
        database = params.get("database") or user
        client.database = database
        if app.too_many_clients():
            raise ClientError("53300", "sorry, too many clients already",
                              "the proxy's max_client_conn is reached")
        # --- admin console (proxy/admin): database "pgtenant" takes over the socket ---
        if database == ADMIN_DATABASE:
            client.open_admin_session(user, self.startup.remaining())
            return
        # --- end admin console ---
        pool = app.router.front_pool(database)  # --- placement --- (was app.pools.get)
        if pool is None:
            raise ClientError("3D000", f"database \"{database}\" does not exist",
                              "the database name must be one configured in pgtenant")
        # One string for all the clients of a database (a configured name, so interning
        # it cannot grow without bound).
        client.database = sys.intern(database)
        client.pool = pool
        client.traffic = pool.traffic
        client.transaction_mode = pool.db.pool_mode == "transaction"
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
        client.state = ClientState.AUTH
        framer = client.framer = FrontendFramer(app.config.server.max_message_size)
        framer.feed(self.startup.remaining())
        self.startup = _NO_STARTUP  # done with startup packets (one less buffer per client)
        # --- service accounts ([users.NAME], proxy/auth/service_accounts.py) ---
        # The method follows from the user name alone, never from the client: a service
        # account's name always gets SCRAM, so a JWT sent for it is never read as one.
        account = app.config.users.get(user)
        if account is not None:
            self.service = ServiceAccountLogin(account, database)
            client.write(self.service.start())
            self._password_message()
            return
        # --- end service accounts ---
        client.write(authentication.authentication_cleartext_password())
        self._password_message()

    # ---- authentication ---------------------------------------------------------------

    def _password_message(self) -> None:
        client = self.client
        assert client.framer is not None
        msg = client.framer.next_message()
        if msg is None:
            return
        tag, body = msg
        if tag != FrontendTag.PASSWORD:
            raise ClientError("08P01", f"expected a password message, got type {chr(tag)!r}")
        if self.service is not None:
            self._service_account_message(body)
            return
        try:
            token = authentication.decode_password(body).decode("utf-8")
        except UnicodeDecodeError:
            raise ClientError("28P01", "password authentication failed: the password is not "
                              "a valid token") from None
        verifier = client.app.verifier
        try:
            identity = verifier.verify(token)
        except AuthError as exc:
            if exc.reason == "no_key" and verifier.may_refresh_for(token):
                # A key id the identity provider's set lacks: it may have rotated.
                client.state = ClientState.LOGIN  # buffer anything else the client sends
                self.tasks.spawn(self._verify_after_refresh(token))
                return
            client.app.auth_failed(client, exc)
            raise ClientError(exc.sqlstate, str(exc)) from None
        self._authenticated(identity)

    async def _verify_after_refresh(self, token: str) -> None:
        client = self.client
        verifier = client.app.verifier
        assert verifier.remote is not None
        await verifier.remote.refresh()
        if client.state is not ClientState.LOGIN:
            return
        try:
            identity = verifier.verify(token)
        except AuthError as exc:
            client.app.auth_failed(client, exc)
            client.fatal(exc.sqlstate, str(exc))
            return
        self._authenticated(identity)

    # --- service accounts ([users.NAME]): SCRAM-SHA-256, then the same login as a JWT ---
    def _service_account_message(self, body: bytes) -> None:
        client = self.client
        service = self.service
        assert service is not None
        try:
            reply, identity = service.step(body)
        except AuthError as exc:
            client.app.auth_failed(client, exc)
            raise ClientError(exc.sqlstate, str(exc)) from None
        client.write(reply)
        if identity is None:
            self._password_message()  # the SASLResponse, if it is already buffered
            return
        self.service = None
        if identity.bypass_tenancy:
            # Its own upstream role and pool, never the database's default pool.
            # --- placement --- (was client.database: it may name a placement, not an entry)
            assert client.pool is not None
            client.pool = client.app.service_pool(client.pool.db.name, service.account)
        self._authenticated(identity)
    # --- end service accounts ---

    def _authenticated(self, identity: Identity) -> None:
        """The client proved ``identity``: build its tenant context and log in."""
        client = self.client
        app = client.app
        identity = client.identity = tenant_identity(identity)
        client.stats_tenant = identity.tenant if identity.tenant is not None else "_bypass"
        tenancy = app.config.tenancy
        if tenancy.schema_per_tenant and identity.tenant is not None:
            # `pgtenant tenants create ID --schema` made schema tenant_ID. A convenience for
            # unqualified names, not a boundary: RLS still confines the rows.
            self.settings["search_path"] = f'"tenant_{identity.tenant}", public'
        client.context = TenantContext.make(
            tenancy.setting, identity.tenant, self.settings, app.proof_key,
            tenancy.proof_setting)
        client.state = ClientState.LOGIN
        self.tasks.spawn(self._login())

    # ---- the first server and the greeting (proxy.frontend.first_server) -------------

    async def _login(self) -> None:
        """The first server and the greeting; then the client is logged in."""
        if await greet_on_first_server(self.client, self.settings):
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.client.logged_in()  # from now on the settings live in client.context only
