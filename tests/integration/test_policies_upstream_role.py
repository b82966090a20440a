"""``pgtenant policies install --create-role``: an upstream role that ``policies check``
passes, created or hardened in place, with a password that never is on the command line."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.policies_db import Scratch, cli

PASSWORD_ENV = "PGTENANT_TEST_ROLE_PASSWORD"


def create_role(db: Scratch, *extra: str) -> tuple[int, str, str]:
    result = cli("policies", "install", "--dsn", db.dsn, "--owner-role", db.owner_role,
                 "--create-role", db.app_role, *extra)
    return result.status, result.out, result.err


def role_findings(db: Scratch) -> list[tuple[str, str]]:
    result = cli("policies", "check", "--dsn", db.dsn, "--app-role", db.app_role, "--json")
    assert result.status in (0, 1), result.err
    findings: list[dict[str, Any]] = json.loads(result.out)["findings"]
    return [(f["code"], f["object"]) for f in findings]


def test_created_role_passes_check_and_logs_in_with_its_password(
    scratch: Scratch, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch.execute("DROP ROLE {app}")
    password = secrets.token_urlsafe(16)
    monkeypatch.setenv(PASSWORD_ENV, password)
    status, out, err = create_role(scratch, "--role-password-env", PASSWORD_ENV)
    assert status == 0, err
    assert out.startswith(f"created upstream role {scratch.app_role}\n")
    assert password not in out + err
    assert role_findings(scratch) == []
    with scratch.admin() as conn:
        row = conn.execute(
            "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolbypassrls,"
            " rolreplication, left(rolpassword, 14) FROM pg_authid WHERE rolname = %s",
            [scratch.app_role]).fetchone()
    assert row == (True, False, False, False, False, False, "SCRAM-SHA-256$")
    dsn = scratch.postgres.dsn(scratch.dbname, user=scratch.app_role, password=password)
    with psycopg.connect(dsn) as conn:  # and it may call what the proxy needs
        assert conn.execute("SELECT pgtenant.current_tenant()").fetchone() == (None,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE public.left_behind (x int)")


def test_an_existing_role_is_hardened_in_place_and_twice_is_harmless(scratch: Scratch) -> None:
    scratch.execute(
        "ALTER ROLE {app} CREATEDB CREATEROLE;"
        "GRANT pg_signal_backend, pg_monitor TO {app};"
        "GRANT CREATE ON SCHEMA public TO {app}, PUBLIC;"
        f"GRANT CREATE ON DATABASE {scratch.dbname} TO {{app}};"
        "CREATE SCHEMA {app}; GRANT CREATE ON SCHEMA {app} TO {app};"
        "ALTER ROLE {app} SET default_transaction_read_only = on;"
        f"ALTER ROLE {{app}} IN DATABASE {scratch.dbname} SET app.current_tenant = 'globex'")
    assert {code for code, _ in role_findings(scratch)} == {
        "PGT012", "PGT013", "PGT016", "PGT017", "PGT018", "PGT019", "PGT021", "PGT023",
        "PGT025"}
    for _ in range(2):
        status, out, err = create_role(scratch)
        assert (status, err) == (0, "")
        assert out.startswith(f"hardened upstream role {scratch.app_role} (password unchanged)")
        assert role_findings(scratch) == []
    with scratch.app() as conn:  # the old password still works, and no setting lingers
        assert conn.execute("SELECT current_setting('app.current_tenant', true),"
                            " current_setting('default_transaction_read_only')"
                            ).fetchone() in ((None, "off"), ("", "off"))


def test_what_it_does_not_fix_is_reported(scratch: Scratch) -> None:
    """Ownership is never moved behind the operator's back."""
    scratch.execute("CREATE SCHEMA scratchpad AUTHORIZATION {app}")
    status, _, err = create_role(scratch)
    assert status == 0
    assert f"warning: still to fix: PGT020 scratchpad: {scratch.app_role} owns schema" in err
    assert role_findings(scratch) == [("PGT020", "scratchpad")]


