"""The guard's Query cache through real clients: bytes one client may send stay refused
for another that may not.

One proxy serves the same database in both pool modes (``app``: transaction,
``app_session``: session), so every client below shares one Guard and its Query cache.
Queries go through psycopg's ClientCursor (the simple Query protocol) and psql.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.proxy_harness import ThreadedProxy, make_config

pytestmark = pytest.mark.usefixtures("clean_items")

WHO_AM_I = ("SELECT current_setting('app.current_tenant'), "
            "(SELECT string_agg(DISTINCT tenant_id, ',') FROM items)")


@pytest.fixture
def both_modes(app_db: Any) -> Iterator[ThreadedProxy]:
    config = make_config(app_db, pool_mode="transaction")
    app = config.databases["app"]
    session = dataclasses.replace(app, name="app_session", pool_mode="session")
    proxy = ThreadedProxy(dataclasses.replace(
        config, databases={"app": app, "app_session": session})).start()
    yield proxy
    proxy.stop()


def simple(conn: psycopg.Connection[Any], sql: str) -> list[tuple[Any, ...]]:
    with psycopg.ClientCursor(conn) as cur:  # the simple Query protocol
        cur.execute(sql)
        return cur.fetchall() if cur.description else []


def test_tenant_switch_allowed_for_its_owner_stays_refused_for_another(
        both_modes: ThreadedProxy) -> None:
    proxy = both_modes
    for dbname in ("app", "app_session"):
        with psycopg.connect(proxy.dsn("acme", dbname=dbname), autocommit=True) as acme, \
                psycopg.connect(proxy.dsn("globex", dbname=dbname), autocommit=True) as globex:
            for sql in ("SET app.current_tenant = 'acme'",
                        "SELECT set_config('app.current_tenant', 'acme', false)"):
                simple(acme, sql)
                for _ in range(3):   # the bytes are in the cache now: every time refused
                    with pytest.raises(psycopg.errors.InsufficientPrivilege):
                        simple(globex, sql)
                    assert simple(globex, WHO_AM_I) == [("globex", "globex")]
                simple(acme, sql)
                assert simple(acme, WHO_AM_I) == [("acme", "acme")]
    app = proxy.app
    assert app is not None
    violations = proxy.call(lambda: dict(app.stats.tenants.get("globex").violations))
    assert sum(violations.values()) == 12   # counted on every hit
    assert proxy.call(lambda: dict(app.stats.tenants.get("acme").violations)) == {}


def test_statement_allowed_in_session_mode_stays_refused_in_transaction_mode(
        both_modes: ThreadedProxy) -> None:
    proxy = both_modes
    with psycopg.connect(proxy.dsn("acme", dbname="app_session"), autocommit=True) as session, \
            psycopg.connect(proxy.dsn("acme"), autocommit=True) as transaction:
        for _ in range(2):
            simple(session, "PREPARE cached_p AS SELECT 1")
            simple(session, "DEALLOCATE cached_p")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                simple(transaction, "PREPARE cached_p AS SELECT 1")
            assert simple(transaction, WHO_AM_I) == [("acme", "acme")]


def test_refused_query_repeated_through_psql_is_refused_every_time(
        both_modes: ThreadedProxy) -> None:
    attack = "SET app.current_tenant = 'globex';\n"
    script = attack * 3 + WHO_AM_I + ";\n"
    done = subprocess.run(["psql", both_modes.dsn("acme"), "-XAt", "-f", "-"], input=script,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.stderr.count("permission denied") == 3, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "acme|acme"
