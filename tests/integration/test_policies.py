"""The database side, on a real PostgreSQL: the signed tenant context (install, set-key,
compute_proof), protect, and the tenant registry.

Every test gets its own database and roles (``pgtenant_pol_*``), dropped afterwards.
"""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from policies.catalog import resolve_table
from policies.install import set_key
from policies.protect import protect, table_state
from policies.registry import TENANT_STATUS_SQL, tenant_status
from proxy.cli import main
from proxy.tenancy.proof import compute_proof
from tests.support import PostgresServer, run

KEY_A = b"a" * 16 + secrets.token_bytes(16)
KEY_B = secrets.token_hex(32).encode()


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


@pytest.fixture
def scratch(postgres: PostgresServer) -> Iterator[Scratch]:
    with scratch_database(postgres) as db:
        yield db


@pytest.fixture
def signed(scratch: Scratch) -> Scratch:
    """pgtenant installed and KEY_A stored."""
    installed(scratch)
    with scratch.admin() as conn, conn.transaction():
        set_key(conn, KEY_A)
    return scratch


def set_context(conn: psycopg.Connection[Any], tenant: str, proof: str | None) -> None:
    conn.execute("SELECT set_config('app.current_tenant', %s, false),"
                 " set_config('pgtenant.proof', %s, false)", [tenant, proof or ""])


def signed_tenant(conn: psycopg.Connection[Any]) -> str | None:
    row = conn.execute("SELECT pgtenant.current_tenant()").fetchone()
    assert row is not None
    value: str | None = row[0]
    return value


#: What pgtenant.current_tenant() raises for a tenant without a valid proof (the proxy
#: counts it): SQLSTATE, severity, message; nothing that names a tenant.
FORGED_WARNING = ("PT401", "WARNING", "pgtenant: forged or unverifiable tenant context")


def server_notices(conn: psycopg.Connection[Any]) -> list[tuple[str | None, ...]]:
    """A list that fills with (SQLSTATE, severity, message) of every notice ``conn`` gets."""
    notices: list[tuple[str | None, ...]] = []
    conn.add_notice_handler(lambda d: notices.append(
        (d.sqlstate, d.severity_nonlocalized, d.message_primary)))
    return notices


# -- the signed tenant context ------------------------------------------------------------

def test_python_proof_is_what_the_sql_function_accepts(signed: Scratch) -> None:
    with signed.app() as conn:
        notices = server_notices(conn)
        pid = conn.info.backend_pid
        set_context(conn, "acme", compute_proof(KEY_A, "acme", pid))
        assert signed_tenant(conn) == "acme"
        set_context(conn, "globex", compute_proof(KEY_A, "globex", pid))
        assert signed_tenant(conn) == "globex"
    assert notices == []  # a valid context is silent


@pytest.mark.parametrize("proof", [
    None,
    "",
    "0" * 64,
    compute_proof(b"not the key, but long enough to be one!", "acme", 1),
    "acme",
])
def test_missing_or_forged_proof_gives_null_and_a_warning(
    signed: Scratch, proof: str | None
) -> None:
    with signed.app() as conn:
        notices = server_notices(conn)
        set_context(conn, "acme", proof)
        assert signed_tenant(conn) is None
    assert notices == [FORGED_WARNING]


def test_no_tenant_at_all_is_silent(signed: Scratch) -> None:
    """Admin and service sessions set no tenant: NULL, and no forged-context warning."""
    with signed.app() as conn:
        notices = server_notices(conn)
        assert signed_tenant(conn) is None
        set_context(conn, "", compute_proof(KEY_A, "acme", conn.info.backend_pid))
        assert signed_tenant(conn) is None
        set_context(conn, "acme", compute_proof(KEY_A, "acme", conn.info.backend_pid))
        conn.execute("DISCARD ALL")
        assert signed_tenant(conn) is None
    assert notices == []


def test_forged_context_warning_survives_client_min_messages_notice(signed: Scratch) -> None:
    with signed.app() as conn:
        notices = server_notices(conn)
        conn.execute("SET client_min_messages = notice")
        set_context(conn, "globex", compute_proof(KEY_A, "acme", conn.info.backend_pid))
        assert signed_tenant(conn) is None
    assert notices == [FORGED_WARNING]


def test_proof_for_another_tenant_or_backend_gives_null(signed: Scratch) -> None:
    with signed.app() as conn, signed.app() as other:
        pid = conn.info.backend_pid
        set_context(conn, "globex", compute_proof(KEY_A, "acme", pid))
        assert signed_tenant(conn) is None
        # A proof seen on one server connection is worthless on another.
        set_context(other, "acme", compute_proof(KEY_A, "acme", pid))
        assert signed_tenant(other) is None
        set_context(other, "acme", compute_proof(KEY_A, "acme", other.info.backend_pid))
        assert signed_tenant(other) == "acme"


