"""The admin console's user and how the admin tests talk to it (the ``start_admin_proxy``
and ``admin_proxy`` fixtures are in conftest.py)."""

from __future__ import annotations

from typing import Any

import psycopg

from proxy.config import AdminConfig, AdminUserConfig
from proxy.config.scram_verifier import make_scram_verifier
from tests.proxy_harness import ThreadedProxy

ADMIN = "admin"
ADMIN_PASSWORD = "console-password-for-tests"


def admin_config() -> AdminConfig:
    return AdminConfig(users={ADMIN: AdminUserConfig(
        name=ADMIN, scram_verifier=make_scram_verifier(ADMIN_PASSWORD))})


def admin_dsn(proxy: ThreadedProxy, password: str = ADMIN_PASSWORD, user: str = ADMIN) -> str:
    return f"postgresql://{user}:{password}@127.0.0.1:{proxy.port}/pgtenant?sslmode=disable"


def console(proxy: ThreadedProxy, command: str) -> list[dict[str, str | None]]:
    """Run a command over the simple query protocol; rows as dicts."""
    with psycopg.connect(admin_dsn(proxy), autocommit=True) as conn:
        return simple(conn, command)


def simple(conn: psycopg.Connection[Any], command: str) -> list[dict[str, str | None]]:
    result = conn.pgconn.exec_(command.encode())
    if result.status not in (psycopg.pq.ExecStatus.TUPLES_OK,
                             psycopg.pq.ExecStatus.COMMAND_OK):
        error = psycopg.errors.error_from_result(result)
        raise error
    names = [result.fname(i).decode() for i in range(result.nfields)]  # type: ignore[union-attr]
    rows = []
    for r in range(result.ntuples):
        values = [result.get_value(r, c) for c in range(result.nfields)]
        rows.append({n: None if v is None else v.decode() for n, v in
                     zip(names, values, strict=True)})
    return rows

