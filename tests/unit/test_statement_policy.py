"""The statement policy: tenant clients run what a request path needs, nothing else.

Tables of allowed and refused statements with the refusal kind (metrics count by kind),
for both pool modes and both protocol paths (Query and Parse), and bypass identities
keeping their rules. The keys that relax the policy, the message-stream side and the
property tests are in the other tests/unit/test_statement_policy_*.py files.
"""

from __future__ import annotations

import pytest

from proxy.guard import REFUSAL_KINDS, BindRule, Refusal
from tests.unit.guard_verdicts import OWN
from tests.unit.policy_guard import GUARD, MODES


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
