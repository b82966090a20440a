"""Config loading: the example loads, defaults apply, values are mapped; an unreadable
file, invalid TOML and every unknown key are errors that name the file and the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from proxy.config import (
    AdminUserConfig,
    AuthConfig,
    ConfigError,
    DatabaseConfig,
    JwtConfig,
    ServerConfig,
    ServiceAccountConfig,
    TenancyConfig,
    load_config,
    parse_config,
)
from tests.unit.config_text import MINIMAL, error_for

REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------- example, defaults


def test_example_config_loads_with_documented_values() -> None:
    config = load_config(REPO_ROOT / "config.example.toml")
    assert config.server.listen == "127.0.0.1:6432"
    assert config.auth.jwt.algorithms == ("HS256",)
    assert config.auth.jwt.secret_env == "PGTENANT_JWT_SECRET"
    assert config.auth.jwt.tenant_claim == "tenant_id"
    assert config.tenancy.setting == "app.current_tenant"
    assert config.tenancy.tenant_pattern == "^[A-Za-z0-9_-]{1,63}$"
    app = config.databases["app"]
    assert (app.name, app.host, app.port, app.dbname, app.user) == (
        "app", "127.0.0.1", 5432, "app", "app_user"
    )
    assert app.password_env == "PGTENANT_UPSTREAM_PASSWORD"
    assert (app.pool_mode, app.pool_size) == ("session", 20)


def test_example_config_documents_every_key() -> None:
    text = (REPO_ROOT / "config.example.toml").read_text(encoding="utf-8")
    for cls in (ServerConfig, JwtConfig, TenancyConfig, DatabaseConfig, AdminUserConfig,
                ServiceAccountConfig):
        for f in dataclasses.fields(cls):
            if f.name == "name":
                continue  # the [databases.NAME] table key
            assert f"{f.name} = " in text, f"{cls.__name__}.{f.name} is not documented"


def test_defaults_apply_when_keys_are_omitted(config_file) -> None:
    config = config_file(MINIMAL)
    assert config.path == "config.toml"
    assert config.server == ServerConfig()
    assert config.auth == AuthConfig(jwt=JwtConfig(secret_env="PGTENANT_JWT_SECRET"))
    assert config.tenancy == TenancyConfig()
    assert config.databases == {"app": DatabaseConfig(name="app")}
    assert config.databases["app"].upstream_dbname == "app"


def test_values_are_mapped_and_arrays_become_tuples(config_file) -> None:
    config = config_file("""
[server]
listen = "[::1]:7432"
tls_cert_file = "server.crt"
tls_key_file = "server.key"
metrics_listen = "0.0.0.0:9187"
max_client_conn = 5
client_login_timeout = 3
log_level = "debug"

[auth.jwt]
algorithms = ["RS256", "PS256", "RS256"]
public_key_file = "jwt.pem"
issuer = "https://issuer.example"
audience = "pgtenant"
leeway_seconds = 0
require_exp = false

[tenancy]
setting = "acme.tenant"
protected_prefixes = ["acme.", "pgtenant."]
tenant_pattern = "^[a-z]{3,10}$"

[databases."my.db"]
host = "/var/run/postgresql"
dbname = "upstream"
pool_mode = "transaction"
pool_size = 4
min_pool_size = 4
sslmode = "verify-full"
server_reset_query = ""
""")
    assert config.server.listen == "[::1]:7432"
    assert config.server.client_login_timeout == 3.0
    assert isinstance(config.server.client_login_timeout, float)
    assert config.auth.jwt.algorithms == ("RS256", "PS256")  # duplicates dropped
    assert config.auth.jwt.require_exp is False
    assert config.tenancy.protected_prefixes == ("acme.", "pgtenant.")
    db = config.databases["my.db"]
    assert db.name == "my.db"
    assert db.upstream_dbname == "upstream"
    assert (db.pool_mode, db.pool_size, db.min_pool_size) == ("transaction", 4, 4)
    assert db.server_reset_query == ""


def test_config_is_frozen(config_file) -> None:
    config = config_file(MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.listen = "0.0.0.0:1"  # type: ignore[misc]


def test_parse_config_names_the_given_source() -> None:
    with pytest.raises(ConfigError, match=r"^inline: databases: "):
        parse_config("[auth.jwt]\nsecret_env = 'X'\n", source="inline")


# --------------------------------------------------------------------- file problems


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=rf"^{missing}: cannot read: "):
        load_config(str(missing))


def test_invalid_toml_names_the_file(config_file) -> None:
    assert error_for(config_file, "[server\n").startswith("config.toml: invalid TOML: ")


# --------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (MINIMAL + "typo = 1\n", "databases.app.typo"),
        ("colour = 1\n" + MINIMAL, "colour"),
        ("[servre]\n" + MINIMAL, "servre"),
        ("[server]\nlistn = 'x'\n" + MINIMAL, "server.listn"),
        ("[auth]\nldap = 1\n" + MINIMAL, "auth.ldap"),
        ("[auth.jwt]\nsecret_env = 'X'\nsecret_evn = 'X'\n[databases.app]\n",
         "auth.jwt.secret_evn"),
        ("[tenancy]\npattern = '^a$'\n" + MINIMAL, "tenancy.pattern"),
        (MINIMAL + "[databases.app.extra]\n", "databases.app.extra"),
    ],
)
def test_unknown_key_is_an_error_at_every_level(config_file, text: str, key: str) -> None:
    message = error_for(config_file, text)
    assert message.startswith(f"config.toml: {key}: unknown key")


def test_unknown_key_suggests_the_close_match(config_file) -> None:
    message = error_for(config_file, MINIMAL + "pool_sise = 3\n")
    assert message == (
        'config.toml: databases.app.pool_sise: unknown key (did you mean "pool_size"?)'
    )


def test_misspelt_key_is_reported_before_the_value_it_leaves_missing(config_file) -> None:
    # secret_evn leaves HS256 without a secret; the typo is the useful message.
    message = error_for(config_file, "[auth.jwt]\nsecret_evn = 'X'\n[databases.app]\n")
    assert message.startswith("config.toml: auth.jwt.secret_evn: unknown key")
