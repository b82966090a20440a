"""``pgtenant policies protect TABLE``: confine a table to the current tenant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from policies.catalog import PolicyError, Table, require_installed, resolve_table

POLICY_NAME = "pgtenant_isolation"
_PLAIN = sql.SQL("current_setting('app.current_tenant', true)")
# Policies read the signed context through a sub-select: evaluated once per statement.
# PostgreSQL refuses sub-selects in DEFAULT, so the column default calls the function.
_SIGNED_POLICY = sql.SQL("(SELECT pgtenant.current_tenant())")
_SIGNED_DEFAULT = sql.SQL("pgtenant.current_tenant()")


@dataclass(frozen=True, slots=True)
class ProtectResult:
    table: Table
    changed: bool
    state: tuple[Any, ...]


def protect(
    conn: psycopg.Connection[Any], table_name: str, *, column: str = "tenant_id",
    signed: bool = False,
) -> ProtectResult:
    """Enable and force RLS on a table, with one policy (USING and WITH CHECK) comparing
    ``column`` to the tenant context, the same expression as the column's default, and
    an index led by ``column``.

    Idempotent: when the table is already in that state, the changes are rolled back
    (a savepoint when the caller has a transaction open) and ``changed`` is False.
    """
    table = resolve_table(conn, table_name)
    if not conn.execute(
        "SELECT 1 FROM pg_attribute WHERE attrelid = %s AND attname = %s"
        " AND attnum > 0 AND NOT attisdropped",
        [table.oid, column],
    ).fetchone():
        raise PolicyError(f"table {table} has no column {column}")
    if signed:
        require_installed(conn)
    before = table_state(conn, table, column)
    after = before
    with conn.transaction():
        _apply(conn, table, column, signed)
        after = table_state(conn, table, column)
        if after == before:
            raise psycopg.Rollback()  # nothing to change: leave no trace, not even a lock
    return ProtectResult(table, after != before, after)


def _apply(conn: psycopg.Connection[Any], table: Table, column: str, signed: bool) -> None:
    t, col = table.identifier, sql.Identifier(column)
    tenant = _SIGNED_POLICY if signed else _PLAIN
    default = _SIGNED_DEFAULT if signed else _PLAIN
    conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(t))
    conn.execute(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(t))
    exists = conn.execute(
        "SELECT 1 FROM pg_policy WHERE polrelid = %s AND polname = %s", [table.oid, POLICY_NAME]
    ).fetchone()
    verb = sql.SQL("ALTER POLICY {} ON {}" if exists else "CREATE POLICY {} ON {}")
    conn.execute(sql.SQL("{} USING ({} = {}) WITH CHECK ({} = {})").format(
        verb.format(sql.Identifier(POLICY_NAME), t), col, tenant, col, tenant))
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {}").format(t, col, default))
    if not _has_leading_index(conn, table, column):
        index_name = f"{table.name}_{column}_pgtenant_idx"
        if len(index_name.encode()) > 63:
            index_name = f"pgtenant_idx_{table.oid}"
        conn.execute(sql.SQL("CREATE INDEX {} ON {} ({})").format(
            sql.Identifier(index_name), t, col))


def _has_leading_index(conn: psycopg.Connection[Any], table: Table, column: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_index AS i JOIN pg_attribute AS a"
        " ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
        " WHERE i.indrelid = %s AND a.attname = %s AND i.indisvalid AND i.indpred IS NULL",
        [table.oid, column],
    ).fetchone()
    return row is not None


def table_state(conn: psycopg.Connection[Any], table: Table, column: str) -> tuple[Any, ...]:
    """What protect sets, as PostgreSQL deparses it: equal tuples mean nothing to change."""
    rls = conn.execute(
        "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = %s", [table.oid]
    ).fetchone()
    policies = conn.execute(
        "SELECT polname, polcmd, polpermissive, polroles::text,"
        " pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid)"
        " FROM pg_policy WHERE polrelid = %s ORDER BY polname",
        [table.oid],
    ).fetchall()
    default = conn.execute(
        "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef AS d"
        " JOIN pg_attribute AS a ON a.attrelid = d.adrelid AND a.attnum = d.adnum"
        " WHERE d.adrelid = %s AND a.attname = %s",
        [table.oid, column],
    ).fetchone()
    indexes = conn.execute(
        "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = %s ORDER BY 1",
        [table.oid],
    ).fetchall()
    return (rls, tuple(policies), default, tuple(indexes))
