"""The SQL guard under other settings and under stress: a custom tenancy configuration,
the bounded analysis cache, unparsable and deeply nested SQL, random text, and a
pre-filter that never lets by what the analysis would flag."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast.parser import ParseError, parse_sql_json

from proxy.config import TenancyConfig
from proxy.guard import CLEAN, BindRule, Guard, Refusal, needs_inspection
from tests.unit.guard_verdicts import GUARD, OWN


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
