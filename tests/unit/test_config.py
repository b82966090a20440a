"""Config loading: the example loads, defaults apply, and every bad value names its key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from proxy.config import (
    AdminUserConfig,
    AuthConfig,
    Config,
    ConfigError,
    DatabaseConfig,
    JwtConfig,
    ServerConfig,
    ServiceAccountConfig,
    TenancyConfig,
    load_config,
    parse_config,
    parse_listen,
    resolve_secret,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# The smallest valid config: an HS256 secret source and one database.
MINIMAL = """
[auth.jwt]
secret_env = "PGTENANT_JWT_SECRET"

[databases.app]
"""


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write TOML to ./config.toml in a temp dir and return a loader for it."""
    monkeypatch.chdir(tmp_path)

    def load(text: str) -> Config:
        Path("config.toml").write_text(text, encoding="utf-8")
        return load_config("config.toml")

    return load


def error_for(load, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(text)
    return str(info.value)


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


# --------------------------------------------------------------------- bad values


def test_bad_integer_message_is_exact(config_file) -> None:
    message = error_for(config_file, MINIMAL + 'pool_size = "x"\n')
    assert message == 'config.toml: databases.app.pool_size: expected an integer >= 1, got "x"'


DB = MINIMAL  # values appended below land in [databases.app]
JWT = "[databases.app]\n[auth.jwt]\n"  # values appended below land in [auth.jwt]


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        # integers: type (bool is not an int), ranges
        (DB + "pool_size = true\n", "databases.app.pool_size", "got true"),
        (DB + "pool_size = 0\n", "databases.app.pool_size", "integer >= 1, got 0"),
        (DB + "pool_size = 2.5\n", "databases.app.pool_size", "got 2.5"),
        (DB + "port = 0\n", "databases.app.port", "between 1 and 65535, got 0"),
        (DB + "port = 65536\n", "databases.app.port", "between 1 and 65535"),
        (DB + "port = true\n", "databases.app.port", "got true"),
        (DB + "min_pool_size = -1\n", "databases.app.min_pool_size", ">= 0"),
        (DB + "pool_size = 2\nmin_pool_size = 3\n", "databases.app.min_pool_size",
         "must be <= pool_size (2), got 3"),
        (DB + "reserve_pool_size = -1\n", "databases.app.reserve_pool_size", ">= 0"),
        (DB + "max_tenant_server_conns = false\n", "databases.app.max_tenant_server_conns",
         "got false"),
        # timeouts
        (DB + "query_wait_timeout = -1\n", "databases.app.query_wait_timeout", ">= 0, got -1"),
        (DB + "server_lifetime = '1h'\n", "databases.app.server_lifetime", 'got "1h"'),
        (DB + "server_idle_timeout = nan\n", "databases.app.server_idle_timeout", "got nan"),
        (DB + "client_idle_timeout = inf\n", "databases.app.client_idle_timeout", "got inf"),
        (DB + "idle_transaction_timeout = true\n", "databases.app.idle_transaction_timeout",
         "got true"),
        # enums, strings, booleans
        (DB + "pool_mode = 'statement'\n", "databases.app.pool_mode", 'got "statement"'),
        (DB + "sslmode = 'on'\n", "databases.app.sslmode", '"verify-full", got "on"'),
        (DB + "host = ''\n", "databases.app.host", "non-empty string"),
        (DB + "user = 5\n", "databases.app.user", "expected a string, got 5"),
        (DB + "allow_privileged_upstream = 'yes'\n", "databases.app.allow_privileged_upstream",
         'expected true or false, got "yes"'),
        (DB + "password_env = 'A'\npassword_file = 'b'\n", "databases.app.password_file",
         "not both"),
        # databases
        ("[auth.jwt]\nsecret_env = 'X'\n", "databases", "at least one"),
        ("databases = {}\n[auth.jwt]\nsecret_env = 'X'\n", "databases", "at least one"),
        ("databases = 3\n[auth.jwt]\nsecret_env = 'X'\n", "databases", "expected a table"),
        ("[auth.jwt]\nsecret_env = 'X'\n[databases]\napp = 1\n", "databases.app",
         "expected a table, got 1"),
        ("[auth.jwt]\nsecret_env = 'X'\n[databases.pgtenant]\n", "databases.pgtenant",
         "reserved for the admin console"),
        ("[auth.jwt]\nsecret_env = 'X'\n[databases.PgTenant]\n", "databases.PgTenant",
         "reserved"),
        ("[auth.jwt]\nsecret_env = 'X'\n[databases.\"\"]\n", 'databases.""', "empty"),
        ("[auth.jwt]\nsecret_env = 'X'\n[databases.\"a.b\"]\nport = 0\n",
         'databases."a.b".port', "between 1 and 65535"),
        # server
        ("[server]\nlisten = '127.0.0.1'\n" + MINIMAL, "server.listen", '"host:port"'),
        ("[server]\nlisten = '127.0.0.1:70000'\n" + MINIMAL, "server.listen",
         "between 0 and 65535"),
        ("[server]\nlisten = '127.0.0.1:http'\n" + MINIMAL, "server.listen", "port number"),
        ("[server]\nlisten = '::1:6432'\n" + MINIMAL, "server.listen", "brackets"),
        ("[server]\nlisten = '[nope]:6432'\n" + MINIMAL, "server.listen", "not an IPv6"),
        ("[server]\nlisten = ':6432'\n" + MINIMAL, "server.listen", "host"),
        ("[server]\nmetrics_listen = 'localhost'\n" + MINIMAL, "server.metrics_listen",
         "host:port"),
        ("[server]\ntls_cert_file = 'c.pem'\n" + MINIMAL, "server.tls_key_file",
         "set together"),
        ("[server]\ntls_key_file = 'k.pem'\n" + MINIMAL, "server.tls_cert_file",
         "set together"),
        ("[server]\nmax_client_conn = 0\n" + MINIMAL, "server.max_client_conn", ">= 1"),
        ("[server]\nclient_login_timeout = -5\n" + MINIMAL, "server.client_login_timeout",
         ">= 0"),
        ("[server]\nlog_level = 'loud'\n" + MINIMAL, "server.log_level", 'got "loud"'),
        ("[server]\nallow_insecure_password = 1\n" + MINIMAL,
         "server.allow_insecure_password", "got 1"),
        # jwt: algorithms
        (JWT + "secret_env = 'X'\nalgorithms = []\n", "auth.jwt.algorithms", "at least one"),
        (JWT + "secret_env = 'X'\nalgorithms = 'HS256'\n", "auth.jwt.algorithms",
         "array of strings"),
        (JWT + "secret_env = 'X'\nalgorithms = ['none']\n", "auth.jwt.algorithms[0]",
         "never accepted"),
        (JWT + "secret_env = 'X'\nalgorithms = ['HS256', 'NoNe']\n", "auth.jwt.algorithms[1]",
         "never accepted"),
        (JWT + "secret_env = 'X'\nalgorithms = ['hs256']\n", "auth.jwt.algorithms[0]",
         'unknown algorithm "hs256"'),
        (JWT + "secret_env = 'X'\nalgorithms = ['HS256', 1]\n", "auth.jwt.algorithms[1]",
         "got 1"),
        (JWT + "secret_env = 'X'\nalgorithms = ['HS256', 'RS256']\n", "auth.jwt.algorithms",
         "algorithm-confusion"),
        (JWT + "public_key_file = 'k'\nalgorithms = ['ES256', 'HS512']\n",
         "auth.jwt.algorithms", "algorithm-confusion"),
        # jwt: key sources
        (JWT, "auth.jwt.secret_env", "HS256 needs a key: set secret_env or secret_file"),
        (JWT + "secret_env = 'X'\nsecret_file = 'f'\n", "auth.jwt.secret_file", "not both"),
        (JWT + "secret_env = 'X'\npublic_key_file = 'k'\n", "auth.jwt.public_key_file",
         "not used by HS256"),
        (JWT + "secret_env = 'X'\njwks_file = 'k'\n", "auth.jwt.jwks_file", "not used by HS256"),
        (JWT + "algorithms = ['RS256']\n", "auth.jwt.public_key_file",
         "RS256 needs a key: set public_key_file or jwks_file or jwks_url"),
        (JWT + "algorithms = ['RS256']\njwks_url = 'http://idp.example/jwks'\n",
         "auth.jwt.jwks_url", "must be an https:// URL"),
        (JWT + "algorithms = ['RS256']\njwks_file = 'a'\njwks_url = 'https://i/j'\n",
         "auth.jwt.jwks_url", "not both"),
        (JWT + "secret_env = 'X'\njwks_url = 'https://i/j'\n", "auth.jwt.jwks_url",
         "not used by HS256"),
        (JWT + "algorithms = ['RS256']\njwks_url = 'https://i/j'\njwks_refresh_seconds = -1\n",
         "auth.jwt.jwks_refresh_seconds", ">= 0"),
        (JWT + "algorithms = ['RS256']\npublic_key_file = 'a'\njwks_file = 'b'\n",
         "auth.jwt.jwks_file", "not both"),
        (JWT + "algorithms = ['EdDSA']\njwks_file = 'b'\nsecret_env = 'X'\n",
         "auth.jwt.secret_env", "not used by EdDSA"),
        (JWT + "secret_env = 'X'\ntenant_claim = ''\n", "auth.jwt.tenant_claim", "non-empty"),
        (JWT + "secret_env = 'X'\nleeway_seconds = -1\n", "auth.jwt.leeway_seconds", ">= 0"),
        (JWT + "secret_env = 'X'\nrequire_exp = 'no'\n", "auth.jwt.require_exp", "true or false"),
        (JWT + "secret_env = 'X'\naudience = ['a', 'b']\n", "auth.jwt.audience",
         "expected a string, got an array"),
        # tenancy
        ("[tenancy]\ntenant_pattern = '[a-z]+$'\n" + MINIMAL, "tenancy.tenant_pattern",
         "anchored"),
        ("[tenancy]\ntenant_pattern = '^[a-z]+'\n" + MINIMAL, "tenancy.tenant_pattern",
         "anchored"),
        ("[tenancy]\ntenant_pattern = '^[a-z]+\\$'\n" + MINIMAL, "tenancy.tenant_pattern",
         "anchored"),
        ("[tenancy]\ntenant_pattern = '^[a-z$'\n" + MINIMAL, "tenancy.tenant_pattern",
         "not a valid regular expression"),
        ("[tenancy]\ntenant_pattern = '^[a-z]*$'\n" + MINIMAL, "tenancy.tenant_pattern",
         "empty string"),
        ("[tenancy]\nsetting = 'current_tenant'\n" + MINIMAL, "tenancy.setting",
         "dotted custom setting name"),
        ("[tenancy]\nsetting = 'app.'\n" + MINIMAL, "tenancy.setting", "dotted"),
        ("[tenancy]\nsetting = 'app.x; drop'\n" + MINIMAL, "tenancy.setting", "dotted"),
        ("[tenancy]\nsetting = 'myapp.tenant'\n" + MINIMAL, "tenancy.setting",
         "protected_prefixes"),
        ("[tenancy]\nprotected_prefixes = []\n" + MINIMAL, "tenancy.setting",
         "protected_prefixes"),
        ("[tenancy]\nprotected_prefixes = ['app']\n" + MINIMAL, "tenancy.protected_prefixes[0]",
         'ending in "."'),
        ("[tenancy]\nproof_setting = 'myapp.proof'\n" + MINIMAL, "tenancy.proof_setting",
         "forge"),
        ("[tenancy]\nproof_key_env = 'not a name!'\n" + MINIMAL, "tenancy.proof_key_env",
         "environment variable"),
        ("[tenancy]\nguard_cache_size = 0\n" + MINIMAL, "tenancy.guard_cache_size", ">= 16"),
        ("[tenancy]\nguard = 'yes'\n" + MINIMAL, "tenancy.guard", "true or false"),
    ],
)
def test_bad_value_names_file_and_key(config_file, text: str, key: str, fragment: str) -> None:
    message = error_for(config_file, text)
    assert message.startswith(f"config.toml: {key}: "), message
    assert fragment in message


