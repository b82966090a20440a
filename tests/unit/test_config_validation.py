"""Config validation: every bad value is an error that names the file and the key (and
never echoes a secret pasted where its variable name belongs); listen addresses; the
server's shutdown, workers and log format keys."""

from __future__ import annotations

import pytest

from proxy.config import parse_listen
from tests.unit.config_text import MINIMAL, error_for

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


# --------------------------------------------------------------------- server keys


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
