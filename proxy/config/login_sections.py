"""Readers for the sections that decide who logs in.

``[auth.jwt]`` (algorithms and the one key source that verifies tokens), ``[admin.users]``
(console users) and ``[users.NAME]`` (SCRAM service accounts), with their SCRAM verifiers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from proxy.config.model import (
    HMAC_ALGORITHMS,
    PUBLIC_KEY_ALGORITHMS,
    AdminConfig,
    AdminUserConfig,
    DatabaseConfig,
    JwtConfig,
    ServiceAccountConfig,
    TenancyConfig,
)
from proxy.config.scram_verifier import parse_scram_verifier
from proxy.config.toml_table import TomlTable, field_names, show


def read_jwt(t: TomlTable) -> JwtConfig:
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


def _read_algorithms(t: TomlTable, default: tuple[str, ...]) -> tuple[str, ...]:
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
                f"unknown algorithm {show(alg)}; expected one of {', '.join(sorted(known))}",
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



def read_admin(t: TomlTable) -> AdminConfig:
    section = t.raw("users")
    if section is not None and not isinstance(section, dict):
        raise t.error("users", f"expected a table, got {show(section)}")
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


def _read_verifier(t: TomlTable) -> str:
    verifier = t.raw("scram_verifier")
    if verifier is None:
        raise t.error("scram_verifier", "required: the user's SCRAM-SHA-256 verifier")
    if not isinstance(verifier, str):
        raise t.error("scram_verifier", f"expected a string, got {show(verifier)}")
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


def read_service_accounts(root: TomlTable, tenancy: TenancyConfig,
                           databases: Mapping[str, DatabaseConfig]
                           ) -> dict[str, ServiceAccountConfig]:
    section = root.raw("users")
    if section is not None and not isinstance(section, dict):
        raise root.error("users", f"expected a table, got {show(section)}")
    tables = root.table("users", None)
    accounts: dict[str, ServiceAccountConfig] = {}
    for name in section or {}:
        if not name:
            raise root.error("users", "a service account name must not be empty")
        accounts[name] = _read_service_account(
            tables.table(name, field_names(ServiceAccountConfig) - {"name"}), name,
            tenancy, databases)
    return accounts


def _read_service_account(t: TomlTable, name: str, tenancy: TenancyConfig,
                          databases: Mapping[str, DatabaseConfig]) -> ServiceAccountConfig:
    verifier = _read_verifier(t)
    tenant = t.optional_string("tenant")
    bypass = t.boolean("bypass_tenancy", False)
    if (tenant is None) == (not bypass):
        raise t.error("tenant", 'set exactly one of tenant = "ID" or bypass_tenancy = true')
    if tenant is not None and not re.fullmatch(tenancy.tenant_pattern, tenant):
        raise t.error("tenant", f"{show(tenant)} does not match tenancy.tenant_pattern")
    allowed = t.string_tuple("databases", ())
    for i, db in enumerate(allowed):
        if db not in databases:
            raise t.error(f"databases[{i}]", f"{show(db)} is not a configured [databases] name")
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


