"""DEALLOCATE of named prepared statements in transaction mode answers exactly as
PostgreSQL would (one CommandComplete, its transaction rules, over Query and the extended
protocol) and never drops the statements the proxy keeps for other clients.

Tests that read pg_prepared_statements start the proxy with the SQL guard off
(the ``unguarded`` fixture): this layer must hold alone.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from proxy.wire import messages
from tests.integration.prepared_wire import (
    Replies,
    Start,
    error,
    proxy_names,
    run,
    status,
    tags,
)
from tests.proxy_harness import ThreadedProxy

pytestmark = pytest.mark.usefixtures("clean_items")

# ---- DEALLOCATE ------------------------------------------------------------------------


@pytest.mark.parametrize("sql", ["DEALLOCATE s1", "deallocate prepare S1;",
                                 '  DEALLOCATE "s1"  '])
def test_deallocate_answers_one_command_complete(unguarded: ThreadedProxy, wire: Any,
                                                 sql: str) -> None:
    proxy = unguarded
    w = wire(proxy)
    w.send(messages.parse("s1", "SELECT 1"), messages.sync())
    replies = w.send(messages.query(sql))
    assert replies == [(b"C", b"DEALLOCATE\0"), (b"Z", b"I")]
    replies = w.send(messages.query(sql))
    assert tags(replies) == "EZ"
    assert error(replies)["M"] == 'prepared statement "s1" does not exist'
    # The name is free again, and the server kept its statement for others.
    assert tags(w.send(messages.parse("s1", "SELECT 1"), messages.sync())) == "1Z"
    assert len(proxy_names(w)) == 1


def test_deallocate_keeps_postgresql_transaction_semantics(start_proxy: Start,
                                                           wire: Any) -> None:
    proxy = start_proxy(pool_mode="transaction", pool_size=1)
    w = wire(proxy)
    w.send(messages.parse("s1", "SELECT 1"), messages.parse("s2", "SELECT 2"),
           messages.sync())
    w.send(messages.query("BEGIN"))
    assert w.send(messages.query("DEALLOCATE s1")) == [(b"C", b"DEALLOCATE\0"), (b"Z", b"T")]
    w.send(messages.query("SELECT 1/0"))
    # In an aborted transaction PostgreSQL refuses, and the statement stays.
    replies = w.send(messages.query("DEALLOCATE s2"))
    assert tags(replies) == "EZ" and error(replies)["C"] == "25P02" and status(replies) == b"E"
    replies = w.send(messages.query("DEALLOCATE ALL"))
    assert error(replies)["C"] == "25P02"
    w.send(messages.query("ROLLBACK"))
    assert tags(w.send(run("s2"))) == "2DCZ"
    assert tags(w.send(run("s1"))) == "EZ"


def test_deallocate_all_forgets_only_the_clients_statements(unguarded: ThreadedProxy,
                                                            wire: Any) -> None:
    proxy = unguarded
    mine, other = wire(proxy), wire(proxy, "globex")
    mine.send(messages.parse("a", "SELECT 'a'"), messages.sync())
    other.send(messages.parse("b", "SELECT 'b'"), messages.sync())
    assert mine.send(messages.query("DEALLOCATE ALL")) == [
        (b"C", b"DEALLOCATE ALL\0"), (b"Z", b"I")]
    assert tags(mine.send(run("a"))) == "EZ"
    assert len(proxy_names(other)) == 2
    assert tags(other.send(run("b"))) == "2DCZ"


def test_deallocate_through_the_extended_protocol(unguarded: ThreadedProxy, wire: Any) -> None:
    # What libpq's PQsendQueryParams("DEALLOCATE name") sends (psycopg in pipeline mode).
    proxy = unguarded
    w = wire(proxy)

    def deallocate(sql: str) -> Replies:
        return w.send(messages.parse("", sql), messages.bind("", "", []),
                      messages.describe(b"P", ""), messages.execute(), messages.sync())

    w.send(messages.parse("s1", "SELECT 1"), messages.parse("s2", "SELECT 2"),
           messages.sync())
    replies = deallocate("DEALLOCATE s1")
    assert replies == [(b"1", b""), (b"2", b""), (b"n", b""), (b"C", b"DEALLOCATE\0"),
                       (b"Z", b"I")]
    replies = deallocate("deallocate s1")
    assert tags(replies) == "12nEZ"
    assert error(replies)["M"] == 'prepared statement "s1" does not exist'
    assert deallocate("DEALLOCATE ALL")[3] == (b"C", b"DEALLOCATE ALL\0")
    assert tags(w.send(run("s2"))) == "EZ"
    names = proxy_names(w)
    assert len(names) == 2  # the server keeps them for other clients
    replies = deallocate(f"/* hidden */ DEALLOCATE {names[0]}")
    assert error(replies)["C"] == "0A000"
    assert proxy_names(w) == names


def test_queries_that_only_mention_deallocate_pass(start_proxy: Start, wire: Any) -> None:
    proxy = start_proxy(pool_mode="transaction", pool_size=1)
    w = wire(proxy)
    replies = w.send(messages.query("SELECT 'deallocate s1' AS deallocate"))
    assert tags(replies) == "TDCZ"


def test_psycopg_evicting_with_deallocate(start_proxy: Start,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # psycopg on libpq < 17 evicts statements beyond prepared_max with DEALLOCATE name and
    # insists on exactly one result (psycopg's test_evict_lru_deallocate).
    from psycopg import _connection_base

    monkeypatch.setattr(_connection_base, "_HAS_SEND_CLOSE", False)
    proxy = start_proxy(pool_mode="transaction", pool_size=2)
    with psycopg.connect(proxy.dsn("acme"), prepare_threshold=0, autocommit=True) as conn:
        conn.prepared_max = 2
        for i in range(8):
            assert conn.execute(f"SELECT {i}, tenant_id FROM items LIMIT 1").fetchone() == (
                i, "acme")
        with conn.transaction():
            for i in range(8, 12):
                conn.execute(f"SELECT {i}").fetchone()
        conn.execute("DEALLOCATE ALL")
        assert conn.execute("SELECT %s::int", (7,)).fetchone() == (7,)
        with conn.pipeline():
            curs = [conn.execute(f"SELECT {i} + %s", (i,)) for i in range(6)]
        assert [cur.fetchone() for cur in curs] == [(2 * i,) for i in range(6)]

