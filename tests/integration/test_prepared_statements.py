"""Named prepared statements in transaction mode: what PostgreSQL itself would answer.

The proxy renames every client statement to one of its own per server connection
(proxy/backend/prepared.py). These tests hold it to three promises: a client can never
reach a statement the proxy named (another client's, maybe another tenant's); DEALLOCATE
answers exactly as PostgreSQL; and a statement prepared again on another server after a
schema change never hands a client rows it would decode with a stale description.

Tests that play the attacker (reading pg_prepared_statements, running a DO block) start
the proxy with the SQL guard off: this layer must hold alone. With it on, the guard
refuses those statements first (tests/integration/test_statement_policy.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from proxy.backend import statements as prepared
from proxy.config import TenancyConfig
from proxy.wire import authentication, messages
from tests.proxy_harness import ThreadedProxy, make_config, token

pytestmark = pytest.mark.usefixtures("clean_items")

Start = Callable[..., ThreadedProxy]
Replies = list[tuple[bytes, bytes]]


class Wire:
    """A client speaking the protocol by hand, to see every message the proxy sends."""

    def __init__(self, proxy: ThreadedProxy, tenant: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        self.sock.sendall(messages.startup_message({"user": "u", "database": "app"}))
        self.until(b"R")
        self.sock.sendall(authentication.password_message(token(tenant).encode() + b"\0"))
        self.until(b"Z")

    def send(self, *parts: bytes) -> Replies:
        """Send messages ending in Sync or Query; return the replies up to ReadyForQuery."""
        self.sock.sendall(b"".join(parts))
        return self.until(b"Z")

    def until(self, last: bytes) -> Replies:
        out = []
        while True:
            header = self._exact(5)
            body = self._exact(int.from_bytes(header[1:], "big") - 4)
            if header[:1] not in (b"N", b"S"):
                out.append((header[:1], body))
            if header[:1] == last:
                return out

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def unguarded(app_db: Any) -> Iterator[ThreadedProxy]:
    """Transaction mode on one server connection, SQL guard off."""
    config = make_config(app_db, pool_mode="transaction", pool_size=1)
    proxy = ThreadedProxy(dataclasses.replace(config, tenancy=TenancyConfig(guard=False)))
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture
def wire(start_proxy: Start) -> Iterator[Callable[..., Wire]]:
    opened: list[Wire] = []

    def open_wire(proxy: ThreadedProxy, tenant: str = "acme") -> Wire:
        w = Wire(proxy, tenant)
        opened.append(w)
        return w

    yield open_wire
    for w in opened:
        w.close()


def tags(replies: Replies) -> str:
    return "".join(t.decode() for t, _ in replies)


def error(replies: Replies) -> dict[str, str]:
    (body,) = [b for t, b in replies if t == b"E"]
    return messages.decode_error_fields(body)


def status(replies: Replies) -> bytes:
    assert replies[-1][0] == b"Z"
    return replies[-1][1]


def run(name: str) -> bytes:
    return messages.bind("", name, []) + messages.execute() + messages.sync()


def proxy_names(w: Wire) -> list[str]:
    """What an attacker reads on a shared backend: the proxy's statement names."""
    replies = w.send(messages.query("SELECT name FROM pg_prepared_statements"))
    return [body[6:].decode() for t, body in replies if t == b"D"]


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


# ---- stale statements after DDL --------------------------------------------------------


@pytest.fixture
def table_t(superuser_conn: psycopg.Connection[Any], app_db: Any) -> psycopg.Connection[Any]:
    superuser_conn.execute("DROP TABLE IF EXISTS t")
    superuser_conn.execute("CREATE TABLE t (secret int, public int)")
    superuser_conn.execute("INSERT INTO t VALUES (111, 222)")
    superuser_conn.execute(f"GRANT SELECT ON t TO {app_db.user}")
    return superuser_conn


