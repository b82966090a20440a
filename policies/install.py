"""``pgtenant policies install`` and ``set-key``: the signed tenant context in PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import resources
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from policies.catalog import PolicyError, require_installed, role_exists
from policies.check import (
    ACTIVITY_ROLES,
    NOT_SYSTEM_SCHEMA,
    PRIVILEGED_PREDEFINED_ROLES,
    SIGNAL_FUNCTIONS,
    STORED_SESSION_SETTINGS,
)
from proxy.tenancy.proof import key_id_for

log = logging.getLogger("pgtenant.policies")

DEFAULT_OWNER_ROLE = "pgtenant_owner"
MIN_KEY_BYTES = 32


def install_sql() -> str:
    """The text of ``policies/sql/install.sql`` (with its placeholders)."""
    return resources.files("policies").joinpath("sql/install.sql").read_text(encoding="utf-8")


def install(
    conn: psycopg.Connection[Any],
    *,
    app_roles: Sequence[str] = (),
    owner_role: str = DEFAULT_OWNER_ROLE,
) -> list[str]:
    """Install (or upgrade in place) schema ``pgtenant``, its owner role, the key table,
    the registry and ``pgtenant.current_tenant()``; grant the app roles what they need.

    Idempotent; runs in the connection's current transaction (the caller commits).
    Returns warnings about the app roles (superuser, BYPASSRLS) for the caller to show.
    """
    owner = sql.Identifier(owner_role)
    superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    is_superuser = bool((superuser.fetchone() or (False,))[0])
    for role in app_roles:
        if not role_exists(conn, role):
            raise PolicyError(f"app role {role} does not exist")
    if not role_exists(conn, owner_role):
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(owner))
    conn.execute(sql.SQL(
        "ALTER ROLE {} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"
    ).format(owner))
    if not is_superuser:
        # Creating objects owned by another role requires membership in it.
        conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(owner))
    conn.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
    row = conn.execute(
        "SELECT n.nspname FROM pg_extension AS e"
        " JOIN pg_namespace AS n ON n.oid = e.extnamespace WHERE e.extname = 'pgcrypto'"
    ).fetchone()
    assert row is not None  # created just above
    crypto_schema: str = row[0]
    usable = conn.execute(
        "SELECT has_schema_privilege(%s, %s, 'USAGE')", [owner_role, crypto_schema]
    ).fetchone()
    if not (usable and usable[0]):
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
            sql.Identifier(crypto_schema), owner))
    template = sql.SQL(install_sql())  # our own package file, not user input
    conn.execute(template.format(owner=owner, hmac=sql.Identifier(crypto_schema, "hmac")))
    warnings: list[str] = []
    for role in app_roles:
        grantee = sql.Identifier(role)
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA pgtenant TO {}").format(grantee))
        conn.execute(sql.SQL(
            "GRANT EXECUTE ON FUNCTION pgtenant.current_tenant(), pgtenant.tenant_status(text),"
            " pgtenant.tenant_placement(text) TO {}").format(grantee))
        flags = conn.execute(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s", [role]
        ).fetchone()
        if flags and flags[0]:
            warnings.append(f"app role {role} is a superuser: Row-Level Security never applies")
        elif flags and flags[1]:
            warnings.append(f"app role {role} has BYPASSRLS: Row-Level Security never applies")
    log.info("installed pgtenant in %s (owner %s, app roles %s)",
             conn.info.dbname, owner_role, list(app_roles))
    return warnings


# The schemas where the role holds CREATE of its own (not through PUBLIC).
_SCHEMAS_GRANTING_CREATE: LiteralString = (
    "SELECT n.nspname FROM pg_namespace AS n WHERE " + NOT_SYSTEM_SCHEMA
    + " AND EXISTS (SELECT 1 FROM aclexplode(n.nspacl) AS a"
    "   WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = %s)"
    "   AND a.privilege_type = 'CREATE') ORDER BY 1"
)


def harden_role(
    conn: psycopg.Connection[Any],
    role: str,
    *,
    password: str | None = None,
    owner_role: str = DEFAULT_OWNER_ROLE,
) -> bool:
    """Create the proxy's upstream role ``role``, or bring an existing one to the state
    ``policies check --app-role`` wants; idempotent, in the caller's transaction.

    The role: LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION,
    ``track_activities = off``, none of the predefined roles of PGT013/PGT018, no CREATE of
    its own on the database or a schema, no stored session settings of PGT025. For the
    whole database: ``REVOKE CREATE ON SCHEMA public FROM PUBLIC`` (already so in a new
    PostgreSQL 15 database) and ``REVOKE EXECUTE`` on the backend-signalling functions
    ``FROM PUBLIC`` (any role may signal its own sessions, and every tenant shares this
    one). Ownership is never moved: ``check.audit_role`` tells what remains. Returns
    whether the role was created.

    ``password`` is sent as a SCRAM-SHA-256 verifier computed here, never in clear.
    Needs a superuser (track_activities, the pg_catalog functions, role attributes).
    """
    superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    if not (superuser.fetchone() or (False,))[0]:
        raise PolicyError("--create-role needs a superuser (it sets track_activities for "
                          "the role and revokes rights from PUBLIC on pg_catalog functions)")
    ident = sql.Identifier(role)
    created = not role_exists(conn, role)
    if created:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
    conn.execute(sql.SQL("ALTER ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS"
                         " NOREPLICATION").format(ident))
    if password is not None:
        verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(),
                                                b"scram-sha-256")
        conn.execute("SET LOCAL log_statement = 'none'")
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            ident, sql.Literal(verifier.decode())))
    conn.execute(sql.SQL("ALTER ROLE {} SET track_activities = off").format(ident))
    for setting, this_database in conn.execute(STORED_SESSION_SETTINGS, {"role": role}
                                               ).fetchall():
        where = sql.SQL(" IN DATABASE {}").format(sql.Identifier(conn.info.dbname)) \
            if this_database else sql.SQL("")
        conn.execute(sql.SQL("ALTER ROLE {}{} RESET {}").format(
            ident, where, sql.Identifier(*setting.split("=", 1)[0].split("."))))
    granted = conn.execute(
        "SELECT g.rolname FROM pg_auth_members AS m JOIN pg_roles AS g ON g.oid = m.roleid"
        " WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = %s)"
        " AND g.rolname = ANY(%s) ORDER BY 1",
        [role, [*ACTIVITY_ROLES, *PRIVILEGED_PREDEFINED_ROLES, owner_role]]).fetchall()
    for (group,) in granted:
        conn.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(group), ident))
    conn.execute(sql.SQL("REVOKE CREATE ON DATABASE {} FROM {}").format(
        sql.Identifier(conn.info.dbname), ident))
    for (schema,) in conn.execute(_SCHEMAS_GRANTING_CREATE, [role]).fetchall():
        conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA {} FROM {}").format(
            sql.Identifier(schema), ident))
    if conn.execute("SELECT to_regnamespace('public')").fetchone() != (None,):
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    for signature in SIGNAL_FUNCTIONS:
        row = conn.execute("SELECT to_regprocedure(%s)::oid", [signature]).fetchone()
        if row and row[0] is not None:
            conn.execute(sql.SQL("REVOKE EXECUTE ON FUNCTION {} FROM PUBLIC, {}").format(
                sql.SQL(signature), ident))
    log.info("hardened upstream role %s in %s (created: %s)", role, conn.info.dbname, created)
    return created


def set_key(
    conn: psycopg.Connection[Any],
    key: bytes,
    *,
    key_id: str | None = None,
    retire_others: bool = False,
) -> str:
    """Store (or re-activate) an HMAC key; with ``retire_others``, deactivate every other.

    Rotation: ``set_key(new)`` (old and new both verify), roll the proxies to the new
    key, then ``set_key(new, retire_others=True)``. Returns the key id. The key travels
    as a bind parameter and statement logging is switched off for the transaction when
    the role may do so, so it does not land in the server log.
    """
    if len(key) < MIN_KEY_BYTES:
        raise PolicyError(
            f"the key is {len(key)} bytes; use at least {MIN_KEY_BYTES} bytes "
            "(for example `openssl rand -hex 32`)"
        )
    require_installed(conn)
    key_id = key_id or key_id_for(key)
    superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    if (superuser.fetchone() or (False,))[0]:
        conn.execute("SET LOCAL log_statement = 'none'")
        conn.execute("SET LOCAL log_min_duration_statement = -1")
        conn.execute("SET LOCAL log_parameter_max_length = 0")
    conn.execute(
        "INSERT INTO pgtenant.keys (id, key) VALUES (%s, %s)"
        " ON CONFLICT (id) DO UPDATE SET key = excluded.key, active = true, retired_at = NULL",
        [key_id, key],
    )
    if retire_others:
        conn.execute(
            "UPDATE pgtenant.keys SET active = false, retired_at = now()"
            " WHERE id <> %s AND active",
            [key_id],
        )
    return key_id


def active_key_ids(conn: psycopg.Connection[Any]) -> list[str]:
    """The ids of the keys that currently verify proofs, oldest first (ids only, never keys)."""
    rows = conn.execute(
        "SELECT id FROM pgtenant.keys WHERE active ORDER BY created_at, id"
    ).fetchall()
    return [r[0] for r in rows]
