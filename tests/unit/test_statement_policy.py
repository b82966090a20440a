"""The statement policy: tenant clients run what a request path needs, nothing else.

Tables of allowed and refused statements with the refusal kind (metrics count by kind),
for both pool modes and both protocol paths (Query and Parse); the configuration keys
that relax it; bypass identities keeping their rules; the message-stream side (SQL
EXECUTE checked like Bind, the settings-change signal); and property tests that nothing
outside the allow-list passes and that the pre-filter never skips what would be refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast.parser import ParseError, parse_sql_json

from proxy.config import ConfigError, TenancyConfig, parse_config
from proxy.frontend.guarding import StreamGuard
from proxy.guard import (
    CLEAN,
    REFUSAL_KINDS,
    BindRule,
    Execute,
    Guard,
    Prepare,
    Refusal,
    needs_inspection,
)
from proxy.wire import messages
from proxy.wire.framing import split_frames

OWN = "acme"
GUARD = Guard(TenancyConfig())
MODES = [False, True]  # transaction_mode


def verdicts(sql: str, tenant: str | None = OWN) -> list[Refusal | BindRule | None]:
    """Query and Parse verdicts in session and transaction mode."""
    out: list[Refusal | BindRule | None] = []
    for mode in MODES:
        out.append(GUARD.check_query(sql, tenant, transaction_mode=mode))
        out.append(GUARD.check_parse(sql, tenant, transaction_mode=mode))
    return out


# ---- allowed in both pool modes -------------------------------------------------------

ALLOWED = [
    "SELECT * FROM items WHERE id = $1",
    "select 1",
    "VALUES (1), (2)",
    "TABLE items",
    "INSERT INTO items (name) VALUES ('x') RETURNING id",
    "UPDATE items SET name = 'y' WHERE id = 1",
    "DELETE FROM items WHERE id = 1",
    "MERGE INTO items t USING (VALUES (1)) v(id) ON t.id = v.id WHEN MATCHED THEN DELETE",
    "WITH moved AS (DELETE FROM items WHERE id = 1 RETURNING *) INSERT INTO archive "
    "SELECT * FROM moved",
    "BEGIN", "BEGIN ISOLATION LEVEL SERIALIZABLE", "START TRANSACTION READ ONLY",
    "SAVEPOINT s1", "RELEASE SAVEPOINT s1", "ROLLBACK TO SAVEPOINT s1", "COMMIT",
    "ROLLBACK", "END", "COMMIT AND CHAIN",
    "SHOW search_path", "SHOW ALL",
    "EXPLAIN SELECT * FROM items", "EXPLAIN (ANALYZE, BUFFERS) DELETE FROM items WHERE false",
    "COPY items (name) FROM STDIN", "COPY items TO STDOUT (FORMAT csv)",
    "COPY (SELECT * FROM items) TO STDOUT",
    "DECLARE c CURSOR FOR SELECT * FROM items", "FETCH 10 FROM c", "MOVE NEXT IN c",
    "CLOSE c", "CLOSE ALL",
    "SET search_path TO public", "SET LOCAL statement_timeout = 1000", "RESET ALL",
    "RESET search_path", "DISCARD ALL", "SET app.current_tenant = 'acme'",
    "SELECT set_config('search_path', 'public', false)",
    "DEALLOCATE _pg3_0", "DEALLOCATE PREPARE __asyncpg_stmt_1__", "DEALLOCATE ALL",
    "CREATE TEMP TABLE staging (LIKE items) ON COMMIT DROP",
    "CREATE TEMPORARY TABLE staging (id int, name text NOT NULL) ON COMMIT DROP",
    "LOCK TABLE items IN SHARE MODE",
    "SET CONSTRAINTS ALL DEFERRED",
    "CALL app_procedure(1, 'x')",
    "UNLISTEN *", "UNLISTEN orders",
    "SELECT pg_advisory_xact_lock(42)", "SELECT pg_try_advisory_xact_lock(1, 2)",
    "SELECT pg_advisory_unlock_all()", "SELECT pg_advisory_unlock(42)",
    "SELECT pg_catalog.version()", "SELECT current_setting('app.current_tenant')",
    "SELECT * FROM pg_settings WHERE name = 'search_path'",
    "SELECT t.oid FROM pg_catalog.pg_type t WHERE t.typname = 'hstore'",
    "SELECT pg_sleep(0)", "SELECT pg_backend_pid()", "SELECT now()::pg_catalog.text",
    "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;",  # asyncpg reset
    "SELECT nextval('items_id_seq')",
    "SELECT 'pg_stat_activity'::text",  # a string, not a read
    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",  # no queries or state
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_request_path_statements_are_allowed_in_both_modes(sql: str) -> None:
    assert verdicts(sql) == [None, None, None, None]


# ---- allowed in session mode only -----------------------------------------------------

SESSION_ONLY = [
    ("PREPARE q(int) AS SELECT * FROM items WHERE id = $1", "sql_prepare"),
    ("EXECUTE q(1)", "sql_prepare"),
    ("EXPLAIN ANALYZE EXECUTE q(1)", "sql_prepare"),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM items", "hold_cursor"),
    ("DECLARE c SCROLL CURSOR WITH HOLD FOR SELECT 1", "hold_cursor"),
    ("CREATE TEMP TABLE staging (LIKE items)", "temp_table"),
    ("CREATE TEMP TABLE staging (id int) ON COMMIT DELETE ROWS", "temp_table"),
    ("SELECT pg_advisory_lock(42)", "session_lock"),
    ("SELECT pg_catalog.pg_advisory_lock_shared(1, 2)", "session_lock"),
    ("SELECT pg_try_advisory_lock(42)", "session_lock"),
    ("SELECT 1 FROM items WHERE pg_try_advisory_lock_shared(id)", "session_lock"),
]


@pytest.mark.parametrize(("sql", "kind"), SESSION_ONLY, ids=[s[0][:50] for s in SESSION_ONLY])
def test_state_that_outlives_the_transaction_only_in_session_mode(sql: str, kind: str
                                                                   ) -> None:
    assert GUARD.check_query(sql, OWN) is None
    refusal = GUARD.check_query(sql, OWN, transaction_mode=True)
    assert isinstance(refusal, Refusal)
    assert refusal.kind == kind


# ---- refused in both modes ------------------------------------------------------------

REFUSED = [
    # DDL of every kind, temp objects included
    ("CREATE TEMP VIEW items AS SELECT * FROM items WHERE false", "statement"),
    ("CREATE VIEW v AS SELECT 1", "statement"),
    ("CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "statement"),
    ("CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "statement"),
    ("CREATE RULE r AS ON INSERT TO items DO INSTEAD NOTHING", "statement"),
    ("CREATE TRIGGER t BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION f()",
     "statement"),
    ("CREATE TEMP SEQUENCE s", "statement"),
    ("CREATE TABLE t (a int)", "statement"),
    ("CREATE UNLOGGED TABLE t (a int)", "statement"),
    ("CREATE INDEX ON items (name)", "statement"),
    ("DROP TABLE items", "statement"),
    ("DROP VIEW IF EXISTS pg_temp.items", "statement"),
    ("ALTER TABLE items ADD COLUMN x int", "statement"),
    ("ALTER TABLE items RENAME TO items_old", "statement"),
    ("ALTER FUNCTION f(text, text, bool) RENAME TO set_config", "persist_protected"),
    ("ALTER FUNCTION f() RENAME TO g", "statement"),
    ("COMMENT ON TABLE items IS 'x'", "statement"),
    ("CREATE SCHEMA s", "statement"),
    ("CREATE EXTENSION dblink", "statement"),
    ("IMPORT FOREIGN SCHEMA public FROM SERVER s INTO public", "statement"),
    ("CREATE TABLE t AS SELECT * FROM items", "statement"),
    ("CREATE TEMP TABLE t AS SELECT * FROM items", "statement"),
    ("SELECT * INTO TEMP t FROM items", "statement"),
    ("CREATE MATERIALIZED VIEW mv AS SELECT 1", "statement"),
    ("EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1", "statement"),
    ("CREATE POLICY p ON items USING (true)", "statement"),
    ("ALTER TABLE items DISABLE ROW LEVEL SECURITY", "statement"),
    ("CREATE TEMP TABLE t (a int) INHERITS (items)", "temp_table"),
    ("CREATE TEMP TABLE t (a int, CHECK (a > 0)) ON COMMIT DROP", "temp_table"),
    ("CREATE TEMP TABLE t (a int) PARTITION BY RANGE (a)", "temp_table"),
    # DO
    ("DO $$ BEGIN NULL; END $$", "do"),
    ("DO $$ BEGIN PERFORM set_config('search_path', 'x', false); END $$", "do"),
    # roles, grants, database and system settings
    ("ALTER ROLE CURRENT_USER PASSWORD 'x'", "role_admin"),
    ("ALTER USER CURRENT_USER SET search_path = evil", "role_admin"),
    ("ALTER ROLE app_user SET statement_timeout = 0", "role_admin"),
    ("ALTER DATABASE app SET search_path = evil", "role_admin"),
    ("ALTER DATABASE app RENAME TO other", "statement"),
    ("CREATE ROLE evil", "role_admin"),
    ("DROP ROLE evil", "role_admin"),
    ("GRANT SELECT ON items TO PUBLIC", "role_admin"),
    ("REVOKE ALL ON items FROM app_user", "role_admin"),
    ("GRANT app_admin TO CURRENT_USER", "role_admin"),
    ("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC", "role_admin"),
    ("SECURITY LABEL ON TABLE items IS 'x'", "role_admin"),
    ("REASSIGN OWNED BY a TO b", "role_admin"),
    ("ALTER TABLE items OWNER TO evil", "statement"),
    ("ALTER FUNCTION f() OWNER TO evil", "role_admin"),
    ("ALTER SYSTEM SET work_mem = '1GB'", "alter_system"),
    ("LOAD 'auto_explain'", "load"),
    # maintenance
    ("CHECKPOINT", "maintenance"), ("VACUUM", "maintenance"), ("VACUUM FULL items", "maintenance"),
    ("ANALYZE items", "maintenance"), ("CLUSTER items", "maintenance"),
    ("REINDEX TABLE items", "maintenance"), ("REFRESH MATERIALIZED VIEW mv", "maintenance"),
    # notifications cross tenants
    ("LISTEN orders", "notify"), ("NOTIFY orders, 'x'", "notify"),
    ("SELECT pg_notify('orders', 'x')", "notify"),
    ("SELECT pg_catalog.PG_NOTIFY('orders', 'x')", "notify"),
    # TRUNCATE ignores RLS; server files; two-phase commit
    ("TRUNCATE items", "truncate"), ("TRUNCATE TABLE ONLY items RESTART IDENTITY", "truncate"),
    ("COPY items TO '/tmp/items'", "copy_file"), ("COPY items FROM '/etc/passwd'", "copy_file"),
    ("COPY items TO PROGRAM 'cat'", "copy_program"),
    ("PREPARE TRANSACTION 'x'", "two_phase"), ("COMMIT PREPARED 'x'", "two_phase"),
    ("ROLLBACK PREPARED 'x'", "two_phase"),
    # the proxy's statement names
    ("DEALLOCATE pgtenant_1a2b", "proxy_statement"),
    ("DEALLOCATE PREPARE PGTENANT_x", "proxy_statement"),
    ("EXECUTE pgtenant_1a2b", "proxy_statement"),
    ("PREPARE pgtenant_1a2b AS SELECT 1", "proxy_statement"),
    # signalling other backends
    ("SELECT pg_terminate_backend(42)", "signal_backend"),
    ("SELECT pg_catalog.pg_terminate_backend(pid) FROM items", "signal_backend"),
    ('SELECT "pg_catalog"."pg_cancel_backend"(42)', "signal_backend"),
    ("SELECT PG_CANCEL_BACKEND(42)", "signal_backend"),
    ("SELECT pg_reload_conf()", "signal_backend"),
    ("CALL pg_terminate_backend(42)", "signal_backend"),
    # other sessions: relations and functions, any spelling and position
    ("SELECT * FROM pg_stat_activity", "other_sessions"),
    ("SELECT query FROM pg_catalog.pg_stat_activity", "other_sessions"),
    ('SELECT * FROM "pg_stat_activity"', "other_sessions"),
    ('SELECT * FROM "pg_catalog"."pg_stat_activity"', "other_sessions"),
    ("SELECT * FROM PG_STAT_ACTIVITY", "other_sessions"),
    ("TABLE pg_prepared_statements", "other_sessions"),
    ("SELECT * FROM pg_cursors", "other_sessions"),
    ("SELECT * FROM pg_locks", "other_sessions"),
    ("SELECT * FROM pg_stat_statements", "other_sessions"),
    ("SELECT * FROM pg_stat_progress_vacuum", "other_sessions"),
    ("SELECT * FROM pg_stat_get_activity(NULL)", "other_sessions"),
    ("SELECT pg_stat_get_backend_activity(s) FROM pg_stat_get_backend_idset() s",
     "other_sessions"),
    ("SELECT pg_blocking_pids(42)", "other_sessions"),
    ("SELECT * FROM pg_prepared_statement()", "other_sessions"),
    ("SELECT 1 FROM items WHERE EXISTS (SELECT 1 FROM pg_locks)", "other_sessions"),
    ("WITH a AS (SELECT * FROM pg_stat_activity) SELECT * FROM a", "other_sessions"),
    ("EXPLAIN SELECT * FROM pg_stat_activity", "other_sessions"),
    ("SELECT 1; SELECT * FROM pg_stat_activity", "other_sessions"),
    ("COPY (SELECT query FROM pg_stat_activity) TO STDOUT", "other_sessions"),
    ("COPY pg_locks TO STDOUT", "other_sessions"),
    ("DECLARE c CURSOR FOR SELECT * FROM pg_stat_activity", "other_sessions"),
    ("SELECT query_to_xml('SELECT * FROM pg_stat_activity', true, false, '')",
     "other_sessions"),
    ("SELECT * FROM crosstab('SELECT pid, 1, 2 FROM pg_stat_activity') AS t(a int, b int)",
     "other_sessions"),
    # connections, large objects, server files, relations named by strings
    ("SELECT dblink_connect('host=x')", "function"),
    ("SELECT * FROM dblink('host=x', 'SELECT 1') AS t(a int)", "function"),
    ("SELECT dblink_exec('SELECT 1')", "function"),
    ("SELECT lo_import('/etc/passwd')", "function"),
    ("SELECT lo_export(1, '/tmp/x')", "function"), ("SELECT lo_creat(-1)", "function"),
    ("SELECT loread(lo_open(1, 262144), 10)", "function"),
    ("SELECT lowrite(0, 'x')", "function"), ("SELECT lo_get(1)", "function"),
    ("SELECT pg_read_file('/etc/passwd')", "function"),
    ("SELECT pg_read_binary_file('x')", "function"),
    ("SELECT * FROM pg_ls_dir('.')", "function"), ("SELECT pg_stat_file('x')", "function"),
    ("SELECT table_to_xml('pg_stat_activity', true, false, '')", "function"),
    ("SELECT * FROM connectby('items', 'id', 'parent', '1', 0)", "function"),
    ("SELECT pg_create_restore_point('x')", "function"),
    # refusal wins in a multi-statement Query, wherever it is
    ("SELECT 1; CREATE TEMP VIEW items AS SELECT 1; SELECT 2", "statement"),
    ("BEGIN; TRUNCATE items; COMMIT", "truncate"),
]


@pytest.mark.parametrize(("sql", "kind"), REFUSED, ids=[s[0][:60] for s in REFUSED])
def test_everything_else_is_refused_in_both_modes(sql: str, kind: str) -> None:
    assert kind in REFUSAL_KINDS
    for verdict in verdicts(sql):
        assert isinstance(verdict, Refusal), sql
        assert verdict.kind == kind
        assert verdict.sqlstate == "42501"
        assert verdict.message


def test_refusal_messages_name_what_and_why() -> None:
    truncate = GUARD.check_query("TRUNCATE items", OWN)
    assert truncate is not None and "row-level security" in truncate.message
    view = GUARD.check_query("CREATE TEMP VIEW v AS SELECT 1", OWN)
    assert view is not None and "CREATE VIEW" in view.message and view.hint
    call = GUARD.check_query("SELECT pg_terminate_backend(1)", OWN)
    assert call is not None and "pg_terminate_backend()" in call.message
    read = GUARD.check_query("SELECT * FROM pg_locks", OWN)
    assert read is not None and '"pg_locks"' in read.message


def test_tenant_switch_attempts_keep_their_own_kind() -> None:
    # A set_config attempt inside a refused statement is counted as what it is.
    refusal = GUARD.check_query(
        "DO $$ BEGIN PERFORM set_config('app.current_tenant', 'globex', false); END $$", OWN)
    assert refusal is not None and refusal.kind == "set_config"


# ---- bypass identities keep their rules -----------------------------------------------

@pytest.mark.parametrize("sql", [
    "CREATE TABLE t (a int)", "TRUNCATE items", "DO $$ BEGIN NULL; END $$",
    "SELECT * FROM pg_stat_activity", "LISTEN x", "PREPARE q AS SELECT 1",
    "SELECT pg_advisory_lock(1)", "VACUUM items", "ALTER TABLE items RENAME TO x",
])
def test_bypass_identity_is_not_subject_to_the_statement_policy(sql: str) -> None:
    assert verdicts(sql, None) == [None, None, None, None]


@pytest.mark.parametrize(("sql", "kind"), [
    ("ALTER FUNCTION f(text, text, bool) RENAME TO set_config", "persist_protected"),
    ("ALTER VIEW v RENAME TO pg_settings", "persist_protected"),
    ("ALTER FUNCTION f(text) RENAME TO query_to_xml", "persist_protected"),
    ("DEALLOCATE pgtenant_abc", "proxy_statement"),
])
def test_renames_to_dangerous_names_and_proxy_names_are_refused_for_everyone(
        sql: str, kind: str) -> None:
    for verdict in verdicts(sql, None):
        assert isinstance(verdict, Refusal) and verdict.kind == kind


# ---- configuration ---------------------------------------------------------------------

def test_allow_ddl_in_session_mode() -> None:
    guard = Guard(TenancyConfig(allow_ddl_in_session_mode=True))
    for sql in ("CREATE TABLE t (a int)", "CREATE TEMP VIEW v AS SELECT 1",
                "CREATE TEMP TABLE t (a int) INHERITS (items)", "SELECT 1 INTO TEMP t"):
        assert guard.check_query(sql, OWN) is None
        assert isinstance(guard.check_query(sql, OWN, transaction_mode=True), Refusal)
    # Not DDL: still refused, and the setting rules still hold inside DDL.
    for sql in ("TRUNCATE items", "GRANT SELECT ON items TO PUBLIC", "DO $$BEGIN END$$",
                "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS "
                "$$ SELECT set_config('app.current_tenant', 'globex', false) $$",
                "CREATE FUNCTION f() RETURNS bool LANGUAGE sql AS "
                "$$ SELECT pg_terminate_backend(1) $$"):
        assert isinstance(guard.check_query(sql, OWN), Refusal), sql


def test_allow_listen_and_notify() -> None:
    listen = Guard(TenancyConfig(allow_listen_in_session_mode=True))
    assert listen.check_query("LISTEN orders", OWN) is None
    assert isinstance(listen.check_query("LISTEN orders", OWN, transaction_mode=True), Refusal)
    assert isinstance(listen.check_query("NOTIFY orders", OWN), Refusal)
    notify = Guard(TenancyConfig(allow_notify=True))
    for mode in MODES:
        assert notify.check_query("NOTIFY orders, 'x'", OWN, transaction_mode=mode) is None
        assert notify.check_query("SELECT pg_notify('o', 'x')", OWN,
                                  transaction_mode=mode) is None
        assert isinstance(notify.check_query("LISTEN orders", OWN, transaction_mode=mode),
                          Refusal)


def test_allowed_functions() -> None:
    guard = Guard(TenancyConfig(allowed_functions=("pg_advisory_lock", "lo_get")))
    for mode in MODES:
        assert guard.check_query("SELECT pg_advisory_lock(1)", OWN,
                                 transaction_mode=mode) is None
        assert guard.check_query("SELECT lo_get(1)", OWN, transaction_mode=mode) is None
        assert isinstance(guard.check_query("SELECT lo_creat(1)", OWN,
                                            transaction_mode=mode), Refusal)


# ---- what the analysis tells the stream guard -----------------------------------------

@pytest.mark.parametrize(("sql", "changes"), [
    ("SET search_path TO public", True), ("RESET ALL", True), ("DISCARD ALL", True),
    ("SELECT set_config('search_path', 'x', false)", True),
    ("SET LOCAL statement_timeout = 5", True),
    ("SELECT 1; SET TIME ZONE 'UTC'", True),
    ("SELECT query_to_xml('SELECT set_config(''search_path'', ''x'', false)', true, "
     "false, '')", True),
    ("SELECT * FROM items", False), ("SELECT current_setting('search_path')", False),
    ("BEGIN", False), ("SHOW search_path", False),
])
def test_settings_changes_are_flagged(sql: str, changes: bool) -> None:
    assert GUARD.analyze(sql).changes_settings is changes


def test_sql_prepare_and_execute_are_reported_in_order() -> None:
    analysis = GUARD.analyze(
        "PREPARE a AS SELECT $1::text; EXECUTE a('x'); "
        "EXECUTE b(1, NULL, 'y'); EXPLAIN ANALYZE EXECUTE c(now()); PREPARE d AS SELECT 1")
    assert analysis.ops == (
        Prepare("a", False), Execute("a", (b"x",)), Execute("b", (b"1", None, b"y")),
        Execute("c", None), Prepare("d", False))
    # A SQL prepared statement is a stored object: it may not name set_config at all.
    refusal = GUARD.check_query("PREPARE p AS SELECT set_config('search_path', $1, false)",
                                OWN)
    assert refusal is not None and refusal.kind == "persist_protected"


# ---- the message stream: EXECUTE checked like Bind, the settings signal ----------------

TENANT_RULE = "SELECT set_config('app.current_tenant', $1, false)"


class Stream:
    """A StreamGuard fed message by message, as the client session feeds it (of a client
    of ``tenant`` on ``guard``, which a proxy's clients share)."""

    def __init__(self, *, transaction_mode: bool = False, guard: Guard = GUARD,
                 tenant: str | None = OWN) -> None:
        self.tenant = tenant
        self.refusals: list[str] = []
        self.changes = 0
        self.guard = StreamGuard(guard, {}, lambda refusal, tag: self.refusals.append(
            refusal.kind), transaction_mode=transaction_mode,
            on_state_change=self._changed)

    def _changed(self) -> None:
        self.changes += 1

    def send(self, *frames: bytes) -> bytes:
        """Feed ``frames``; return what would be forwarded."""
        block = b"".join(frames)
        index = []
        pos = 0
        for frame in split_frames(block):
            index.append((frame[0], pos, pos + len(frame)))
            pos += len(frame)
        out, _ = self.guard.filter(block, index, self.tenant)
        return out


def refused_query(out: bytes) -> bool:
    return b"RAISE EXCEPTION" in out


def test_sql_execute_of_a_protocol_statement_is_checked_like_bind() -> None:
    stream = Stream()
    stream.send(messages.parse("s1", TENANT_RULE), messages.sync())
    assert refused_query(stream.send(messages.query("EXECUTE s1('globex')")))
    assert stream.refusals == ["set_config"]
    assert refused_query(stream.send(messages.query("EXECUTE s1(current_user)")))
    assert refused_query(stream.send(messages.query("EXECUTE s1(NULL)")))
    out = stream.send(messages.query("EXECUTE s1('acme')"))
    assert not refused_query(out)
    assert stream.changes == 1  # set_config: the settings may have changed
    # Binds keep being checked too.
    assert refused_query(stream.send(messages.bind("", "s1", [b"globex"]), messages.execute(),
                                     messages.sync()))


def test_a_failed_redefinition_cannot_shed_the_bind_rule() -> None:
    stream = Stream()
    stream.send(messages.parse("s1", TENANT_RULE), messages.sync())
    # PREPARE of an existing name fails on the server: the old statement stays.
    stream.send(messages.query("PREPARE s1 AS SELECT 1"))
    assert refused_query(stream.send(messages.query("EXECUTE s1('globex')")))
    # A named Parse of an existing name fails too.
    stream.send(messages.parse("s1", "SELECT $1::text"), messages.sync())
    assert refused_query(stream.send(messages.bind("", "s1", [b"globex"]),
                                     messages.execute(), messages.sync()))


def test_an_unnamed_parse_behind_a_failure_cannot_shed_the_bind_rule() -> None:
    stream = Stream()
    stream.send(messages.parse("", TENANT_RULE), messages.sync())
    # If the first Parse fails, the server skips the unnamed Parse: the old one stays.
    stream.send(messages.parse("bad", "SELEC 1"), messages.parse("", "SELECT $1::text"),
                messages.sync())
    assert refused_query(stream.send(messages.bind("", "", [b"globex"]), messages.execute(),
                                     messages.sync()))


def test_an_unnamed_parse_replaces_the_rule_for_its_own_batch() -> None:
    stream = Stream()
    stream.send(messages.parse("", TENANT_RULE), messages.bind("", "", [b"acme"]),
                messages.execute(), messages.sync())
    # psycopg and asyncpg re-use the unnamed statement for every query.
    for _ in range(2):
        out = stream.send(messages.parse("", "SELECT $1::int"), messages.sync())
        out += stream.send(messages.bind("", "", [b"5"]), messages.execute(), messages.sync())
        assert not refused_query(out)
        out = stream.send(messages.parse("", "SELECT $1::int"),
                          messages.bind("", "", [b"5"]), messages.execute(),
                          messages.sync())
        assert not refused_query(out)
    assert stream.refusals == []


def test_settings_signal_once_per_message() -> None:
    stream = Stream()
    stream.send(messages.query("SELECT 1"), messages.query("SET search_path TO public"),
                messages.query("SELECT 1; RESET ALL; DISCARD ALL"))
    assert stream.changes == 2
    stream.send(messages.parse("w", "SELECT set_config('search_path', $1, false)"),
                messages.parse("r", "SELECT $1::int"), messages.sync())
    assert stream.changes == 2  # preparing changes nothing
    stream.send(messages.bind("", "w", [b"public"]), messages.execute(),
                messages.bind("", "r", [b"1"]), messages.execute(), messages.sync())
    assert stream.changes == 3
    stream.send(messages.query("PREPARE p AS SELECT $1::text"))
    stream.send(messages.query("EXECUTE p('public')"), messages.query("EXECUTE w('x')"))
    assert stream.changes == 4  # EXECUTE of the Parse'd setter, not of p
    stream.send(messages.query("SET app.current_tenant = 'globex'"))  # refused: no signal
    assert stream.changes == 4


def test_transaction_mode_refuses_sql_prepare_in_the_stream() -> None:
    stream = Stream(transaction_mode=True)
    assert refused_query(stream.send(messages.query("PREPARE p AS SELECT 1")))
    assert not refused_query(Stream().send(messages.query("PREPARE p AS SELECT 1")))
    assert stream.refusals == ["sql_prepare"]


def test_parse_verdict_cache_keeps_pool_modes_apart() -> None:
    cache: dict[Any, Any] = {}
    session = StreamGuard(GUARD, cache, lambda r, t: None)
    transaction = StreamGuard(GUARD, cache, lambda r, t: None, transaction_mode=True)
    batch = messages.parse("", "SELECT pg_advisory_lock(1)") + messages.sync()
    index = [(frame[0], 0, 0) for frame in split_frames(batch)]
    pos = 0
    for i, frame in enumerate(split_frames(batch)):
        index[i] = (frame[0], pos, pos + len(frame))
        pos += len(frame)
    assert session.filter(batch, index, OWN)[0] == batch
    assert transaction.filter(batch, index, OWN)[0] != batch


# ---- properties -----------------------------------------------------------------------

#: Statement types a tenant may run in transaction mode, and the extra ones of session
#: mode: written down here independently of proxy.guard.statements.
TX_ALLOWED_TYPES = {
    "SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "TransactionStmt",
    "VariableShowStmt", "VariableSetStmt", "DiscardStmt", "ClosePortalStmt", "FetchStmt",
    "LockStmt", "CallStmt", "UnlistenStmt", "ConstraintsSetStmt", "ExplainStmt", "CopyStmt",
    "DeclareCursorStmt", "DeallocateStmt", "CreateStmt",
}
SESSION_ALLOWED_TYPES = TX_ALLOWED_TYPES | {"PrepareStmt", "ExecuteStmt"}
REFUSED_NAMES = {"pg_terminate_backend", "pg_cancel_backend", "pg_stat_activity", "pg_locks",
                 "pg_notify", "lo_import", "dblink", "pg_read_file", "pg_cursors",
                 "pg_prepared_statements", "pg_stat_get_activity"}

PIECES = st.sampled_from([
    "SELECT", "select", "INSERT INTO t", "UPDATE t SET a = 1", "DELETE FROM t", "CREATE",
    "TEMP", "VIEW", "TABLE", "t", "AS", "DROP", "ALTER", "RENAME TO", "COMMENT ON", "DO",
    "$$", "BEGIN", "END", "COMMIT", "PREPARE", "EXECUTE", "DEALLOCATE", "DECLARE c CURSOR",
    "WITH HOLD", "FOR", "LISTEN", "NOTIFY", "x", "TRUNCATE", "VACUUM", "ANALYZE", "GRANT",
    "ALL", "ON", "TO", "PUBLIC", "ROLE", "CURRENT_USER", "PASSWORD", "'p'", "COPY",
    "FROM", "STDIN", "'/tmp/f'", "INTO", "pg_terminate_backend(1)", "pg_stat_activity",
    '"pg_locks"', "pg_catalog.", "lo_import('x')", "pg_notify('a','b')", "dblink('x')",
    "(", ")", ",", ";", " ", "\n", "/* c */", "-- c\n", "1", "*", "WHERE", "LIKE t",
    "ON COMMIT DROP", "EXPLAIN", "CALL p()", "LOCK t", "SHOW x", "SET x = 1", "RESET ALL",
    "pgtenant_1", "q(1)", "INHERITS (t)", "CHECKPOINT", "SECURITY LABEL", "CLUSTER",
])


def _top_level_types(sql: str) -> list[str]:
    stmts = json.loads(parse_sql_json(sql)).get("stmts", ())
    return [next(iter(raw["stmt"])) for raw in stmts]


def _names(sql: str) -> Iterator[str]:
    stack: list[Any] = [json.loads(parse_sql_json(sql))]
    while stack:
        obj = stack.pop()
        if isinstance(obj, list):
            stack.extend(obj)
        elif isinstance(obj, dict):
            if isinstance(obj.get("relname"), str):
                yield obj["relname"].lower()
            if obj.get("funcname"):
                yield obj["funcname"][-1]["String"]["sval"].lower()
            stack.extend(obj.values())


@settings(max_examples=800, deadline=None)
@given(st.lists(PIECES, max_size=12).map(" ".join), st.sampled_from(MODES))
def test_nothing_outside_the_allow_list_passes(sql: str, transaction_mode: bool) -> None:
    if GUARD.check_query(sql, OWN, transaction_mode=transaction_mode) is not None:
        return
    try:
        types = _top_level_types(sql)
    except ParseError:
        return  # PostgreSQL rejects it too
    allowed = TX_ALLOWED_TYPES if transaction_mode else SESSION_ALLOWED_TYPES
    assert set(types) <= allowed, sql
    assert not REFUSED_NAMES & set(_names(sql)), sql
    if "CreateStmt" in types:
        assert "temp" in sql.lower(), sql


@settings(max_examples=800, deadline=None)
@given(st.lists(PIECES, max_size=12).map(" ".join), st.sampled_from(["", " ", "\n"]))
def test_prefilter_never_skips_what_the_analysis_would_flag(sql: str, lead: str) -> None:
    sql = lead + sql
    if needs_inspection(sql):
        return
    analysis = Guard(TenancyConfig(), cache_size=0)._analyzer.analyze(sql)
    if analysis is CLEAN:
        return
    # Only text PostgreSQL cannot parse may be flagged yet skipped (then it fails there).
    assert analysis.refusal is not None and analysis.refusal.kind == "unparsable", sql
    with pytest.raises(ParseError):
        parse_sql_json(sql)


def test_a_refused_parse_before_flush_is_raised_at_the_flush() -> None:
    # asyncpg prepares with Parse, Describe, Flush and waits for the answer before Sync.
    stream = Stream()
    out = stream.send(messages.parse("s", "TRUNCATE items"), messages.describe(b"S", "s"),
                      messages.flush())
    assert [frame[0] for frame in split_frames(out)] == [ord("Q")]
    assert refused_query(out)
    # Its Sync is dropped (the raise already answers with ReadyForQuery); then all is normal.
    assert stream.send(messages.sync()) == b""
    ok = messages.parse("", "SELECT 1") + messages.sync()
    assert stream.send(ok) == ok
    # Without a Flush the Sync itself becomes the raise, as before.
    out = stream.send(messages.parse("t", "TRUNCATE items"), messages.sync())
    assert [frame[0] for frame in split_frames(out)] == [ord("Q")]


# ---- configuration file -----------------------------------------------------------------

CONFIG_BASE = """
[auth.jwt]
secret_env = "PGTENANT_JWT_SECRET"

[databases.app]
"""


def test_tenancy_keys_are_read_with_secure_defaults() -> None:
    default = parse_config(CONFIG_BASE).tenancy
    assert (default.allow_ddl_in_session_mode, default.allow_listen_in_session_mode,
            default.allow_notify, default.allowed_functions) == (False, False, False, ())
    tenancy = parse_config(
        "[tenancy]\nallow_ddl_in_session_mode = true\nallow_listen_in_session_mode = true\n"
        "allow_notify = true\nallowed_functions = ['PG_Advisory_Lock', 'lo_get']\n"
        + CONFIG_BASE).tenancy
    assert tenancy.allow_ddl_in_session_mode and tenancy.allow_listen_in_session_mode
    assert tenancy.allow_notify
    assert tenancy.allowed_functions == ("pg_advisory_lock", "lo_get")


@pytest.mark.parametrize(("toml", "key"), [
    ("allow_notify = 'yes'\n", "tenancy.allow_notify"),
    ("allowed_functions = ['pg_catalog.lo_get']\n", "tenancy.allowed_functions[0]"),
    ("allowed_functions = ['lo_get()']\n", "tenancy.allowed_functions[0]"),
    ("allowed_functions = 'lo_get'\n", "tenancy.allowed_functions"),
    ("allow_ddl = true\n", "tenancy.allow_ddl"),
])
def test_bad_tenancy_keys_are_errors_naming_the_key(toml: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        parse_config("[tenancy]\n" + toml + CONFIG_BASE)


def test_config_example_documents_the_statement_policy_keys() -> None:
    text = (Path(__file__).parents[2] / "config.example.toml").read_text()
    for key in ("allow_ddl_in_session_mode", "allow_listen_in_session_mode", "allow_notify",
                "allowed_functions"):
        assert f"# {key} = " in text