def _change_t(conn: psycopg.Connection[Any]) -> None:
    """Same column count, other names: the form that used to give silently wrong data."""
    conn.execute("ALTER TABLE t DROP COLUMN secret")
    conn.execute("ALTER TABLE t ADD COLUMN extra int")
    conn.execute("UPDATE t SET extra = 333")


def _servers_with(proxy: ThreadedProxy, text: str) -> int:
    def count() -> int:
        assert proxy.app is not None
        pool = proxy.app.pools["app"]
        return sum(any(text.encode() in key for key in server.statements.by_key)
                   for server in [*pool.idle, *pool.kept, *pool.active])
    return proxy.call(count)


def _on_the_other_server(proxy: ThreadedProxy, tenant: str) -> Any:
    """Hold one of the two server connections in a transaction (then give it back), so
    the next statement runs on the other one."""
    holder = psycopg.connect(proxy.dsn(tenant))
    holder.execute("SELECT 1")
    return holder


def _asyncpg_across_ddl(proxy: ThreadedProxy, query: str, ddl: Callable[[], object],
                        fetch: str = "fetchrow") -> list[Any]:
    """Run ``query`` once on one server connection, ``ddl``, then 4 more times, the first
    on the other connection (the one freed last): asyncpg decodes with what it was told
    the first time unless it re-prepares."""
    async def main() -> list[Any]:
        conn = await asyncpg.connect(proxy.dsn("acme"), ssl=False)
        run = getattr(conn, fetch)
        try:
            holder = _on_the_other_server(proxy, "acme")
            first = await run(query)
            holder.commit()
            # Both servers back to the idle list (nobody waits, so each client had kept
            # its own): the holder's is the most recent, the next lease takes it.
            proxy.call(proxy.app.pools["app"].reclaim_kept)  # type: ignore[union-attr]
            ddl()
            after = [await run(query) for _ in range(4)]
            holder.close()
            return [first, *after]
        finally:
            await conn.close()

    return asyncio.run(main())


def test_asyncpg_reprepares_after_ddl_on_another_server(start_proxy: Start,
                                                        table_t: Any) -> None:
    proxy = start_proxy(pool_mode="transaction", pool_size=2)
    rows = [dict(r) for r in _asyncpg_across_ddl(proxy, "SELECT * FROM t",
                                                 lambda: _change_t(table_t))]
    assert rows[0] == {"secret": 111, "public": 222}
    assert rows[1:] == [{"public": 222, "extra": 333}] * 4
    assert _servers_with(proxy, "SELECT * FROM t") == 2


def test_asyncpg_type_change_after_ddl(start_proxy: Start, table_t: Any) -> None:
    # A column's type changes (the ProtocolError / "insufficient data" form).
    proxy = start_proxy(pool_mode="transaction", pool_size=2)
    values = _asyncpg_across_ddl(
        proxy, "SELECT public FROM t",
        lambda: table_t.execute("ALTER TABLE t ALTER COLUMN public TYPE text"), "fetchval")
    assert values == [222, "222", "222", "222", "222"]


def test_asyncpg_after_a_type_is_dropped_and_created_again(start_proxy: Start,
                                                          superuser_conn: Any,
                                                          app_db: Any) -> None:
    # The type OID the client decodes with no longer exists (the "cache lookup failed for
    # type" form): asyncpg re-prepares and introspects the new type.
    def create(values: str, row: str) -> None:
        superuser_conn.execute("DROP TABLE IF EXISTS t3")
        superuser_conn.execute("DROP TYPE IF EXISTS mood")
        superuser_conn.execute(f"CREATE TYPE mood AS ENUM ({values})")
        superuser_conn.execute("CREATE TABLE t3 (m mood)")
        superuser_conn.execute(f"INSERT INTO t3 VALUES ('{row}')")
        superuser_conn.execute(f"GRANT SELECT ON t3 TO {app_db.user}")

    create("'sad', 'happy'", "happy")
    proxy = start_proxy(pool_mode="transaction", pool_size=2)
    values = _asyncpg_across_ddl(proxy, "SELECT m FROM t3",
                                 lambda: create("'ok', 'sad', 'happy'", "ok"), "fetchval")
    assert values == ["happy", "ok", "ok", "ok", "ok"]


