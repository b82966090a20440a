"""What the policies commands share: their error type and catalog look-ups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql


class PolicyError(Exception):
    """A problem the user can fix; the message says what and how, and holds no secret."""


@dataclass(frozen=True, slots=True)
class Table:
    """A table resolved through the catalog, so quoting and search_path work as in SQL."""

    oid: int
    schema: str
    name: str

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def __str__(self) -> str:
        return sql.Identifier(self.schema, self.name).as_string()


def resolve_table(conn: psycopg.Connection[Any], name: str) -> Table:
    """Find a table from a name as written in SQL (``items``, ``app.items``, ``"My T"``)."""
    try:
        row = conn.execute(
            "SELECT c.oid::int8, n.nspname, c.relname, c.relkind FROM pg_class AS c"
            " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
            " WHERE c.oid = to_regclass(%s)",
            [name],
        ).fetchone()
    except psycopg.errors.InvalidName:
        raise PolicyError(f"{name!r} is not a valid table name") from None
    if row is None:
        raise PolicyError(f"table {name} does not exist (or is not on the search_path)")
    oid, schema, relname, relkind = row
    if relkind not in ("r", "p"):
        raise PolicyError(f"{name} is not a table (relkind {relkind!r})")
    return Table(int(oid), schema, relname)


def role_exists(conn: psycopg.Connection[Any], role: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone() is not None


def is_installed(conn: psycopg.Connection[Any]) -> bool:
    """Whether ``pgtenant policies install`` has run in this database."""
    row = conn.execute("SELECT to_regprocedure('pgtenant.current_tenant()') IS NOT NULL").fetchone()
    return bool(row and row[0])


def require_installed(conn: psycopg.Connection[Any]) -> None:
    if not is_installed(conn):
        raise PolicyError(
            f"pgtenant is not installed in database {conn.info.dbname}: "
            "run `pgtenant policies install` first"
        )
