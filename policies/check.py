"""``pgtenant policies check``: audit a database for the mistakes that break tenant isolation.

Every finding has a stable code (``PGT001``...), a severity, the object it is about, a
message and advice. Codes are never renumbered: scripts and CI configurations rely on them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, LiteralString

import psycopg

from policies.catalog import PolicyError, role_exists

Severity = Literal["error", "warning"]
SEVERITY_RANK: dict[str, int] = {"warning": 1, "error": 2}


@dataclass(frozen=True, slots=True)
class Rule:
    code: str
    severity: Severity
    title: str
    advice: str


RULES: dict[str, Rule] = {r.code: r for r in (
    Rule("PGT001", "error", "tenant table without Row-Level Security",
         "pgtenant policies protect TABLE (or ALTER TABLE ... ENABLE ROW LEVEL SECURITY)"),
    Rule("PGT002", "error", "Row-Level Security not forced",
         "ALTER TABLE ... FORCE ROW LEVEL SECURITY, or the table owner bypasses every policy"),
    Rule("PGT003", "error", "Row-Level Security enabled but no policy",
         "add a policy (pgtenant policies protect TABLE); without one every row is hidden"),
    Rule("PGT004", "error", "app role is a superuser",
         "ALTER ROLE ... NOSUPERUSER: Row-Level Security never applies to superusers"),
    Rule("PGT005", "error", "app role has BYPASSRLS",
         "ALTER ROLE ... NOBYPASSRLS"),
    Rule("PGT006", "error", "app role owns a tenant table",
         "make another role own the table: an owner can switch Row-Level Security off"),
    Rule("PGT007", "error", "view over a Row-Level Security table without security_invoker",
         "ALTER VIEW ... SET (security_invoker = true): a view checks its owner's rights "
         "otherwise, and the owner may bypass the policies"),
    Rule("PGT008", "warning", "tenant column without an index led by it",
         "CREATE INDEX ... (tenant column, ...): every policy filters on it"),
    Rule("PGT009", "error", "TRUNCATE granted to the app role",
         "REVOKE TRUNCATE: TRUNCATE ignores Row-Level Security and empties every tenant"),
    Rule("PGT010", "warning", "REFERENCES granted to the app role",
         "REVOKE REFERENCES: a foreign key reveals whether other tenants' keys exist"),
    Rule("PGT011", "warning", "unique key without the tenant column",
         "include the tenant column in the key: a global unique key tells one tenant "
         "what the others stored, and lets it block their inserts"),
    Rule("PGT012", "warning", "query text visible across tenants in pg_stat_activity",
         "all tenants share the app role, which sees its own sessions' queries: "
         "ALTER ROLE ... SET track_activities = off (as a superuser), and keep "
         "tenant data in bind parameters"),
    Rule("PGT013", "warning", "app role can read every session's activity",
         "REVOKE pg_read_all_stats (and pg_monitor) FROM the app role"),
    Rule("PGT014", "error", "materialized view over a tenant table",
         "materialized views have no Row-Level Security: do not grant them to the app role, "
         "or keep them per tenant"),
    Rule("PGT015", "error", "policy uses an IMMUTABLE function",
         "mark the function STABLE: plans may cache an IMMUTABLE result, "
         "and with it another tenant's id"),
    Rule("PGT016", "error", "app role has CREATEROLE",
         "ALTER ROLE ... NOCREATEROLE: a CREATEROLE role can grant itself other roles "
         "and change theirs"),
    Rule("PGT017", "warning", "app role has CREATEDB",
         "ALTER ROLE ... NOCREATEDB: any tenant could create (and fill) databases"),
    Rule("PGT018", "error", "app role is a member of a privileged predefined role",
         "REVOKE the predefined role FROM the app role: its rights (signalling other "
         "sessions, server files and programs, all data) are every tenant's"),
    Rule("PGT019", "error", "app role may create objects in a schema",
         "REVOKE CREATE ON SCHEMA ... FROM the app role (and PUBLIC): what one tenant "
         "creates there every tenant's session finds, first on a search_path"),
    Rule("PGT020", "error", "app role owns a schema",
         "ALTER SCHEMA ... OWNER TO another role: a schema's owner may create, "
         "rename and drop anything in it"),
    Rule("PGT021", "error", "app role may create schemas in the database",
         "REVOKE CREATE ON DATABASE ... FROM the app role (and PUBLIC): a schema named "
         "after the role comes first on the default search_path (\"$user\", public)"),
    Rule("PGT022", "error", "app role owns the database",
         "ALTER DATABASE ... OWNER TO another role: the owner may change every session's "
         "settings (ALTER DATABASE ... SET) and owns schema public"),
    Rule("PGT023", "warning", "every tenant may end the other tenants' sessions",
         "REVOKE EXECUTE ON FUNCTION pg_terminate_backend(integer, bigint), "
         "pg_cancel_backend(integer) FROM PUBLIC (policies install --create-role does): "
         "a role may signal its own sessions, and all tenants share the app role"),
    Rule("PGT024", "error", "app role may read or change the signing keys",
         "REVOKE ALL ON pgtenant.keys FROM the app role (and do not grant it the owner "
         "role): with a key, anyone can prove any tenant"),
    Rule("PGT025", "warning", "setting stored on the app role",
         "ALTER ROLE ... RESET the setting (as a superuser): every tenant's session starts "
         "with it, and DISCARD ALL does not undo it; a tenant may have stored it with "
         "ALTER ROLE CURRENT_USER SET"),
)}

#: Predefined roles whose rights the shared upstream role must not have (PGT018).
#: pg_read_all_stats and pg_monitor are PGT013.
PRIVILEGED_PREDEFINED_ROLES = (
    "pg_execute_server_program", "pg_read_all_data", "pg_read_server_files",
    "pg_signal_backend", "pg_write_all_data", "pg_write_server_files",
)
ACTIVITY_ROLES = ("pg_monitor", "pg_read_all_stats")


@dataclass(frozen=True, slots=True)
class Finding:
    code: str
    severity: Severity
    object: str
    message: str
    advice: str


def _finding(code: str, obj: str, message: str | None = None) -> Finding:
    rule = RULES[code]
    return Finding(code, rule.severity, obj, message or rule.title, rule.advice)


#: A condition on ``pg_namespace AS n``: not PostgreSQL's own schemas (pgtenant's is in).
NOT_SYSTEM_SCHEMA: LiteralString = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema')"
    " AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'"
)
_SYSTEM_SCHEMAS: LiteralString = NOT_SYSTEM_SCHEMA + " AND n.nspname <> 'pgtenant'"

_TENANT_TABLES: LiteralString = (
    "SELECT c.oid, format('%%I.%%I', n.nspname, c.relname), c.relrowsecurity,"
    " c.relforcerowsecurity, a.attnum"
    " FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
    " JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attname = %(column)s"
    "  AND a.attnum > 0 AND NOT a.attisdropped"
    " WHERE c.relkind IN ('r', 'p') AND " + _SYSTEM_SCHEMAS + " ORDER BY 2"
)

_RLS_WITHOUT_POLICY: LiteralString = (
    "SELECT format('%I.%I', n.nspname, c.relname)"
    " FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
    " WHERE c.relkind IN ('r', 'p') AND c.relrowsecurity AND " + _SYSTEM_SCHEMAS
    + " AND NOT EXISTS (SELECT 1 FROM pg_policy AS p WHERE p.polrelid = c.oid) ORDER BY 1"
)

# Views and materialized views reading a table under RLS (or one with a tenant column).
_VIEWS_OVER_TENANT_TABLES: LiteralString = (
    "SELECT DISTINCT v.relkind, format('%%I.%%I', n.nspname, v.relname),"
    " format('%%I.%%I', tn.nspname, t.relname),"
    " EXISTS (SELECT 1 FROM pg_options_to_table(v.reloptions) AS o"
    "   WHERE o.option_name = 'security_invoker'"
    "   AND lower(o.option_value) IN ('true', 'on', 'yes', '1', 't', 'y'))"
    " FROM pg_class AS v JOIN pg_namespace AS n ON n.oid = v.relnamespace"
    " JOIN pg_rewrite AS r ON r.ev_class = v.oid"
    " JOIN pg_depend AS d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid"
    "  AND d.refclassid = 'pg_class'::regclass"
    " JOIN pg_class AS t ON t.oid = d.refobjid AND t.oid <> v.oid AND t.relkind IN ('r', 'p')"
    " JOIN pg_namespace AS tn ON tn.oid = t.relnamespace"
    " WHERE v.relkind IN ('v', 'm') AND " + _SYSTEM_SCHEMAS
    + " AND (t.relrowsecurity OR EXISTS (SELECT 1 FROM pg_attribute AS a"
    "   WHERE a.attrelid = t.oid AND a.attname = %(column)s AND NOT a.attisdropped))"
    " ORDER BY 2, 3"
)

_INDEXED_BY_TENANT: LiteralString = (
    "SELECT EXISTS (SELECT 1 FROM pg_index AS i WHERE i.indrelid = %(oid)s"
    " AND i.indkey[0] = %(attnum)s AND i.indisvalid AND i.indpred IS NULL)"
)

# Unique indexes (primary keys and unique constraints included) whose key leaves the
# tenant column out, unless every key column is generated by the database (identity,
# serial, random UUID): a surrogate key tells nothing about another tenant's data.
_GLOBAL_UNIQUE: LiteralString = (
    "SELECT format('%%I.%%I', n.nspname, ic.relname)"
    " FROM pg_index AS i JOIN pg_class AS ic ON ic.oid = i.indexrelid"
    " JOIN pg_namespace AS n ON n.oid = ic.relnamespace"
    " WHERE i.indrelid = %(oid)s AND i.indisunique"
    " AND NOT EXISTS (SELECT 1 FROM generate_series(0, i.indnkeyatts - 1) AS k"
    "   WHERE i.indkey[k] = %(attnum)s)"
    " AND EXISTS (SELECT 1 FROM generate_series(0, i.indnkeyatts - 1) AS k"
    "   LEFT JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[k]"
    "   LEFT JOIN pg_attrdef AS ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum"
    "   WHERE a.attnum IS NULL OR NOT (a.attidentity <> '' OR coalesce("
    "     pg_get_expr(ad.adbin, ad.adrelid) ~ '^(nextval|gen_random_uuid|uuid_generate_v[14])\\(',"
    "     false)))"
    " ORDER BY 1"
)

_IMMUTABLE_POLICY_FUNCTIONS: LiteralString = (
    "SELECT DISTINCT format('%I.%I', n.nspname, c.relname) || ' policy ' || quote_ident(p.polname),"
    " f.oid::regprocedure::text"
    " FROM pg_policy AS p JOIN pg_class AS c ON c.oid = p.polrelid"
    " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
    " JOIN pg_depend AS d ON d.classid = 'pg_policy'::regclass AND d.objid = p.oid"
    "  AND d.refclassid = 'pg_proc'::regclass"
    " JOIN pg_proc AS f ON f.oid = d.refobjid"
    " JOIN pg_namespace AS fn ON fn.oid = f.pronamespace"
    " WHERE f.provolatile = 'i' AND fn.nspname <> 'pg_catalog' ORDER BY 1, 2"
)

_ROLE_FLAGS: LiteralString = (
    "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles"
    " WHERE rolname = %(role)s"
)

# Membership as pg_has_role's MEMBER: direct or through other roles, and also without
# INHERIT (a NOINHERIT member may still SET ROLE to it).
_PREDEFINED_MEMBERSHIPS: LiteralString = (
    "SELECT rolname FROM pg_roles WHERE rolname = ANY(%(roles)s)"
    " AND pg_has_role(%(role)s, oid, 'MEMBER') ORDER BY 1"
)

# Every schema but the system's (pgtenant included: CREATE there shadows its objects).
_SCHEMA_RIGHTS: LiteralString = (
    "SELECT quote_ident(n.nspname), pg_has_role(%(role)s, n.nspowner, 'MEMBER'),"
    " has_schema_privilege(%(role)s, n.oid, 'CREATE'),"
    " n.nspowner = 'pg_database_owner'::regrole"
    " FROM pg_namespace AS n WHERE " + NOT_SYSTEM_SCHEMA + " ORDER BY 1"
)

_DATABASE_RIGHTS: LiteralString = (
    "SELECT quote_ident(d.datname), pg_has_role(%(role)s, d.datdba, 'MEMBER'),"
    " has_database_privilege(%(role)s, d.oid, 'CREATE')"
    " FROM pg_database AS d WHERE d.datname = current_database()"
)

#: Any role may signal backends of its own role, and EXECUTE on these is granted to
#: PUBLIC by default (PGT023). The one-argument pg_terminate_backend is PostgreSQL 13's.
SIGNAL_FUNCTIONS = (
    "pg_catalog.pg_cancel_backend(integer)",
    "pg_catalog.pg_terminate_backend(integer)",
    "pg_catalog.pg_terminate_backend(integer, bigint)",
)
_SIGNAL_FUNCTIONS_EXECUTABLE: LiteralString = (
    "SELECT f::text FROM (SELECT to_regprocedure(s) AS f FROM unnest(%(functions)s::text[])"
    " AS s) AS x WHERE f IS NOT NULL AND has_function_privilege(%(role)s, f, 'EXECUTE')"
    " ORDER BY 1"
)

_KEYS_EXPOSED: LiteralString = (
    "SELECT has_table_privilege(%(role)s, c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')"
    " OR has_any_column_privilege(%(role)s, c.oid, 'SELECT, INSERT, UPDATE')"
    " OR pg_has_role(%(role)s, c.relowner, 'MEMBER')"
    " FROM pg_class AS c WHERE c.oid = to_regclass('pgtenant.keys')"
)

# Settings stored on the role (in this database or all) that change what a tenant's
# session is: the tenant context itself, the client's view of warnings, read-only mode.
# The second column: stored for this database only (ALTER ROLE ... IN DATABASE).
STORED_SESSION_SETTINGS: LiteralString = (
    "SELECT s, rs.setdatabase <> 0 FROM pg_db_role_setting AS rs, unnest(rs.setconfig) AS s"
    " WHERE rs.setrole = (SELECT oid FROM pg_roles WHERE rolname = %(role)s)"
    " AND rs.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))"
    " AND (lower(split_part(s, '=', 1)) ~ '^(app|pgtenant)[.]'"
    "  OR lower(split_part(s, '=', 1)) IN ('client_min_messages',"
    "   'default_transaction_read_only', 'role'))"
    " ORDER BY 1"
)

# Tables under RLS without the tenant column: the role is confined on those too.
_RLS_TABLES_WITHOUT_COLUMN: LiteralString = (
    "SELECT c.oid, format('%%I.%%I', n.nspname, c.relname)"
    " FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
    " WHERE c.relkind IN ('r', 'p') AND c.relrowsecurity AND " + _SYSTEM_SCHEMAS
    + " AND NOT EXISTS (SELECT 1 FROM pg_attribute AS a WHERE a.attrelid = c.oid"
    "   AND a.attname = %(column)s AND a.attnum > 0 AND NOT a.attisdropped) ORDER BY 2"
)

_TABLE_RIGHTS: LiteralString = (
    "SELECT pg_has_role(%(role)s, c.relowner, 'MEMBER'),"
    " has_table_privilege(%(role)s, c.oid, 'TRUNCATE'),"
    " has_table_privilege(%(role)s, c.oid, 'REFERENCES')"
    " FROM pg_class AS c WHERE c.oid = %(oid)s"
)

# The role's own setting in this database, then its setting everywhere, then the
# database's, then the server's: the order PostgreSQL applies them at login.
_TRACK_ACTIVITIES: LiteralString = (
    "SELECT coalesce("
    " (SELECT split_part(s, '=', 2) FROM pg_db_role_setting AS rs, unnest(rs.setconfig) AS s"
    "  JOIN pg_roles AS r ON true"
    "  WHERE r.rolname = %(role)s AND rs.setrole = r.oid AND s LIKE 'track_activities=%%'"
    "  AND rs.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))"
    "  ORDER BY rs.setdatabase = 0 LIMIT 1),"
    " (SELECT split_part(s, '=', 2) FROM pg_db_role_setting AS rs, unnest(rs.setconfig) AS s"
    "  WHERE rs.setrole = 0 AND rs.setdatabase ="
    "   (SELECT oid FROM pg_database WHERE datname = current_database())"
    "  AND s LIKE 'track_activities=%%'),"
    " current_setting('track_activities'))"
)


def audit(
    conn: psycopg.Connection[Any], *, tenant_column: str = "tenant_id",
    app_role: str | None = None,
) -> list[Finding]:
    """Return the findings for the connected database, sorted by code and object.

    Without ``app_role`` the checks about the proxy's upstream role are skipped.
    """
    if app_role is not None and not role_exists(conn, app_role):
        raise PolicyError(f"app role {app_role} does not exist")
    found: list[Finding] = []
    column = {"column": tenant_column}
    tables = conn.execute(_TENANT_TABLES, column).fetchall()
    for oid, name, rls, forced, attnum in tables:
        if not rls:
            found.append(_finding("PGT001", name))
        elif not forced:
            found.append(_finding("PGT002", name))
        where = {"oid": oid, "attnum": attnum}
        if not _scalar(conn.execute(_INDEXED_BY_TENANT, where)):
            found.append(_finding("PGT008", name, f"no index on {name} starts with "
                                                  f"{tenant_column}"))
        found.extend(
            _finding("PGT011", name, f"unique index {index} does not include {tenant_column}")
            for (index,) in conn.execute(_GLOBAL_UNIQUE, where)
        )
    found.extend(_finding("PGT003", name) for (name,) in conn.execute(_RLS_WITHOUT_POLICY))
    for kind, view, table, invoker in conn.execute(_VIEWS_OVER_TENANT_TABLES, column):
        if kind == "m":
            found.append(_finding("PGT014", view, f"materialized view reads {table}"))
        elif not invoker:
            found.append(_finding("PGT007", view, f"view reads {table} with its owner's rights"))
    found.extend(
        _finding("PGT015", policy, f"policy calls IMMUTABLE {function}")
        for policy, function in conn.execute(_IMMUTABLE_POLICY_FUNCTIONS)
    )
    if app_role is not None:
        confined = [*tables, *conn.execute(_RLS_TABLES_WITHOUT_COLUMN, column)]
        found.extend(_audit_role(conn, app_role, confined))
    return _sorted(found)


def audit_role(
    conn: psycopg.Connection[Any], role: str, *, tenant_column: str = "tenant_id"
) -> list[Finding]:
    """Only the findings about the proxy's upstream role ``role``, sorted."""
    if not role_exists(conn, role):
        raise PolicyError(f"app role {role} does not exist")
    column = {"column": tenant_column}
    confined = [*conn.execute(_TENANT_TABLES, column),
                *conn.execute(_RLS_TABLES_WITHOUT_COLUMN, column)]
    return _sorted(_audit_role(conn, role, confined))


