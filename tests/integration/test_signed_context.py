"""The proxy's side of the database layer: the signed tenant context and the registry.

Even with the guard switched off (something slipped past it), a client that sets the
tenant setting itself sees nothing of another tenant in tables protected with
``pgtenant.current_tenant()``: only the proxy can produce the proof.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from policies.install import install, set_key
from policies.protect import protect
from policies.registry import create_tenant, set_status
from proxy.config import TenancyConfig
from tests.integration.policies_db import Scratch, scratch_database
from tests.proxy_harness import ThreadedProxy, make_config, startup_refusal
from tests.support import AppDatabase, PostgresServer

KEY = b"k" * 40
KEY_ENV = "PGTENANT_TEST_PROOF_KEY"


@pytest.fixture
def signed_db(postgres: PostgresServer) -> Iterator[Scratch]:
    with scratch_database(postgres) as db, psycopg.connect(db.dsn) as conn:
        install(conn, app_roles=[db.app_role], owner_role=db.owner_role)
        set_key(conn, KEY)
        conn.execute("CREATE TABLE docs (id serial PRIMARY KEY, tenant_id text NOT NULL, "
                     "body text)")
        conn.execute(f'GRANT SELECT, INSERT ON docs TO "{db.app_role}"')
        conn.execute(f'GRANT USAGE ON SEQUENCE docs_id_seq TO "{db.app_role}"')
        protect(conn, "docs", signed=True)
        conn.execute("INSERT INTO docs (tenant_id, body) VALUES ('acme', 'a1'), "
                     "('globex', 'g1'), ('globex', 'g2')")
        create_tenant(conn, "acme")
        create_tenant(conn, "globex")
        conn.commit()
        yield db


def _proxy(db: Scratch, pool_size: int = 2, **tenancy: Any) -> ThreadedProxy:
    os.environ[KEY_ENV] = KEY.decode()
    app_db = AppDatabase(host=db.postgres.host, port=db.postgres.port, dbname=db.dbname,
                         user=db.app_role, password=db.app_password, superuser_dsn=db.dsn)
    config = make_config(app_db, pool_mode="transaction", pool_size=pool_size)
    config = dataclasses.replace(config, tenancy=TenancyConfig(proof_key_env=KEY_ENV,
                                                               **tenancy))
    return ThreadedProxy(config).start()


def test_signed_policy_works_through_the_proxy(signed_db: Scratch) -> None:
    proxy = _proxy(signed_db)
    try:
        for tenant, expected in (("acme", ["a1"]), ("globex", ["g1", "g2"])):
            with psycopg.connect(proxy.dsn(tenant)) as conn:
                rows = conn.execute("SELECT body FROM docs ORDER BY body").fetchall()
                assert [r[0] for r in rows] == expected
                conn.execute("INSERT INTO docs (body) VALUES ('new')")  # default: own tenant
    finally:
        proxy.stop()


def test_without_the_guard_a_forged_tenant_still_sees_nothing(signed_db: Scratch) -> None:
    proxy = _proxy(signed_db, guard=False)
    try:
        with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
            # Nothing stops these now: the database must.
            conn.execute("SELECT set_config('app.current_tenant', 'globex', false)")
            assert conn.execute("SELECT count(*) FROM docs").fetchone() == (0,)
            conn.execute("SELECT set_config('pgtenant.proof', repeat('0', 64), false)")
            assert conn.execute("SELECT count(*) FROM docs").fetchone() == (0,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("INSERT INTO docs (tenant_id, body) VALUES ('globex', 'x')")
        # The next client of that pooled connection gets a clean, proven context again.
        with psycopg.connect(proxy.dsn("globex")) as conn:
            assert conn.execute("SELECT count(*) FROM docs").fetchone() == (2,)
    finally:
        proxy.stop()


def test_a_forged_context_is_counted_and_re_set_for_the_next_client(
        signed_db: Scratch) -> None:
    from prometheus_client import generate_latest

    from proxy.metrics.collector import make_registry

    proxy = _proxy(signed_db, pool_size=1, guard=False)
    try:
        warnings: list[str | None] = []
        with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
            conn.add_notice_handler(lambda diag: warnings.append(diag.sqlstate))
            conn.execute("SELECT set_config('app.current_tenant', 'globex', false)")
            assert conn.execute("SELECT count(*) FROM docs").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM docs").fetchone() == (1,)  # re-set
        assert warnings == ["PT401"]
        # The same tenant's next client on the one backend: its context was re-set.
        with psycopg.connect(proxy.dsn("acme")) as conn:
            assert conn.execute("SELECT count(*) FROM docs").fetchone() == (1,)
        app = proxy.app
        assert app is not None
        text = proxy.call(lambda: generate_latest(make_registry(app)).decode())
        assert ('pgtenant_rls_violation_attempts_total{kind="forged_context",tenant="acme"} 1.0'
                in text)
    finally:
        proxy.stop()


def test_a_captured_proof_does_not_survive_the_switch_to_another_tenant(
        signed_db: Scratch) -> None:
    """The attack run's class 3 under the signed policy, guard off: a temp view named like
    the app's table copies every proof it sees; the scrub drops it before globex runs."""
    proxy = _proxy(signed_db, pool_size=1, guard=False)
    try:
        with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
            conn.execute("CREATE TEMP TABLE loot (proof text, pid int)")
            conn.execute(
                "CREATE FUNCTION pg_temp.grab() RETURNS boolean LANGUAGE sql AS $$ "
                "INSERT INTO pg_temp.loot VALUES (current_setting('pgtenant.proof', true), "
                "pg_backend_pid()); SELECT true $$")
            conn.execute("CREATE TEMP VIEW docs AS SELECT * FROM public.docs "
                         "WHERE pg_temp.grab()")
        with psycopg.connect(proxy.dsn("globex")) as conn:
            assert conn.execute("SELECT count(*) FROM docs").fetchone() == (2,)
        with psycopg.connect(proxy.dsn("acme")) as conn:
            assert conn.execute("SELECT to_regclass('pg_temp.loot')").fetchone() == (None,)
    finally:
        proxy.stop()