def test_env_name_error_never_echoes_the_value(config_file) -> None:
    # Someone pasted the secret where its variable name belongs.
    pasted = "s3cr3t-v@lue/with+symbols"
    message = error_for(config_file, f"[auth.jwt]\nsecret_env = '{pasted}'\n[databases.app]\n")
    assert message.startswith("config.toml: auth.jwt.secret_env: expected the name")
    assert pasted not in message
    message = error_for(config_file, MINIMAL + f"password_env = '{pasted}'\n")
    assert message.startswith("config.toml: databases.app.password_env: ")
    assert pasted not in message


def test_public_key_algorithms_load_with_their_key_source(config_file) -> None:
    config = config_file(
        "[auth.jwt]\nalgorithms = ['ES256', 'EdDSA']\njwks_file = 'jwks.json'\n[databases.app]\n"
    )
    assert config.auth.jwt.algorithms == ("ES256", "EdDSA")
    assert config.auth.jwt.jwks_file == "jwks.json"


def test_setting_prefix_match_is_case_insensitive(config_file) -> None:
    config = config_file("[tenancy]\nsetting = 'App.Tenant'\n" + MINIMAL)
    assert config.tenancy.setting == "App.Tenant"


# --------------------------------------------------------------------- parse_listen


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:6432", ("127.0.0.1", 6432)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("localhost:65535", ("localhost", 65535)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:6432", ("::1", 6432)),
        ("[::]:5432", ("::", 5432)),
        ("[fe80::1%eth0]:5432", ("fe80::1%eth0", 5432)),
    ],
)
def test_parse_listen_accepts_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "6432", "host", "host:", ":6432", "host:65536", "host:+1", "host: 1",
     "::1:6432", "[::1]", "[::1]6432", "[127.0.0.1]:6432", "a b:1", "host:١٢"],
)
def test_parse_listen_refuses_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)


