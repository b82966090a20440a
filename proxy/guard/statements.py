"""What a tenant client may run: the statement policy, deny by default.

Tenant clients share server connections (and, in transaction pooling, backends) with
other tenants, so anything that leaves state on a backend, reaches other sessions or
ignores row-level security is refused. Allowed: queries and DML, transaction control,
SHOW, EXPLAIN of allowed statements, COPY to or from the client, cursors, SET/RESET
(judged by :mod:`proxy.guard.policy`), SET CONSTRAINTS, DISCARD, DEALLOCATE, UNLISTEN,
LOCK, CALL, and the staging temp table ``CREATE TEMP TABLE name (columns | LIKE table)``.
Everything else, and calls of the functions and reads of the relations listed here, is
refused.

CALL is allowed: a procedure runs with the caller's rights exactly like a function in a
SELECT (which tenants may call anyway), tenants cannot create procedures, and its name
and arguments are checked like any other call.

Verdicts come in pairs, ``(session mode, transaction mode)``: SQL PREPARE/EXECUTE,
WITH HOLD cursors, session-level advisory locks and temp tables without ON COMMIT DROP
outlive the transaction, which is only safe when the backend belongs to one client for
its whole session. The configuration (``[tenancy]``) may allow DDL and LISTEN in
session mode, NOTIFY, and named functions.

Bypass identities (service accounts with no tenant) are not subject to this policy.
"""

from __future__ import annotations

import json
import re
from typing import Any

from proxy.config import TenancyConfig
from proxy.guard.verdict import Refusal

#: Both pool modes, session then transaction.
Verdicts = tuple[Refusal | None, Refusal | None]
ALLOWED: Verdicts = (None, None)

#: Statement names the proxy uses for its own prepared statements.
PROXY_NAMESPACE = "pgtenant_"
_CURSOR_OPT_HOLD = 0x0020

#: Statements a tenant may run whatever the pool mode (more are judged one by one below).
_PLAIN = frozenset({
    "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "VariableShowStmt",
    "VariableSetStmt", "DiscardStmt", "ClosePortalStmt", "FetchStmt", "LockStmt",
    "CallStmt", "UnlistenStmt", "ConstraintsSetStmt",
})
# A statement node in libpg_query's JSON is {"SelectStmt": {...}}; every top-level
# statement is wrapped like this (RawStmt.stmt is a generic node). A quote inside a
# string value is escaped, so string contents cannot end in 'Stmt":' (at worst they
# add a kind that is not simple).
_SIMPLE = _PLAIN | {"SelectStmt", "TransactionStmt"}
_ROLE_ADMIN = {
    "CreateRoleStmt": "CREATE ROLE", "AlterRoleStmt": "ALTER ROLE",
    "AlterRoleSetStmt": "ALTER ROLE ... SET", "DropRoleStmt": "DROP ROLE",
    "GrantStmt": "GRANT/REVOKE", "GrantRoleStmt": "GRANT/REVOKE of a role",
    "AlterDefaultPrivilegesStmt": "ALTER DEFAULT PRIVILEGES",
    "ReassignOwnedStmt": "REASSIGN OWNED", "DropOwnedStmt": "DROP OWNED",
    "AlterOwnerStmt": "ALTER ... OWNER TO",
    "CreatedbStmt": "CREATE DATABASE", "DropdbStmt": "DROP DATABASE",
    "AlterDatabaseStmt": "ALTER DATABASE", "AlterDatabaseSetStmt": "ALTER DATABASE ... SET",
    "AlterDatabaseRefreshCollStmt": "ALTER DATABASE ... REFRESH COLLATION VERSION",
    "AlterSystemStmt": "ALTER SYSTEM", "SecLabelStmt": "SECURITY LABEL",
    "LoadStmt": "LOAD",
}
_MAINTENANCE = {
    "VacuumStmt": "VACUUM/ANALYZE", "ClusterStmt": "CLUSTER", "ReindexStmt": "REINDEX",
    "CheckPointStmt": "CHECKPOINT", "RefreshMatViewStmt": "REFRESH MATERIALIZED VIEW",
}
_NAMED_DDL = {
    "CreateStmt": "CREATE TABLE", "ViewStmt": "CREATE VIEW",
    "CreateFunctionStmt": "CREATE FUNCTION/PROCEDURE", "RuleStmt": "CREATE RULE",
    "CreateTrigStmt": "CREATE TRIGGER", "CreateSeqStmt": "CREATE SEQUENCE",
    "AlterSeqStmt": "ALTER SEQUENCE", "DropStmt": "DROP", "AlterTableStmt": "ALTER TABLE",
    "RenameStmt": "ALTER ... RENAME", "CommentStmt": "COMMENT", "IndexStmt": "CREATE INDEX",
    "CreateTableAsStmt": "CREATE TABLE AS", "DefineStmt": "CREATE AGGREGATE/OPERATOR/TYPE",
    "CreateSchemaStmt": "CREATE SCHEMA", "AlterFunctionStmt": "ALTER FUNCTION",
    "AlterObjectSchemaStmt": "ALTER ... SET SCHEMA", "CreateExtensionStmt": "CREATE EXTENSION",
    "ImportForeignSchemaStmt": "IMPORT FOREIGN SCHEMA", "CreatePolicyStmt": "CREATE POLICY",
    "AlterPolicyStmt": "ALTER POLICY", "CreateCastStmt": "CREATE CAST",
    "CreateEventTrigStmt": "CREATE EVENT TRIGGER", "CreateDomainStmt": "CREATE DOMAIN",
    "CompositeTypeStmt": "CREATE TYPE", "CreateEnumStmt": "CREATE TYPE",
    "SelectInto": "SELECT ... INTO",
}

