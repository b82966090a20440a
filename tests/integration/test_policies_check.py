"""``pgtenant policies check`` on a real PostgreSQL: a clean database passes, and each
mistake, made alone in its own database, is found with its stable code and nothing else."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from policies.check import PRIVILEGED_PREDEFINED_ROLES, RULES
from policies.install import install
from policies.protect import protect
from tests.integration.policies_db import Scratch, cli, scratch_database
from tests.support import PostgresServer

# A database that does everything right: protected table with a tenant-scoped unique key,
# a security_invoker view over it, the app role with only DML and no activity tracking.
CLEAN_SETUP = """
CREATE TABLE public.orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id text NOT NULL,
    sku text NOT NULL,
    UNIQUE (tenant_id, sku)
);
GRANT SELECT, INSERT, UPDATE, DELETE ON public.orders TO {app};
CREATE VIEW public.order_skus WITH (security_invoker = true) AS
    SELECT tenant_id, sku FROM public.orders;
GRANT SELECT ON public.order_skus TO {app};
CREATE TABLE public.countries (code text PRIMARY KEY, name text UNIQUE);
ALTER ROLE {app} SET track_activities = off;
REVOKE EXECUTE ON FUNCTION pg_cancel_backend(integer),
    pg_terminate_backend(integer, bigint) FROM PUBLIC;