# --------------------------------------------------------------------- resolve_secret

SECRET = "correct horse battery staple"


def test_resolve_secret_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGT_TEST_SECRET", SECRET)
    assert resolve_secret("PGT_TEST_SECRET", None, "auth.jwt.secret") == SECRET


@pytest.mark.parametrize("value", [None, ""])
def test_resolve_secret_missing_env_names_the_key(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("PGT_TEST_SECRET", raising=False)
    else:
        monkeypatch.setenv("PGT_TEST_SECRET", value)
    with pytest.raises(ConfigError, match=r"^databases\.app\.password_env: .*not set"):
        resolve_secret("PGT_TEST_SECRET", None, "databases.app.password")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (SECRET + "\n", SECRET),
        (SECRET + "\r\n", SECRET),
        (SECRET + "\n\n", SECRET + "\n"),  # only one newline is the editor's
        (SECRET, SECRET),
        (" " + SECRET + " ", " " + SECRET + " "),  # spaces may be part of a secret
    ],
)
def test_resolve_secret_reads_a_file(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content.encode())
    assert resolve_secret(None, str(path), "auth.jwt.secret") == expected


def test_resolve_secret_file_problems_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^auth\.jwt\.secret_file: cannot read "):
        resolve_secret(None, str(tmp_path / "missing"), "auth.jwt.secret")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=r"^auth\.jwt\.secret_file: .* is empty"):
        resolve_secret(None, str(empty), "auth.jwt.secret")