def _sorted(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (f.code, f.object, f.message))


def _audit_role(
    conn: psycopg.Connection[Any], role: str, tables: Iterable[Sequence[Any]]
) -> list[Finding]:
    found: list[Finding] = []
    who = {"role": role}
    superuser, bypassrls, createrole, createdb = conn.execute(
        _ROLE_FLAGS, who).fetchone() or (False, False, False, False)
    if superuser:
        # A superuser may do anything: the one finding about the role says it all.
        return [_finding("PGT004", role)]
    if bypassrls:
        found.append(_finding("PGT005", role))
    if createrole:
        found.append(_finding("PGT016", role))
    if createdb:
        found.append(_finding("PGT017", role))
    activity = [r for (r,) in conn.execute(
        _PREDEFINED_MEMBERSHIPS, {**who, "roles": list(ACTIVITY_ROLES)})]
    if activity:
        found.append(_finding("PGT013", role, f"{role} is a member of {', '.join(activity)}"))
    found.extend(
        _finding("PGT018", role, f"{role} is a member of {predefined}")
        for (predefined,) in conn.execute(
            _PREDEFINED_MEMBERSHIPS, {**who, "roles": list(PRIVILEGED_PREDEFINED_ROLES)}))
    found.extend(_audit_schemas_and_database(conn, role))
    signal = [f for (f,) in conn.execute(
        _SIGNAL_FUNCTIONS_EXECUTABLE, {**who, "functions": list(SIGNAL_FUNCTIONS)})]
    if signal:
        found.append(_finding("PGT023", role, f"{role} may call {', '.join(signal)} on the "
                                              "sessions of every tenant"))
    if _scalar(conn.execute(_KEYS_EXPOSED, who)):
        found.append(_finding("PGT024", "pgtenant.keys",
                              f"{role} may read or change pgtenant.keys"))
    found.extend(
        _finding("PGT025", role, f"{role} has the stored setting {setting}")
        for setting, _ in conn.execute(STORED_SESSION_SETTINGS, who))
    # An owner may do everything on its table: the ownership finding says it all.
    for oid, name, *_ in tables:
        owns, truncate, references = conn.execute(
            _TABLE_RIGHTS, {**who, "oid": oid}).fetchone() or (False, False, False)
        if owns:
            found.append(_finding("PGT006", name, f"{role} owns {name} or is in its owner role"))
            continue
        if truncate:
            found.append(_finding("PGT009", name, f"{role} may TRUNCATE {name}"))
        if references:
            found.append(_finding("PGT010", name, f"{role} may reference {name} in a foreign key"))
    track = str(_scalar(conn.execute(_TRACK_ACTIVITIES, who))).lower()
    if track in ("on", "true", "yes", "1"):
        found.append(_finding(
            "PGT012", role, f"track_activities is on for {role}: every tenant's session can "
            "read the other tenants' query text"))
    return found


