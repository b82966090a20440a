"""psql and pgbench (libpq) through pgtenant: the simple protocol, \\copy, \\watch, and
pgbench's simple, extended and prepared protocols, reconnects and pipelines."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.drivers.tenancy import SEED_ROWS, TENANTS, WHO_AM_I
from tests.proxy_harness import ThreadedProxy, token
from tests.support import run


def psql(proxy: ThreadedProxy, tenant: str, *args: str, check: bool = True,
         **kwargs: str) -> subprocess.CompletedProcess[str]:
    """psql -X (no psqlrc), unaligned, tuples only, to the proxy as ``tenant``."""
    return run(["psql", "-XAtq", "-F", "|", proxy.dsn(tenant), *args], timeout=30, check=check,
               **kwargs)


def who_am_i(proxy: ThreadedProxy, tenant: str) -> str:
    return psql(proxy, tenant, "-c", WHO_AM_I).stdout.strip()


def test_simple_protocol_reads_and_writes_only_own_rows(driver_proxy: ThreadedProxy) -> None:
    # Several -c: each is one simple Query message, and in transaction mode its own lease.
    out = psql(driver_proxy, "acme",
               "-c", "INSERT INTO items (name) VALUES ('acme-psql')",
               "-c", "UPDATE items SET name = name || '!' RETURNING tenant_id",
               "-c", "DELETE FROM items WHERE tenant_id = 'globex' RETURNING id",
               "-c", "SELECT current_setting('app.current_tenant'); " + WHO_AM_I).stdout
    assert out.split() == ["acme"] * (SEED_ROWS + 1) + ["acme", f"acme|acme|{SEED_ROWS + 1}"]
    assert who_am_i(driver_proxy, "globex") == f"globex|globex|{SEED_ROWS}"


def test_watch_repeats_in_the_same_tenant(driver_proxy: ThreadedProxy) -> None:
    # psql 15's \watch has no count: the query itself ends the loop with an error on its
    # fourth run (each run inserts a row and divides by 3 minus the rows already there).
    script = ("WITH added AS (INSERT INTO items (name) VALUES ('watched') RETURNING tenant_id)"
              " SELECT current_setting('app.current_tenant'), (SELECT tenant_id FROM added),"
              " 1 / (3 - (SELECT count(*) FROM items WHERE name = 'watched'))::int \\watch 0.05")
    done = psql(driver_proxy, "globex", "-f", "-", input=script + "\n", check=False)
    assert "division by zero" in done.stderr
    assert [line for line in done.stdout.splitlines() if "|" in line] == [
        "globex|globex|0", "globex|globex|0", "globex|globex|1"]  # 1/3, 1/2, 1/1
    assert who_am_i(driver_proxy, "globex") == f"globex|globex|{SEED_ROWS + 3}"
    assert who_am_i(driver_proxy, "acme") == f"acme|acme|{SEED_ROWS}"


def test_copy_out_and_staged_copy_in(driver_proxy: ThreadedProxy, tmp_path: Path) -> None:
    out_file, in_file = tmp_path / "out.tsv", tmp_path / "in.tsv"
    psql(driver_proxy, "acme", "-c", f"\\copy items (tenant_id, name) TO '{out_file}'")
    assert sorted(out_file.read_text().splitlines()) == [
        f"acme\tacme-item-{n}" for n in range(1, SEED_ROWS + 1)]

    in_file.write_text("".join(f"copied-{n}\n" for n in range(20)))
    refused = psql(driver_proxy, "acme", "-c", f"\\copy items (name) FROM '{in_file}'",
                   check=False)
    assert refused.returncode != 0
    assert "COPY FROM not supported with row-level security" in refused.stderr
    # The staging-table pattern, in one transaction so it works in transaction mode too.
    script = tmp_path / "load.sql"
    script.write_text("\n".join([
        "\\set ON_ERROR_STOP on",
        "BEGIN;",
        "CREATE TEMP TABLE staging (name text) ON COMMIT DROP;",
        f"\\copy staging FROM '{in_file}'",
        "INSERT INTO items (name) SELECT name FROM staging;",
        "COMMIT;",
    ]) + "\n")
    psql(driver_proxy, "acme", "-f", str(script))
    assert who_am_i(driver_proxy, "acme") == f"acme|acme|{SEED_ROWS + 20}"
    assert who_am_i(driver_proxy, "globex") == f"globex|globex|{SEED_ROWS}"


def pgbench(proxy: ThreadedProxy, tenant: str, script: Path, *args: str
            ) -> subprocess.Popen[str]:
    env = {**os.environ, "PGPASSWORD": token(tenant), "PGSSLMODE": "disable"}
    return subprocess.Popen(
        ["pgbench", "-n", "-f", str(script), "-h", "127.0.0.1", "-p", str(proxy.port),
         "-U", "bench", *args, "app"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def bench_script(tmp_path: Path, tenant: str, *, pipeline: bool = False) -> Path:
    """A transaction that fails (division by zero) if it runs as anyone but ``tenant``."""
    statements = [
        "INSERT INTO items (name) VALUES ('bench-' || :client_id);",
        f"SELECT 1 / (current_setting('app.current_tenant') = '{tenant}')::int;",
        f"SELECT 1 / (count(*) = 0)::int FROM items WHERE tenant_id <> '{tenant}';",
        "SELECT count(*) FROM items WHERE id > :client_id;",
    ]
    if pipeline:
        statements = ["\\startpipeline", *statements, "\\endpipeline"]
    path = tmp_path / f"{tenant}{'-pipeline' if pipeline else ''}.sql"
    path.write_text("\n".join(statements) + "\n")
    return path


def run_both_tenants(proxy: ThreadedProxy, tmp_path: Path, *args: str,
                     pipeline: bool = False, transactions: int = 10, clients: int = 3) -> None:
    """Both tenants' pgbench at once; every transaction succeeds, every row lands right."""
    runs = {t: pgbench(proxy, t, bench_script(tmp_path, t, pipeline=pipeline),
                       "-c", str(clients), "-t", str(transactions), *args) for t in TENANTS}
    for tenant, proc in runs.items():
        stdout, stderr = proc.communicate(timeout=90)
        assert proc.returncode == 0, f"{tenant}: {stdout}\n{stderr}"
        assert "number of failed transactions: 0" in stdout
        total = clients * transactions
        assert f"number of transactions actually processed: {total}/{total}" in stdout
    for tenant in TENANTS:
        assert who_am_i(proxy, tenant) == f"{tenant}|{tenant}|{SEED_ROWS + total}"


@pytest.mark.parametrize("protocol", ["simple", "extended", "prepared"])
def test_pgbench_protocols(driver_proxy: ThreadedProxy, tmp_path: Path, protocol: str) -> None:
    run_both_tenants(driver_proxy, tmp_path, "-M", protocol)


def test_pgbench_reconnects_per_transaction(driver_proxy: ThreadedProxy,
                                            tmp_path: Path) -> None:
    run_both_tenants(driver_proxy, tmp_path, "-C", "-M", "prepared", transactions=8)


@pytest.mark.parametrize("protocol", ["extended", "prepared"])
def test_pgbench_pipeline(driver_proxy: ThreadedProxy, tmp_path: Path, protocol: str) -> None:
    run_both_tenants(driver_proxy, tmp_path, "-M", protocol, pipeline=True)
