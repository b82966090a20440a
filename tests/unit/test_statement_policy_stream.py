"""The statement policy on the message stream: what the analysis tells the stream guard,
SQL EXECUTE checked like Bind, the settings-change signal, and a refused Parse before a
Flush."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.frontend.guarding import ParseVerdicts, StreamGuard
from proxy.guard import Execute, Prepare
from proxy.wire import messages
from proxy.wire.framing import split_frames
from tests.unit.guard_verdicts import OWN
from tests.unit.policy_guard import GUARD, Stream, refused_query

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
    session = StreamGuard(GUARD, cache, lambda r, t: None, tenant=OWN)
    transaction = StreamGuard(GUARD, cache, lambda r, t: None, tenant=OWN,
                              transaction_mode=True)
    batch = messages.parse("", "SELECT pg_advisory_lock(1)") + messages.sync()
    assert session.filter(batch) == batch
    assert transaction.filter(batch) != batch


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


# ---- Parse verdicts kept for the proxy's clients -------------------------------------

def test_a_clean_parse_verdict_is_shared_by_tenants_and_no_other_is() -> None:
    verdicts: ParseVerdicts = {}
    acme, globex = (Stream(tenant=t, verdicts=verdicts) for t in ("acme", "globex"))
    clean = messages.parse("", "SELECT * FROM items")
    assert not refused_query(acme.send(clean, messages.sync()))
    assert clean[5:] in verdicts  # by the body alone: the same for every tenant
    own = messages.parse("", "SELECT set_config('app.current_tenant', 'acme', false)")
    assert not refused_query(acme.send(own, messages.sync()))
    assert refused_query(globex.send(own, messages.sync()))
    assert own[5:] not in verdicts and (own[5:], "globex", False) in verdicts
    assert not refused_query(globex.send(clean, messages.sync()))


def test_binds_after_an_unnamed_parse_follow_the_rules_of_their_batch() -> None:
    stream = Stream()
    globex = [b"globex"]
    assert refused_query(stream.send(messages.parse("", TENANT_RULE),
                                     messages.bind("", "", globex), messages.sync()))
    # A clean unnamed Parse replaces the rule the unnamed statement had.
    assert not refused_query(stream.send(messages.parse("", "SELECT $1::text"),
                                         messages.bind("", "", globex), messages.sync()))
    # Clean, with no rule anywhere: nothing recorded; a rule defined later in the batch
    # holds for its own statement only.
    out = stream.send(messages.parse("", "SELECT $1::text"), messages.parse("s2", TENANT_RULE),
                      messages.bind("", "", globex), messages.sync())
    assert not refused_query(out)
    assert refused_query(stream.send(messages.bind("", "s2", globex), messages.sync()))
    assert not refused_query(stream.send(messages.bind("", "s2", [b"acme"]), messages.sync()))