def test_registry_refuses_suspended_and_unknown_tenants(signed_db: Scratch) -> None:
    with psycopg.connect(signed_db.dsn) as conn:
        set_status(conn, "globex", "suspended")
        conn.commit()
    proxy = _proxy(signed_db, require_registered_tenant=True)
    try:
        with psycopg.connect(proxy.dsn("acme")) as conn:
            assert conn.execute("SELECT count(*) FROM docs").fetchone() == (1,)
        for tenant, words in (("globex", "is suspended"), ("initech", "is not registered")):
            state, message = startup_refusal(proxy.dsn(tenant))
            assert state == "28000" and words in message
        app = proxy.app
        assert app is not None
        assert proxy.call(lambda: app.stats.security.suspended_tenant_attempts) == 2
    finally:
        proxy.stop()


def test_schema_per_tenant_sets_the_search_path(signed_db: Scratch) -> None:
    with psycopg.connect(signed_db.dsn) as conn:
        create_tenant(conn, "initech", schema=True, app_roles=[signed_db.app_role])
        conn.execute("CREATE TABLE tenant_initech.notes (body text)")
        conn.execute(f'GRANT SELECT ON tenant_initech.notes TO "{signed_db.app_role}"')
        conn.execute("INSERT INTO tenant_initech.notes VALUES ('hello')")
        conn.commit()
    proxy = _proxy(signed_db, schema_per_tenant=True)
    try:
        with psycopg.connect(proxy.dsn("initech")) as conn:
            assert conn.execute("SELECT current_schema()").fetchone() == ("tenant_initech",)
            assert conn.execute("SELECT body FROM notes").fetchone() == ("hello",)
    finally:
        proxy.stop()
