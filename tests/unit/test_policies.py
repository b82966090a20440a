"""The parts of policies/ that need no database: the proof, tenant ids, migration files,
check output, and the CLI's argument handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from policies.catalog import PolicyError
from policies.check import RULES, Finding, exit_status, render_json, render_table
from policies.registry import migration_files, schema_for, validate_tenant_id
from proxy.cli import build_parser, main
from proxy.tenancy.proof import compute_proof, key_id_for, proof_message


def test_proof_matches_an_independent_hmac() -> None:
    # printf 'acme:4242' | openssl dgst -sha256 -hmac kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk
    assert compute_proof(b"k" * 32, "acme", 4242) == (
        "d85a6ee31247539ee575a0b63ec43e69b6d78465181dde27c93bdc046d3a9586")


def test_proof_depends_on_key_tenant_and_pid() -> None:
    base = compute_proof(b"k" * 32, "acme", 1)
    assert len(base) == 64 and base == base.lower()
    assert base != compute_proof(b"j" * 32, "acme", 1)
    assert base != compute_proof(b"k" * 32, "acme2", 1)
    assert base != compute_proof(b"k" * 32, "acme", 2)
    # Tenant ids cannot contain ":" (tenant_pattern), so tenant and pid never blur.
    assert proof_message("acme", 12) == b"acme:12"


def test_key_id_is_stable_and_reveals_nothing_obvious() -> None:
    key = b"s" * 32
    assert key_id_for(key) == key_id_for(key) and len(key_id_for(key)) == 12
    assert key_id_for(key) != key_id_for(b"t" * 32)
    assert "ssss" not in key_id_for(key)


@pytest.mark.parametrize("tenant", ["acme", "A_b-9", "x" * 56])
def test_valid_tenant_ids(tenant: str) -> None:
    assert validate_tenant_id(tenant) == tenant
    assert schema_for(tenant) == f"tenant_{tenant}"


@pytest.mark.parametrize("tenant", ["", "a b", "a:b", "a.b", "acme\n", "x" * 64, "é", "a'b"])
def test_invalid_tenant_ids(tenant: str) -> None:
    with pytest.raises(PolicyError, match="invalid tenant id"):
        validate_tenant_id(tenant)


def test_schema_name_longer_than_postgres_allows_is_refused() -> None:
    with pytest.raises(PolicyError, match="longer than 63 bytes"):
        schema_for("x" * 57)


def test_migration_files_in_name_order(tmp_path: Path) -> None:
    for name in ("010_b.sql", "002_a.sql", "100_c.sql", "notes.md"):
        (tmp_path / name).write_text("SELECT 1;")
    assert [p.name for p in migration_files(tmp_path)] == ["002_a.sql", "010_b.sql", "100_c.sql"]


@pytest.mark.parametrize("text", ["BEGIN; CREATE TABLE t (x int); COMMIT;",
                                  "CREATE TABLE t (x int); SAVEPOINT s;", "ROLLBACK"])
def test_migrations_may_not_control_the_transaction(tmp_path: Path, text: str) -> None:
    (tmp_path / "001.sql").write_text(text)
    with pytest.raises(PolicyError, match=r"001\.sql: BEGIN/COMMIT"):
        migration_files(tmp_path)


def test_migration_syntax_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "001_bad.sql").write_text("CREATE TABLE (;")
    with pytest.raises(PolicyError, match=r"001_bad\.sql: SQL syntax error"):
        migration_files(tmp_path)


def test_missing_migrations_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="does not exist"):
        migration_files(tmp_path / "nope")


def _finding(code: str, obj: str = "public.t") -> Finding:
    rule = RULES[code]
    return Finding(code, rule.severity, obj, rule.title, rule.advice)


def test_rule_codes_are_stable() -> None:
    assert sorted(RULES) == [f"PGT{n:03d}" for n in range(1, 26)]
    assert {r.severity for r in RULES.values()} == {"error", "warning"}


def test_exit_status_follows_fail_on() -> None:
    warning, error = _finding("PGT008"), _finding("PGT001")
    assert exit_status([]) == 0
    assert exit_status([warning]) == 1
    assert exit_status([warning], "error") == 0
    assert exit_status([warning, error], "error") == 1


def test_render_json_and_table() -> None:
    findings = [_finding("PGT001"), _finding("PGT008", "public.longer_name")]
    data = json.loads(render_json(findings))
    assert [f["code"] for f in data["findings"]] == ["PGT001", "PGT008"]
    assert set(data["findings"][0]) == {"code", "severity", "object", "message", "advice"}
    lines = render_table(findings).splitlines()
    assert lines[0].index("FINDING") == lines[1].index(RULES["PGT001"].title)
    assert lines[-1] == "2 findings (1 errors, 1 warnings)"
    assert render_table([]) == "no findings\n"


def test_cli_registers_policies_and_tenants() -> None:
    args = build_parser().parse_args(
        ["policies", "protect", "app.items", "--column", "org", "--signed", "--dsn", "x"])
    assert (args.table, args.column, args.signed) == ("app.items", "org", True)
    args = build_parser().parse_args(["tenants", "suspend", "acme"])
    assert args.status == "suspended"


def test_cli_without_a_dsn_says_how_to_give_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PGTENANT_ADMIN_DSN", raising=False)
    assert main(["tenants", "list"]) == 2
    assert "pass --dsn or set $PGTENANT_ADMIN_DSN" in capsys.readouterr().err


def test_cli_never_echoes_a_malformed_dsn(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tenants", "list", "--dsn", "host=x password=hunter2 oops"]) == 2
    err = capsys.readouterr().err
    assert "not valid libpq syntax" in err and "hunter2" not in err
