"""pgtenant configuration: one TOML file loaded into frozen, slotted dataclasses.

Every key, its default and its meaning is documented in ``config.example.toml``.
Unknown keys and bad values raise :class:`ConfigError` naming the key and the file.
Secrets are never inline: ``*_env`` names an environment variable, ``*_file`` a file.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from difflib import get_close_matches
from typing import Any, Literal, TypeVar, cast, get_args

from proxy.auth.scram_verifier import parse_scram_verifier
from proxy.placement import Placement, read_placements  # --- placement ---

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
class Config:
    path: str = "<defaults>"
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    tenancy: TenancyConfig = field(default_factory=TenancyConfig)
    databases: dict[str, DatabaseConfig] = field(default_factory=dict)
    admin: AdminConfig = field(default_factory=AdminConfig)
    users: dict[str, ServiceAccountConfig] = field(default_factory=dict)
    placement: dict[str, Placement] = field(default_factory=dict)  # --- placement ---


# --------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------

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

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOSTNAME = re.compile(r"[A-Za-z0-9_.-]+")
_PORT = re.compile(r"[0-9]{1,5}")
# A custom GUC is two or more identifiers joined by dots (PostgreSQL refuses a bare
# name for a setting it does not know), e.g. app.current_tenant.
_GUC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_GUC_PREFIX = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_]*\.)+")
_FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")

_T = TypeVar("_T")


def parse_listen(s: str) -> tuple[str, int]:
    """Split ``"host:port"`` (``"[::1]:6432"`` for IPv6) into ``(host, port)``.

    Port 0 asks the operating system for a free port (the log names the one it got).
    Raises :class:`ValueError` with a message fit for a config error.
    """
    if s.startswith("["):
        close = s.find("]")
        if close < 0 or s[close + 1 : close + 2] != ":":
            raise ValueError('expected "[ipv6]:port"')
        host, port_text = s[1:close], s[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
    else:
        host, sep, port_text = s.rpartition(":")
        if not sep:
            raise ValueError('expected "host:port"')
        if ":" in host:
            raise ValueError('an IPv6 address goes in brackets: "[::1]:6432"')
        if not _HOSTNAME.fullmatch(host):
            raise ValueError('expected "host:port" with a host name or IPv4 address')
    if not _PORT.fullmatch(port_text) or not 0 <= int(port_text) <= 65535:
        raise ValueError("expected a port number between 0 and 65535")
    return host, int(port_text)


def resolve_secret(env: str | None, file: str | None, what: str) -> str | None:
    """Read a secret from the environment variable ``env`` or the file ``file``.

    ``what`` is the dotted key the secret belongs to without its ``_env``/``_file``
    suffix (``"auth.jwt.secret"``, ``"databases.app.password"``); error messages name
    ``what_env`` or ``what_file``, never the secret itself. One trailing newline is
    stripped from a file, because editors and ``echo`` add one. Returns None when
    neither source is configured.
    """
    if env is not None and file is not None:
        raise ConfigError(f"{what}_env and {what}_file: set one, not both")
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise ConfigError(f"{what}_env: environment variable {env} is not set or is empty")
        return value
    if file is not None:
        try:
            with open(file, encoding="utf-8", newline="") as f:
                value = f.read()
        except OSError as e:
            raise ConfigError(f"{what}_file: cannot read {file}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{what}_file: {file} is not UTF-8 text") from None
        if value.endswith("\r\n"):
            value = value[:-2]
        elif value.endswith("\n"):
            value = value[:-1]
        if not value:
            raise ConfigError(f"{what}_file: {file} is empty")
        return value
    return None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file.

    Raises :class:`ConfigError` naming the file and the dotted key for an unreadable
    file, invalid TOML, an unknown key or a bad value. Secrets are not read here (see
    :func:`resolve_secret`): loading a config never needs them.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{source}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from None
    return _build_config(data, source)


def parse_config(text: str, source: str = "<string>") -> Config:
    """Validate TOML text as :func:`load_config` does; ``source`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from None
    return _build_config(data, source)


def _build_config(data: dict[str, Any], source: str) -> Config:
    root = _Table(source, (), data,
                  {"server", "auth", "tenancy", "databases", "admin", "users",
                   "placement"})  # --- placement ---
    server = _read_server(root.table("server", _field_names(ServerConfig)))
    auth_table = root.table("auth", {"jwt"})
    jwt = _read_jwt(auth_table.table("jwt", _field_names(JwtConfig)))
    auth_table.finish()
    tenancy = _read_tenancy(root.table("tenancy", _field_names(TenancyConfig)))
    databases = _read_databases(root)
    admin = _read_admin(root.table("admin", {"users"}))
    users = _read_service_accounts(root, tenancy, databases)
    # --- placement (proxy/placement.py) ---
    try:
        placement = read_placements(root.raw("placement"), databases, tenancy.tenant_pattern)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    # --- end placement ---
    root.finish()
    return Config(
        path=source,
        server=server,
        auth=AuthConfig(jwt=jwt),
        tenancy=tenancy,
        databases=databases,
        admin=admin,
        users=users,
        placement=placement,  # --- placement ---
    )


def _read_server(t: _Table) -> ServerConfig:
    d = ServerConfig()
    listen = t.string("listen", d.listen)
    t.check(listen, "listen", parse_listen)
    metrics_listen = t.optional_string("metrics_listen")
    if metrics_listen is not None:
        t.check(metrics_listen, "metrics_listen", parse_listen)
    tls_cert_file = t.optional_string("tls_cert_file")
    tls_key_file = t.optional_string("tls_key_file")
    if (tls_cert_file is None) != (tls_key_file is None):
        missing = "tls_key_file" if tls_key_file is None else "tls_cert_file"
        raise t.error(missing, "tls_cert_file and tls_key_file must be set together")
    server = ServerConfig(
        listen=listen,
        unix_socket_dir=t.optional_string("unix_socket_dir"),
        tls_cert_file=tls_cert_file,
        tls_key_file=tls_key_file,
        allow_insecure_password=t.boolean("allow_insecure_password", d.allow_insecure_password),
        max_client_conn=t.integer("max_client_conn", d.max_client_conn, minimum=1),
        client_login_timeout=t.seconds("client_login_timeout", d.client_login_timeout),
        max_message_size=t.integer("max_message_size", d.max_message_size, minimum=1),
        metrics_listen=metrics_listen,
        log_level=t.choice("log_level", d.log_level, LOG_LEVELS),
        shutdown_timeout=t.seconds("shutdown_timeout", d.shutdown_timeout),
        workers=t.integer("workers", d.workers, minimum=1, maximum=MAX_WORKERS),
        log_format=t.choice("log_format", d.log_format, LOG_FORMATS),
        pause_timeout=t.seconds("pause_timeout", d.pause_timeout),
    )
    t.finish()
    return server


def _read_admin(t: _Table) -> AdminConfig:
    section = t.raw("users")
    if section is not None and not isinstance(section, dict):
        raise t.error("users", f"expected a table, got {_show(section)}")
    tables = t.table("users", None)
    users: dict[str, AdminUserConfig] = {}
    for name in section or {}:
        user = tables.table(name, {"scram_verifier"})
        if not name:
            raise t.error("users", "an admin user name must not be empty")
        verifier = _read_verifier(user)
        user.finish()
        users[name] = AdminUserConfig(name=name, scram_verifier=verifier)
    t.finish()
    return AdminConfig(users=users)


def _read_verifier(t: _Table) -> str:
    verifier = t.raw("scram_verifier")
    if verifier is None:
        raise t.error("scram_verifier", "required: the user's SCRAM-SHA-256 verifier")
    if not isinstance(verifier, str):
        raise t.error("scram_verifier", f"expected a string, got {_show(verifier)}")
    try:
        parse_scram_verifier(verifier)
    except ValueError as e:
        # Never echo the value: it is password-equivalent for offline guessing.
        raise t.error(
            "scram_verifier",
            f"{e}; expected 'SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>' "
            "as PostgreSQL stores it in pg_authid",
        ) from None
    return verifier


def _read_service_accounts(root: _Table, tenancy: TenancyConfig,
                           databases: Mapping[str, DatabaseConfig]
                           ) -> dict[str, ServiceAccountConfig]:
    section = root.raw("users")
    if section is not None and not isinstance(section, dict):
        raise root.error("users", f"expected a table, got {_show(section)}")
    tables = root.table("users", None)
    accounts: dict[str, ServiceAccountConfig] = {}
    for name in section or {}:
        if not name:
            raise root.error("users", "a service account name must not be empty")
        accounts[name] = _read_service_account(
            tables.table(name, _field_names(ServiceAccountConfig) - {"name"}), name,
            tenancy, databases)
    return accounts


def _read_service_account(t: _Table, name: str, tenancy: TenancyConfig,
                          databases: Mapping[str, DatabaseConfig]) -> ServiceAccountConfig:
    verifier = _read_verifier(t)
    tenant = t.optional_string("tenant")
    bypass = t.boolean("bypass_tenancy", False)
    if (tenant is None) == (not bypass):
        raise t.error("tenant", 'set exactly one of tenant = "ID" or bypass_tenancy = true')
    if tenant is not None and not re.fullmatch(tenancy.tenant_pattern, tenant):
        raise t.error("tenant", f"{_show(tenant)} does not match tenancy.tenant_pattern")
    allowed = t.string_tuple("databases", ())
    for i, db in enumerate(allowed):
        if db not in databases:
            raise t.error(f"databases[{i}]", f"{_show(db)} is not a configured [databases] name")
    upstream_user = t.optional_string("upstream_user")
    password_env = t.env_name("upstream_password_env")
    password_file = t.optional_string("upstream_password_file")
    privileged = t.boolean("allow_privileged_upstream", False)
    if bypass:
        # Its own role, so the default pool's role never loses RLS for anyone else.
        if upstream_user is None:
            raise t.error("upstream_user", "required with bypass_tenancy: the upstream role "
                          "this account's own pool runs as")
        if password_env is None and password_file is None:
            raise t.error("upstream_password_env", "required with bypass_tenancy: set "
                          "upstream_password_env or upstream_password_file")
        if password_env is not None and password_file is not None:
            raise t.error("upstream_password_file",
                          "set upstream_password_env or upstream_password_file, not both")
    else:
        # A tenant-bound account runs exactly like a JWT client of its tenant.
        for key, value in (("upstream_user", upstream_user),
                           ("upstream_password_env", password_env),
                           ("upstream_password_file", password_file),
                           ("allow_privileged_upstream", privileged or None)):
            if value is not None:
                raise t.error(key, "only with bypass_tenancy = true (a tenant-bound account "
                              "uses the database's upstream role)")
    t.finish()
    return ServiceAccountConfig(
        name=name, scram_verifier=verifier, tenant=tenant, bypass_tenancy=bypass,
        databases=allowed, upstream_user=upstream_user, upstream_password_env=password_env,
        upstream_password_file=password_file, allow_privileged_upstream=privileged)


def _read_jwt(t: _Table) -> JwtConfig:
    d = JwtConfig()
    algorithms = _read_algorithms(t, d.algorithms)
    secret_env = t.env_name("secret_env")
    secret_file = t.optional_string("secret_file")
    public_key_file = t.optional_string("public_key_file")
    jwks_file = t.optional_string("jwks_file")
    jwks_url = t.optional_string("jwks_url")
    # One key source, matching the algorithm family: an HMAC secret must never be
    # configured next to a public key, or a token could pick which one verifies it.
    sources = {
        "secret_env": secret_env,
        "secret_file": secret_file,
        "public_key_file": public_key_file,
        "jwks_file": jwks_file,
        "jwks_url": jwks_url,
    }
    if algorithms[0] in HMAC_ALGORITHMS:
        family: tuple[str, ...] = ("secret_env", "secret_file")
    else:
        family = ("public_key_file", "jwks_file", "jwks_url")
    choices = " or ".join(family)
    for name, value in sources.items():
        if value is not None and name not in family:
            raise t.error(name, f"not used by {algorithms[0]}; set {choices}")
    chosen = [name for name in family if sources[name] is not None]
    if not chosen:
        raise t.error(family[0], f"{algorithms[0]} needs a key: set {choices}")
    if len(chosen) > 1:
        raise t.error(chosen[1], f"set {chosen[0]} or {chosen[1]}, not both")
    if jwks_url is not None and not jwks_url.lower().startswith("https://"):
        raise t.error("jwks_url", "must be an https:// URL (the keys decide who logs in)")
    jwt = JwtConfig(
        algorithms=algorithms,
        secret_env=secret_env,
        secret_file=secret_file,
        public_key_file=public_key_file,
        jwks_file=jwks_file,
        jwks_url=jwks_url,
        jwks_ca_file=t.optional_string("jwks_ca_file"),
        jwks_refresh_seconds=t.seconds("jwks_refresh_seconds", d.jwks_refresh_seconds),
        jwks_min_refresh_seconds=t.seconds("jwks_min_refresh_seconds",
                                           d.jwks_min_refresh_seconds),
        jwks_timeout_seconds=t.seconds("jwks_timeout_seconds", d.jwks_timeout_seconds),
        tenant_claim=t.string("tenant_claim", d.tenant_claim),
        issuer=t.optional_string("issuer"),
        audience=t.optional_string("audience"),
        leeway_seconds=t.seconds("leeway_seconds", d.leeway_seconds),
        require_exp=t.boolean("require_exp", d.require_exp),
    )
    t.finish()
    return jwt


def _read_algorithms(t: _Table, default: tuple[str, ...]) -> tuple[str, ...]:
    algorithms = t.string_tuple("algorithms", default)
    if not algorithms:
        raise t.error("algorithms", "expected at least one algorithm")
    known = HMAC_ALGORITHMS | PUBLIC_KEY_ALGORITHMS
    for i, alg in enumerate(algorithms):
        if alg.lower() == "none":
            raise t.error(f"algorithms[{i}]", '"none" (unsigned tokens) is never accepted')
        if alg not in known:
            raise t.error(
                f"algorithms[{i}]",
                f"unknown algorithm {_show(alg)}; expected one of {', '.join(sorted(known))}",
            )
    hmac = [a for a in algorithms if a in HMAC_ALGORITHMS]
    if hmac and len(hmac) != len(algorithms):
        public = next(a for a in algorithms if a not in HMAC_ALGORITHMS)
        raise t.error(
            "algorithms",
            f"mixes a shared-secret algorithm ({hmac[0]}) with a public-key one ({public}); "
            "that allows algorithm-confusion attacks, so choose one family",
        )
    return tuple(dict.fromkeys(algorithms))  # drop duplicates, keep order


def _read_tenancy(t: _Table) -> TenancyConfig:
    d = TenancyConfig()
    prefixes = t.string_tuple("protected_prefixes", d.protected_prefixes)
    for i, prefix in enumerate(prefixes):
        if not _GUC_PREFIX.fullmatch(prefix):
            raise t.error(
                f"protected_prefixes[{i}]",
                f'expected a setting prefix ending in "." such as "app.", got {_show(prefix)}',
            )
    setting = t.string("setting", d.setting)
    if not _GUC_NAME.fullmatch(setting):
        raise t.error(
            "setting",
            f'expected a dotted custom setting name such as "app.current_tenant", '
            f"got {_show(setting)}",
        )
    if not any(setting.lower().startswith(p.lower()) for p in prefixes):
        raise t.error(
            "setting",
            f"{_show(setting)} must start with one of protected_prefixes "
            f"({', '.join(prefixes) or 'none configured'}), or clients could change it",
        )
    pattern = t.string("tenant_pattern", d.tenant_pattern)
    _check_tenant_pattern(t, pattern)
    tenancy = TenancyConfig(
        setting=setting, tenant_pattern=pattern, protected_prefixes=prefixes,
        guard=t.boolean("guard", d.guard),
        allowed_roles=t.string_tuple("allowed_roles", d.allowed_roles),
        guard_cache_size=t.integer("guard_cache_size", d.guard_cache_size, minimum=16),
        proof_key_env=t.env_name("proof_key_env"),
        proof_key_file=t.optional_string("proof_key_file"),
        proof_setting=t.string("proof_setting", d.proof_setting),
        require_registered_tenant=t.boolean("require_registered_tenant",
                                            d.require_registered_tenant),
        registry_cache_seconds=t.seconds("registry_cache_seconds", d.registry_cache_seconds),
        schema_per_tenant=t.boolean("schema_per_tenant", d.schema_per_tenant),
        allow_ddl_in_session_mode=t.boolean("allow_ddl_in_session_mode",
                                            d.allow_ddl_in_session_mode),
        allow_listen_in_session_mode=t.boolean("allow_listen_in_session_mode",
                                               d.allow_listen_in_session_mode),
        allow_notify=t.boolean("allow_notify", d.allow_notify),
        allowed_functions=_read_function_names(t, "allowed_functions", d.allowed_functions),
    )
    if not any(tenancy.proof_setting.lower().startswith(p.lower()) for p in prefixes):
        raise t.error("proof_setting", f"{_show(tenancy.proof_setting)} must start with one "
                      "of protected_prefixes, or clients could forge it")
    t.finish()
    return tenancy


def _read_function_names(t: _Table, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    names = t.string_tuple(key, default)
    for i, name in enumerate(names):
        if not _FUNCTION_NAME.fullmatch(name):
            raise t.error(f"{key}[{i}]", "expected a function name without schema or "
                          f'arguments such as "pg_advisory_lock", got {_show(name)}')
    return tuple(name.lower() for name in names)


def _check_tenant_pattern(t: _Table, pattern: str) -> None:
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise t.error("tenant_pattern", f"not a valid regular expression: {e}") from None
    trailing_backslashes = len(pattern[:-1]) - len(pattern[:-1].rstrip("\\"))
    if not pattern.startswith("^") or not pattern.endswith("$") or trailing_backslashes % 2:
        # The verifier uses fullmatch anyway; demanding the anchors keeps the config
        # honest for readers and for other tools that reuse the pattern.
        raise t.error("tenant_pattern", 'must be anchored: start with "^" and end with "$"')
    if compiled.fullmatch(""):
        # An empty tenant is indistinguishable from "no tenant set" in the database.
        raise t.error("tenant_pattern", "must not match the empty string")


def _read_databases(root: _Table) -> dict[str, DatabaseConfig]:
    section = root.raw("databases")
    if section is None or (isinstance(section, dict) and not section):
        raise ConfigError(f"{root.source}: databases: at least one [databases.NAME] table "
                          "is required")
    if not isinstance(section, dict):
        raise root.error("databases", f"expected a table, got {_show(section)}")
    allowed = _field_names(DatabaseConfig) - {"name"}
    tables = root.table("databases", None)
    databases: dict[str, DatabaseConfig] = {}
    for name in section:
        key = _dotted(("databases", name))
        if not name:
            raise ConfigError(f"{root.source}: {key}: a database name must not be empty")
        if name.lower() == ADMIN_DATABASE:
            raise ConfigError(
                f"{root.source}: {key}: the name {ADMIN_DATABASE!r} is reserved for the "
                "admin console"
            )
        databases[name] = _read_database(tables.table(name, allowed), name)
    return databases


def _read_database(t: _Table, name: str) -> DatabaseConfig:
    d = DatabaseConfig(name=name)
    host = t.string("host", d.host)
    dbname = t.optional_string("dbname")
    password_env = t.env_name("password_env")
    password_file = t.optional_string("password_file")
    if password_env is not None and password_file is not None:
        raise t.error("password_file", "set password_env or password_file, not both")
    pool_size = t.integer("pool_size", d.pool_size, minimum=1)
    min_pool_size = t.integer("min_pool_size", d.min_pool_size, minimum=0)
    if min_pool_size > pool_size:
        raise t.error("min_pool_size", f"must be <= pool_size ({pool_size}), got {min_pool_size}")
    db = DatabaseConfig(
        name=name,
        host=host,
        port=t.integer("port", d.port, minimum=1, maximum=65535),
        dbname=dbname,
        user=t.string("user", d.user),
        password_env=password_env,
        password_file=password_file,
        sslmode=cast(SslMode, t.choice("sslmode", d.sslmode, get_args(SslMode))),
        sslrootcert=t.optional_string("sslrootcert"),
        pool_mode=cast(PoolMode, t.choice("pool_mode", d.pool_mode, get_args(PoolMode))),
        pool_size=pool_size,
        min_pool_size=min_pool_size,
        reserve_pool_size=t.integer("reserve_pool_size", d.reserve_pool_size, minimum=0),
        reserve_pool_timeout=t.seconds("reserve_pool_timeout", d.reserve_pool_timeout),
        max_tenant_server_conns=t.integer(
            "max_tenant_server_conns", d.max_tenant_server_conns, minimum=0
        ),
        max_prepared_statements=t.integer(
            "max_prepared_statements", d.max_prepared_statements, minimum=0
        ),
        query_wait_timeout=t.seconds("query_wait_timeout", d.query_wait_timeout),
        server_connect_timeout=t.seconds("server_connect_timeout", d.server_connect_timeout),
        server_idle_timeout=t.seconds("server_idle_timeout", d.server_idle_timeout),
        server_lifetime=t.seconds("server_lifetime", d.server_lifetime),
        idle_transaction_timeout=t.seconds(
            "idle_transaction_timeout", d.idle_transaction_timeout
        ),
        client_idle_timeout=t.seconds("client_idle_timeout", d.client_idle_timeout),
        server_reset_query=t.string("server_reset_query", d.server_reset_query, allow_empty=True),
        allow_privileged_upstream=t.boolean(
            "allow_privileged_upstream", d.allow_privileged_upstream
        ),
        server_check_delay=t.seconds("server_check_delay", d.server_check_delay),
        query_timeout=t.seconds("query_timeout", d.query_timeout),
    )
    t.finish()
    return db


def _field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _dotted(parts: tuple[str, ...]) -> str:
    return ".".join(p if _BARE_KEY.fullmatch(p) else json.dumps(p) for p in parts)


def _show(value: object) -> str:
    """Render a TOML value for an error message, briefly."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:56] + '..."'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


class _Table:
    """One TOML table being read: typed getters that name ``file: dotted.key``."""

    def __init__(
        self,
        source: str,
        parts: tuple[str, ...],
        data: Mapping[str, Any],
        allowed: set[str] | None,
    ) -> None:
        self.source = source
        self.parts = parts
        self.data = data
        self.read: set[str] = set()
        if allowed is not None:
            # Unknown keys first: a misspelt key is usually why a value looks missing.
            for key in data:
                if key not in allowed:
                    hint = get_close_matches(key, sorted(allowed), n=1)
                    suffix = f' (did you mean "{hint[0]}"?)' if hint else ""
                    raise self.error(key, f"unknown key{suffix}")

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.key(key)}: {message}")

    def key(self, key: str) -> str:
        if key.startswith("["):  # array index: algorithms[1]
            return _dotted(self.parts) + key
        name, bracket, index = key.partition("[")
        return _dotted((*self.parts, name)) + bracket + index

    def raw(self, key: str) -> Any:
        self.read.add(key)
        return self.data.get(key)

    def table(self, key: str, allowed: set[str] | None) -> _Table:
        value = self.raw(key)
        if value is None:
            value = {}
        elif not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {_show(value)}")
        return _Table(self.source, (*self.parts, key), value, allowed)

    def finish(self) -> None:
        for key in self.data:
            if key not in self.read:
                raise self.error(key, "unknown key")

    def check(self, value: str, key: str, parse: Callable[[str], object]) -> None:
        try:
            parse(value)
        except ValueError as e:
            raise self.error(key, f"{e}, got {_show(value)}") from None

    def _get(self, key: str, default: _T) -> Any:
        value = self.raw(key)
        return default if value is None else value

    def string(self, key: str, default: str, *, allow_empty: bool = False) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {_show(value)}")
        if not value and not allow_empty:
            raise self.error(key, "expected a non-empty string")
        return value

    def optional_string(self, key: str) -> str | None:
        if self.data.get(key) is None:
            self.read.add(key)
            return None
        return self.string(key, "")

    def env_name(self, key: str) -> str | None:
        value = self.optional_string(key)
        if value is not None and not _ENV_NAME.fullmatch(value):
            # Never echo the value: it may be a secret pasted where its name belongs.
            raise self.error(
                key, "expected the name of an environment variable (letters, digits, _), "
                "not the secret itself",
            )
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_show(value)}")
        return value

    def integer(
        self, key: str, default: int, *, minimum: int, maximum: int | None = None
    ) -> int:
        value = self._get(key, default)
        # bool is an int subclass in Python; `pool_size = true` is a mistake, not 1.
        ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok or value < minimum or (maximum is not None and value > maximum):
            expected = (
                f"an integer >= {minimum}" if maximum is None
                else f"an integer between {minimum} and {maximum}"
            )
            raise self.error(key, f"expected {expected}, got {_show(value)}")
        return cast(int, value)

    def seconds(self, key: str, default: float) -> float:
        value = self._get(key, default)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < 0:
            raise self.error(key, f"expected a number of seconds >= 0, got {_show(value)}")
        return float(value)

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or value not in choices:
            options = ", ".join(f'"{c}"' for c in choices)
            raise self.error(key, f"expected one of {options}, got {_show(value)}")
        return value

    def string_tuple(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(key, default)
        if not isinstance(value, list | tuple):
            raise self.error(key, f"expected an array of strings, got {_show(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise self.error(f"{key}[{i}]", f"expected a non-empty string, got {_show(item)}")
        return tuple(value)
