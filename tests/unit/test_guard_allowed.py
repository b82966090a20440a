"""The SQL guard lets real application SQL by: the own tenant, resets, ordinary settings,
what ORMs and drivers send; what migrations run is for bypass identities only."""

from __future__ import annotations

import pytest

from proxy.guard import CLEAN, needs_inspection
from tests.unit.guard_verdicts import GUARD, OWN, refused

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