def test_asyncpg_prepared_statement_object_gets_0A000(start_proxy: Start,
                                                      table_t: Any) -> None:
    # An explicit prepared statement cannot be re-prepared for the client: it gets the
    # error PostgreSQL gives, never rows under the old column names.
    proxy = start_proxy(pool_mode="transaction", pool_size=2)

    async def main() -> None:
        conn = await asyncpg.connect(proxy.dsn("acme"), ssl=False)
        try:
            holder = _on_the_other_server(proxy, "acme")
            stmt = await conn.prepare("SELECT * FROM t")
            assert dict(await stmt.fetchrow()) == {"secret": 111, "public": 222}
            holder.commit()
            _change_t(table_t)
            with pytest.raises(asyncpg.exceptions.InvalidCachedStatementError):
                await stmt.fetchrow()
            holder.close()
            fresh = await conn.prepare("SELECT * FROM t")
            for _ in range(4):
                assert dict(await fresh.fetchrow()) == {"public": 222, "extra": 333}
        finally:
            await conn.close()

    asyncio.run(main())


def test_asyncpg_after_its_table_is_dropped(start_proxy: Start, table_t: Any) -> None:
    # The proxy's own prepare fails inside the client's transaction: the client gets
    # PostgreSQL's error for it, as it would on its own connection.
    proxy = start_proxy(pool_mode="transaction", pool_size=2)

    async def main() -> None:
        conn = await asyncpg.connect(proxy.dsn("acme"), ssl=False)
        try:
            holder = _on_the_other_server(proxy, "acme")
            await conn.fetchrow("SELECT * FROM t")
            holder.commit()
            table_t.execute("DROP TABLE t")
            with pytest.raises(asyncpg.UndefinedTableError):
                async with conn.transaction():
                    await conn.fetchrow("SELECT * FROM t")
            holder.close()
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()

    asyncio.run(main())


def test_psycopg_after_ddl_on_another_server(start_proxy: Start, table_t: Any) -> None:
    proxy = start_proxy(pool_mode="transaction", pool_size=2)
    with psycopg.connect(proxy.dsn("acme"), prepare_threshold=0, autocommit=True) as conn:
        holder = _on_the_other_server(proxy, "acme")
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        assert cur.execute("SELECT * FROM t").fetchone() == {"secret": 111, "public": 222}
        holder.commit()
        _change_t(table_t)
        got = []
        for _ in range(4):
            try:
                got.append(cur.execute("SELECT * FROM t").fetchone())
            except psycopg.errors.FeatureNotSupported as exc:
                assert str(exc) == "cached plan must not change result type"
        holder.close()
    assert got
    assert all(row == {"public": 222, "extra": 333} for row in got)


def test_ddl_through_the_proxy_makes_every_statement_fresh(unguarded: ThreadedProxy) -> None:
    """psycopg re-prepares after DDL and expects the new shape without an error, as it gets
    directly (psycopg's test_alter_table_clears_state): the proxy's shared statement of the
    same text must not be reused after an ALTER seen through the proxy."""
    with psycopg.connect(unguarded.dsn("acme"), autocommit=True, prepare_threshold=0) as conn:
        conn.execute("CREATE TEMP TABLE altered (id serial PRIMARY KEY, data text)")
        conn.execute("INSERT INTO altered (data) VALUES (%s)", ["foo"])
        query = "SELECT * FROM altered ORDER BY id"
        assert [r[1] for r in conn.execute(query)] == ["foo"]
        conn.execute("ALTER TABLE altered ADD data2 text")
        conn.execute("INSERT INTO altered (data) VALUES (%s)", ["bar"])
        assert [r[1:] for r in conn.execute(query)] == [("foo", None), ("bar", None)]
