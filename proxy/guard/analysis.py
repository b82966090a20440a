"""Tenant-independent inspection of SQL text with pglast (libpg_query, PostgreSQL's parser).

:meth:`Analyzer.analyze` reads one Query or Parse text and returns an :class:`Analysis`:
a refusal that holds for every identity, the setting writes whose verdict depends on
the tenant or on bind parameters, and whether the text runs dynamic SQL. The result
depends only on the text (and the configuration), so the guard caches it by text.

The parse tree is libpg_query's JSON, walked iteratively (deep expressions cannot
exhaust Python's stack). Where the tree holds more SQL as strings, that SQL is parsed
and inspected too: ``DO`` and ``CREATE FUNCTION`` bodies (PL/pgSQL with pglast's
PL/pgSQL parser, SQL-language bodies with the SQL parser), constant strings given to
``EXECUTE`` and to the core functions that run a query from text.

"Persistent" context: a write stored in an object that outlives the statement (a
function, view, rule, policy, prepared statement, role or database setting) would later
run for whoever uses the object, so there no protected write is allowed, whatever its
value. Only a statement that runs now (SELECT, INSERT, UPDATE, DELETE, MERGE, EXPLAIN,
COPY, DECLARE, CALL, DO, SET) may re-state the client's own tenant.

Every statement, also inside strings and bodies, is judged by the tenant statement
policy (:mod:`proxy.guard.statements`) too; its verdicts, one per pool mode, are kept
apart because they apply to tenant clients only. The analysis also tells whether the
text may change session settings, and which SQL PREPARE/EXECUTE it runs.

The result type and its collector are in :mod:`proxy.guard.findings`; reading values
and names out of the JSON tree is in :mod:`proxy.guard.parse_tree`. This module holds
the rules: what is walked, what is refused, what is deferred to the tenant.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pglast.parser import parse_plpgsql_json, parse_sql_json

from proxy.guard.findings import Analysis, Findings
from proxy.guard.parse_tree import (
    constant_value,
    def_elems,
    dicts,
    names_in_statements,
    string_value,
)
from proxy.guard.policy import GUARDED_SETTINGS, Deferred, SettingPolicy
from proxy.guard.statements import StatementPolicy, names_in, names_refusable
from proxy.guard.verdict import (
    Execute,
    Param,
    Prepare,
    Refusal,
    SettingValue,
    SettingWrite,
    Special,
)

#: Statement types that run now; every other statement is a persistent context.
_IMMEDIATE = frozenset({
    "SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "ExplainStmt",
    "CopyStmt", "DeclareCursorStmt", "CallStmt", "DoStmt", "VariableSetStmt",
    "VariableShowStmt", "ExecuteStmt", "TransactionStmt", "DiscardStmt", "FetchStmt",
    "ClosePortalStmt", "ListenStmt", "UnlistenStmt", "NotifyStmt", "LockStmt",
})
#: Core functions that execute a query passed as text, with the index of that argument.
_QUERY_RUNNERS = {
    "query_to_xml": 0, "query_to_xmlschema": 0, "query_to_xml_and_xmlschema": 0,
    "ts_stat": 0, "ts_rewrite": 1,
    # tablefunc's crosstab runs its text arguments as queries
    "crosstab": 0, "crosstab2": 0, "crosstab3": 0, "crosstab4": 0,
}
#: Names that must not appear in a persistent object (aggregates, operators, casts and
#: views can call set_config or a query runner, or expose pg_settings, by name alone).
_DANGEROUS_NAMES = frozenset({"set_config", "pg_settings", *_QUERY_RUNNERS})
_DML = ("UpdateStmt", "InsertStmt", "DeleteStmt", "MergeStmt")
_NODES_OF_INTEREST = frozenset({
    "FuncCall", "VariableSetStmt", "setstmt", *_DML, "CopyStmt", "AlterSystemStmt",
    "LoadStmt", "DoStmt", "CreateFunctionStmt",
})
_SET_CONFIG_ARGS = {"setting_name": 0, "new_value": 1, "is_local": 2}
# Node types worth walking for; a parse tree without any of them is clean.
_MARKERS = (
    "set_config", "SetStmt", "setstmt", "is_program", "pg_settings", "DoStmt",
    "CreateFunctionStmt", "AlterSystemStmt", "LoadStmt", "query_to_xml", "ts_stat",
    "ts_rewrite", "crosstab",
)
#: How many levels of SQL inside strings inside SQL are inspected before refusing.
MAX_NESTING = 8


_TOO_DEEP = Refusal(
    kind="unparsable",
    message="statement is nested too deeply for pgtenant to inspect",
)


class _Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


class Analyzer:
    """Builds :class:`Analysis` values for one setting policy. Holds no per-text state."""

    def __init__(self, policy: SettingPolicy, statements: StatementPolicy) -> None:
        self.policy = policy
        self.statements = statements
        self._guarded_names = (policy.tenant_setting, *policy.prefixes, *GUARDED_SETTINGS)
        prefixes = "|".join(re.escape(p) for p in policy.prefixes)
        base = (
            "set_config|pg_settings|query_to_xml|ts_stat|ts_rewrite|role|authoriz|program"
            r"|u&|alter\s+system|\bload\b"
        )
        if prefixes:
            base += "|" + prefixes
        # Unparsable statements that mention these are refused (fail closed).
        self._mentions = re.compile(base)
        # Bodies the guard cannot parse, and dynamic SQL: also SET and EXECUTE.
        self._body_mentions = re.compile(base + r"|\bset\b|execute|\bdo\b")

    # ---- entry point ------------------------------------------------------------------

    def analyze(self, sql: str) -> Analysis:
        """Inspect ``sql`` (one Query or Parse text, possibly several statements)."""
        found = Findings()
        try:
            self._sql(found, sql, persistent=False, depth=0)
        except _Refused as exc:
            return Analysis(refusal=exc.refusal)
        except RecursionError:  # json.loads on an absurdly deep tree
            return Analysis(refusal=_TOO_DEEP)
        return found.analysis()

    # ---- SQL text ---------------------------------------------------------------------

    def _sql(self, found: Findings, sql: str, *, persistent: bool, depth: int) -> None:
        if depth > MAX_NESTING:
            raise _Refused(_TOO_DEEP)
        try:
            tree_json: str = parse_sql_json(sql)
        except Exception:  # pglast.parser.ParseError, or anything the C parser rejects
            self._unparsable(sql, self._mentions)
            return
        stmts: list[Any] | None = None
        plain = self.statements.plain_statements(tree_json)
        if plain is not None:  # the common case: no need to decode the tree for the policy
            if "VariableSetStmt" in plain or "DiscardStmt" in plain:
                found.changes_settings = True
        else:
            stmts = json.loads(tree_json).get("stmts", ())
            self._statement_policy(found, stmts, depth=depth)
        if names_refusable(tree_json):
            names = names_in(tree_json)
            if names is None:
                stmts = json.loads(tree_json).get("stmts", ()) if stmts is None else stmts
                names = names_in_statements(stmts)
            for function in names[0]:
                found.refuse(*self.statements.function(function))
            for relation in names[1]:
                refusal = self.statements.relation(relation)
                found.refuse(refusal, refusal)
        present = [marker for marker in _MARKERS if marker in tree_json]
        if not present:
            return
        if present == ["SetStmt"] and not self._names_guarded_setting(tree_json):
            return  # SET of ordinary settings only (search_path, TimeZone, ...)
        stmts = json.loads(tree_json).get("stmts", ()) if stmts is None else stmts
        encoded: bytes | None = None
        for raw in stmts:
            node = raw["stmt"]
            kind, fields = next(iter(node.items()))
            root_persistent = persistent or kind not in _IMMEDIATE
            if kind == "VariableSetStmt":
                self._variable_set(found, fields, persistent=root_persistent, depth=depth)
                continue
            stmt_text = ""
            if kind in ("DoStmt", "CreateFunctionStmt"):
                # PL/pgSQL is parsed from the statement's own text (byte offsets).
                encoded = sql.encode() if encoded is None else encoded
                start = raw.get("stmt_location", 0)
                length = raw.get("stmt_len", 0)
                chunk = encoded[start:start + length] if length else encoded[start:]
                stmt_text = chunk.decode(errors="replace")
            self._walk(found, node, persistent=root_persistent, depth=depth, text=stmt_text)

    def _statement_policy(self, found: Findings, stmts: list[Any], *, depth: int) -> None:
        """The tenant statement policy for each statement, and what it does to state."""
        statements = self.statements
        for raw in stmts:
            kind, fields = next(iter(raw["stmt"].items()))
            session, transaction = statements.statement(kind, fields)
            if session is not None and session.kind == "proxy_statement":
                raise _Refused(session)  # the proxy's own names: for every identity
            found.refuse(session, transaction)
            if kind in ("VariableSetStmt", "DiscardStmt"):
                found.changes_settings = True
            if depth == 0:
                if kind == "ExplainStmt":  # EXPLAIN ANALYZE EXECUTE runs the statement
                    kind, fields = next(iter((fields.get("query") or {"": {}}).items()))
                self._statement_op(found, kind, fields)

    def _statement_op(self, found: Findings, kind: str, fields: Any) -> None:
        if kind == "PrepareStmt":
            writes = "set_config" in json.dumps(fields.get("query")).lower()
            found.ops.append(Prepare(fields.get("name") or "", writes))
        elif kind == "ExecuteStmt":
            args: list[bytes | None] = []
            for node in fields.get("params") or ():
                value = constant_value(node, 0)
                if isinstance(value, str):
                    args.append(value.encode())
                elif value is Special.NULL:
                    args.append(None)
                else:
                    found.ops.append(Execute(fields.get("name") or "", None))
                    return
            found.ops.append(Execute(fields.get("name") or "", tuple(args)))

    def _names_guarded_setting(self, tree_json: str) -> bool:
        """Whether the parse tree mentions a setting that is not ordinary, in any case."""
        lowered = tree_json.lower()
        return any(name in lowered for name in self._guarded_names)

    def _unparsable(self, text: str, mentions: re.Pattern[str]) -> None:
        """Let PostgreSQL report a syntax error, unless the text mentions guarded things."""
        if mentions.search(text.lower()) is not None:
            raise _Refused(Refusal(
                kind="unparsable",
                message="statement could not be inspected and refers to a protected "
                "setting, role or command",
                hint="pgtenant refuses statements it cannot parse when they mention "
                "protected settings",
            ))

    def _walk(self, found: Findings, root: Any, *, persistent: bool, depth: int,
              text: str) -> None:
        stack: list[Any] = [root]
        while stack:
            obj = stack.pop()
            if type(obj) is list:
                stack.extend(obj)
                continue
            if type(obj) is not dict:
                continue
            if persistent:
                name = obj.get("sval")
                if type(name) is not str or name not in _DANGEROUS_NAMES:
                    name = obj.get("newname")  # ALTER ... RENAME TO set_config
                if (type(name) is str and name in _DANGEROUS_NAMES) or (
                        obj.get("relname") == "pg_settings"):
                    raise _Refused(Refusal(
                        kind="persist_protected",
                        message=f'permission denied to define an object that uses '
                        f'"{name if type(name) is str else "pg_settings"}"',
                        hint="functions, views and other objects must not change settings",
                    ))
            for key, value in obj.items():
                if key in _NODES_OF_INTEREST:
                    self._node(found, key, value, persistent=persistent, depth=depth,
                               text=text)
                if type(value) is dict or type(value) is list:
                    stack.append(value)

    def _node(self, found: Findings, key: str, value: Any, *, persistent: bool, depth: int,
              text: str) -> None:
        if key == "FuncCall":
            self._func_call(found, value, persistent=persistent, depth=depth)
        elif key == "VariableSetStmt" or key == "setstmt":
            # Below a statement's root: stored in a function, role or database.
            self._variable_set(found, value, persistent=True, depth=depth)
        elif key in _DML:
            relation = value.get("relation") or {}
            if relation.get("relname") == "pg_settings":
                raise _Refused(Refusal(
                    kind="pg_settings",
                    message="permission denied to write to pg_settings through "
                    "pgtenant",
                    hint="pg_settings rules call set_config(); use SET for "
                    "ordinary settings",
                ))
        elif key == "CopyStmt":
            if value.get("is_program"):
                raise _Refused(Refusal(
                    kind="copy_program",
                    message="COPY TO PROGRAM and COPY FROM PROGRAM are not allowed "
                    "through pgtenant",
                    hint="use COPY ... TO STDOUT or FROM STDIN",
                ))
        elif key == "AlterSystemStmt":
            raise _Refused(Refusal(
                kind="alter_system",
                message="ALTER SYSTEM is not allowed through pgtenant",
            ))
        elif key == "LoadStmt":
            raise _Refused(Refusal(
                kind="load", message="LOAD is not allowed through pgtenant"))
        elif key == "DoStmt":
            self._do(found, value, persistent=persistent, depth=depth, text=text)
        elif key == "CreateFunctionStmt":
            self._create_function(found, value, depth=depth, text=text)

    # ---- settings ---------------------------------------------------------------------

    def _variable_set(self, found: Findings, stmt: Any, *, persistent: bool,
                      depth: int) -> None:
        kind = stmt.get("kind")
        if kind in ("VAR_RESET", "VAR_RESET_ALL", "VAR_SET_MULTI"):
            return  # back to defaults, or SET TRANSACTION / SESSION CHARACTERISTICS
        name = stmt.get("name", "")
        value: SettingValue
        if kind in ("VAR_SET_DEFAULT", "VAR_SET_CURRENT"):
            value = Special.DEFAULT
        else:
            args: list[Any] = stmt.get("args") or []
            # A list (SET x = a, b) never equals a tenant: unknown.
            value = constant_value(args[0], depth) if len(args) == 1 else Special.UNKNOWN
        self._record(found, "set", name, value, persistent=persistent)

    def _record(self, found: Findings, via: str, name: str, value: SettingValue, *,
                persistent: bool) -> None:
        verdict = self.policy.judge(via, name, value, persistent=persistent,
                                    tenant=Deferred.TENANT)
        if isinstance(verdict, Refusal):
            raise _Refused(verdict)
        if verdict is Deferred.TENANT:
            found.writes.append(SettingWrite(via, name.strip().lower(), value))

    def _func_call(self, found: Findings, call: Any, *, persistent: bool,
                   depth: int) -> None:
        names = call.get("funcname") or ()
        if not names:
            return
        func = names[-1].get("String", {}).get("sval", "")
        if func == "set_config":
            found.changes_settings = True
            self._set_config(found, call, persistent=persistent, depth=depth)
        elif func in _QUERY_RUNNERS:
            args = call.get("args") or ()
            # ts_rewrite(query, target, substitute) takes no SQL; ts_rewrite(query, sql) does.
            sql_at = None if func == "ts_rewrite" and len(args) != 2 else _QUERY_RUNNERS[func]
            self._query_runner(found, args, sql_at, persistent=persistent, depth=depth)

    def _set_config(self, found: Findings, call: Any, *, persistent: bool,
                    depth: int) -> None:
        slots: list[Any] = [None, None, None]
        args = call.get("args") or ()
        if len(args) != 3 or call.get("func_variadic") or call.get("agg_star"):
            raise _Refused(_unprovable_name())
        for position, arg in enumerate(args):
            named = arg.get("NamedArgExpr")
            if named is None:
                slots[position] = arg
                continue
            index = _SET_CONFIG_ARGS.get(named.get("name", ""))
            if index is None:
                raise _Refused(_unprovable_name())
            slots[index] = named.get("arg")
        if any(slot is None for slot in slots):
            raise _Refused(_unprovable_name())
        name = constant_value(slots[0], depth)
        value = constant_value(slots[1], depth)
        if isinstance(name, Param) and not persistent:
            found.writes.append(SettingWrite("set_config", name, value))  # judged at Bind
        elif isinstance(name, str):
            self._record(found, "set_config", name, value, persistent=persistent)
        else:
            raise _Refused(_unprovable_name())

    # ---- SQL inside strings -----------------------------------------------------------

    def _query_runner(self, found: Findings, args: Any, sql_at: int | None, *,
                      persistent: bool, depth: int) -> None:
        for position, arg in enumerate(args):
            named = arg.get("NamedArgExpr")
            node = named.get("arg") if named is not None else arg
            value = constant_value(node, depth + 1)
            if isinstance(value, str):
                self._sql(found, value, persistent=persistent, depth=depth + 1)
            elif named is not None or position == sql_at:
                self._dynamic(found, json.dumps(node))

    def _dynamic(self, found: Findings, expression: str) -> None:
        """SQL computed at run time: refused for everyone if it mentions guarded things."""
        if self._body_mentions.search(expression.lower()) is not None:
            raise _Refused(Refusal(
                kind="dynamic_sql",
                message="dynamic SQL that refers to a protected setting, role or command "
                "cannot be inspected and is not allowed through pgtenant",
                hint="use static SQL",
            ))
        found.dynamic = True

    def _do(self, found: Findings, stmt: Any, *, persistent: bool, depth: int,
            text: str) -> None:
        options = def_elems(stmt.get("args") or ())
        language = string_value(options.get("language")) or "plpgsql"
        body = string_value(options.get("as")) or ""
        self._body(found, language, body, text, persistent=persistent, depth=depth)

    def _create_function(self, found: Findings, stmt: Any, *, depth: int,
                         text: str) -> None:
        options = def_elems(stmt.get("options") or ())
        source = options.get("as")
        if source is None:
            return  # BEGIN ATOMIC body: part of the parse tree, walked with the statement
        items = source.get("List", {}).get("items", ()) if "List" in source else [source]
        parts = [string_value(item) or "" for item in items]
        language = string_value(options.get("language")) or "sql"
        body = parts[0] if len(parts) == 1 else " ".join(parts)
        self._body(found, language, body, text, persistent=True, depth=depth)

    def _body(self, found: Findings, language: str, body: str, text: str, *,
              persistent: bool, depth: int) -> None:
        language = language.lower()
        if language == "plpgsql":
            self._plpgsql(found, text, body, persistent=persistent, depth=depth)
        elif language == "sql":
            self._sql(found, body, persistent=persistent, depth=depth + 1)
        else:  # C, internal, PL/Python, ...: not inspectable
            self._unparsable(body, self._body_mentions)

    def _plpgsql(self, found: Findings, text: str, body: str, *, persistent: bool,
                 depth: int) -> None:
        if depth + 1 > MAX_NESTING:
            raise _Refused(_TOO_DEEP)
        try:
            tree = json.loads(parse_plpgsql_json(text))
        except RecursionError:
            raise
        except Exception:  # the PL/pgSQL parser rejected it; so would PostgreSQL, mostly
            tree = None
        if not tree:
            self._unparsable(body, self._body_mentions)
            return
        for obj in dicts(tree):
            for key, value in obj.items():
                if key == "PLpgSQL_expr":
                    self._plpgsql_expr(found, value, persistent=persistent, depth=depth)
                elif key in ("PLpgSQL_stmt_dynexecute", "PLpgSQL_stmt_dynfors"):
                    self._execute(found, value.get("query"), persistent=persistent,
                                  depth=depth)
                elif key in ("PLpgSQL_stmt_return_query", "PLpgSQL_stmt_open"):
                    self._execute(found, value.get("dynquery"), persistent=persistent,
                                  depth=depth)

    def _plpgsql_expr(self, found: Findings, expr: Any, *, persistent: bool,
                      depth: int) -> None:
        query = expr.get("query", "")
        mode = expr.get("parseMode", 0)
        if mode == 0:  # a whole statement
            sql = query
        elif mode == 2:  # an expression
            sql = "SELECT " + query
        elif mode in (3, 4, 5):  # "target := expression": inspect both sides
            sql = "SELECT " + query.replace(":=", ",", 1)
        else:  # a type name
            return
        self._sql(found, sql, persistent=persistent, depth=depth + 1)

    def _execute(self, found: Findings, expr: Any, *, persistent: bool,
                 depth: int) -> None:
        """EXECUTE: a constant string is inspected as SQL; anything else is dynamic."""
        if expr is None:
            return
        query = expr.get("PLpgSQL_expr", {}).get("query", "")
        targets: list[Any] = []
        try:
            stmts = json.loads(parse_sql_json("SELECT " + query)).get("stmts", ())
            if len(stmts) == 1:
                targets = stmts[0]["stmt"]["SelectStmt"]["targetList"]
        except Exception:
            pass
        if len(targets) == 1:
            value = constant_value(targets[0].get("ResTarget", {}).get("val"), depth + 1)
            if isinstance(value, str):
                self._sql(found, value, persistent=persistent, depth=depth + 1)
                return
        self._dynamic(found, query)


def _unprovable_name() -> Refusal:
    return Refusal(
        kind="set_config",
        message="permission denied: set_config() with a setting name pgtenant cannot "
        "determine",
        hint="call set_config() with a constant setting name",
    )
