"""Config of the accounts that log in with a password: admin console users and service
accounts, loaded with their SCRAM verifiers (never shown), and every bad key named."""

from __future__ import annotations

import pytest

from proxy.config import ServiceAccountConfig
from tests.unit.config_text import MINIMAL, error_for

# --------------------------------------------------------------------- admin users


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
