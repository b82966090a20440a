"""Loading a config: TOML file or text in, a validated :class:`~proxy.config.model.Config` out.

The section readers live in :mod:`proxy.config.sections` (server, tenancy, databases)
and :mod:`proxy.config.login_sections` (JWT, admin users, service accounts).
"""

from __future__ import annotations

import os
import tomllib
from typing import Any

from proxy.config.login_sections import read_admin, read_jwt, read_service_accounts
from proxy.config.model import (
    AuthConfig,
    Config,
    ConfigError,
    JwtConfig,
    ServerConfig,
    TenancyConfig,
)
from proxy.config.placement import read_placements
from proxy.config.sections import read_databases, read_server, read_tenancy
from proxy.config.toml_table import TomlTable, field_names


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
    root = TomlTable(source, (), data,
                  {"server", "auth", "tenancy", "databases", "admin", "users", "placement"})
    server = read_server(root.table("server", field_names(ServerConfig)))
    auth_table = root.table("auth", {"jwt"})
    jwt = read_jwt(auth_table.table("jwt", field_names(JwtConfig)))
    auth_table.finish()
    tenancy = read_tenancy(root.table("tenancy", field_names(TenancyConfig)))
    databases = read_databases(root)
    admin = read_admin(root.table("admin", {"users"}))
    users = read_service_accounts(root, tenancy, databases)
    try:
        placement = read_placements(root.raw("placement"), databases, tenancy.tenant_pattern)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    root.finish()
    return Config(
        path=source,
        server=server,
        auth=AuthConfig(jwt=jwt),
        tenancy=tenancy,
        databases=databases,
        admin=admin,
        users=users,
        placement=placement,
    )

