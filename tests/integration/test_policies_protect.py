"""``pgtenant policies protect`` on a real PostgreSQL: row-level security confines a table
to the tenant (with ``--signed``, to the tenant the proxy proved), idempotently, and
explains what is wrong with a table it cannot protect."""

from __future__ import annotations

import psycopg
import pytest

from policies.catalog import resolve_table
from policies.protect import protect, table_state
from proxy.tenancy.proof import compute_proof
from tests.integration.policies_db import (
    FORGED_WARNING,
    KEY_A,
    Scratch,
    cli,
    server_notices,
    set_context,
)


def _seed_orders(scratch: Scratch) -> None:
    scratch.execute(
        "CREATE TABLE public.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " tenant_id text NOT NULL, sku text NOT NULL);"
        "INSERT INTO public.orders (tenant_id, sku) VALUES"
        " ('acme', 'a-1'), ('acme', 'a-2'), ('globex', 'g-1');"
        "GRANT SELECT, INSERT, UPDATE, DELETE ON public.orders TO {app}")


def test_app_role_setting_the_tenant_itself_sees_nothing_of_globex(signed: Scratch) -> None:
    """The prove-it test: straight to PostgreSQL as the app role, no proxy, no proof."""
    _seed_orders(signed)
    result = cli("policies", "protect", "--dsn", signed.dsn, "public.orders", "--signed")
    assert result.status == 0, result.err
    with signed.app() as conn:
        notices = server_notices(conn)
        conn.execute("SELECT set_config('app.current_tenant', 'globex', false)")
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone() == (0,)
        # The policy's sub-select runs once per statement: one warning, not one per row.
        assert notices == [FORGED_WARNING]
        assert conn.execute("SELECT count(*) FROM public.orders WHERE tenant_id = 'globex'"
                            ).fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # WITH CHECK: NULL tenant
            conn.execute("INSERT INTO public.orders (tenant_id, sku) VALUES ('globex', 'x')")
        # The control: the same connection with a valid proof does see globex's row.
        set_context(conn, "globex", compute_proof(KEY_A, "globex", conn.info.backend_pid))
        assert conn.execute("SELECT sku FROM public.orders").fetchall() == [("g-1",)]


# -- protect --------------------------------------------------------------------------------

def test_protect_confines_a_quoted_schema_qualified_table(scratch: Scratch) -> None:
    scratch.execute(
        'CREATE SCHEMA "Sales Dept"; CREATE TABLE "Sales Dept"."Order Items"'
        ' (id serial PRIMARY KEY, "Tenant" text NOT NULL, note text);'
        'GRANT USAGE ON SCHEMA "Sales Dept" TO {app};'
        'GRANT SELECT, INSERT ON "Sales Dept"."Order Items" TO {app};'
        'GRANT USAGE ON SEQUENCE "Sales Dept"."Order Items_id_seq" TO {app};'
        'INSERT INTO "Sales Dept"."Order Items" ("Tenant", note) VALUES (\'globex\', \'g\')')
    result = cli("policies", "protect", "--dsn", scratch.dsn, '"Sales Dept"."Order Items"',
                 "--column", "Tenant")
    assert result.status == 0, result.err
    with scratch.admin() as conn:
        rls = conn.execute("SELECT relrowsecurity, relforcerowsecurity FROM pg_class"
                           " WHERE oid = '\"Sales Dept\".\"Order Items\"'::regclass").fetchone()
        indexes = conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = 'Sales Dept'"
                               " AND indexdef LIKE '%(\"Tenant\")'").fetchall()
    assert rls == (True, True) and len(indexes) == 1
    with scratch.app() as conn:
        conn.execute("SELECT set_config('app.current_tenant', 'acme', false)")
        conn.execute('INSERT INTO "Sales Dept"."Order Items" (note) VALUES (\'mine\')')
        assert conn.execute('SELECT "Tenant", note FROM "Sales Dept"."Order Items"'
                            ).fetchall() == [("acme", "mine")]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute('INSERT INTO "Sales Dept"."Order Items" ("Tenant", note)'
                         " VALUES ('globex', 'forged')")


def test_protect_twice_changes_nothing(scratch: Scratch) -> None:
    _seed_orders(scratch)
    first = cli("policies", "protect", "--dsn", scratch.dsn, "orders")
    assert first.status == 0 and first.out.startswith("protected"), first.err
    with scratch.admin() as conn:
        table = resolve_table(conn, "orders")
        before = table_state(conn, table, "tenant_id")
    second = cli("policies", "protect", "--dsn", scratch.dsn, "orders")
    assert second.status == 0, second.err
    assert "already protected: nothing changed" in second.out
    with scratch.admin() as conn:
        assert table_state(conn, table, "tenant_id") == before
        assert conn.execute("SELECT count(*) FROM pg_policy WHERE polrelid = %s",
                            [table.oid]).fetchone() == (1,)


def test_protect_reuses_an_index_led_by_the_tenant_column(scratch: Scratch) -> None:
    _seed_orders(scratch)
    scratch.execute("CREATE INDEX orders_tenant_sku ON public.orders (tenant_id, sku)")
    with scratch.admin() as conn:
        result = protect(conn, "public.orders")
        assert result.changed
        names = conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'orders'"
                             " ORDER BY 1").fetchall()
    assert names == [("orders_pkey",), ("orders_tenant_sku",)]


def test_protect_can_switch_a_plain_policy_to_the_signed_context(signed: Scratch) -> None:
    _seed_orders(signed)
    with signed.admin() as conn:
        protect(conn, "orders")
        result = protect(conn, "orders", signed=True)
        assert result.changed
        policy = conn.execute("SELECT pg_get_expr(polqual, polrelid) FROM pg_policy"
                              " WHERE polrelid = 'public.orders'::regclass").fetchone()
    assert policy is not None and "pgtenant.current_tenant()" in policy[0]


@pytest.mark.parametrize(("table", "column", "message"), [
    ("public.nope", "tenant_id", "table public.nope does not exist"),
    ("orders", "tenant", "has no column tenant"),
    ("orders; DROP TABLE orders", "tenant_id", "not a valid table name"),
])
def test_protect_explains_what_is_wrong(
    scratch: Scratch, table: str, column: str, message: str
) -> None:
    _seed_orders(scratch)
    result = cli("policies", "protect", "--dsn", scratch.dsn, table, "--column", column)
    assert result.status == 2 and message in result.err, result.err


def test_protect_signed_needs_install(scratch: Scratch) -> None:
    _seed_orders(scratch)
    result = cli("policies", "protect", "--dsn", scratch.dsn, "orders", "--signed")
    assert result.status == 2 and "policies install" in result.err