def test_resolve_secret_needs_at_most_one_source(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_secret(None, None, "auth.jwt.secret") is None
    monkeypatch.setenv("PGT_TEST_SECRET", SECRET)
    with pytest.raises(ConfigError, match="not both") as info:
        resolve_secret("PGT_TEST_SECRET", "/dev/null", "auth.jwt.secret")
    assert SECRET not in str(info.value)


# --------------------------------------------------------------------- admin, shutdown


def test_shutdown_timeout_defaults_and_validates(config_file) -> None:
    assert config_file(MINIMAL).server.shutdown_timeout == 30.0
    config = config_file("[server]\nshutdown_timeout = 5\n" + MINIMAL)
    assert config.server.shutdown_timeout == 5.0
    message = error_for(config_file, "[server]\nshutdown_timeout = -1\n" + MINIMAL)
    assert "server.shutdown_timeout: expected a number of seconds >= 0" in message


def test_workers_default_to_one_and_are_bounded(config_file) -> None:
    assert config_file(MINIMAL).server.workers == 1
    assert config_file("[server]\nworkers = 4\n" + MINIMAL).server.workers == 4
    assert config_file("[server]\nworkers = 64\n" + MINIMAL).server.workers == 64
    for bad in ("0", "65", "1.5", '"2"'):
        message = error_for(config_file, f"[server]\nworkers = {bad}\n" + MINIMAL)
        assert "server.workers" in message


def test_log_format_is_text_or_json(config_file) -> None:
    assert config_file(MINIMAL).server.log_format == "text"
    assert config_file('[server]\nlog_format = "json"\n' + MINIMAL).server.log_format == "json"
    message = error_for(config_file, '[server]\nlog_format = "xml"\n' + MINIMAL)
    assert "server.log_format" in message and 'got "xml"' in message


def test_admin_users_are_loaded_with_their_verifier(config_file) -> None:
    from proxy.config import AdminConfig
    from proxy.config.scram_verifier import make_scram_verifier

    assert config_file(MINIMAL).admin == AdminConfig()
    verifier = make_scram_verifier("admin-password")
    config = config_file(MINIMAL + f'[admin.users.ops]\nscram_verifier = "{verifier}"\n')
    user = config.admin.users["ops"]
    assert (user.name, user.scram_verifier) == ("ops", verifier)
    assert verifier not in repr(config)  # the verifier never shows in logs or reprs


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("[admin.users.ops]\n", "admin.users.ops.scram_verifier: required"),
        ('[admin.users.ops]\nscram_verifier = "md5abc-secret"\n',
         "admin.users.ops.scram_verifier: not a SCRAM-SHA-256 secret"),
        ('[admin.users.ops]\nscram_verifier = "SCRAM-SHA-256$x-secret"\n',
         "admin.users.ops.scram_verifier: malformed SCRAM-SHA-256 secret"),
        ("[admin.users.ops]\nscram_verifier = 1\n",
         "admin.users.ops.scram_verifier: expected a string"),
        ('[admin.users.ops]\nscram_verifier = "x"\npassword = "p"\n',
         "admin.users.ops.password: unknown key"),
        ("[admin]\nusers = 1\n", "admin.users: expected a table"),
        ("[admin]\nuser = {}\n", 'admin.user: unknown key (did you mean "users"?)'),
    ],
)
def test_bad_admin_users_name_their_key(config_file, table: str, expected: str) -> None:
    message = error_for(config_file, MINIMAL + table)
    assert expected in message
    assert "secret\"" not in message and "md5abc" not in message


