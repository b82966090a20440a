"""The SQL guard refuses every way out of the tenant we know of.

Own tenant is "acme"; the attacker wants "globex" (tests/unit/guard_verdicts.py). Each
attack is one row; a refusal is checked for its kind, because metrics count by kind.
"""

from __future__ import annotations

import pytest

from proxy.guard import Refusal, needs_inspection
from tests.unit.guard_verdicts import GUARD, refused

# ---- attacks: (sql, kind) -----------------------------------------------------------

ATTACKS = [
    # SET of the tenant setting: case, SET LOCAL/SESSION, TO vs =, quoting, comments
    ("SET app.current_tenant = 'globex'", "set_protected"),
    ("SeT app.current_tenant = 'globex'", "set_protected"),
    ("SET Local app.current_tenant TO 'globex'", "set_protected"),
    ("SET SESSION app.current_tenant TO globex", "set_protected"),
    ("set app.current_tenant to 'globex'", "set_protected"),
    ('SET "app"."current_tenant" = \'globex\'', "set_protected"),
    ('SET "APP.CURRENT_TENANT" = \'globex\'', "set_protected"),
    ('SET "App"."Current_Tenant" = \'globex\'', "set_protected"),
    ("SET APP.CURRENT_TENANT = 'globex'", "set_protected"),
    ("SET/**/app.current_tenant='globex'", "set_protected"),
    ("SET -- comment\napp.current_tenant -- more\n= 'globex'", "set_protected"),
    ("/* lead */ SET app./* between tokens */current_tenant = 'globex'", "set_protected"),
    ("SET app.current_tenant = E'glob\\x65x'", "set_protected"),
    ("SET app.current_tenant = U&'glob\\0065x'", "set_protected"),
    ('SET U&"app"."current\\005ftenant" = \'globex\'', "set_protected"),
    ("SET app.current_tenant = $$globex$$", "set_protected"),
    ("SET app.current_tenant = 'acme', 'globex'", "set_protected"),
    ("SET app.current_tenant = ''", "set_protected"),
    ("SET app.current_tenant = 42", "set_protected"),
    ('SET app.current_tenant = "Acme"', "set_protected"),  # quoted: stays "Acme"
    ("SET pgtenant.proof = 'forged'", "set_protected"),
    ("SET pgtenant.proof = 'acme'", "set_protected"),  # only the tenant setting is ours
    ("SET app.is_admin = 'acme'", "set_protected"),
    ("SELECT set_config('app.is_admin', 'acme', false)", "set_config"),
    ("SET app.anything_else = 'x'", "set_protected"),
    # multi-statement strings
    ("SELECT 1; SET app.current_tenant='globex'", "set_protected"),
    ("SET app.current_tenant = 'acme'; SET app.current_tenant = 'globex'", "set_protected"),
    ("BEGIN; SET LOCAL app.current_tenant = 'globex'; SELECT * FROM t; COMMIT", "set_protected"),
    # set_config in every expression position
    ("SELECT set_config('app.current_tenant', 'globex', false)", "set_config"),
    ("SELECT pg_catalog.set_config('app.current_tenant', 'globex', true)", "set_config"),
    ('SELECT "pg_catalog"."set_config"(\'app.current_tenant\', \'globex\', false)',
     "set_config"),
    ("SELECT set_config('APP.Current_Tenant', 'globex', false)", "set_config"),
    ("SELECT set_config(' app.current_tenant', 'globex', false)", "set_config"),
    ("select set_config(name, 'globex', false) from t", "set_config"),
    ("select set_config('app.current_tenant', v, false) from t", "set_config"),
    ("select set_config('app.'||'current_tenant', 'globex', false)", "set_config"),
    ("select set_config('app.current_tenant', 'glo'||'bex', false)", "set_config"),
    ("select set_config('app.current_tenant', 'globex'::varchar(3), false)", "set_config"),
    ("select set_config('app.current_tenant', NULL, false)", "set_config"),
    ("select * from (select set_config('app.current_tenant', 'globex', false)) s",
     "set_config"),
    ("WITH x AS (SELECT set_config('app.current_tenant', 'globex', false)) SELECT * FROM x",
     "set_config"),
    ("SELECT CASE WHEN true THEN set_config('app.current_tenant', 'globex', false) END",
     "set_config"),
    ("SELECT * FROM t WHERE id = 1 AND set_config('app.current_tenant','globex',true) <> ''",
     "set_config"),
    ("SELECT lower(set_config('app.current_tenant', 'globex', false))", "set_config"),
    ("SELECT * FROM set_config('app.current_tenant', 'globex', false)", "set_config"),
    ("SELECT set_config(new_value => 'globex', setting_name => 'app.current_tenant', "
     "is_local => false)", "set_config"),
    ("INSERT INTO t(a) VALUES (set_config('app.current_tenant', 'globex', false))",
     "set_config"),
    ("UPDATE t SET a = set_config('app.current_tenant', 'globex', false)", "set_config"),
    ("EXPLAIN ANALYZE SELECT set_config('app.current_tenant', 'globex', false)",
     "set_config"),
    ("COPY (SELECT set_config('app.current_tenant', 'globex', false)) TO STDOUT",
     "set_config"),
    ("SELECT U&\"set\\005fconfig\"('app.current_tenant', 'globex', false)", "set_config"),
    ("SELECT set_config(U&'app\\002ecurrent_tenant', 'globex', false)", "set_config"),
    ("SELECT set_config('app.current_tenant', $1, false)", "set_config"),  # no params in Q
    # DO blocks: PERFORM, assignment, conditions, SET, EXECUTE of constants and of
    # computed strings
    ("DO $$ BEGIN PERFORM set_config('app.current_tenant', 'globex', false); END $$",
     "set_config"),
    ("DO $$ DECLARE x text; BEGIN x := set_config('app.current_tenant', 'globex', false);"
     " END $$", "set_config"),
    ("DO $$ BEGIN IF set_config('app.current_tenant', 'globex', false) = '' THEN NULL;"
     " END IF; END $$", "set_config"),
    ("DO $$ BEGIN SET app.current_tenant = 'globex'; END $$", "set_protected"),
    ("DO $x$ BEGIN EXECUTE 'SET app.current_tenant = ''globex'''; END $x$",
     "set_protected"),
    ("DO $$ BEGIN EXECUTE E'SELECT \\x73et_config(''app.current_tenant'', ''globex'', "
     "false)'; END $$", "set_config"),
    ("DO $$ BEGIN EXECUTE 'SET app.current_tenant = ' || quote_literal('globex'); END $$",
     "dynamic_sql"),
    ("DO $$ DECLARE t text := 'globex'; BEGIN EXECUTE format('SET app.current_tenant = %L',"
     " t); END $$", "dynamic_sql"),
    ("DO $$ BEGIN EXECUTE 'se' || 't_con' || 'fig(1)'; END $$", "dynamic_sql"),
    ("DO $$ DECLARE r record; BEGIN FOR r IN EXECUTE 'SELECT set_config(''app.current_tenant'',"
     " ''globex'', false)' LOOP END LOOP; END $$", "set_config"),
    ("DO $$ DECLARE t text; BEGIN SELECT name INTO t FROM x; "
     "PERFORM set_config('app.current_tenant', t, false); END $$", "set_config"),
    ("DO $$ BEGIN EXECUTE 'DO $i$ BEGIN PERFORM set_config(''app.current_tenant'', "
     "''globex'', false); END $i$'; END $$", "set_config"),
    ("DO LANGUAGE plpgsql 'BEGIN PERFORM set_config(''app.current_tenant'', ''globex'', "
     "false); END'", "set_config"),
    ("DO LANGUAGE plpython3u $$ plpy.execute(\"select set_config('app.current_tenant', "
     "'globex', false)\") $$", "unparsable"),
    # SQL that runs a query given as text
    ("SELECT query_to_xml('SELECT set_config(''app.current_tenant'', ''globex'', false)',"
     " true, false, '')", "set_config"),
    ("SELECT ts_stat('SELECT set_config(''app.current_tenant'', ''globex'', false)::tsvector')",
     "set_config"),
    ("SELECT query_to_xml(q, true, false, '') FROM queries", "dynamic_sql"),
    # roles
    ("SET ROLE postgres", "set_role"),
    ("SET LOCAL ROLE postgres", "set_role"),
    ("set role 'postgres'", "set_role"),
    ('SET "ROLE" = postgres', "set_role"),
    ("SET SESSION AUTHORIZATION postgres", "set_role"),
    ("SET SESSION AUTHORIZATION 'postgres'", "set_role"),
    ("SELECT set_config('role', 'postgres', false)", "set_role"),
    ("SELECT set_config('session_authorization', 'postgres', false)", "set_role"),
    ("DO $$ BEGIN SET ROLE postgres; END $$", "set_role"),
    # persisting a protected setting
    ("ALTER ROLE current_user SET app.current_tenant = 'globex'", "persist_protected"),
    ("ALTER ROLE current_user SET app.current_tenant = 'acme'", "persist_protected"),
    ("ALTER USER app_user IN DATABASE app SET app.current_tenant TO 'globex'",
     "persist_protected"),
    ("ALTER DATABASE app SET app.current_tenant = 'globex'", "persist_protected"),
    ("ALTER ROLE app_user SET role = 'postgres'", "persist_protected"),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql SET app.current_tenant = 'globex' "
     "AS 'SELECT 1'", "persist_protected"),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql SET app.current_tenant FROM CURRENT "
     "AS 'SELECT 1'", "persist_protected"),
    ("ALTER FUNCTION f() SET app.current_tenant = 'globex'", "persist_protected"),
    ("CREATE FUNCTION f(t text) RETURNS text LANGUAGE sql AS "
     "$$ SELECT set_config('app.current_tenant', t, false) $$", "persist_protected"),
    ("CREATE FUNCTION f() RETURNS text LANGUAGE sql AS "
     "$$ SELECT set_config('app.current_tenant', 'acme', false) $$", "persist_protected"),
    ("CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN "
     "PERFORM set_config('app.current_tenant', 'globex', false); END $$", "persist_protected"),
    ("CREATE FUNCTION f() RETURNS text LANGUAGE sql BEGIN ATOMIC "
     "SELECT set_config('app.current_tenant', 'globex', false); END", "persist_protected"),
    ("CREATE OR REPLACE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN "
     "SET app.current_tenant = 'globex'; END $$", "persist_protected"),
    ("CREATE VIEW v AS SELECT set_config('app.current_tenant', 'acme', false)",
     "persist_protected"),
    ("CREATE VIEW s AS SELECT * FROM pg_settings", "persist_protected"),
    ("CREATE TABLE t (a text DEFAULT set_config('app.current_tenant', 'globex', false))",
     "persist_protected"),
    ("CREATE POLICY p ON t USING (set_config('app.current_tenant', 'globex', false) <> '')",
     "persist_protected"),
    ("CREATE RULE r AS ON INSERT TO t DO ALSO "
     "SELECT set_config('app.current_tenant', 'globex', false)", "persist_protected"),
    ("PREPARE p AS SELECT set_config('app.current_tenant', 'acme', false)",
     "persist_protected"),
    ("CREATE OPERATOR ### (LEFTARG = text, RIGHTARG = text, FUNCTION = set_config)",
     "persist_protected"),
    # pg_settings, parser state, COPY PROGRAM, ALTER SYSTEM, LOAD
    ("UPDATE pg_settings SET setting = 'globex' WHERE name = 'app.current_tenant'",
     "pg_settings"),
    ("UPDATE pg_catalog.pg_settings SET setting = 'x' WHERE name = 'search_path'",
     "pg_settings"),
    ("SET standard_conforming_strings = off", "parser_state"),
    ("SELECT set_config('standard_conforming_strings', 'off', false)", "parser_state"),
    ("SET client_encoding = 'SJIS'", "parser_state"),
    ("SET NAMES 'GBK'", "parser_state"),
    ("COPY t TO PROGRAM 'cat > /tmp/x'", "copy_program"),
    ("copy t from program 'curl evil'", "copy_program"),
    ("COPY (SELECT 1) TO PROGRAM 'x'", "copy_program"),
    ("ALTER SYSTEM SET shared_preload_libraries = 'evil'", "alter_system"),
    ("ALTER SYSTEM RESET ALL", "alter_system"),
    ("LOAD 'evil'", "load"),
    # unparsable but mentions protected things: fail closed
    ("SET app.current_tenant = = 'globex'", "unparsable"),
    ("SELECT set_config('app.current_tenant', 'globex' false)", "unparsable"),
    ("SET ROLE", "unparsable"),
]


@pytest.mark.parametrize(("sql", "kind"), ATTACKS, ids=[a[0][:60] for a in ATTACKS])
def test_attack_is_refused(sql: str, kind: str) -> None:
    assert refused(sql).kind == kind


@pytest.mark.parametrize(("sql", "kind"), ATTACKS, ids=[a[0][:60] for a in ATTACKS])
def test_attack_is_refused_for_bypass_identity_too(sql: str, kind: str) -> None:
    verdict = GUARD.check_query(sql, None)
    if kind == "dynamic_sql" and "globex" not in sql and "config" not in sql:
        return  # computed SQL that names nothing guarded is allowed for bypass identities
    assert isinstance(verdict, Refusal)


@pytest.mark.parametrize(("sql", "kind"), ATTACKS, ids=[a[0][:60] for a in ATTACKS])
def test_attack_passes_the_prefilter(sql: str, kind: str) -> None:
    assert needs_inspection(sql)
