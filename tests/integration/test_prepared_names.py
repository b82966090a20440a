"""Named prepared statements in transaction mode: a client can never reach a statement
the proxy named (another client's, maybe another tenant's), and an unknown or failed name
answers as PostgreSQL would.

The proxy renames every client statement to one of its own per server connection
(proxy/backend/prepared.py). Tests that play the attacker (reading pg_prepared_statements,
running a DO block) start the proxy with the SQL guard off: this layer must hold alone.
With it on, the guard refuses those statements first
(tests/integration/test_statement_policy.py).
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from proxy.backend import statements as prepared
from proxy.wire import messages
from tests.integration.prepared_wire import Start, error, proxy_names, run, status, tags
from tests.proxy_harness import ThreadedProxy

pytestmark = pytest.mark.usefixtures("clean_items")

# ---- proxy-owned names are untouchable -------------------------------------------------


def test_proxy_statement_names_are_unguessable(unguarded: ThreadedProxy, wire: Any) -> None:
    proxy = unguarded
    w = wire(proxy)
    w.send(messages.parse("s1", "SELECT 1"), messages.sync())
    (name,) = proxy_names(w)
    assert name.startswith("pgtenant_") and name.startswith(prepared.PREFIX)
    assert len(prepared.PREFIX) == len("pgtenant_") + 16 + 1


def test_client_cannot_bind_another_clients_statement(unguarded: ThreadedProxy, wire: Any) -> None:
    proxy = unguarded
    victim, attacker = wire(proxy, "globex"), wire(proxy, "acme")
    victim.send(messages.parse("v", "SELECT 'globex secret statement'"), messages.sync())
    (name,) = proxy_names(attacker)
    # At the start of a batch and in the middle of one: never run, 26000 with the name
    # the client used, and the rest of the batch skipped as PostgreSQL does.
    replies = attacker.send(run(name))
    assert tags(replies) == "EZ"
    assert error(replies)["C"] == "26000"
    assert error(replies)["M"] == f'prepared statement "{name}" does not exist'
    replies = attacker.send(
        messages.parse("a", "SELECT 'mine'"), messages.bind("", "a", []), messages.execute(),
        messages.bind("", name, []), messages.execute(),
        messages.describe(b"S", "a"), messages.sync())
    assert tags(replies) == "12DCEZ"
    assert b"mine" in replies[2][1]
    assert error(replies)["M"] == f'prepared statement "{name}" does not exist'
    replies = attacker.send(messages.describe(b"S", name), messages.sync())
    assert tags(replies) == "EZ" and error(replies)["C"] == "26000"
    # The victim's statement is intact.
    replies = victim.send(run("v"))
    assert tags(replies) == "2DCZ" and b"globex secret statement" in replies[1][1]


def test_sql_deallocate_cannot_drop_the_proxys_statements(unguarded: ThreadedProxy,
                                                          wire: Any) -> None:
    proxy = unguarded
    victim, attacker = wire(proxy, "globex"), wire(proxy, "acme")
    victim.send(messages.parse("v", "SELECT 42"), messages.sync())
    (name,) = proxy_names(attacker)
    for sql in (f"DEALLOCATE {name}", f'DEALLOCATE PREPARE "{name}"',
                f"DEALLOCATE {name.upper()}"):
        replies = attacker.send(messages.query(sql))
        assert tags(replies) == "EZ"
        assert error(replies)["M"] == f'prepared statement "{name}" does not exist'
    replies = attacker.send(messages.query(f"SELECT 1; DEALLOCATE {name}"))
    assert tags(replies) == "EZ" and error(replies)["C"] == "0A000"
    assert proxy_names(attacker) == [name]
    assert tags(victim.send(run("v"))) == "2DCZ"


def test_a_statement_dropped_behind_the_proxys_back_is_prepared_again(unguarded: ThreadedProxy,
                                                                      wire: Any) -> None:
    # Same tenant: no scrub between the two (a tenant switch would re-check them all).
    proxy = unguarded
    victim, other = wire(proxy, "globex"), wire(proxy, "globex")
    victim.send(messages.parse("v", "SELECT 42"), messages.sync())
    other.send(messages.query("DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$"))
    # One failure (PostgreSQL's own words), then the proxy prepares it again.
    assert error(victim.send(run("v")))["C"] == "26000"
    assert tags(victim.send(run("v"))) == "2DCZ"


def test_a_name_whose_parse_failed_can_be_prepared(start_proxy: Start, wire: Any) -> None:
    # pgx names statements by a hash of their text: a retry reuses the name.
    proxy = start_proxy(pool_mode="transaction", pool_size=1)
    w = wire(proxy)
    replies = w.send(messages.parse("h", "SELECT * FROM not_yet_created"), messages.sync())
    assert error(replies)["C"] == "42P01"
    assert tags(w.send(messages.parse("h", "SELECT 7"), messages.sync())) == "1Z"
    assert b"7" in w.send(run("h"))[1][1]


def test_unknown_statement_aborts_the_transaction_like_postgresql(start_proxy: Start,
                                                                  wire: Any,
                                                                  app_db: Any) -> None:
    proxy = start_proxy(pool_mode="transaction", pool_size=1)
    w = wire(proxy)
    assert status(w.send(messages.query("BEGIN"))) == b"T"
    replies = w.send(run("nope"))
    assert tags(replies) == "EZ" and status(replies) == b"E"
    # Same for a Parse of a name the client already has (42P05).
    w.send(messages.query("ROLLBACK; BEGIN"))
    w.send(messages.parse("s", "SELECT 1"), messages.sync())
    replies = w.send(messages.parse("s", "SELECT 2"), messages.sync())
    assert error(replies)["C"] == "42P05" and status(replies) == b"E"
    # A Parse in the failed transaction, of a text the server already has ("s").
    replies = w.send(messages.parse("mine", "SELECT 1"), messages.sync())
    assert error(replies)["C"] == "25P02" and status(replies) == b"E"
    assert status(w.send(messages.query("ROLLBACK"))) == b"I"
    assert tags(w.send(messages.parse("mine", "SELECT 1"), messages.sync())) == "1Z"
    # PostgreSQL itself, for comparison.
    with psycopg.connect(app_db.upstream_dsn) as direct:
        pgconn = direct.pgconn
        pgconn.exec_(b"BEGIN")
        result = pgconn.exec_prepared(b"nope", [])
        assert result.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"26000"
        assert pgconn.transaction_status == psycopg.pq.TransactionStatus.INERROR