def test_key_rotation_accepts_both_keys_until_the_old_one_is_retired(
    signed: Scratch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGTENANT_POL_KEY", KEY_B.decode())
    first = cli("policies", "set-key", "--dsn", signed.dsn, "--key-env", "PGTENANT_POL_KEY",
                "--key-id", "2024-b")
    assert first.status == 0, first.err
    assert "2024-b" in first.out and KEY_B.decode() not in first.out + first.err
    with signed.app() as conn:
        pid = conn.info.backend_pid
        for key in (KEY_A, KEY_B):
            set_context(conn, "acme", compute_proof(key, "acme", pid))
            assert signed_tenant(conn) == "acme"
    done = cli("policies", "set-key", "--dsn", signed.dsn, "--key-env", "PGTENANT_POL_KEY",
               "--key-id", "2024-b", "--retire-others")
    assert done.status == 0, done.err
    assert done.out.strip().endswith("active keys: 2024-b")
    with signed.app() as conn:
        pid = conn.info.backend_pid
        set_context(conn, "acme", compute_proof(KEY_A, "acme", pid))
        assert signed_tenant(conn) is None
        set_context(conn, "acme", compute_proof(KEY_B, "acme", pid))
        assert signed_tenant(conn) == "acme"


def test_app_role_cannot_read_the_keys(signed: Scratch) -> None:
    with signed.app() as conn:
        for table in ("pgtenant.keys", "pgtenant.tenants"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT * FROM {table}")  # type: ignore[arg-type]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE pgtenant.keys SET active = true")
    with signed.admin() as conn:
        grants = conn.execute(
            "SELECT grantee FROM information_schema.role_table_grants"
            " WHERE table_schema = 'pgtenant' AND table_name = 'keys'").fetchall()
        assert {g for (g,) in grants} == {signed.owner_role}


def test_current_tenant_is_a_stable_security_definer_with_a_fixed_search_path(
    signed: Scratch,
) -> None:
    with signed.admin() as conn:
        row = conn.execute(
            "SELECT prosecdef, provolatile, proconfig, pg_get_userbyid(proowner),"
            " has_function_privilege(%s, p.oid, 'EXECUTE'),"
            " has_function_privilege('public', p.oid, 'EXECUTE')"
            " FROM pg_proc AS p WHERE p.oid = 'pgtenant.current_tenant()'::regprocedure",
            [signed.app_role]).fetchone()
        owner_login = conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s",
                                   [signed.owner_role]).fetchone()
    assert row == (True, "s", ["search_path=pg_catalog, pgtenant, pg_temp"], signed.owner_role,
                   True, False)
    assert owner_login == (False,)


def test_app_role_cannot_slip_in_its_own_key(signed: Scratch) -> None:
    forged_key = b"f" * 32
    with signed.app() as conn:
        conn.execute("CREATE TEMP TABLE keys (id text, key bytea, active boolean)")
        conn.execute("INSERT INTO keys VALUES ('forged', %s, true)", [forged_key])
        conn.execute("SET search_path = pg_temp, pgtenant, public")
        set_context(conn, "globex", compute_proof(forged_key, "globex", conn.info.backend_pid))
        assert signed_tenant(conn) is None
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE FUNCTION pgtenant.hmac(bytea, bytea, text) RETURNS bytea"
                         " LANGUAGE sql AS 'SELECT $1'")


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


def test_install_twice_is_harmless_and_keeps_the_keys(signed: Scratch) -> None:
    installed(signed)
    with signed.app() as conn:
        set_context(conn, "acme", compute_proof(KEY_A, "acme", conn.info.backend_pid))
        assert signed_tenant(conn) == "acme"


def test_install_as_the_app_role_fails_with_a_clear_message(scratch: Scratch) -> None:
    result = cli("policies", "install", "--dsn", scratch.app_dsn)
    assert result.status == 2
    assert result.err.startswith("pgtenant: ") and "permission denied" in result.err
    assert scratch.app_password not in result.err + result.out


