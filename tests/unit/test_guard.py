"""The SQL guard refuses every way out of the tenant we know of and lets real app SQL by.

Own tenant is "acme"; the attacker wants "globex". Each attack is one row; a refusal is
checked for its kind, because metrics count by kind.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast.parser import ParseError, parse_sql_json

from proxy.config import TenancyConfig
from proxy.guard import (
    CLEAN,
    FUNCTION_CALL_REFUSAL,
    REFUSAL_KINDS,
    BindRule,
    Guard,
    Param,
    Refusal,
    needs_inspection,
)

OWN = "acme"
GUARD = Guard(TenancyConfig(), allowed_roles=frozenset({"reporting"}))


def refused(sql: str, tenant: str | None = OWN) -> Refusal:
    verdict = GUARD.check_query(sql, tenant)
    assert isinstance(verdict, Refusal), f"not refused: {sql!r}"
    assert verdict.sqlstate == "42501"
    assert verdict.kind in REFUSAL_KINDS
    return verdict


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


# ---- allowed: own tenant, resets, ordinary settings ----------------------------------

OWN_CONTEXT = [
    "SET app.current_tenant = 'acme'",
    "SET app.current_tenant TO acme",
    "SET app.current_tenant TO Acme",  # an unquoted word is lower-cased: "acme"
    "SET LOCAL app.current_tenant = 'acme'",
    "SET SESSION app.current_tenant = 'acme'",
    'SET "app"."current_tenant" = \'acme\'',
    "SET app.current_tenant = DEFAULT",
    "SET LOCAL app.current_tenant TO DEFAULT",
    "SELECT set_config('app.current_tenant', 'acme', false)",
    "SELECT set_config('app.current_tenant', 'acme', true)",
    "SELECT pg_catalog.set_config('app.current_tenant', 'acme'::text, true)",
    "BEGIN; SELECT set_config('app.current_tenant', 'acme', true); SELECT * FROM t; COMMIT",
    "RESET app.current_tenant",
    "RESET pgtenant.proof",
    "RESET ALL",
    "DISCARD ALL",
    "RESET ROLE",
    "RESET SESSION AUTHORIZATION",
    "SET ROLE NONE",
    "SET SESSION AUTHORIZATION DEFAULT",
    "SET ROLE reporting",
    "SELECT set_config('role', 'reporting', false)",
    "SELECT current_setting('app.current_tenant')",
    "SELECT current_setting('app.current_tenant', true)",
    "SHOW app.current_tenant",
    "SET standard_conforming_strings = on",
    "SET client_encoding = 'UTF8'",
    "SET NAMES 'utf-8'",
    "SELECT * FROM pg_settings WHERE name = 'app.current_tenant'",
]


@pytest.mark.parametrize("sql", OWN_CONTEXT)
def test_own_context_and_resets_are_allowed(sql: str) -> None:
    assert GUARD.check_query(sql, OWN) is None


def test_own_tenant_in_a_do_block_is_still_a_do_block() -> None:
    sql = "DO $$ BEGIN PERFORM set_config('app.current_tenant', 'acme', true); END $$"
    assert refused(sql).kind == "do"


def test_bypass_identity_has_no_tenant_to_restate() -> None:
    assert refused("SET app.current_tenant = 'acme'", None).kind == "set_protected"
    assert GUARD.check_query("RESET ALL", None) is None
    assert GUARD.check_query("SET app.current_tenant = DEFAULT", None) is None


def test_other_tenant_refused_even_when_cached_for_own() -> None:
    sql = "SET app.current_tenant = 'acme'"
    assert GUARD.check_query(sql, OWN) is None
    assert refused(sql, "globex").kind == "set_protected"
    assert GUARD.check_query(sql, OWN) is None


# ---- realistic application SQL -------------------------------------------------------

APP_SQL = [
    # SQLAlchemy
    "SELECT users.id AS users_id, users.name AS users_name FROM users WHERE users.id = %(pk)s",
    "SELECT users.id, users.email FROM users WHERE users.email = $1 LIMIT $2 OFFSET $3",
    "INSERT INTO users (name, email) VALUES ($1, $2) RETURNING users.id",
    "UPDATE users SET name=$1, updated_at=now() WHERE users.id = $2",
    "DELETE FROM sessions WHERE sessions.expires_at < $1",
    "SELECT count(*) AS count_1 FROM (SELECT orders.id FROM orders WHERE orders.status = $1)"
    " AS anon_1",
    "BEGIN ISOLATION LEVEL READ COMMITTED",
    "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
    "SAVEPOINT sa_savepoint_1",
    "RELEASE SAVEPOINT sa_savepoint_1",
    "ROLLBACK TO SAVEPOINT sa_savepoint_1",
    "COMMIT",
    "select pg_catalog.version()",
    "select current_schema()",
    "show standard_conforming_strings",
    "SELECT pg_catalog.pg_class.relname FROM pg_catalog.pg_class JOIN "
    "pg_catalog.pg_namespace ON pg_catalog.pg_namespace.oid = pg_catalog.pg_class.relnamespace"
    " WHERE pg_catalog.pg_class.relname = $1 AND pg_catalog.pg_class.relkind = ANY "
    "(ARRAY[$2, $3, $4, $5, $6]) AND pg_catalog.pg_table_is_visible(pg_catalog.pg_class.oid)",
    # Django
    'SELECT "auth_user"."id", "auth_user"."username" FROM "auth_user" WHERE '
    '"auth_user"."username" = %s LIMIT 21',
    'INSERT INTO "django_session" ("session_key", "session_data", "expire_date") '
    "VALUES (%s, %s, %s)",
    'UPDATE "django_session" SET "session_data" = %s WHERE "django_session"."session_key" = %s',
    'SELECT "app_item"."id" FROM "app_item" ORDER BY "app_item"."created" DESC LIMIT 10 '
    "OFFSET 20",
    "SELECT 1 AS \"a\" FROM \"app_asset\" WHERE \"app_asset\".\"dataset_id\" = 3 LIMIT 1",
    "SET TIME ZONE 'UTC'",
    "SET search_path TO public",
    'SET search_path TO "$user", public',
    "SET statement_timeout = 5000",
    "SET application_name = 'worker-1'",
    "SET TimeZone = 'Europe/Paris'",
    "SET datestyle TO ISO, MDY",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ",
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SELECT set_config('search_path', '', false)",
    "SELECT pg_catalog.set_config('search_path', 'public', false)",
    # Prisma
    'SELECT "public"."Post"."id", "public"."Post"."title" FROM "public"."Post" WHERE '
    '("public"."Post"."published" = $1) OFFSET $2',
    'INSERT INTO "public"."User" ("email","name") VALUES ($1,$2) RETURNING '
    '"public"."User"."id"',
    'INSERT INTO "public"."Item" ("sku","qty") VALUES ($1,$2) ON CONFLICT ("sku") DO UPDATE '
    'SET "qty" = EXCLUDED."qty" RETURNING "id"',
    "INSERT INTO t (a) VALUES (1) ON CONFLICT DO NOTHING",
    # psycopg / asyncpg introspection
    "SELECT t.oid, typarray FROM pg_type t JOIN pg_namespace ns ON typnamespace = ns.oid "
    "WHERE typname = 'hstore'",
    "SELECT typname, typnamespace::regnamespace FROM pg_catalog.pg_type WHERE oid = $1",
    "SELECT t.typname, t.typtype, t.typelem, t.typarray FROM pg_catalog.pg_type t "
    "WHERE t.oid = ANY($1::oid[])",
    "RESET ALL",
    "DISCARD ALL",
    "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;",
    "DEALLOCATE ALL",
    "COPY items (name) FROM STDIN",
    "COPY (SELECT * FROM items) TO STDOUT WITH (FORMAT csv)",
    "select * from download_log where payload->>'program' = 'x'",
    "SELECT set_config('app.current_tenant', 'acme', false)",
]


@pytest.mark.parametrize("sql", APP_SQL)
def test_application_sql_is_allowed(sql: str) -> None:
    assert GUARD.check_query(sql, OWN) is None
    assert GUARD.check_parse(sql, OWN) is None


#: What migrations and admin jobs run: allowed for bypass identities (the setting rules
#: still apply), refused for tenants by the statement policy (kind in the second column).
SERVICE_SQL = [
    ("DO $$ BEGIN PERFORM set_config('search_path', 'public', true); END $$", "do"),
    ("ALTER ROLE app_user RESET app.current_tenant", "role_admin"),
    ("LISTEN orders_changed", "notify"),
    ("NOTIFY orders_changed, 'x'", "notify"),
]
MIGRATION_SQL = [
    "CREATE TABLE items (id bigserial PRIMARY KEY, tenant_id text NOT NULL "
    "DEFAULT current_setting('app.current_tenant'), name text)",
    "ALTER TABLE items ADD COLUMN price numeric",
    "ALTER TABLE items ENABLE ROW LEVEL SECURITY",
    "CREATE POLICY items_tenant ON items USING "
    "(tenant_id = current_setting('app.current_tenant'))",
    "CREATE INDEX CONCURRENTLY items_name ON items (name)",
    "CREATE FUNCTION add(a int, b int) RETURNS int LANGUAGE sql IMMUTABLE "
    "AS 'SELECT a + b'",
    "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "NEW.updated_at := now(); RETURN NEW; END $$",
    "CREATE TRIGGER t_touch BEFORE UPDATE ON items FOR EACH ROW EXECUTE FUNCTION touch()",
    "CREATE FUNCTION f() RETURNS void LANGUAGE sql SET search_path = pg_catalog "
    "AS 'SELECT 1'",
    "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'mood') THEN "
    "CREATE TYPE mood AS ENUM ('sad', 'ok'); END IF; END $$",
]
SERVICE_SQL += [(sql, "do" if sql.startswith("DO") else "statement") for sql in MIGRATION_SQL]


@pytest.mark.parametrize(("sql", "kind"), SERVICE_SQL, ids=[s[0][:60] for s in SERVICE_SQL])
def test_service_sql_is_allowed_for_bypass_and_refused_for_tenants(sql: str, kind: str
                                                                   ) -> None:
    assert GUARD.check_query(sql, None) is None
    assert GUARD.check_parse(sql, None) is None
    assert refused(sql).kind == kind
    assert GUARD.check_query(sql, OWN, transaction_mode=True) == refused(sql)


def test_most_application_reads_skip_the_parser() -> None:
    skipped = [
        "SELECT users.id AS users_id FROM users WHERE users.id = $1",
        "INSERT INTO users (name) VALUES ($1) RETURNING users.id",
        "DELETE FROM sessions WHERE sessions.expires_at < $1",
        "BEGIN ISOLATION LEVEL READ COMMITTED",
        "SAVEPOINT sa_savepoint_1",
        "COMMIT",
        "SELECT 1 FROM app_asset ORDER BY created OFFSET 10",
        "UPDATE users SET name = $1, updated_at = now() WHERE users.id = $2",
        'UPDATE "t" SET "settings" = $1 WHERE "reset" = $2',
        "show standard_conforming_strings",
        "COMMIT;",
    ]
    for sql in skipped:
        assert not needs_inspection(sql), sql
    assert GUARD.analyze(skipped[0]) is CLEAN


# ---- extended protocol: Parse and Bind -----------------------------------------------

PARAM_SQL = "SELECT set_config('app.current_tenant', $1, false)"


def rule_for(sql: str = PARAM_SQL, tenant: str | None = OWN,
             types: tuple[int, ...] = ()) -> BindRule:
    rule = GUARD.check_parse(sql, tenant, types)
    assert isinstance(rule, BindRule), rule
    return rule


def test_parse_with_tenant_parameter_gives_a_bind_rule() -> None:
    rule = rule_for()
    assert rule.tenant == OWN
    assert rule.writes[0].value == Param(0)


@pytest.mark.parametrize("formats", [[], [0], [1], [0, 0]])
def test_bind_of_own_tenant_is_allowed(formats: list[int]) -> None:
    params: list[bytes | None] = [b"acme", b"x"] if len(formats) == 2 else [b"acme"]
    assert GUARD.check_bind(rule_for(), params, formats) is None


@pytest.mark.parametrize(("params", "formats"), [
    ([b"globex"], []),
    ([b"globex"], [1]),
    ([b"acme "], []),
    ([b"ACME"], []),
    ([None], []),
    ([b"\xff"], []),
    ([], []),
    ([b"acme"], [2]),
])
def test_bind_of_anything_else_is_refused(params: list[bytes | None], formats: list[int]
                                          ) -> None:
    verdict = GUARD.check_bind(rule_for(), params, formats)
    assert isinstance(verdict, Refusal)
    assert verdict.kind == "set_config"


def test_bind_rule_variants() -> None:
    cast = rule_for("SELECT set_config('app.current_tenant', $1::text, true)")
    assert GUARD.check_bind(cast, [b"acme"], []) is None
    named = rule_for("SELECT set_config($1, $2, false)")
    assert GUARD.check_bind(named, [b"app.current_tenant", b"acme"], []) is None
    assert GUARD.check_bind(named, [b"search_path", b"public"], []) is None
    assert isinstance(GUARD.check_bind(named, [b"App.Current_Tenant", b"globex"], []), Refusal)
    assert isinstance(GUARD.check_bind(named, [b"role", b"postgres"], []), Refusal)
    assert GUARD.check_bind(named, [b"role", b"reporting"], []) is None
    assert isinstance(GUARD.check_bind(named, [None, b"acme"], []), Refusal)
    assert isinstance(GUARD.check_bind(named, [b"app.is_admin", b"acme"], []), Refusal)
    assert isinstance(GUARD.check_parse(
        "SELECT set_config('pgtenant.proof', $1, false)", OWN), Refusal)
    second = rule_for("SELECT $1::int, set_config('app.current_tenant', $2, false)")
    assert GUARD.check_bind(second, [b"\x00\x00\x00\x01", b"acme"], [1, 0]) is None
    assert isinstance(GUARD.check_bind(second, [b"1", b"globex"], [0, 0]), Refusal)


def test_parse_refusals() -> None:
    # A parameter type whose cast to text could change the value.
    assert isinstance(GUARD.check_parse(PARAM_SQL, OWN, [16384]), Refusal)
    assert isinstance(rule_for(types=(25,)), BindRule)
    # Bypass identity: no own tenant, so no value can be bound.
    assert isinstance(GUARD.check_parse(PARAM_SQL, None), Refusal)
    # A parameter whose value is then changed is not the bound value.
    assert isinstance(GUARD.check_parse(
        "SELECT set_config('app.current_tenant', $1 || 'x', false)", OWN), Refusal)
    assert isinstance(GUARD.check_parse(
        "SELECT set_config('app.current_tenant', 'globex', false)", OWN), Refusal)
    assert GUARD.check_parse(
        "SELECT set_config('app.current_tenant', 'acme', false)", OWN) is None
    # A parameter of a function body is not the Bind's parameter.
    assert isinstance(GUARD.check_parse(
        "DO $$ BEGIN PERFORM set_config('app.current_tenant', $1, false); END $$", OWN),
        Refusal)


# ---- startup packet, FunctionCall ----------------------------------------------------

@pytest.mark.parametrize("settings_", [
    {"app.current_tenant": "globex"},
    {"APP.CURRENT_TENANT": "acme"},
    {"pgtenant.proof": "x"},
    {"role": "postgres"},
    {"session_authorization": "postgres"},
    {"client_encoding": "SJIS"},
    {"standard_conforming_strings": "off"},
    {"replication": "database"},
    {"options": "-c app.current_tenant=globex"},
])
def test_startup_settings_refused(settings_: dict[str, str]) -> None:
    verdict = GUARD.check_startup(settings_)
    assert isinstance(verdict, Refusal)
    assert verdict.kind == "startup_option"


def test_startup_settings_allowed() -> None:
    assert GUARD.check_startup({
        "user": "x", "database": "app", "application_name": "psql",
        "client_encoding": "UTF8", "DateStyle": "ISO, MDY", "TimeZone": "UTC",
        "search_path": "public", "replication": "false", "extra_float_digits": "3",
    }) is None


def test_function_call_message_refusal() -> None:
    assert FUNCTION_CALL_REFUSAL.kind == "function_call"
    assert FUNCTION_CALL_REFUSAL.sqlstate == "42501"


# ---- configuration, cache, robustness ------------------------------------------------

def test_custom_tenancy_configuration() -> None:
    guard = Guard(TenancyConfig(setting="myapp.org", protected_prefixes=("myapp.",)))
    assert isinstance(guard.check_query("SET myapp.org = 'b'", "a"), Refusal)
    assert guard.check_query("SET myapp.org = 'a'", "a") is None
    assert guard.check_query("SET app.current_tenant = 'b'", "a") is None
    assert isinstance(guard.check_query("SET ROLE reporting", "a"), Refusal)


def test_analysis_cache_is_bounded_and_used() -> None:
    guard = Guard(TenancyConfig(), cache_size=2)
    for sql in ("SET search_path = a", "SET search_path = b", "SET search_path = c",
                "SET search_path = c"):
        assert guard.check_query(sql, OWN) is None
    info = guard.cache_info()
    assert info is not None
    assert (info.hits, info.misses, info.currsize) == (1, 3, 2)
    uncached = Guard(TenancyConfig(), cache_size=0)
    assert uncached.cache_info() is None
    assert isinstance(uncached.check_query("SET ROLE x", OWN), Refusal)


def test_unparsable_sql_without_protected_words_is_left_to_postgresql() -> None:
    assert GUARD.check_query("SELEC * FROM t WHERE a = 'set'", OWN) is None
    assert GUARD.check_query("UPDATE t SET", OWN) is None


def test_deep_nesting_does_not_crash() -> None:
    sql = "SELECT " + "(" * 3000 + "1" + ")" * 3000 + " OFFSET 1"
    verdict = GUARD.check_query(sql, OWN)
    assert verdict is None or verdict.kind == "unparsable"
    nested = "SELECT 1"
    for _ in range(12):
        nested = "DO $$ BEGIN EXECUTE " + "'" + nested.replace("'", "''") + "'; END $$"
        nested = nested.replace("$$", "$x$") if nested.count("$$") > 2 else nested
    verdict = GUARD.check_query(nested, OWN)
    assert verdict is None or isinstance(verdict, Refusal)


SQLISH = st.text(
    st.sampled_from(list("setSETconfigapp.'\"$;()=_-/* \nroleDOU&\\0123456789,xyz")),
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(SQLISH, st.text(max_size=80)), st.one_of(st.none(), st.just(OWN)))
def test_random_text_always_gets_a_verdict(sql: str, tenant: str | None) -> None:
    sql = sql.replace("\0", "")
    verdict = GUARD.check_query(sql, tenant)
    assert verdict is None or isinstance(verdict, Refusal)
    parsed = GUARD.check_parse(sql, tenant)
    assert parsed is None or isinstance(parsed, Refusal | BindRule)


UNCACHED = Guard(TenancyConfig(), cache_size=0)
SQL_PIECES = st.sampled_from([
    "SET", "set", "reset", "offset", "UPDATE t", "app.current_tenant", "'globex'", "=", ";",
    " ", "\n", "/**/", "-- c\n", "set_config(", "'app.x'", ",", "false", ")", "ROLE",
    "x", "DO", "$$", "BEGIN", "PERFORM", "END", "EXECUTE", "SELECT", "U&", '"', "(", "1",
    "$1", "LOAD", "COPY", "PROGRAM", "'p'", "TO", "ALTER", "SYSTEM", "FUNCTION", "e",
])


@settings(max_examples=600, deadline=None)
@given(st.lists(SQL_PIECES, max_size=14).map("".join), st.sampled_from(["", " ", ";"]))
def test_prefilter_has_no_false_negatives(sql: str, lead: str) -> None:
    # Whatever the analyzer would flag (refusal, setting change, statement policy in
    # either pool mode), the pre-filter must send to it.
    sql = lead + sql
    analysis = UNCACHED._analyzer.analyze(sql)
    if analysis is CLEAN or needs_inspection(sql):
        return
    # Unparsable text that names a protected setting is refused when it reaches the
    # parser; text the pre-filter lets by has no way to change anything, so PostgreSQL
    # may report the syntax error itself.
    assert analysis.refusal is not None and analysis.refusal.kind == "unparsable", sql
    with pytest.raises(ParseError):
        parse_sql_json(sql)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.binary(max_size=12)), max_size=3),
       st.lists(st.integers(-2, 3), max_size=3))
def test_random_binds_always_get_a_verdict(params: list[bytes | None], formats: list[int]
                                           ) -> None:
    rule = rule_for("SELECT set_config($1, $2, false)")
    verdict = GUARD.check_bind(rule, params, formats)
    assert verdict is None or isinstance(verdict, Refusal)
