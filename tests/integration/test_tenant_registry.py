"""The tenant registry on a real PostgreSQL: ``pgtenant tenants`` creates, suspends,
resumes and deletes tenants (with a schema and its migrations), and the app role looks
up a tenant's status."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import psycopg
import pytest

from policies.registry import TENANT_STATUS_SQL, tenant_status
from tests.integration.policies_db import Scratch, cli
from tests.support import run

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