_SIGNAL_FUNCTIONS = frozenset({
    "pg_terminate_backend", "pg_cancel_backend", "pg_signal_backend", "pg_reload_conf",
    "pg_rotate_logfile", "pg_log_backend_memory_contexts", "pg_promote",
})
#: Functions and relations that show other sessions (their queries, statements, locks).
_SESSION_FUNCTIONS = frozenset({
    "pg_stat_get_activity", "pg_prepared_statement", "pg_cursor", "pg_lock_status",
    "pg_blocking_pids", "pg_safe_snapshot_blocking_pids", "pg_get_backend_memory_contexts",
    "pg_stat_get_progress_info", "pg_stat_get_wal_senders", "pg_stat_get_wal_receiver",
    "pg_stat_get_subscription", "pg_show_replication_origin_status",
})
_SESSION_FUNCTION_PREFIXES = ("pg_stat_get_backend_", "pg_stat_reset", "pg_stat_statements")
_SESSION_RELATIONS = frozenset({
    "pg_stat_activity", "pg_stat_statements", "pg_stat_statements_info",
    "pg_prepared_statements", "pg_cursors", "pg_locks", "pg_stat_replication",
    "pg_stat_wal_receiver", "pg_stat_subscription",
    "pg_backend_memory_contexts", "pg_prepared_xacts", "pg_replication_slots",
    "pg_stat_replication_slots", "pg_replication_origin_status",
})
_SESSION_RELATION_PREFIXES = ("pg_stat_progress_",)
#: Other functions with effects outside the tenant's rows: connections to other
#: databases, large objects (not covered by row-level security), server files,
#: replication and backup control, queries over relations named by a string.
_OTHER_FUNCTIONS = frozenset({
    "loread", "lowrite", "pg_stat_file", "pg_logdir_ls", "pg_start_backup",
    "pg_stop_backup", "pg_switch_wal", "pg_import_system_collations",
    "pg_replication_slot_advance", "pg_drop_replication_slot", "connectby",
})
_OTHER_FUNCTION_PREFIXES = (
    "dblink", "lo_", "pg_ls_", "pg_file_", "pg_read_", "pg_logical_",
    "pg_replication_origin", "pg_wal_replay_", "postgres_fdw_", "pg_backup_", "pg_create_",
    "pg_copy_", "table_to_xml", "schema_to_xml", "database_to_xml",
)
_NOTIFY_FUNCTIONS = frozenset({"pg_notify"})
_SESSION_LOCKS = frozenset({
    "pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
})
#: Every refused function or relation name other than pg_* contains one of these; a
#: parse tree without any of them, and without pg_ beyond pg_catalog, needs no walk for
#: names. (A quoted upper-case spelling names another object, which is not refused.)
NAME_MARKERS = ("dblink", "lo_", "loread", "lowrite", "postgres_fdw_", "_to_xml",
                "connectby")