def _audit_schemas_and_database(conn: psycopg.Connection[Any], role: str) -> list[Finding]:
    """PGT019-PGT022. Every schema is checked, not only those on the role's search_path:
    a schema off the path is still a place one tenant can leave objects for the others,
    and a path is one ``SET search_path`` away."""
    found: list[Finding] = []
    database, owns_database, create_schemas = conn.execute(
        _DATABASE_RIGHTS, {"role": role}).fetchone() or ("", False, False)
    if owns_database:
        found.append(_finding("PGT022", database, f"{role} owns database {database}"))
    elif create_schemas:
        found.append(_finding("PGT021", database, f"{role} may CREATE in database {database}"))
    for schema, owns, create, database_owners in conn.execute(_SCHEMA_RIGHTS, {"role": role}):
        if owns and database_owners and owns_database:
            continue  # schema public of PostgreSQL 15+: PGT022 says it
        if owns:
            found.append(_finding("PGT020", schema, f"{role} owns schema {schema} or is in "
                                                    "its owner role"))
        elif create:
            found.append(_finding("PGT019", schema, f"{role} may CREATE in schema {schema}"))
    return found


def _scalar(cursor: psycopg.Cursor[Any]) -> Any:
    row = cursor.fetchone()
    return row[0] if row else None


def exit_status(findings: Iterable[Finding], fail_on: Severity = "warning") -> int:
    """1 when a finding is at least as severe as ``fail_on``, else 0."""
    threshold = SEVERITY_RANK[fail_on]
    return 1 if any(SEVERITY_RANK[f.severity] >= threshold for f in findings) else 0


def render_json(findings: Sequence[Finding]) -> str:
    return json.dumps({"findings": [asdict(f) for f in findings]}, indent=2)


def render_table(findings: Sequence[Finding]) -> str:
    """A fixed-width table, then the advice once per code, then a one-line summary."""
    if not findings:
        return "no findings\n"
    header = ("SEVERITY", "CODE", "OBJECT", "FINDING")
    rows = [header, *((f.severity, f.code, f.object, f.message) for f in findings)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join([*(r[i].ljust(widths[i]) for i in range(3)), r[3]]).rstrip()
             for r in rows]
    lines.append("")
    lines.extend(f"{code} {RULES[code].title}: {RULES[code].advice}"
                 for code in dict.fromkeys(f.code for f in findings))
    errors = sum(f.severity == "error" for f in findings)
    lines.append("")
    lines.append(f"{len(findings)} findings ({errors} errors, {len(findings) - errors} warnings)")
    return "\n".join(lines) + "\n"
