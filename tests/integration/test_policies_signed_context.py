"""The signed tenant context on a real PostgreSQL: ``pgtenant.current_tenant()`` accepts
the proof the proxy computes and nothing else (forged, another tenant's or another
backend's), keys rotate, the app role can neither read nor replace them; install and
set-key, and their errors that never show a password or key."""

from __future__ import annotations

import secrets
from typing import Any

import psycopg
import pytest

from proxy.tenancy.proof import compute_proof
from tests.integration.policies_db import (
    FORGED_WARNING,
    KEY_A,
    Scratch,
    cli,
    installed,
    server_notices,
    set_context,
)

KEY_B = secrets.token_hex(32).encode()


def signed_tenant(conn: psycopg.Connection[Any]) -> str | None:
    row = conn.execute("SELECT pgtenant.current_tenant()").fetchone()
    assert row is not None
    value: str | None = row[0]
    return value


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