_JSON_STRING = r'"((?:[^"\\]|\\.)*)"'
_RELNAME = re.compile(r'"relname":' + _JSON_STRING)
_FUNCNAME = re.compile(r'"funcname":\[((?:\{"String":\{"sval":"(?:[^"\\]|\\.)*"\}\},?)+)\]')
_SVAL = re.compile(r'"sval":' + _JSON_STRING)


def _unescape(raw: str) -> str:
    return raw if "\\" not in raw else str(json.loads('"' + raw + '"'))


def names_in(tree_json: str) -> tuple[list[str], list[str]] | None:
    """The function names (without schema) and relation names in a parse tree (JSON),
    read from the text without decoding the tree; None if the text does not have the
    expected shape (then walk the decoded tree instead)."""
    calls = _FUNCNAME.findall(tree_json)
    relations = _RELNAME.findall(tree_json)
    if (len(calls) != tree_json.count('"funcname":')
            or len(relations) != tree_json.count('"relname":')):
        return None
    functions = [_unescape(_SVAL.findall(call)[-1]) for call in calls]
    return functions, [_unescape(name) for name in relations]


def names_refusable(tree_json: str) -> bool:
    """Whether the parse tree (JSON) may call a refused function or read a refused
    relation: then it is walked with :meth:`StatementPolicy.function` and ``relation``."""
    if tree_json.count("pg_") > tree_json.count('"sval":"pg_catalog"'):
        return True
    return any(marker in tree_json for marker in NAME_MARKERS)

_DDL_HINT = ("tenant connections run queries, DML, transaction control, cursors and COPY "
             "to or from the client; run schema changes with a service account")
_FUNCTION_HINT = "ask for it in tenancy.allowed_functions if your application needs it"


def _camel_words(node: str) -> str:
    return " ".join(re.findall(r"[A-Z][a-z]*", node.removesuffix("Stmt"))).upper()


def _what(node: str) -> str:
    return (_NAMED_DDL.get(node) or _ROLE_ADMIN.get(node) or _MAINTENANCE.get(node)
            or _camel_words(node) or node)


def _refusal(kind: str, message: str, hint: str | None = None) -> Refusal:
    return Refusal(kind=kind, message=f"permission denied: {message}", hint=hint)


def _ddl(node: str) -> Refusal:
    return _refusal("statement", f"{_what(node)} is not allowed for tenant connections "
                    "through pgtenant", _DDL_HINT)


def _reserved(name: str) -> Refusal:
    return _refusal("proxy_statement", f'the statement name "{name}" is reserved for the '
                    "proxy (names starting with pgtenant_)", "choose another statement name")


_DO = _refusal("do", "DO blocks are not allowed for tenant connections through pgtenant",
               "call a function created by a migration with SELECT instead")
_TRUNCATE = _refusal(
    "truncate", "TRUNCATE is not allowed for tenant connections: it ignores row-level "
    "security and would remove every tenant's rows", "use DELETE, which row-level "
    "security confines to your tenant")
_COPY_FILE = _refusal("copy_file", "COPY to or from a file on the database server is not "
                      "allowed through pgtenant", "use COPY ... TO STDOUT or FROM STDIN")
_TWO_PHASE = _refusal(
    "two_phase", "two-phase commit (PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED) is not "
    "allowed for tenant connections", "a prepared transaction outlives the connection")
_SQL_PREPARE = _refusal(
    "sql_prepare", "SQL PREPARE and EXECUTE are not allowed in transaction pooling mode: "
    "the statement would stay on a server connection that other clients use",
    "use your driver's prepared statements (the extended protocol), which pgtenant tracks")
_HOLD_CURSOR = _refusal(
    "hold_cursor", "DECLARE ... WITH HOLD is not allowed in transaction pooling mode: the "
    "cursor would outlive the transaction on a shared server connection",
    "declare the cursor without WITH HOLD inside a transaction")