def test_set_key_refuses_short_or_missing_keys_without_echoing_them(
    signed: Scratch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGTENANT_POL_SHORT", "tiny-secret-value")
    short = cli("policies", "set-key", "--dsn", signed.dsn, "--key-env", "PGTENANT_POL_SHORT")
    assert short.status == 2 and "at least 32 bytes" in short.err
    assert "tiny-secret-value" not in short.err + short.out
    monkeypatch.delenv("PGTENANT_POL_UNSET", raising=False)
    unset = cli("policies", "set-key", "--dsn", signed.dsn, "--key-env", "PGTENANT_POL_UNSET")
    assert unset.status == 2 and "PGTENANT_POL_UNSET is not set" in unset.err


def test_bad_password_is_reported_without_the_password(scratch: Scratch) -> None:
    dsn = scratch.postgres.dsn(scratch.dbname, user=scratch.app_role,
                               password="wrong-pw-8d1f0a")
    result = cli("policies", "check", "--dsn", dsn)
    assert result.status == 2 and "cannot connect" in result.err
    assert "wrong-pw-8d1f0a" not in result.err


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


# -- the tenant registry ------------------------------------------------------------------

def test_tenant_lifecycle_and_status_lookup_by_the_app_role(signed: Scratch) -> None:
    assert cli("tenants", "create", "acme", "--dsn", signed.dsn).status == 0
    assert cli("tenants", "create", "globex", "--dsn", signed.dsn).status == 0
    again = cli("tenants", "create", "acme", "--dsn", signed.dsn)
    assert again.status == 2 and "already exists" in again.err
    assert cli("tenants", "suspend", "globex", "--dsn", signed.dsn).status == 0
    listed = cli("tenants", "list", "--json", "--dsn", signed.dsn)
    assert [(t["id"], t["status"]) for t in json.loads(listed.out)] == [
        ("acme", "active"), ("globex", "suspended")]
    with signed.app() as conn:  # what the proxy will do on its upstream connections
        assert tenant_status(conn, "acme") == "active"
        assert tenant_status(conn, "globex") == "suspended"
        assert tenant_status(conn, "initech") is None
        row = psycopg.RawCursor(conn).execute(TENANT_STATUS_SQL, ["globex"]).fetchone()
        assert row == ("suspended",)
    assert cli("tenants", "resume", "globex", "--dsn", signed.dsn).status == 0
    assert cli("tenants", "delete", "acme", "--dsn", signed.dsn).status == 0
    missing = cli("tenants", "suspend", "acme", "--dsn", signed.dsn)
    assert missing.status == 2 and "no tenant acme" in missing.err
    table = cli("tenants", "list", "--dsn", signed.dsn)
    assert table.out.splitlines()[0].split() == ["ID", "STATUS", "CREATED", "SCHEMA"]
    assert table.out.splitlines()[1].split()[:2] == ["globex", "active"]


def test_tenant_schema_gets_its_migrations_in_name_order(
    signed: Scratch, tmp_path: Path
) -> None:
    (tmp_path / "002_seed.sql").write_text(
        "INSERT INTO settings (name, value) VALUES ('plan', 'pro');\n"
        "ALTER TABLE settings ADD COLUMN note text DEFAULT '50%';\n")
    (tmp_path / "001_tables.sql").write_text(
        "CREATE TABLE settings (name text PRIMARY KEY, value text);")
    (tmp_path / "README.txt").write_text("not a migration")
    result = cli("tenants", "create", "acme-2", "--schema", "--migrations", str(tmp_path),
                 "--app-role", signed.app_role, "--dsn", signed.dsn)
    assert result.status == 0, result.err
    assert "schema tenant_acme-2" in result.out
    with signed.admin() as conn:
        rows = conn.execute('SELECT name, value, note FROM "tenant_acme-2".settings').fetchall()
        in_public = conn.execute("SELECT to_regclass('public.settings')").fetchone()
        schema = conn.execute("SELECT schema_name FROM pgtenant.tenants WHERE id = 'acme-2'"
                              ).fetchone()
        usage = conn.execute("SELECT has_schema_privilege(%s, 'tenant_acme-2', 'USAGE')",
                             [signed.app_role]).fetchone()
    assert rows == [("plan", "pro", "50%")]
    assert in_public == (None,) and schema == ("tenant_acme-2",) and usage == (True,)
    deleted = cli("tenants", "delete", "acme-2", "--drop-schema", "--dsn", signed.dsn)
    assert deleted.status == 0, deleted.err
    with signed.admin() as conn:
        assert conn.execute("SELECT to_regnamespace('\"tenant_acme-2\"')").fetchone() == (None,)


def test_failed_migration_leaves_no_tenant_and_no_schema(
    signed: Scratch, tmp_path: Path
) -> None:
    (tmp_path / "001_ok.sql").write_text("CREATE TABLE t (x int);")
    (tmp_path / "002_broken.sql").write_text("INSERT INTO missing_table VALUES (1);")
    result = cli("tenants", "create", "acme", "--schema", "--migrations", str(tmp_path),
                 "--dsn", signed.dsn)
    assert result.status == 2
    assert "migration 002_broken.sql failed" in result.err and "missing_table" in result.err
    with signed.admin() as conn:
        assert conn.execute("SELECT count(*) FROM pgtenant.tenants").fetchone() == (0,)
        assert conn.execute("SELECT to_regnamespace('tenant_acme')").fetchone() == (None,)


@pytest.mark.parametrize("tenant", ["bad id", "a;b", "x" * 64, "acme\n", "ümlaut"])
def test_invalid_tenant_ids_are_refused(signed: Scratch, tenant: str) -> None:
    result = cli("tenants", "create", tenant, "--dsn", signed.dsn)
    assert result.status == 2 and "invalid tenant id" in result.err


def test_tenants_before_install_says_what_to_run(scratch: Scratch) -> None:
    result = cli("tenants", "list", "--dsn", scratch.dsn)
    assert result.status == 2 and "run `pgtenant policies install` first" in result.err


def test_the_pgtenant_command_reads_the_admin_dsn_from_the_environment(
    signed: Scratch,
) -> None:
    env = {"PGTENANT_ADMIN_DSN": signed.dsn, "PATH": "/usr/bin:/bin"}
    done = run([sys.executable, "-m", "proxy.cli", "tenants", "create", "initech"], env=env)
    assert done.stdout.strip() == "created tenant initech"
    listed = run([sys.executable, "-m", "proxy.cli", "tenants", "list"], env=env)
    assert "initech" in listed.stdout
