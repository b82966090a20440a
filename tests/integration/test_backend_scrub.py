"""The scrub on a tenant switch, on its own: the guard is OFF in every test here.

Invariant: nothing a tenant does on a server connection is visible to, or runs for,
another tenant. A hostile tenant (acme) leaves state on the one backend of the pool
(pool_size = 1 forces sharing); an innocent tenant (globex) then uses that backend with
unchanged application SQL and must see only its own rows and its own settings, and its
writes must land in its own tenant. Session mode runs with ``server_reset_query = ""``,
so the scrub is the only thing between the two sessions.

What only the guard stops (so not tested here): reading pg_stat_activity of concurrent
backends, LISTEN on a channel another tenant's backend NOTIFYs, the text of the proxy's
own statements in pg_prepared_statements (kept across tenants on purpose), and a forged
tenant setting read by a plain current_setting() policy for the *same* tenant's next
client (the signed context stops that one: tests/integration/test_signed_context.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from proxy.config import TenancyConfig
from tests.proxy_harness import ThreadedProxy, make_config
from tests.support import AppDatabase

pytestmark = pytest.mark.usefixtures("clean_items")

ATTACKER, VICTIM = "acme", "globex"
VICTIM_ROWS = ["globex-item-1", "globex-item-2", "globex-item-3"]


def _start(app_db: AppDatabase, pool_mode: str) -> ThreadedProxy:
    config = make_config(app_db, pool_mode=pool_mode, pool_size=1)
    db = dataclasses.replace(config.databases["app"], server_reset_query="")
    config = dataclasses.replace(config, databases={"app": db},
                                 tenancy=TenancyConfig(guard=False))
    return ThreadedProxy(config).start()


@pytest.fixture(params=["transaction", "session"])
def proxy(request: pytest.FixtureRequest, app_db: AppDatabase) -> Iterator[ThreadedProxy]:
    proxy = _start(app_db, request.param)
    yield proxy
    proxy.stop()


@pytest.fixture
def tx_proxy(app_db: AppDatabase) -> Iterator[ThreadedProxy]:
    """Transaction mode only: state that a session-mode backend never shares mid-session."""
    proxy = _start(app_db, "transaction")
    yield proxy
    proxy.stop()


def connect(proxy: ThreadedProxy, tenant: str, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(tenant), autocommit=True, **kw)


def as_tenant(proxy: ThreadedProxy, tenant: str, *statements: str) -> None:
    """Run ``statements`` in one session of ``tenant`` and leave (session mode hands the
    backend over only when the session ends)."""
    with connect(proxy, tenant) as conn:
        for sql in statements:
            conn.execute(sql)


def victim_names(proxy: ThreadedProxy) -> list[str]:
    with connect(proxy, VICTIM) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM items ORDER BY name")]


def superuser(app_db: AppDatabase, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(app_db.superuser_dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def only_backend(proxy: ThreadedProxy) -> int:
    assert proxy.app is not None
    pids = proxy.call(lambda: [s.backend_pid for p in proxy.app.pools.values()  # type: ignore[union-attr]
                               for s in (*p.idle, *p.active)])
    assert len(pids) == 1
    return pids[0]


def test_temp_view_named_like_an_app_table_is_gone_for_the_next_tenant(
        proxy: ThreadedProxy) -> None:
    as_tenant(
        proxy, ATTACKER,
        "CREATE TEMP TABLE loot (tenant_id text, name text)",
        "CREATE FUNCTION pg_temp.grab(t text, n text) RETURNS boolean LANGUAGE sql "
        "AS $$ INSERT INTO pg_temp.loot VALUES (t, n); SELECT true $$",
        "CREATE TEMP VIEW items AS SELECT * FROM public.items WHERE pg_temp.grab(tenant_id, name)",
    )
    assert victim_names(proxy) == VICTIM_ROWS
    with connect(proxy, ATTACKER) as conn:
        assert conn.execute("SELECT to_regclass('pg_temp.loot')").fetchone() == (None,)
        assert conn.execute("SELECT to_regclass('pg_temp.items')").fetchone() == (None,)


def test_temp_table_named_like_an_app_table_does_not_capture_the_next_tenants_insert(
        proxy: ThreadedProxy, app_db: AppDatabase) -> None:
    as_tenant(proxy, ATTACKER,
              "CREATE TEMP TABLE items (id int, tenant_id text, name text, created_at timestamptz)")
    with connect(proxy, VICTIM) as conn:
        conn.execute("INSERT INTO items (name) VALUES ('globex-new')")
    rows = superuser(app_db, "SELECT tenant_id FROM public.items WHERE name = 'globex-new'")
    assert rows == [(VICTIM,)]
    assert "globex-new" in victim_names(proxy)


def test_search_path_set_with_set_config_does_not_follow_the_backend(
        proxy: ThreadedProxy, app_db: AppDatabase) -> None:
    superuser(app_db, "CREATE SCHEMA IF NOT EXISTS trap")
    superuser(app_db, "CREATE TABLE IF NOT EXISTS trap.items "
                      "(id serial, tenant_id text, name text, created_at timestamptz)")
    superuser(app_db, f'GRANT USAGE ON SCHEMA trap TO "{app_db.user}"')
    superuser(app_db, f'GRANT ALL ON trap.items TO "{app_db.user}"')
    superuser(app_db, f'GRANT ALL ON SEQUENCE trap.items_id_seq TO "{app_db.user}"')
    superuser(app_db, "TRUNCATE trap.items")
    as_tenant(proxy, ATTACKER, "SELECT set_config('search_path', 'trap, public', false)")
    with connect(proxy, VICTIM) as conn:
        conn.execute("INSERT INTO items (name) VALUES ('globex-routed')")
    assert superuser(app_db, "SELECT count(*) FROM trap.items") == [(0,)]
    assert "globex-routed" in victim_names(proxy)


@pytest.mark.parametrize("setter", [
    "SET DateStyle = 'German'",
    "SELECT set_config('DateStyle', 'German', false)",
])
def test_datestyle_left_behind_does_not_break_the_next_tenants_driver(
        proxy: ThreadedProxy, setter: str) -> None:
    as_tenant(proxy, ATTACKER, setter, "SELECT 1")
    with connect(proxy, VICTIM) as conn:
        value = conn.execute("SELECT '2024-05-06 07:08:09+00'::timestamptz").fetchone()
        assert value is not None and value[0].year == 2024
        assert conn.execute("SHOW DateStyle").fetchone() == ("ISO, MDY",)


def test_default_transaction_read_only_does_not_follow_the_backend(
        proxy: ThreadedProxy) -> None:
    as_tenant(proxy, ATTACKER,
              "SELECT set_config('default_transaction_read_only', 'on', false)")
    with connect(proxy, VICTIM) as conn:
        conn.execute("INSERT INTO items (name) VALUES ('globex-writes')")
    assert "globex-writes" in victim_names(proxy)


def test_with_hold_cursor_of_another_tenant_cannot_be_fetched(proxy: ThreadedProxy) -> None:
    as_tenant(proxy, VICTIM, "DECLARE victim_cur CURSOR WITH HOLD FOR SELECT name FROM items")
    with connect(proxy, ATTACKER) as conn, pytest.raises(psycopg.errors.InvalidCursorName):
        conn.execute("FETCH ALL FROM victim_cur")


def test_session_advisory_lock_is_released_before_another_tenant(
        proxy: ThreadedProxy, app_db: AppDatabase) -> None:
    as_tenant(proxy, ATTACKER, "SELECT pg_advisory_lock(424242)")
    as_tenant(proxy, VICTIM, "SELECT 1")
    held = superuser(app_db, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                             "AND objid = 424242")
    assert held == [(0,)]


def test_sql_prepared_statements_of_another_tenant_are_gone(proxy: ThreadedProxy) -> None:
    as_tenant(proxy, VICTIM,
              "PREPARE victim_stmt AS SELECT name FROM items WHERE name <> 'secret-literal'")
    with connect(proxy, ATTACKER) as conn:
        assert conn.execute("SELECT count(*) FROM pg_prepared_statements WHERE from_sql"
                            ).fetchone() == (0,)
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            conn.execute("EXECUTE victim_stmt")


def test_listen_left_behind_receives_nothing_of_the_next_tenant(
        tx_proxy: ThreadedProxy, app_db: AppDatabase) -> None:
    proxy = tx_proxy
    # The victim listens, then its backend goes to the attacker, while a notification for
    # the victim's channel is sent: the attacker's client must not receive it.
    with connect(proxy, VICTIM) as victim:
        victim.execute("LISTEN victim_channel")
    got: list[str] = []
    with connect(proxy, ATTACKER) as conn:
        conn.add_notify_handler(lambda n: got.append(n.payload))
        conn.autocommit = False
        conn.execute("SELECT 1")   # the attacker holds the backend now
        superuser(app_db, "NOTIFY victim_channel, 'globex-secret'")
        conn.commit()              # notifications are delivered at the end of a transaction
        conn.execute("SELECT 1")
        conn.commit()
    assert got == []


def test_prepared_statement_hijack_runs_the_victims_own_sql(tx_proxy: ThreadedProxy) -> None:
    proxy = tx_proxy
    sql = "SELECT name FROM items WHERE id > %s ORDER BY name"
    with psycopg.connect(proxy.dsn(VICTIM), autocommit=True, prepare_threshold=0) as victim:
        assert [r[0] for r in victim.execute(sql, (0,))] == VICTIM_ROWS
        with connect(proxy, ATTACKER) as conn:
            names = [r[0] for r in conn.execute(
                "SELECT name FROM pg_prepared_statements WHERE NOT from_sql")]
            assert names, "the proxy's statement should be on the shared backend"
            for name in names:
                # Refused: not the attacker's statement (proxy/backend/prepared.py), and
                # the name is taken on the backend.
                with pytest.raises(psycopg.errors.InvalidSqlStatementName):
                    conn.execute(f'DEALLOCATE "{name}"')
                with pytest.raises(psycopg.Error):
                    conn.execute(f'PREPARE "{name}"(bigint) AS '
                                 "SELECT 'hijacked-' || $1::text AS name")
        assert [r[0] for r in victim.execute(sql, (0,))] == VICTIM_ROWS
        assert [r[0] for r in victim.execute(sql, (4,))] == VICTIM_ROWS[1:]


def test_scrub_runs_once_per_switch_and_not_for_the_same_tenant(proxy: ThreadedProxy) -> None:
    def scrubs() -> int:
        assert proxy.app is not None
        return proxy.call(lambda: sum(s.scrubs for p in proxy.app.pools.values()  # type: ignore[union-attr]
                                      for s in (*p.idle, *p.active)))

    as_tenant(proxy, ATTACKER, "SELECT 1")
    before = scrubs()
    as_tenant(proxy, ATTACKER, "SELECT 1")
    assert scrubs() == before
    as_tenant(proxy, VICTIM, "SELECT 1")
    assert scrubs() == before + 1
    only_backend(proxy)

