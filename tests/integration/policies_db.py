"""What the tests of the database side (``pgtenant policies`` and ``pgtenant tenants``)
share: a throwaway database with its own roles (``pgtenant_pol_*``, dropped afterwards),
the pgtenant command run in this process, and the signed tenant context as a client that
sets it itself would. The ``scratch`` and ``signed`` fixtures are in conftest.py."""

from __future__ import annotations

import contextlib
import io
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from proxy.cli import main
from tests.support import PostgresServer

#: The proof key the ``signed`` fixture stores.
KEY_A = b"a" * 16 + secrets.token_bytes(16)


@dataclass(frozen=True)
class Scratch:
    """A throwaway database, its app role (LOGIN, no privileges) and an owner role name."""

    postgres: PostgresServer
    dbname: str
    app_role: str
    app_password: str
    owner_role: str

    @property
    def dsn(self) -> str:
        """The superuser in this database."""
        return self.postgres.dsn(self.dbname)

    @property
    def app_dsn(self) -> str:
        return self.postgres.dsn(self.dbname, user=self.app_role, password=self.app_password)

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True)

    def app(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.app_dsn, autocommit=True)

    def execute(self, statement: str | sql.Composable) -> None:
        """Run SQL as the superuser; ``{app}`` stands for the app role."""
        with self.admin() as conn:
            query = sql.SQL(statement) if isinstance(statement, str) else statement  # type: ignore[arg-type]
            conn.execute(query.format(app=sql.Identifier(self.app_role)))


@contextlib.contextmanager
def scratch_database(postgres: PostgresServer) -> Iterator[Scratch]:
    suffix = secrets.token_hex(4)
    scratch = Scratch(postgres, f"pgtenant_pol_{suffix}", f"pgtenant_pol_app_{suffix}",
                      secrets.token_urlsafe(12), f"pgtenant_pol_owner_{suffix}")
    with psycopg.connect(postgres.superuser_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch.dbname)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(scratch.app_role), sql.Literal(scratch.app_password)))
    try:
        yield scratch
    finally:
        with psycopg.connect(postgres.superuser_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(scratch.dbname)))
            for role in (scratch.app_role, scratch.owner_role):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@dataclass(frozen=True)
class CliResult:
    status: int
    out: str
    err: str


def cli(*argv: str) -> CliResult:
    """Run ``pgtenant ARGV`` in this process, capturing its output."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return CliResult(status, out.getvalue(), err.getvalue())


def installed(scratch: Scratch) -> Scratch:
    result = cli("policies", "install", "--dsn", scratch.dsn, "--app-role", scratch.app_role,
                 "--owner-role", scratch.owner_role)
    assert result.status == 0, result.err
    return scratch

def set_context(conn: psycopg.Connection[Any], tenant: str, proof: str | None) -> None:
    conn.execute("SELECT set_config('app.current_tenant', %s, false),"
                 " set_config('pgtenant.proof', %s, false)", [tenant, proof or ""])


#: What pgtenant.current_tenant() raises for a tenant without a valid proof (the proxy
#: counts it): SQLSTATE, severity, message; nothing that names a tenant.
FORGED_WARNING = ("PT401", "WARNING", "pgtenant: forged or unverifiable tenant context")


def server_notices(conn: psycopg.Connection[Any]) -> list[tuple[str | None, ...]]:
    """A list that fills with (SQLSTATE, severity, message) of every notice ``conn`` gets."""
    notices: list[tuple[str | None, ...]] = []
    conn.add_notice_handler(lambda d: notices.append(
        (d.sqlstate, d.severity_nonlocalized, d.message_primary)))
    return notices
