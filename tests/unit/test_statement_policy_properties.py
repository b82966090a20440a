"""Properties of the statement policy: nothing outside the allow-list passes, and the
pre-filter never skips what the analysis would flag."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast.parser import ParseError, parse_sql_json

from proxy.config import TenancyConfig
from proxy.guard import CLEAN, Guard, needs_inspection
from tests.unit.guard_verdicts import OWN
from tests.unit.policy_guard import GUARD, MODES

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