"""

APP = "<app role>"
DATABASE = "<database>"

# code -> (the one mistake, the object the finding names)
MISTAKES: dict[str, tuple[str, str]] = {
    "PGT001": ("CREATE TABLE public.invoices (id serial PRIMARY KEY, tenant_id text);"
               "CREATE INDEX ON public.invoices (tenant_id)", "public.invoices"),
    "PGT002": ("ALTER TABLE public.orders NO FORCE ROW LEVEL SECURITY", "public.orders"),
    "PGT003": ("CREATE TABLE public.audit_log (entry text);"
               "ALTER TABLE public.audit_log ENABLE ROW LEVEL SECURITY", "public.audit_log"),
    "PGT004": ("ALTER ROLE {app} SUPERUSER", APP),
    "PGT005": ("ALTER ROLE {app} BYPASSRLS", APP),
    "PGT006": ("ALTER TABLE public.orders OWNER TO {app}", "public.orders"),
    "PGT007": ("CREATE VIEW public.all_orders AS SELECT * FROM public.orders",
               "public.all_orders"),
    "PGT008": ("CREATE TABLE public.notes (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),"
               " tenant_id text NOT NULL, body text);"
               "CREATE INDEX ON public.notes (body, tenant_id);"
               "ALTER TABLE public.notes ENABLE ROW LEVEL SECURITY;"
               "ALTER TABLE public.notes FORCE ROW LEVEL SECURITY;"
               "CREATE POLICY tenant ON public.notes"
               " USING (tenant_id = current_setting('app.current_tenant', true))",
               "public.notes"),
    "PGT009": ("GRANT TRUNCATE ON public.orders TO {app}", "public.orders"),
    "PGT010": ("GRANT REFERENCES ON public.orders TO {app}", "public.orders"),
    "PGT011": ("ALTER TABLE public.orders ADD CONSTRAINT orders_sku_key UNIQUE (sku)",
               "public.orders"),
    "PGT012": ("ALTER ROLE {app} RESET track_activities", APP),
    "PGT013": ("GRANT pg_read_all_stats TO {app}", APP),
    "PGT014": ("CREATE MATERIALIZED VIEW public.order_counts AS"
               " SELECT tenant_id, count(*) FROM public.orders GROUP BY 1",
               "public.order_counts"),
    "PGT015": ("CREATE FUNCTION public.fast_tenant() RETURNS text IMMUTABLE LANGUAGE sql"
               " AS $$ SELECT current_setting('app.current_tenant', true) $$;"
               "CREATE POLICY fast ON public.orders USING (tenant_id = public.fast_tenant())",
               "public.orders policy fast"),
    "PGT016": ("ALTER ROLE {app} CREATEROLE", APP),
    "PGT017": ("ALTER ROLE {app} CREATEDB", APP),
    "PGT018": ("GRANT pg_signal_backend TO {app}", APP),
    "PGT019": ("GRANT CREATE ON SCHEMA public TO {app}", "public"),
    "PGT020": ("CREATE SCHEMA scratchpad AUTHORIZATION {app}", "scratchpad"),
    "PGT021": ("DO $$ BEGIN EXECUTE format('GRANT CREATE ON DATABASE %I TO {app}',"
               " current_database()); END $$", DATABASE),
    "PGT022": ("DO $$ BEGIN EXECUTE format('ALTER DATABASE %I OWNER TO {app}',"
               " current_database()); END $$", DATABASE),
    "PGT023": ("GRANT EXECUTE ON FUNCTION pg_terminate_backend(integer, bigint) TO {app}", APP),
    "PGT024": ("GRANT SELECT ON pgtenant.keys TO {app}", "pgtenant.keys"),
    "PGT025": ("ALTER ROLE {app} SET default_transaction_read_only = on", APP),
}


@pytest.fixture
def clean(postgres: PostgresServer) -> Iterator[Scratch]:
    with scratch_database(postgres) as db:
        db.execute(CLEAN_SETUP)
        with db.admin() as conn, conn.transaction():
            install(conn, app_roles=[db.app_role], owner_role=db.owner_role)
            protect(conn, "public.orders")
        yield db


def check_json(db: Scratch, *extra: str) -> tuple[int, list[dict[str, Any]]]:
    result = cli("policies", "check", "--dsn", db.dsn, "--app-role", db.app_role, "--json",
                 *extra)
    assert result.status in (0, 1), result.err
    findings: list[dict[str, Any]] = json.loads(result.out)["findings"]
    return result.status, findings


def test_clean_database_passes(clean: Scratch) -> None:
    status, findings = check_json(clean)
    assert (status, findings) == (0, [])
    table = cli("policies", "check", "--dsn", clean.dsn, "--app-role", clean.app_role)
    assert (table.status, table.out) == (0, "no findings\n")


def test_every_rule_has_a_seeded_mistake() -> None:
    assert sorted(MISTAKES) == sorted(RULES)


@pytest.mark.parametrize("code", sorted(MISTAKES))
def test_each_mistake_is_found_with_its_code(clean: Scratch, code: str) -> None:
    mistake, obj = MISTAKES[code]
    clean.execute(mistake)
    status, findings = check_json(clean)
    assert status == 1
    expected = {APP: clean.app_role, DATABASE: clean.dbname}.get(obj, obj)
    assert [(f["code"], f["object"]) for f in findings] == [(code, expected)]
    finding = findings[0]
    assert finding["severity"] == RULES[code].severity
    assert finding["advice"] == RULES[code].advice and finding["message"]


def test_table_output_names_code_object_and_advice(clean: Scratch) -> None:
    clean.execute("GRANT TRUNCATE ON public.orders TO {app}")
    result = cli("policies", "check", "--dsn", clean.dsn, "--app-role", clean.app_role)
    lines = result.out.splitlines()
    assert result.status == 1
    assert lines[0].split() == ["SEVERITY", "CODE", "OBJECT", "FINDING"]
    assert lines[1].split()[:3] == ["error", "PGT009", "public.orders"]
    assert any(line.startswith("PGT009 TRUNCATE granted") for line in lines)
    assert lines[-1] == "1 findings (1 errors, 0 warnings)"


def test_fail_on_error_ignores_warnings(clean: Scratch) -> None:
    clean.execute("ALTER ROLE {app} RESET track_activities")
    status, findings = check_json(clean, "--fail-on", "error")
    assert status == 0 and [f["code"] for f in findings] == ["PGT012"]


def test_tenant_column_name_is_configurable(clean: Scratch) -> None:
    clean.execute("CREATE TABLE public.projects (org_id text)")
    _, default = check_json(clean)
    assert default == []
    status, findings = check_json(clean, "--column", "org_id")
    assert status == 1
    assert {(f["code"], f["object"]) for f in findings} == {
        ("PGT001", "public.projects"), ("PGT008", "public.projects")}


def test_without_app_role_the_role_checks_are_skipped(clean: Scratch) -> None:
    clean.execute("ALTER ROLE {app} BYPASSRLS")
    result = cli("policies", "check", "--dsn", clean.dsn)
    assert (result.status, result.out.splitlines()[-1]) == (0, "no findings")
    assert "no --app-role given" in result.out


def test_unknown_app_role_is_an_error(clean: Scratch) -> None:
    result = cli("policies", "check", "--dsn", clean.dsn, "--app-role", "pgtenant_pol_nobody")
    assert result.status == 2 and "app role pgtenant_pol_nobody does not exist" in result.err


# -- the shared upstream role --------------------------------------------------------------

def found(db: Scratch) -> list[tuple[str, str, str]]:
    _, findings = check_json(db)
    return [(f["code"], f["object"], f["message"]) for f in findings]


@pytest.mark.parametrize("predefined", PRIVILEGED_PREDEFINED_ROLES)
def test_each_privileged_predefined_role_is_found(clean: Scratch, predefined: str) -> None:
    clean.execute(f"GRANT {predefined} TO {{app}}")
    codes = found(clean)
    assert ("PGT018", clean.app_role, f"{clean.app_role} is a member of {predefined}") in codes
    # Reading or writing all data reaches the signing keys too; nothing else is reported.
    extra = {c for c, *_ in codes} - {"PGT018"}
    assert extra == ({"PGT024"} if predefined.endswith("_all_data") else set())


def test_membership_through_another_role_and_without_inherit_is_found(clean: Scratch) -> None:
    group = f"{clean.app_role}_ops"
    clean.execute(f"CREATE ROLE {group} NOLOGIN; GRANT pg_execute_server_program TO {group};"
                  f"GRANT {group} TO {{app}}; ALTER ROLE {{app}} NOINHERIT")
    try:
        assert [c for c, *_ in found(clean)] == ["PGT018"]
    finally:
        clean.execute(f"DROP ROLE {group}")


def test_pg_monitor_is_reported_as_activity_visibility(clean: Scratch) -> None:
    clean.execute("GRANT pg_monitor TO {app}")
    assert found(clean) == [
        ("PGT013", clean.app_role, f"{clean.app_role} is a member of pg_monitor, "
                                   "pg_read_all_stats")]


def test_create_on_the_schema_named_after_the_role_is_found(clean: Scratch) -> None:
    """The "$user" schema comes first on the default search_path."""
    clean.execute("CREATE SCHEMA {app}; GRANT USAGE, CREATE ON SCHEMA {app} TO {app}")
    assert [(c, o) for c, o, _ in found(clean)] == [("PGT019", clean.app_role)]


def test_create_on_public_through_public_is_found(clean: Scratch) -> None:
    """A database upgraded from PostgreSQL 14 or older keeps CREATE for PUBLIC."""
    clean.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
    assert [(c, o) for c, o, _ in found(clean)] == [("PGT019", "public")]


def test_owning_a_table_under_rls_without_the_tenant_column_is_found(clean: Scratch) -> None:
    clean.execute("CREATE TABLE public.ledger (org text);"
                  "ALTER TABLE public.ledger ENABLE ROW LEVEL SECURITY;"
                  "ALTER TABLE public.ledger FORCE ROW LEVEL SECURITY;"
                  "CREATE POLICY org ON public.ledger"
                  " USING (org = current_setting('app.current_tenant', true));"
                  "ALTER TABLE public.ledger OWNER TO {app}")
    assert [(c, o) for c, o, _ in found(clean)] == [("PGT006", "public.ledger")]


def test_a_stored_forged_tenant_context_is_found(clean: Scratch) -> None:
    clean.execute("ALTER ROLE {app} SET app.current_tenant = 'globex'")
    assert found(clean) == [("PGT025", clean.app_role,
                             f"{clean.app_role} has the stored setting "
                             "app.current_tenant=globex")]
