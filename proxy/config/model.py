"""What a loaded configuration is: frozen, slotted dataclasses, one per TOML section.

Also the vocabulary the sections are checked against (algorithm families, log levels,
the reserved admin database name, the worker limit) and :class:`ConfigError`. Nothing
here reads a file; :mod:`proxy.config.loader` builds these objects from TOML.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

PoolMode = Literal["session", "transaction"]
SslMode = Literal["disable", "prefer", "require", "verify-ca", "verify-full"]

class ConfigError(Exception):
    """A configuration problem; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = "127.0.0.1:6432"           # "host:port"; "[::1]:6432" for IPv6
    unix_socket_dir: str | None = None       # also listen on <dir>/.s.PGSQL.<port>
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    allow_insecure_password: bool = False    # accept the JWT in cleartext off loopback without TLS
    max_client_conn: int = 1000
    client_login_timeout: float = 15.0       # seconds from accept to authenticated
    max_message_size: int = 64 * 1024 * 1024  # bytes, largest frontend message buffered whole
    metrics_listen: str | None = None        # "127.0.0.1:9187"; None disables the HTTP endpoint
    log_level: str = "info"
    shutdown_timeout: float = 30.0           # seconds running transactions get on SIGTERM/SHUTDOWN
    workers: int = 1                         # proxy processes sharing the port (SO_REUSEPORT)
    log_format: str = "text"                 # "text" or "json" (one JSON object per line)
    pause_timeout: float = 60.0              # seconds console PAUSE waits for leases; 0 = no limit


@dataclass(frozen=True, slots=True)
class JwtConfig:
    algorithms: tuple[str, ...] = ("HS256",)
    secret_env: str | None = None            # HS*: env var holding the shared secret
    secret_file: str | None = None           # HS*: file holding the shared secret
    public_key_file: str | None = None       # RS*/PS*/ES*/EdDSA: PEM public key
    jwks_file: str | None = None             # RS*/ES*/EdDSA: JWKS document (keys chosen by kid)
    jwks_url: str | None = None              # ... or an identity provider's JWKS URL (HTTPS)
    jwks_ca_file: str | None = None          # CA bundle for a private IdP's certificate
    jwks_refresh_seconds: float = 300.0      # fetch the key set this often
    jwks_min_refresh_seconds: float = 30.0   # unknown kid: fetch again at most this often
    jwks_timeout_seconds: float = 5.0        # one fetch gives up after this
    tenant_claim: str = "tenant_id"
    issuer: str | None = None
    audience: str | None = None
    leeway_seconds: float = 30.0
    require_exp: bool = True


@dataclass(frozen=True, slots=True)
class AuthConfig:
    jwt: JwtConfig = field(default_factory=JwtConfig)


@dataclass(frozen=True, slots=True)
class TenancyConfig:
    setting: str = "app.current_tenant"
    tenant_pattern: str = r"^[A-Za-z0-9_-]{1,63}$"
    protected_prefixes: tuple[str, ...] = ("app.", "pgtenant.")
    guard: bool = True                       # inspect Query/Parse/Bind with the SQL guard
    allowed_roles: tuple[str, ...] = ()      # roles clients may SET ROLE to
    guard_cache_size: int = 4096             # verdicts cached by statement text
    proof_key_env: str | None = None         # signed context: env var with the HMAC key
    proof_key_file: str | None = None        # ... or a file holding it
    proof_setting: str = "pgtenant.proof"    # the setting that carries the proof
    require_registered_tenant: bool = False  # refuse tenants not 'active' in pgtenant.tenants
    schema_per_tenant: bool = False          # also set search_path to the tenant's schema
    registry_cache_seconds: float = 10.0     # how long a registry answer is trusted
    # Statement policy for tenant clients (deny by default; see README "Statement policy").
    allow_ddl_in_session_mode: bool = False  # CREATE/ALTER/DROP/COMMENT, any temp table
    allow_listen_in_session_mode: bool = False  # LISTEN (notifications cross tenants)
    allow_notify: bool = False               # NOTIFY and pg_notify() in any pool mode
    allowed_functions: tuple[str, ...] = ()  # refused functions tenants may call anyway


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    name: str                                # the name clients connect to (the TOML table key)
    host: str = "127.0.0.1"                  # a path starting with "/" means a Unix socket dir
    port: int = 5432
    dbname: str | None = None                # upstream database; defaults to `name`
    user: str = "postgres"
    password_env: str | None = None
    password_file: str | None = None
    sslmode: SslMode = "prefer"
    sslrootcert: str | None = None
    pool_mode: PoolMode = "session"
    pool_size: int = 20
    min_pool_size: int = 0
    reserve_pool_size: int = 0
    reserve_pool_timeout: float = 5.0        # a client waiting this long may use the reserve
    max_tenant_server_conns: int = 0         # 0 = no per-tenant cap
    max_prepared_statements: int = 200
    query_wait_timeout: float = 120.0        # seconds a client waits for a server connection
    server_connect_timeout: float = 15.0
    server_idle_timeout: float = 600.0
    server_lifetime: float = 3600.0
    idle_transaction_timeout: float = 0.0    # 0 = disabled
    client_idle_timeout: float = 0.0         # 0 = disabled
    server_reset_query: str = "DISCARD ALL"  # session mode: run when a client leaves
    allow_privileged_upstream: bool = False
    # An idle server unused this long is checked (an empty query) before it is leased;
    # 0 = check before every lease from the idle pool (PgBouncer's server_check_delay).
    server_check_delay: float = 30.0
    # A request without its reply for this long is cancelled; if the server does not
    # answer the cancel either, its connection is closed. 0 = disabled.
    query_timeout: float = 0.0

    @property
    def upstream_dbname(self) -> str:
        return self.dbname or self.name


