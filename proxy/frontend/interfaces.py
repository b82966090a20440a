"""What a client connection, its login and the proxy see of each other.

:class:`ClientState` (the state a client connection is in) and :class:`ClientError`
(an error a client caused) are the client's; :class:`LoginClient` and
:class:`LoginHost` name what a login reads of its client and needs of the proxy,
:class:`ClientHost` what a client needs of the proxy beyond its login. They live apart
from the login's steps (:mod:`proxy.frontend.login`, :mod:`proxy.frontend.first_server`)
and the relaying (:mod:`proxy.frontend.relay`) so each of those imports these seams, not
one another.
"""

from __future__ import annotations

import asyncio
import enum
import ssl
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from proxy.auth.errors import AuthError
    from proxy.auth.identity import Identity
    from proxy.auth.jwt import JwtVerifier
    from proxy.backend.context import TenantContext
    from proxy.backend.server import ServerConnection
    from proxy.config import Config, ServiceAccountConfig
    from proxy.frontend.guarding import ParseVerdicts
    from proxy.guard import Guard
    from proxy.placement import PlacementRouter
    from proxy.pool.lease import Lease
    from proxy.pool.pool import ServerPool
    from proxy.stats import ProxyStats, TrafficStats
    from proxy.wire.framing import FrontendFramer


class ClientState(enum.Enum):
    """A client connection's state; all but READY, CANCEL and CLOSED are its login's."""

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


class LoginHost(Protocol):
    """What a login needs of the proxy (``proxy.app.ProxyApp``)."""

    @property
    def config(self) -> Config: ...
    @property
    def verifier(self) -> JwtVerifier: ...
    @property
    def stats(self) -> ProxyStats: ...
    @property
    def guard(self) -> Guard | None: ...
    @property
    def router(self) -> PlacementRouter: ...
    @property
    def registry(self) -> dict[str, tuple[str | None, float]]: ...
    @property
    def proof_key(self) -> bytes | None: ...
    @property
    def client_ssl_context(self) -> ssl.SSLContext | None: ...
    def cancel(self, pid: int, secret: bytes) -> asyncio.Future[None] | None: ...
    def too_many_clients(self) -> bool: ...
    def is_protected_setting(self, name: str) -> bool: ...
    # The client (a ClientConnection) is what the proxy knows clients by.
    def auth_failed(self, client: Any, exc: AuthError) -> None: ...
    def register_cancel_key(self, client: Any) -> tuple[int, bytes]: ...
    def service_pool(self, database: str, account: ServiceAccountConfig) -> ServerPool: ...


class ClientHost(LoginHost, Protocol):
    """What a client needs of the proxy (``proxy.app.ProxyApp``) beyond its login: the
    narrow face of the app the frontend sees (it imports neither the app nor the admin
    console). The client (a ClientConnection) is what the proxy knows clients by."""

    @property
    def parse_verdicts(self) -> ParseVerdicts: ...
    def next_client_id(self) -> int: ...
    def client_connected(self, client: Any) -> None: ...
    def client_disconnected(self, client: Any) -> None: ...
    def client_transport_closed(self, client: Any) -> None: ...
    def cancel_server(self, server: ServerConnection) -> asyncio.Future[None] | None: ...
    def open_admin_session(self, client: Any, user: str, pending: bytes) -> None: ...


class LoginClient(Protocol):
    """What a login reads and decides of its client
    (``proxy.frontend.client.ClientConnection``)."""

    @property
    def app(self) -> LoginHost: ...
    @property
    def id(self) -> int: ...
    @property
    def peer(self) -> str: ...
    state: ClientState
    transport: asyncio.Transport | None
    framer: FrontendFramer | None
    database: str
    pool: ServerPool | None
    traffic: TrafficStats
    transaction_mode: bool
    identity: Identity | None
    stats_tenant: str
    context: TenantContext | None
    cancel_pid: int
    cancel_secret: bytes

    def write(self, data: bytes) -> None: ...
    def fatal(self, sqlstate: str, message: str, hint: str | None = None) -> None: ...
    def close_transport(self) -> None: ...
    def internal_error(self, exc: BaseException) -> None: ...
    def link(self, lease: Lease) -> None: ...
    def open_admin_session(self, user: str, pending: bytes) -> None: ...
    def logged_in(self) -> None: ...