_TEMP_TABLE = _refusal(
    "temp_table", "only CREATE TEMP TABLE name (columns) or (LIKE table) is allowed for "
    "tenant connections", "stage rows in a plain temp table, then INSERT ... SELECT")
_TEMP_TABLE_TX = _refusal(
    "temp_table", "a temp table must be created with ON COMMIT DROP in transaction "
    "pooling mode: it would otherwise stay on a server connection other tenants use",
    "CREATE TEMP TABLE name (LIKE table) ON COMMIT DROP inside a transaction")
_LISTEN = _refusal(
    "notify", "LISTEN is not allowed for tenant connections: notification channels are "
    "shared by every tenant", "an operator can set tenancy.allow_listen_in_session_mode")
_NOTIFY = _refusal(
    "notify", "NOTIFY and pg_notify() are not allowed for tenant connections: every "
    "listener of the channel, whatever its tenant, receives the payload",
    "an operator can set tenancy.allow_notify")


class StatementPolicy:
    """Judges statements, function calls and relations for tenant clients."""

    def __init__(self, tenancy: TenancyConfig) -> None:
        self.allow_ddl_in_session = tenancy.allow_ddl_in_session_mode
        self.allow_listen_in_session = tenancy.allow_listen_in_session_mode
        self.allow_notify = tenancy.allow_notify
        self.allowed_functions = frozenset(n.lower() for n in tenancy.allowed_functions)
        self._functions: dict[str, Verdicts] = {}

    # ---- statements -------------------------------------------------------------------

    @staticmethod
    def plain_statements(tree_json: str) -> set[str] | None:
        """The statement types in a parse tree (JSON) when each is allowed in every pool
        mode without a closer look (no SELECT ... INTO, no two-phase commit), else None."""
        pieces = tree_json.split('Stmt":')
        kinds = {piece[piece.rfind('"') + 1:] + "Stmt" for piece in pieces[:-1]}
        kinds = {kind for kind in kinds if "A" <= kind[0] <= "Z"}  # not "selectStmt":
        if kinds <= _SIMPLE and '"intoClause"' not in tree_json and "_PREPARE" not in tree_json:
            return kinds
        return None

    def statement(self, node: str, fields: Any) -> Verdicts:
        """Verdicts for one statement (``node`` is its parse-tree type, e.g. SelectStmt)."""
        if node in _PLAIN:
            return ALLOWED
        if node == "SelectStmt":
            if fields.get("intoClause"):  # SELECT ... INTO creates a table
                return self._ddl_verdicts("SelectInto")
            return ALLOWED
        if node == "TransactionStmt":
            if fields.get("kind") in ("TRANS_STMT_PREPARE", "TRANS_STMT_COMMIT_PREPARED",
                                      "TRANS_STMT_ROLLBACK_PREPARED"):
                return (_TWO_PHASE, _TWO_PHASE)
            return ALLOWED
        if node in ("ExplainStmt", "DeclareCursorStmt", "CopyStmt", "PrepareStmt"):
            return self._wrapper(node, fields)
        if node in ("ExecuteStmt", "DeallocateStmt"):
            name = fields.get("name") or ""
            if name.lower().startswith(PROXY_NAMESPACE):
                return (_reserved(name), _reserved(name))
            return (None, _SQL_PREPARE) if node == "ExecuteStmt" else ALLOWED
        if node == "CreateStmt":
            return self._create_table(fields)
        if node == "ListenStmt":
            return (None if self.allow_listen_in_session else _LISTEN, _LISTEN)
        if node == "NotifyStmt":
            return ALLOWED if self.allow_notify else (_NOTIFY, _NOTIFY)
        if node == "DoStmt":
            return (_DO, _DO)
        if node == "TruncateStmt":
            return (_TRUNCATE, _TRUNCATE)
        if node in _ROLE_ADMIN:
            refusal = _refusal("role_admin", f"{_ROLE_ADMIN[node]} is not allowed for "
                               "tenant connections through pgtenant",
                               "roles, grants and database settings are the operator's")
            return (refusal, refusal)
        if node in _MAINTENANCE:
            refusal = _refusal("maintenance", f"{_MAINTENANCE[node]} is not allowed for "
                               "tenant connections through pgtenant",
                               "run maintenance with a service account")
            return (refusal, refusal)
        return self._ddl_verdicts(node)  # deny by default

    def _ddl_verdicts(self, node: str) -> Verdicts:
        refusal = _ddl(node)
        return (None if self.allow_ddl_in_session else refusal, refusal)

    def _wrapper(self, node: str, fields: Any) -> Verdicts:
        """Statements that carry another statement: judged with it."""
        session: Refusal | None = None
        transaction: Refusal | None = None
        if node == "CopyStmt" and fields.get("filename"):
            session = transaction = _COPY_FILE
        elif node == "DeclareCursorStmt" and int(fields.get("options") or 0) & _CURSOR_OPT_HOLD:
            transaction = _HOLD_CURSOR
        elif node == "PrepareStmt":
            name = fields.get("name") or ""
            if name.lower().startswith(PROXY_NAMESPACE):
                session = _reserved(name)
            transaction = session or _SQL_PREPARE
        inner = fields.get("query")
        if type(inner) is dict and inner:
            inner_node, inner_fields = next(iter(inner.items()))
            inner_session, inner_transaction = self.statement(inner_node, inner_fields)
            session = session or inner_session
            transaction = transaction or inner_transaction
        return (session, transaction)

    def _create_table(self, fields: Any) -> Verdicts:
        relation = fields.get("relation") or {}
        if relation.get("relpersistence") != "t":
            return self._ddl_verdicts("CreateStmt")
        plain = all(("ColumnDef" in e or "TableLikeClause" in e)
                    for e in fields.get("tableElts") or ())
        plain = plain and not any(fields.get(key) for key in (
            "inhRelations", "partbound", "partspec", "ofTypename", "accessMethod",
            "tablespacename", "options"))
        session = None if plain or self.allow_ddl_in_session else _TEMP_TABLE
        if not plain:
            return (session, _TEMP_TABLE)
        if fields.get("oncommit") != "ONCOMMIT_DROP":
            return (session, _TEMP_TABLE_TX)
        return (session, None)

    # ---- functions and relations ------------------------------------------------------

    def function(self, name: str) -> Verdicts:
        """Verdicts for a call of the function ``name`` (without schema, any case)."""
        key = name.lower()
        verdicts = self._functions.get(key)
        if verdicts is None:
            verdicts = self._judge_function(key)
            if len(self._functions) < 4096:
                self._functions[key] = verdicts
        return verdicts

    def _judge_function(self, key: str) -> Verdicts:
        if key in self.allowed_functions:
            return ALLOWED
        if key in _SIGNAL_FUNCTIONS:
            refusal = _refusal("signal_backend", f"{key}() is not allowed for tenant "
                               "connections: it acts on other sessions")
            return (refusal, refusal)
        if key in _SESSION_FUNCTIONS or key.startswith(_SESSION_FUNCTION_PREFIXES):
            refusal = _refusal("other_sessions", f"{key}() shows or changes other "
                               "sessions and is not available to tenant connections")
            return (refusal, refusal)
        if key in _NOTIFY_FUNCTIONS:
            return ALLOWED if self.allow_notify else (_NOTIFY, _NOTIFY)
        if key in _SESSION_LOCKS:
            return (None, _refusal(
                "session_lock", f"{key}() takes a session-level advisory lock, which "
                "would outlive the transaction on a server connection other tenants use "
                "in transaction pooling mode",
                "use pg_advisory_xact_lock(), released at the end of the transaction"))
        if key in _OTHER_FUNCTIONS or key.startswith(_OTHER_FUNCTION_PREFIXES):
            refusal = _refusal("function", f"{key}() is not allowed for tenant "
                               "connections through pgtenant", _FUNCTION_HINT)
            return (refusal, refusal)
        return ALLOWED

    @staticmethod
    def relation(name: str) -> Refusal | None:
        """The refusal for reading the relation ``name`` (without schema, any case)."""
        key = name.lower()
        if key in _SESSION_RELATIONS or key.startswith(_SESSION_RELATION_PREFIXES):
            return _refusal("other_sessions", f'"{key}" shows other sessions and is not '
                            "available to tenant connections")
        return None
