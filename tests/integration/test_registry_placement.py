"""The registry side of placement: the ``placement`` column, ``tenant_placement()`` for
the proxy's role, ``tenants create --placement`` and an upgrade of an older registry."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest

from policies.install import install_sql
from proxy.placement import PLACEMENT_SQL
from tests.integration.policies_db import Scratch, cli, installed, scratch_database
from tests.support import PostgresServer


@pytest.fixture
def registry_db(postgres: PostgresServer) -> Iterator[Scratch]:
    with scratch_database(postgres) as db:
        yield installed(db)


def test_tenants_carry_a_placement_the_app_role_can_look_up(registry_db: Scratch) -> None:
    scratch = registry_db
    assert cli("tenants", "create", "acme", "--dsn", scratch.dsn).status == 0
    created = cli("tenants", "create", "initech", "--placement", "app_us", "--dsn", scratch.dsn)
    assert created.status == 0 and "on app_us" in created.out
    listed = cli("tenants", "list", "--json", "--dsn", scratch.dsn)
    assert [(t["id"], t["placement"]) for t in json.loads(listed.out)] == [
        ("acme", None), ("initech", "app_us")]
    table = cli("tenants", "list", "--dsn", scratch.dsn).out.splitlines()
    assert table[0].split()[-1] == "PLACEMENT" and table[2].split()[-1] == "app_us"
    with scratch.app() as conn:  # the proxy's role: EXECUTE on the function, not the table
        assert conn.execute(PLACEMENT_SQL, ["initech"]).fetchone() == ("active", "app_us")
        assert conn.execute(PLACEMENT_SQL, ["acme"]).fetchone() == ("active", None)
        assert conn.execute(PLACEMENT_SQL, ["hooli"]).fetchone() is None
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT placement FROM pgtenant.tenants")


def test_install_upgrades_an_older_registry_and_keeps_its_tenants(registry_db: Scratch) -> None:
    scratch = registry_db
    with scratch.admin() as conn:  # the registry as installs before placement made it
        conn.execute("DROP FUNCTION pgtenant.tenant_placement(text)")
        conn.execute("ALTER TABLE pgtenant.tenants DROP COLUMN placement")
        conn.execute("ALTER TABLE pgtenant.tenants DROP CONSTRAINT tenants_status_check")
        conn.execute("ALTER TABLE pgtenant.tenants ADD CONSTRAINT tenants_status_check"
                     " CHECK (status IN ('active', 'suspended'))")
        conn.execute("INSERT INTO pgtenant.tenants (id, status) VALUES ('acme', 'suspended')")
    installed(scratch)
    installed(scratch)  # twice: idempotent
    with scratch.admin() as conn:
        assert conn.execute("SELECT status, placement FROM pgtenant.tenants"
                            ).fetchall() == [("suspended", None)]
        conn.execute("UPDATE pgtenant.tenants SET status = 'moving'")
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE pgtenant.tenants SET status = 'gone'")
    assert "tenant_placement" in install_sql()
