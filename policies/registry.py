"""The tenant registry: ``pgtenant.tenants`` and ``pgtenant tenants create|list|...``.

The proxy is to look a tenant up with :data:`TENANT_STATUS_SQL` (one bind parameter, the
tenant id; the app role may run it) and refuse tenants whose status is not ``active``.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pglast
import psycopg
from psycopg import sql

from policies.catalog import PolicyError
from proxy.config import TenancyConfig

TenantStatus = Literal["active", "suspended", "moving"]

#: For the proxy (extended protocol, ``$1`` = tenant id): 'active', 'suspended' or NULL
#: for an unknown tenant. ``pgtenant.tenant_status`` is SECURITY DEFINER, so the app role
#: needs EXECUTE on it (``policies install --app-role``), not access to the table.
TENANT_STATUS_SQL = "SELECT pgtenant.tenant_status($1)"

TENANT_ID_PATTERN = TenancyConfig().tenant_pattern
SCHEMA_PREFIX = "tenant_"
_COLUMNS = "id, status, created_at, schema_name, placement"
_MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1; longer names are truncated


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    status: TenantStatus
    created_at: datetime.datetime
    schema_name: str | None
    placement: str | None = None  # the [databases] entry holding its rows; None: default


def validate_tenant_id(tenant: str, pattern: str = TENANT_ID_PATTERN) -> str:
    """Return ``tenant`` when the whole of it matches ``pattern``; PolicyError otherwise."""
    if not re.fullmatch(pattern, tenant):
        raise PolicyError(f"invalid tenant id {tenant!r}: it must match {pattern}")
    return tenant


def tenant_status(conn: psycopg.Connection[Any], tenant: str) -> TenantStatus | None:
    """The registry status of ``tenant`` ('active', 'suspended'), None when unknown."""
    # TENANT_STATUS_SQL with psycopg's placeholder (RawCursor needs psycopg 3.2).
    row = conn.execute("SELECT pgtenant.tenant_status(%s)", [tenant]).fetchone()
    status: TenantStatus | None = row[0] if row else None
    return status


def schema_for(tenant: str) -> str:
    name = SCHEMA_PREFIX + tenant
    if len(name.encode()) > _MAX_IDENTIFIER_BYTES:
        raise PolicyError(
            f"schema name {name} would be longer than {_MAX_IDENTIFIER_BYTES} bytes "
            "(PostgreSQL would truncate it); use a shorter tenant id"
        )
    return name


def migration_files(directory: str | Path) -> list[Path]:
    """The ``*.sql`` files of ``directory`` in name order, each checked to hold no
    transaction control (it would break the all-or-nothing creation)."""
    folder = Path(directory)
    if not folder.is_dir():
        raise PolicyError(f"migrations directory {folder} does not exist")
    files = sorted(folder.glob("*.sql"), key=lambda p: p.name)
    for path in files:
        try:
            statements = pglast.parse_sql(path.read_text(encoding="utf-8"))
        except pglast.parser.ParseError as exc:
            raise PolicyError(f"{path.name}: SQL syntax error: {exc}") from None
        except UnicodeDecodeError:
            raise PolicyError(f"{path.name}: not UTF-8 text") from None
        if any(isinstance(raw.stmt, pglast.ast.TransactionStmt) for raw in statements):
            raise PolicyError(
                f"{path.name}: BEGIN/COMMIT/ROLLBACK/SAVEPOINT are not allowed: "
                "every migration of a new tenant runs in one transaction"
            )
    return files


def _require_registry(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("SELECT to_regclass('pgtenant.tenants') IS NOT NULL").fetchone()
    if not (row and row[0]):
        raise PolicyError(
            f"no tenant registry in database {conn.info.dbname}: "
            "run `pgtenant policies install` first"
        )


def create_tenant(
    conn: psycopg.Connection[Any],
    tenant: str,
    *,
    schema: bool = False,
    migrations: str | Path | None = None,
    app_roles: Sequence[str] = (),
    placement: str | None = None,
) -> Tenant:
    """Register ``tenant``; with ``schema``, create schema ``tenant_<id>`` (USAGE granted
    to ``app_roles``) and run the migrations in it (``search_path`` set to that schema
    only); ``placement`` names the [databases] entry holding its rows (see
    docs/scale-out.md). All in one transaction: on any error nothing remains.
    """
    validate_tenant_id(tenant)
    if migrations is not None and not schema:
        raise PolicyError("--migrations needs --schema (they run inside the tenant's schema)")
    files = migration_files(migrations) if migrations is not None else []
    schema_name = schema_for(tenant) if schema else None
    _require_registry(conn)
    with conn.transaction():
        try:
            row = conn.execute(
                "INSERT INTO pgtenant.tenants (id, schema_name, placement) VALUES (%s, %s, %s)"
                " RETURNING " + _COLUMNS,
                [tenant, schema_name, placement],
            ).fetchone()
        except psycopg.errors.UniqueViolation:
            raise PolicyError(f"tenant {tenant} already exists") from None
        assert row is not None
        if schema_name is not None:
            ident = sql.Identifier(schema_name)
            try:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
            except psycopg.errors.DuplicateSchema:
                raise PolicyError(f"schema {schema_name} already exists") from None
            for role in app_roles:
                conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                    ident, sql.Identifier(role)))
            conn.execute(sql.SQL("SET LOCAL search_path = {}").format(ident))
            for path in files:
                try:
                    conn.execute(path.read_bytes())
                except psycopg.Error as exc:
                    message = exc.diag.message_primary or str(exc)
                    raise PolicyError(f"migration {path.name} failed: {message}") from None
    return Tenant(*row)


def list_tenants(conn: psycopg.Connection[Any]) -> list[Tenant]:
    _require_registry(conn)
    rows = conn.execute(
        "SELECT " + _COLUMNS + " FROM pgtenant.tenants ORDER BY id"
    ).fetchall()
    return [Tenant(*row) for row in rows]


def set_status(conn: psycopg.Connection[Any], tenant: str, status: TenantStatus) -> Tenant:
    """Suspend or resume a tenant (the proxy refuses suspended tenants)."""
    validate_tenant_id(tenant)
    _require_registry(conn)
    row = conn.execute(
        "UPDATE pgtenant.tenants SET status = %s WHERE id = %s"
        " RETURNING " + _COLUMNS,
        [status, tenant],
    ).fetchone()
    if row is None:
        raise PolicyError(f"no tenant {tenant}")
    return Tenant(*row)


def delete_tenant(
    conn: psycopg.Connection[Any], tenant: str, *, drop_schema: bool = False
) -> Tenant:
    """Remove a tenant from the registry; with ``drop_schema``, drop its schema and
    everything in it. Rows in shared tables are not touched."""
    validate_tenant_id(tenant)
    _require_registry(conn)
    with conn.transaction():
        row = conn.execute(
            "DELETE FROM pgtenant.tenants WHERE id = %s"
            " RETURNING " + _COLUMNS,
            [tenant],
        ).fetchone()
        if row is None:
            raise PolicyError(f"no tenant {tenant}")
        removed = Tenant(*row)
        if drop_schema and removed.schema_name:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(removed.schema_name)))
    return removed
