"""pgtenant configuration: one TOML file loaded into frozen, slotted dataclasses.

Every key, its default and its meaning is documented in ``config.example.toml``.
Unknown keys and bad values raise :class:`ConfigError` naming the key and the file.
Secrets are never inline: ``*_env`` names an environment variable, ``*_file`` a file.

Modules, one responsibility each (import the names from here):

- ``model``: the dataclasses, :class:`ConfigError` and the accepted vocabularies.
- ``loader``: :func:`load_config` / :func:`parse_config`, TOML in, ``Config`` out.
- ``sections``: readers of ``[server]``, ``[tenancy]`` and ``[databases.NAME]``.
- ``login_sections``: readers of ``[auth.jwt]``, ``[admin.users]`` and ``[users.NAME]``.
- ``toml_table``: typed access to one TOML table, errors naming ``file: dotted.key``.
- ``listen``: :func:`parse_listen` for ``"host:port"`` addresses.
- ``scram_verifier``: the PostgreSQL SCRAM-SHA-256 secret format of admin and service users.
- ``secret_sources``: :func:`resolve_secret` for ``*_env`` / ``*_file`` keys.

This package imports nothing from the rest of the proxy.
"""

from proxy.config.listen import parse_listen
from proxy.config.loader import load_config, parse_config
from proxy.config.model import (
    ADMIN_DATABASE,
    HMAC_ALGORITHMS,
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_WORKERS,
    PUBLIC_KEY_ALGORITHMS,
    AdminConfig,
    AdminUserConfig,
    AuthConfig,
    Config,
    ConfigError,
    DatabaseConfig,
    JwtConfig,
    PoolMode,
    ServerConfig,
    ServiceAccountConfig,
    SslMode,
    TenancyConfig,
)
from proxy.config.secret_sources import resolve_secret

__all__ = [
    "ADMIN_DATABASE",
    "HMAC_ALGORITHMS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_WORKERS",
    "PUBLIC_KEY_ALGORITHMS",
    "AdminConfig",
    "AdminUserConfig",
    "AuthConfig",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "JwtConfig",
    "PoolMode",
    "ServerConfig",
    "ServiceAccountConfig",
    "SslMode",
    "TenancyConfig",
    "load_config",
    "parse_config",
    "parse_listen",
    "resolve_secret",
]