@dataclass(frozen=True, slots=True)
class AdminUserConfig:
    """An admin console user (database ``pgtenant``), authenticated with SCRAM-SHA-256."""

    name: str
    # PostgreSQL's pg_authid format; never shown by SHOW CONFIG or in reprs.
    scram_verifier: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class AdminConfig:
    users: dict[str, AdminUserConfig] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ServiceAccountConfig:
    """A static client (``[users.NAME]``) that logs in with SCRAM-SHA-256, not a JWT.

    Bound to one ``tenant`` (it then behaves exactly like a JWT client of that tenant),
    or ``bypass_tenancy`` with its own ``upstream_user``: such an account gets a pool of
    its own, keyed by (database, upstream_user), never the database's default pool.
    """

    name: str                                # the startup packet's user name (the TOML key)
    # PostgreSQL's pg_authid format; never shown by SHOW CONFIG or in reprs.
    scram_verifier: str = field(repr=False)
    tenant: str | None = None                # the tenant it is confined to
    bypass_tenancy: bool = False             # no tenant context at all (exclusive with tenant)
    databases: tuple[str, ...] = ()          # databases it may connect to; () = all
    upstream_user: str | None = None         # bypass only: the upstream role its pool runs as
    upstream_password_env: str | None = None
    upstream_password_file: str | None = None
    allow_privileged_upstream: bool = False  # bypass only: upstream_user may be BYPASSRLS


@dataclass(frozen=True, slots=True)
class Placement:
    """``[placement.NAME]``: the clusters (database entries) behind one database name."""

    name: str                                 # the database name clients connect to
    entries: tuple[str, ...]                  # [databases.*] entries that may hold tenants
    default: str                              # entry of tenants placed nowhere else
    registry: str | None = None               # entry whose pgtenant.tenants places tenants
    tenants: Mapping[str, str] = field(default_factory=dict)  # static tenant -> entry

    def entry_for(self, tenant: str, registered: str | None) -> str:
        """The tenant's entry: the registry's placement, else the static map, else default."""
        return registered or self.tenants.get(tenant) or self.default


@dataclass(frozen=True, slots=True)
class Config:
    path: str = "<defaults>"
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    tenancy: TenancyConfig = field(default_factory=TenancyConfig)
    databases: dict[str, DatabaseConfig] = field(default_factory=dict)
    admin: AdminConfig = field(default_factory=AdminConfig)
    users: dict[str, ServiceAccountConfig] = field(default_factory=dict)
    placement: dict[str, Placement] = field(default_factory=dict)


#: JWS algorithms verified with a shared secret (RFC 7518 §3.2).
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
#: JWS algorithms verified with a public key (PEM file or JWKS).
PUBLIC_KEY_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    | {"ES256", "ES256K", "ES384", "ES512", "EdDSA"}
)
#: Database name reserved for the admin console (like PgBouncer's "pgbouncer").
ADMIN_DATABASE = "pgtenant"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")
MAX_WORKERS = 64  # the worker index lives in the low 6 bits of the cancel key's process id