# --------------------------------------------------------------------- service accounts


def _verifier() -> str:
    from proxy.config.scram_verifier import make_scram_verifier

    return make_scram_verifier("service-password", salt=b"0123456789abcdef")


def test_service_accounts_default_to_none(config_file) -> None:
    assert config_file(MINIMAL).users == {}


def test_tenant_bound_service_account_is_loaded(config_file) -> None:
    verifier = _verifier()
    config = config_file(MINIMAL + f"""
[users.acme_migrator]
scram_verifier = "{verifier}"
tenant = "acme"
databases = ["app"]
""")
    assert config.users == {"acme_migrator": ServiceAccountConfig(
        name="acme_migrator", scram_verifier=verifier, tenant="acme", databases=("app",))}
    assert verifier not in repr(config)


def test_bypass_service_account_is_loaded_with_its_upstream_role(config_file) -> None:
    verifier = _verifier()
    config = config_file(MINIMAL + f"""
[users.analytics]
scram_verifier = "{verifier}"
bypass_tenancy = true
upstream_user = "analytics"
upstream_password_file = "/run/secrets/analytics"
allow_privileged_upstream = true
""")
    account = config.users["analytics"]
    assert (account.tenant, account.bypass_tenancy, account.databases) == (None, True, ())
    assert (account.upstream_user, account.upstream_password_env,
            account.upstream_password_file) == ("analytics", None, "/run/secrets/analytics")
    assert account.allow_privileged_upstream
    # The account's flag never widens the database's own pool.
    assert not config.databases["app"].allow_privileged_upstream


