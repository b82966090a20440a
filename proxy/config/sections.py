"""Readers for the sections that shape the proxy: ``[server]``, ``[tenancy]``, ``[databases]``."""

from __future__ import annotations

import re
from typing import cast, get_args

from proxy.config.listen import parse_listen
from proxy.config.model import (
    ADMIN_DATABASE,
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_WORKERS,
    ConfigError,
    DatabaseConfig,
    PoolMode,
    ServerConfig,
    SslMode,
    TenancyConfig,
)
from proxy.config.toml_table import TomlTable, dotted, field_names, show

# A custom GUC is two or more identifiers joined by dots (PostgreSQL refuses a bare
# name for a setting it does not know), e.g. app.current_tenant.
_GUC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_GUC_PREFIX = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_]*\.)+")
_FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def read_server(t: TomlTable) -> ServerConfig:
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


def read_tenancy(t: TomlTable) -> TenancyConfig:
    d = TenancyConfig()
    prefixes = t.string_tuple("protected_prefixes", d.protected_prefixes)
    for i, prefix in enumerate(prefixes):
        if not _GUC_PREFIX.fullmatch(prefix):
            raise t.error(
                f"protected_prefixes[{i}]",
                f'expected a setting prefix ending in "." such as "app.", got {show(prefix)}',
            )
    setting = t.string("setting", d.setting)
    if not _GUC_NAME.fullmatch(setting):
        raise t.error(
            "setting",
            f'expected a dotted custom setting name such as "app.current_tenant", '
            f"got {show(setting)}",
        )
    if not any(setting.lower().startswith(p.lower()) for p in prefixes):
        raise t.error(
            "setting",
            f"{show(setting)} must start with one of protected_prefixes "
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
        raise t.error("proof_setting", f"{show(tenancy.proof_setting)} must start with one "
                      "of protected_prefixes, or clients could forge it")
    t.finish()
    return tenancy


def _read_function_names(t: TomlTable, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    names = t.string_tuple(key, default)
    for i, name in enumerate(names):
        if not _FUNCTION_NAME.fullmatch(name):
            raise t.error(f"{key}[{i}]", "expected a function name without schema or "
                          f'arguments such as "pg_advisory_lock", got {show(name)}')
    return tuple(name.lower() for name in names)


def _check_tenant_pattern(t: TomlTable, pattern: str) -> None:
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


def read_databases(root: TomlTable) -> dict[str, DatabaseConfig]:
    section = root.raw("databases")
    if section is None or (isinstance(section, dict) and not section):
        raise ConfigError(f"{root.source}: databases: at least one [databases.NAME] table "
                          "is required")
    if not isinstance(section, dict):
        raise root.error("databases", f"expected a table, got {show(section)}")
    allowed = field_names(DatabaseConfig) - {"name"}
    tables = root.table("databases", None)
    databases: dict[str, DatabaseConfig] = {}
    for name in section:
        key = dotted(("databases", name))
        if not name:
            raise ConfigError(f"{root.source}: {key}: a database name must not be empty")
        if name.lower() == ADMIN_DATABASE:
            raise ConfigError(
                f"{root.source}: {key}: the name {ADMIN_DATABASE!r} is reserved for the "
                "admin console"
            )
        databases[name] = _read_database(tables.table(name, allowed), name)
    return databases


def _read_database(t: TomlTable, name: str) -> DatabaseConfig:
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


