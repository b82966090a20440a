"""The Query analysis cache (Guard.query_analyses): a hit never changes a verdict.

Every client of a proxy shares one Guard, so the same Query bytes reach the cache from
different tenants, bypass identities, pool modes and sessions. Only the analysis of the
text is kept; each of these tests first puts the bytes in the cache through a client for
whom they are harmless, then sends the very same bytes from a client for whom they must
be refused (and the other way round), and checks that refusals are counted and the
settings signal raised on every hit.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config import TenancyConfig
from proxy.guard import CLEAN, Guard, needs_inspection
from proxy.guard.guard import MAX_CACHED_LENGTH, QUERY_CACHE_BYTES, QUERY_CACHE_ENTRIES
from proxy.wire import messages
from tests.unit.policy_guard import Stream, refused_query


class Client(Stream):
    """One client on a shared Guard."""

    def __init__(self, guard: Guard, tenant: str | None, *,
                 transaction_mode: bool = False) -> None:
        super().__init__(transaction_mode=transaction_mode, guard=guard, tenant=tenant)

    def refused(self, sql: str) -> bool:
        """Send ``sql`` as a Query; True when it was replaced by the refusal."""
        out = self.send(messages.query(sql))
        return out != messages.query(sql) and refused_query(out)


_DIGIT_LETTERS = str.maketrans("0123456789", "abcdefghij")


def cached(guard: Guard, sql: str) -> bool:
    """Kept by its bytes (a text the parser analysed) or by its shape (the pre-filter
    found it harmless)."""
    body = messages.query(sql)[5:]
    return body in guard.query_analyses or shape(sql) in guard.clean_shapes


def test_own_tenant_switch_cached_for_acme_is_refused_for_globex() -> None:
    guard = Guard(TenancyConfig())
    acme, globex = Client(guard, "acme"), Client(guard, "globex")
    for sql in ("SET app.current_tenant = 'acme'",
                "SELECT set_config('app.current_tenant', 'acme', false)"):
        assert not acme.refused(sql)
        assert cached(guard, sql)
        assert globex.refused(sql)
        assert globex.refused(sql)      # and again, from the cache
        assert not acme.refused(sql)
    assert globex.refusals == ["set_protected", "set_protected", "set_config", "set_config"]
    assert acme.refusals == []


def test_bypass_identity_cannot_write_a_tenant_cached_by_its_owner() -> None:
    guard = Guard(TenancyConfig())
    acme, bypass = Client(guard, "acme"), Client(guard, None)
    sql = "SET app.current_tenant = 'acme'"
    assert not acme.refused(sql)
    assert bypass.refused(sql)
    assert len(bypass.refusals) == 1


def test_dynamic_sql_cached_for_a_bypass_identity_stays_refused_for_tenants() -> None:
    guard = Guard(TenancyConfig())
    bypass, acme = Client(guard, None), Client(guard, "acme")
    sql = "DO $$BEGIN EXECUTE 'SELECT ' || 1; END$$"
    assert not bypass.refused(sql)
    assert cached(guard, sql)
    assert acme.refused(sql)
    assert acme.refused(sql)
    assert len(acme.refusals) == 2


def test_statement_cached_in_session_mode_is_refused_in_transaction_mode() -> None:
    guard = Guard(TenancyConfig())
    session = Client(guard, "acme")
    transaction = Client(guard, "acme", transaction_mode=True)
    for sql in ("PREPARE p AS SELECT 1", "SELECT pg_advisory_lock(1)",
                "DECLARE c CURSOR WITH HOLD FOR SELECT 1"):
        assert not session.refused(sql), sql
        assert transaction.refused(sql), sql
        assert not session.refused(sql), sql    # the refusal was not cached either
        assert transaction.refused(sql), sql
    assert len(transaction.refusals) == 6 and session.refusals == []


def test_refused_query_stays_refused_and_is_counted_on_every_hit() -> None:
    guard = Guard(TenancyConfig())
    acme = Client(guard, "acme")
    for sql in ("SET ROLE postgres", "SET app.current_tenant = 'globex'",
                "SELECT 1; SET app.current_tenant = 'globex'", "COPY items TO PROGRAM 'cat'"):
        for _ in range(3):
            assert acme.refused(sql), sql
        assert cached(guard, sql)
    assert len(acme.refusals) == 12
    assert acme.changes == 0   # a refused message changes nothing


def test_execute_allowed_where_the_name_is_harmless_is_checked_against_this_session() -> None:
    # The EXECUTE's Bind rule belongs to the session that prepared the statement: a hit
    # for bytes another session ran harmlessly must still check this session's rule.
    guard = Guard(TenancyConfig())
    harmless, attacker = Client(guard, "acme"), Client(guard, "acme")
    harmless.send(messages.query("PREPARE s1 AS SELECT $1::text"))
    attacker.send(messages.parse("s1", "SELECT set_config('app.current_tenant', $1, false)"),
                  messages.sync())
    sql = "EXECUTE s1('globex')"
    assert not harmless.refused(sql)
    assert cached(guard, sql)
    assert attacker.refused(sql)
    assert attacker.refusals == ["set_config"]


def test_settings_signal_raised_on_every_hit() -> None:
    guard = Guard(TenancyConfig())
    first, second = Client(guard, "acme"), Client(guard, "acme", transaction_mode=True)
    for client in (first, second, first):
        client.send(messages.query("SET search_path TO public"),
                    messages.query("SELECT 1; RESET ALL"), messages.query("SELECT 1"))
    assert (first.changes, second.changes) == (4, 2)


def test_bytes_that_decode_alike_do_not_share_an_entry_with_different_text() -> None:
    # Invalid UTF-8 is read with replacement characters; each byte string is its own key
    # and maps to the analysis of its own decoded text.
    guard = Guard(TenancyConfig())
    acme = Client(guard, "acme")
    plain = messages.query("SELECT 1")
    odd = b"Q" + (4 + 10).to_bytes(4, "big") + b"SELECT \xff1\x00"
    mentions = b"Q" + (4 + 24).to_bytes(4, "big") + b"SELECT \xffset_config()\x00"
    assert acme.send(plain) == plain
    acme.send(odd)
    acme.send(mentions)
    assert guard.analyze("SELECT \ufffd1") is CLEAN
    assert guard.clean_shapes == {b"SELECT 0\x00", b"SELECT \xff0\x00"}
    assert guard.query_analyses == {mentions[5:]: guard.analyze("SELECT \ufffdset_config()")}


def test_cache_is_bounded_in_entries_and_bytes_and_skips_long_texts() -> None:
    guard = Guard(TenancyConfig())
    acme = Client(guard, "acme")
    for i in range(QUERY_CACHE_ENTRIES + 50):  # texts of different shapes: x_bc, x_bd, ...
        letters = str(i).translate(_DIGIT_LETTERS)
        acme.send(messages.query(f"SELECT x_{letters}"))  # harmless: kept by shape
        acme.send(messages.query(f"SELECT set_config('x.{letters}', 'v', true)"))  # parsed
    assert 0 < len(guard.query_analyses) <= QUERY_CACHE_ENTRIES
    assert 0 < len(guard.clean_shapes) <= QUERY_CACHE_ENTRIES
    filler = "x" * (MAX_CACHED_LENGTH - 80)
    for i in range(QUERY_CACHE_BYTES // MAX_CACHED_LENGTH + 5):
        letters = str(i).translate(_DIGIT_LETTERS)
        acme.send(messages.query(f"SELECT '{filler}{letters}'"))
        acme.send(messages.query(f"SELECT set_config('x.{letters}', '{filler}', true)"))
        assert sum(map(len, guard.query_analyses)) <= QUERY_CACHE_BYTES
        assert sum(map(len, guard.clean_shapes)) <= QUERY_CACHE_BYTES
    long_sql = "SELECT '" + "y" * MAX_CACHED_LENGTH + "'"
    acme.send(messages.query(long_sql))
    assert not cached(guard, long_sql)
    assert acme.refusals == []


def test_texts_answered_by_their_shape_are_not_kept_as_themselves() -> None:
    # pgbench -S: one shape, a different literal every time: kept by its shape only (by
    # its bytes, it would never be hit).
    guard = Guard(TenancyConfig())
    acme = Client(guard, "acme")
    for aid in range(1, 500):
        sql = f"SELECT abalance FROM pgbench_accounts WHERE aid = {100_000 + aid * 7};"
        assert acme.send(messages.query(sql)) == messages.query(sql)
    assert guard.query_analyses == {}
    assert guard.clean_shapes == {b"SELECT abalance FROM pgbench_accounts WHERE aid = 000000;\x00"}
    assert acme.refusals == []


def test_cache_off_keeps_nothing_and_cache_clear_empties_it() -> None:
    uncached = Guard(TenancyConfig(), cache_size=0)
    Client(uncached, "acme").send(messages.query("SELECT 1"))
    assert uncached.query_analyses == {} and uncached.clean_shapes == set()
    guard = Guard(TenancyConfig())
    client = Client(guard, "acme")
    client.send(messages.query("SELECT 1"), messages.query("SET search_path TO public"))
    assert cached(guard, "SELECT 1") and cached(guard, "SET search_path TO public")
    guard.cache_clear()
    assert guard.query_analyses == {} and guard.clean_shapes == set()


def test_a_huge_parse_is_judged_every_time_and_never_kept() -> None:
    """The Parse verdict cache is bounded in entries; its keys are the raw messages, so a
    text past MAX_CACHED_LENGTH is never kept (10,000 huge Parses would otherwise hold
    gigabytes), and is judged afresh each time."""
    from proxy.frontend.guarding import ParseVerdicts, StreamGuard

    verdicts: ParseVerdicts = {}
    refusals: list[str] = []
    stream = StreamGuard(Guard(TenancyConfig()), verdicts,
                         lambda refusal, tag: refusals.append(refusal.kind), tenant="acme")
    pad = "/*" + "x" * MAX_CACHED_LENGTH + "*/"
    bad = messages.parse("", f"SELECT set_config('app.current_tenant', 'globex', false) {pad}")
    good = messages.parse("", f"SELECT 1 {pad}")
    for _ in range(2):
        for frame in (bad, good):
            stream.filter(frame + messages.sync())
    assert refusals == ["set_config", "set_config"]
    assert verdicts == {}
    short = messages.parse("", "SELECT 1")
    stream.filter(short)
    assert len(verdicts) == 1


# ---- clean shapes: the pre-filter's "harmless" kept for texts that differ in digits only --


def shape(sql: str) -> bytes:
    return messages.query(sql)[5:].translate(bytes.maketrans(b"123456789", b"000000000"))


def test_texts_differing_in_digits_share_the_prefilters_harmless() -> None:
    guard = Guard(TenancyConfig())
    acme = Client(guard, "acme")
    assert not acme.refused("SELECT abalance FROM pgbench_accounts WHERE aid = 17;")
    assert shape("SELECT abalance FROM pgbench_accounts WHERE aid = 99;") in guard.clean_shapes
    assert guard.analyze_query(
        messages.query("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;")[5:]) is CLEAN


def test_a_clean_shape_never_covers_a_text_that_differs_in_anything_but_digits() -> None:
    guard = Guard(TenancyConfig())
    acme = Client(guard, "acme")
    assert not acme.refused("SELECT 1")
    assert not acme.refused("SELECT * FROM items WHERE id = 1")
    for sql in ("SELECT 1; SET app.current_tenant = 'globex'",
                "SELECT set_config('app.current_tenant', 'globex', false)",
                "SELECT * FROM items WHERE id = 1; SET app.current_tenant = 'globex'",
                "SELECT * FROM items WHERE id = 1 OR set_config('app.current_tenant', 'x', "
                "false) = ''",
                "SELECT 1 INTO TEMP t"):
        assert acme.refused(sql), sql
        assert shape(sql) not in guard.clean_shapes


def test_texts_the_prefilter_sends_to_the_parser_are_never_kept_by_shape() -> None:
    """Tenants named by digits: their settings texts differ in digits only, and each is
    analysed as itself (refused for the other tenant, every time)."""
    guard = Guard(TenancyConfig())
    one, two = Client(guard, "1"), Client(guard, "2")
    for sql in ("SET app.current_tenant = '1'",
                "SELECT set_config('app.current_tenant', '1', false)"):
        assert not one.refused(sql)
        assert two.refused(sql)
        assert shape(sql) not in guard.clean_shapes
        assert one.refused(sql.replace("'1'", "'2'"))
        assert not two.refused(sql.replace("'1'", "'2'"))


_PIECES = st.sampled_from([
    *"selctinoupadrfgwhvbkm_ &;()'$\"-*/\t\n0123456789é\u0130\u212a",
    "select ", "SELECT ", "insert ", "into", "pg_", "lo_", "u&", "prepared", "set_config",
    "dblink(", "; ", "--", "1pg_", "$pg_", "9lo_", "0into"])
_TEXT = st.lists(_PIECES, max_size=24).map("".join)


@settings(max_examples=500, deadline=None)
@given(text=_TEXT, digits=st.lists(st.sampled_from("0123456789"), min_size=200, max_size=200))
def test_the_prefilters_answer_does_not_depend_on_which_digits(text: str, digits: list[str]
                                                               ) -> None:
    other = "".join(digits[i] if ch.isascii() and ch.isdigit() else ch
                    for i, ch in enumerate(text))
    assert needs_inspection(other) == needs_inspection(text), (text, other)
    if not needs_inspection(text):  # one's shape stands for the other's
        guard = Guard(TenancyConfig())
        assert guard.analyze_query(messages.query(text)[5:]) is CLEAN
        assert shape(other) in guard.clean_shapes