_V = "SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$" + "A" * 43 + "=:" + "A" * 43 + "="
_BYPASS = f'[users.a]\nscram_verifier = "{_V}"\nbypass_tenancy = true\n'


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("[users.a]\ntenant = \"acme\"\n", "users.a.scram_verifier: required"),
        ('[users.a]\nscram_verifier = "md5x-secret"\ntenant = "acme"\n',
         "users.a.scram_verifier: not a SCRAM-SHA-256 secret"),
        (f'[users.a]\nscram_verifier = "{_V}"\n',
         'users.a.tenant: set exactly one of tenant = "ID" or bypass_tenancy = true'),
        (f'[users.a]\nscram_verifier = "{_V}"\ntenant = "acme"\nbypass_tenancy = true\n',
         "users.a.tenant: set exactly one"),
        (f'[users.a]\nscram_verifier = "{_V}"\ntenant = "no spaces"\n',
         "users.a.tenant: \"no spaces\" does not match tenancy.tenant_pattern"),
        (f'[users.a]\nscram_verifier = "{_V}"\ntenant = "acme"\ndatabases = ["nope"]\n',
         'users.a.databases[0]: "nope" is not a configured [databases] name'),
        (f'[users.a]\nscram_verifier = "{_V}"\ntenant = "acme"\nupstream_user = "x"\n',
         "users.a.upstream_user: only with bypass_tenancy = true"),
        (f'[users.a]\nscram_verifier = "{_V}"\ntenant = "acme"\n'
         "allow_privileged_upstream = true\n",
         "users.a.allow_privileged_upstream: only with bypass_tenancy = true"),
        (_BYPASS, "users.a.upstream_user: required with bypass_tenancy"),
        (_BYPASS + 'upstream_user = "x"\n',
         "users.a.upstream_password_env: required with bypass_tenancy"),
        (_BYPASS + 'upstream_user = "x"\nupstream_password_env = "E"\n'
         'upstream_password_file = "f"\n',
         "users.a.upstream_password_file: set upstream_password_env or "
         "upstream_password_file, not both"),
        (_BYPASS + 'upstream_user = "x"\nupstream_password_env = "not a name"\n',
         "users.a.upstream_password_env: expected the name of an environment variable"),
        (f'[users.a]\nscram_verifier = "{_V}"\ntenant = "acme"\npassword = "p"\n',
         "users.a.password: unknown key"),
        ("users = 1\n", "users: expected a table"),
    ],
)
def test_bad_service_accounts_name_their_key(config_file, table: str, expected: str) -> None:
    # [users] must come before [databases.app] when it is a bare key.
    text = table + MINIMAL if table.startswith("users =") else MINIMAL + table
    message = error_for(config_file, text)
    assert expected in message
    assert "secret\"" not in message and "md5x" not in message
