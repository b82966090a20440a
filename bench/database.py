"""The benchmark database: a fresh embedded cluster with pgbench's tables and many tenants.

pgbench's own tables (``pgbench -i``, owned by the superuser) have no RLS and serve the
select-only, tpcb-like and connection-storm workloads. ``items`` (from
:func:`proxy.devtools.provisioning.provision_app`, RLS on ``app.current_tenant``) is grown to
``rows_per_tenant`` rows for each tenant, inserted tenant by tenant so that each
tenant's ids form one contiguous range the tenant workload draws from.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg.conninfo import make_conninfo

from proxy.devtools import EmbeddedPostgres, provision_app

log = logging.getLogger("pgtenant.bench.database")

APP_DB = "app"
APP_USER = "app_user"
PGBENCH_TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")

_GROW_ITEMS = """\
INSERT INTO public.items (tenant_id, name)
SELECT tenant.id, tenant.id || '-row-' || n
FROM unnest(%(tenants)s::text[]) WITH ORDINALITY AS tenant(id, position),
     generate_series(1, %(rows)s) AS n
ORDER BY tenant.position, n
"""

_TENANT_RANGES = """\
SELECT tenant_id, min(id), max(id) FROM public.items
WHERE name LIKE '%%-row-%%' GROUP BY tenant_id
"""


@dataclass(frozen=True, slots=True)
class TenantRange:
    """A tenant and the ids of its rows in ``items``."""

    tenant: str
    first_id: int
    last_id: int


@dataclass(frozen=True, slots=True)
class BenchDatabase:
    """The running cluster and what the workloads need to know about its data."""

    pg: EmbeddedPostgres
    app_password: str
    tenants: tuple[TenantRange, ...]
    scale: int

    @property
    def host(self) -> str:
        return self.pg.host

    @property
    def port(self) -> int:
        return self.pg.port


def tenant_names(count: int) -> tuple[str, ...]:
    """The benchmark's tenant ids: tenant1 … tenantN."""
    return tuple(f"tenant{i}" for i in range(1, count + 1))


def prepare(
    pg: EmbeddedPostgres, *, scale: int, tenants: Sequence[str], rows_per_tenant: int
) -> BenchDatabase:
    """Provision ``app``, load pgbench's tables and grow ``items`` on a started cluster."""
    app_password = secrets.token_urlsafe(24)
    provision_app(pg.superuser_dsn, dbname=APP_DB, app_user=APP_USER,
                  app_password=app_password, tenants=tenants)
    _pgbench_init(pg, scale)
    app_dsn = make_conninfo(pg.superuser_dsn, dbname=APP_DB)
    with psycopg.connect(app_dsn, autocommit=True) as conn:
        tables = ", ".join(PGBENCH_TABLES)
        conn.execute(f"GRANT SELECT, UPDATE, INSERT ON {tables} TO {APP_USER}")
        conn.execute(_GROW_ITEMS, {"tenants": list(tenants), "rows": rows_per_tenant})
        conn.execute("VACUUM ANALYZE public.items")
        ranges = tuple(
            TenantRange(tenant, first, last)
            for tenant, first, last in conn.execute(_TENANT_RANGES).fetchall()
        )
    log.info("database ready: pgbench scale %d, %d tenants x %d rows in items",
             scale, len(ranges), rows_per_tenant)
    return BenchDatabase(pg=pg, app_password=app_password,
                         tenants=tuple(sorted(ranges, key=lambda r: tenants.index(r.tenant))),
                         scale=scale)


def _pgbench_init(pg: EmbeddedPostgres, scale: int) -> None:
    env = {
        **os.environ,
        "PGHOST": pg.host,
        "PGPORT": str(pg.port),
        "PGUSER": pg.superuser,
        "PGPASSWORD": pg.superuser_password,
        "PGDATABASE": APP_DB,
    }
    done = subprocess.run(
        ["pgbench", "-i", "-q", "-s", str(scale)],
        env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pgbench -i failed ({done.returncode}):\n{done.stderr[-2000:]}")
