"""The demo application database: an upstream role, RLS-confined ``items``, seed rows.

:func:`provision_app` creates the database an :class:`~proxy.devtools.cluster.EmbeddedPostgres`
serves to the demo, the tests and the benchmarks: an upstream role that is neither
superuser nor BYPASSRLS, and an ``items`` table confined by Row-Level Security to
``current_setting('app.current_tenant')``. :func:`reset_items` puts the seed rows back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

log = logging.getLogger("pgtenant.embedded")

DEFAULT_TENANTS: tuple[str, ...] = ("acme", "globex")
SEED_ITEMS_PER_TENANT = 3

_APP_SCHEMA = """\
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE TABLE IF NOT EXISTS public.items (
    id         bigserial PRIMARY KEY,
    tenant_id  text NOT NULL DEFAULT current_setting('app.current_tenant', true),
    name       text NOT NULL,
    created_at timestamptz DEFAULT now()
);
ALTER TABLE public.items OWNER TO CURRENT_USER;
CREATE INDEX IF NOT EXISTS items_tenant_id_idx ON public.items (tenant_id);
ALTER TABLE public.items ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.items FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS tenant_isolation ON public.items;
CREATE POLICY tenant_isolation ON public.items
    USING (tenant_id = current_setting('app.current_tenant', true))
    WITH CHECK (tenant_id = current_setting('app.current_tenant', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON public.items TO {app_user};
GRANT USAGE ON SEQUENCE public.items_id_seq TO {app_user};
"""

# Adds whichever seed rows are missing, in a stable order (acme-item-1 gets id 1 after a reset).
_SEED_ITEMS = """\
INSERT INTO public.items (tenant_id, name)
SELECT seed.tenant_id, seed.name
FROM (
    SELECT tenant.id AS tenant_id, tenant.id || '-item-' || n AS name, tenant.position, n
    FROM unnest(%(tenants)s::text[]) WITH ORDINALITY AS tenant(id, position),
         generate_series(1, %(per_tenant)s) AS n
) AS seed
WHERE NOT EXISTS (
    SELECT 1 FROM public.items AS item
    WHERE item.tenant_id = seed.tenant_id AND item.name = seed.name
)
ORDER BY seed.position, seed.n
"""


def provision_app(
    superuser_dsn: str,
    *,
    dbname: str = "app",
    app_user: str = "app_user",
    app_password: str,
    tenants: Sequence[str] = DEFAULT_TENANTS,
) -> None:
    """Create (or bring back to the expected state) the demo application database.

    Idempotent. ``app_user`` is the upstream role the proxy logs in as: LOGIN, not
    superuser, not BYPASSRLS, with a SCRAM-SHA-256 password (hashed here, so the
    password itself never reaches the server). ``items`` belongs to the superuser, has
    RLS enabled and forced, and one policy ``tenant_isolation`` that confines every
    statement to ``current_setting('app.current_tenant', true)``. Each tenant gets
    :data:`SEED_ITEMS_PER_TENANT` rows named ``<tenant>-item-<n>``.
    """
    with psycopg.connect(superuser_dsn, autocommit=True) as conn:
        _ensure_database(conn, dbname)
        _ensure_login_role(conn, app_user, app_password)
    with psycopg.connect(make_conninfo(superuser_dsn, dbname=dbname)) as conn:
        conn.execute(sql.SQL(_APP_SCHEMA).format(app_user=sql.Identifier(app_user)))
        _seed_items(conn, tenants)
    log.info("provisioned database %s for role %s, tenants %s", dbname, app_user, list(tenants))


def reset_items(
    superuser_dsn: str, *, dbname: str = "app", tenants: Sequence[str] = DEFAULT_TENANTS
) -> None:
    """Put ``items`` back to exactly the seed rows, ids restarting at 1."""
    with psycopg.connect(make_conninfo(superuser_dsn, dbname=dbname)) as conn:
        # A connection left open inside a transaction would otherwise block TRUNCATE forever.
        conn.execute("SET LOCAL lock_timeout = '10s'")
        conn.execute("TRUNCATE public.items RESTART IDENTITY")
        _seed_items(conn, tenants)


def _seed_items(conn: psycopg.Connection[Any], tenants: Iterable[str]) -> None:
    conn.execute(_SEED_ITEMS, {"tenants": list(tenants), "per_tenant": SEED_ITEMS_PER_TENANT})


def _ensure_database(conn: psycopg.Connection[Any], dbname: str) -> None:
    if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [dbname]).fetchone():
        return
    try:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    except psycopg.errors.DuplicateDatabase:
        pass  # created concurrently by another provisioner: same result


def _ensure_login_role(conn: psycopg.Connection[Any], role: str, password: str) -> None:
    verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
    statement = sql.SQL(
        "{} ROLE {} WITH LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION"
        " PASSWORD {}"
    ).format(
        sql.SQL("ALTER" if exists else "CREATE"),
        sql.Identifier(role),
        sql.Literal(verifier.decode()),
    )
    conn.execute(statement)