def test_password_from_a_file(scratch: Scratch, tmp_path: Path) -> None:
    password = secrets.token_urlsafe(16)
    secret = tmp_path / "upstream-password"
    secret.write_text(password + "\n")
    status, out, err = create_role(scratch, "--role-password-file", str(secret))
    assert status == 0, err
    assert password not in out + err
    dsn = scratch.postgres.dsn(scratch.dbname, user=scratch.app_role, password=password)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (scratch.app_role,)


@pytest.mark.parametrize(("extra", "message"), [
    (("--role-password-env", "PGTENANT_TEST_UNSET"), "PGTENANT_TEST_UNSET is not set"),
    (("--role-password-file", "/nonexistent/pw"), "cannot read /nonexistent/pw"),
])
def test_a_missing_password_source_is_an_error(
    scratch: Scratch, monkeypatch: pytest.MonkeyPatch, extra: tuple[str, ...], message: str
) -> None:
    monkeypatch.delenv("PGTENANT_TEST_UNSET", raising=False)
    status, _, err = create_role(scratch, *extra)
    assert status == 2 and message in err


def test_a_password_needs_create_role(
    scratch: Scratch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "x" * 20)
    result = cli("policies", "install", "--dsn", scratch.dsn, "--role-password-env",
                 PASSWORD_ENV)
    assert result.status == 2 and "need --create-role" in result.err


def test_create_role_needs_a_superuser(scratch: Scratch) -> None:
    scratch.execute("ALTER ROLE {app} CREATEROLE")
    result = cli("policies", "install", "--dsn", scratch.app_dsn, "--create-role",
                 f"{scratch.app_role}_2")
    assert result.status == 2 and "--create-role needs a superuser" in result.err
    with scratch.admin() as conn:  # nothing was done
        assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s",
                            [f"{scratch.app_role}_2"]).fetchone() == (0,)


def test_tenants_sharing_the_role_can_neither_end_nor_read_each_others_sessions(
    scratch: Scratch,
) -> None:
    """The attack run's findings, straight to PostgreSQL as the upstream role: before
    --create-role one session cancels another and reads its query text; after, neither."""
    secret = "SELECT 'tenant-b-secret-4711'"
    with scratch.app() as tenant_a, scratch.app() as tenant_b:
        tenant_b.execute(secret)  # type: ignore[arg-type]
        pid = tenant_b.info.backend_pid
        seen = tenant_a.execute("SELECT query FROM pg_stat_activity WHERE pid = %s",
                                [pid]).fetchone()
        assert seen == (secret,)
        assert tenant_a.execute("SELECT pg_cancel_backend(%s)", [pid]).fetchone() == (True,)
    status, _, err = create_role(scratch)
    assert status == 0, err
    with scratch.app() as tenant_a, scratch.app() as tenant_b:
        tenant_b.execute(secret)  # type: ignore[arg-type]
        pid = tenant_b.info.backend_pid
        seen = tenant_a.execute("SELECT query FROM pg_stat_activity WHERE pid = %s",
                                [pid]).fetchone()
        assert seen is not None and "tenant-b-secret" not in str(seen[0])
        for function in ("pg_cancel_backend(%s)", "pg_terminate_backend(%s)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                tenant_a.execute(f"SELECT {function}", [pid])  # type: ignore[arg-type]
        assert tenant_b.execute("SELECT 1").fetchone() == (1,)


def test_a_setting_the_role_stores_for_itself_is_found(scratch: Scratch) -> None:
    """No privilege stops ALTER ROLE CURRENT_USER SET (the guard refuses it at the proxy);
    check finds what a tenant that got past it left for every later session."""
    assert create_role(scratch)[0] == 0
    with scratch.app() as conn:
        conn.execute("ALTER ROLE CURRENT_USER SET default_transaction_read_only = on")
        conn.execute("ALTER ROLE CURRENT_USER SET client_min_messages = error")
    assert role_findings(scratch) == [("PGT025", scratch.app_role)] * 2
    assert create_role(scratch)[0] == 0
    assert role_findings(scratch) == []
