"""The cheap scans of proxy.backend.prepared say exactly what the regexes and slices they
replaced said: which client messages need rewriting (every case mix of DEALLOCATE is
still found) and where a name ends."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.backend import prepared
from proxy.backend.prepared import needs_rewrite, rewrite
from proxy.backend.server import FORWARD
from proxy.backend.statements import MISSING, ClientStatement, ServerStatements
from proxy.wire import messages
from proxy.wire.tags import FrontendTag


def _cstr(text: str) -> bytes:
    """A C string as a Parse carries it."""
    return text.encode() + b"\x00"


SELECT = _cstr("SELECT 1") + b"\x00\x00"  # a Parse key: text, no types

# The predicates as they were written before the cheap scans: the reference.
_WORD = re.compile(rb"deallocate", re.IGNORECASE)
_MAYBE = re.compile(rb"\x00[\s;]*(?:deallocate|/\*|--)", re.IGNORECASE)


def reference(tag: int, body: bytes) -> bool:
    if tag == FrontendTag.PARSE:
        return body[:1] != b"\x00" or _MAYBE.match(body) is not None
    if tag == FrontendTag.BIND:
        portal_end = body.find(0)
        return portal_end >= 0 and body[portal_end + 1:portal_end + 2] not in (b"\x00", b"")
    if tag in (FrontendTag.DESCRIBE, FrontendTag.CLOSE):
        return body[:1] == b"S" and body[1:2] != b"\x00"
    if tag == FrontendTag.QUERY:
        return _WORD.search(body) is not None
    return False


TAGS = [int(t) for t in FrontendTag]
# Bytes that matter to the scans, so that random bodies often hit the interesting cases.
ALPHABET = b"\x00 \t\n\r\x0b\x0c;-/*SPdDeEaAlLoOcCtT\xe9\xff"


def bodies() -> st.SearchStrategy[bytes]:
    some = st.lists(st.sampled_from(sorted(set(ALPHABET))), max_size=24).map(bytes)
    words = st.sampled_from([b"deallocate", b"DEALLOCATE", b"DeAlLoCaTe", b"dEaLlOcAtE",
                             b"deallocat", b"/*", b"--", b"\x00", b"S", b"SELECT 1"])
    return st.lists(st.one_of(some, words), max_size=6).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(TAGS), bodies())
def test_needs_rewrite_says_what_the_regexes_said(tag: int, body: bytes) -> None:
    assert needs_rewrite(tag, body) is reference(tag, body)


@pytest.mark.parametrize("text", [
    b"DeAlLoCaTe x\x00", b"deallocate x\x00", b"DEALLOCATE x\x00", b"select 1;dEALLOCATE all\x00",
    b"SELECT 'DEALLOCATEd'\x00",
])
def test_a_query_naming_deallocate_in_any_case_is_rewritten(text: bytes) -> None:
    assert needs_rewrite(FrontendTag.QUERY, text)


@pytest.mark.parametrize("text", [b"SELECT 1\x00", b"DEALLOCAT\x00", b"\x00", b"",
                                  b"de allocate\x00", b"D\xc9ALLOCATE\x00"])
def test_a_query_without_deallocate_is_not(text: bytes) -> None:
    assert not needs_rewrite(FrontendTag.QUERY, text)


@pytest.mark.parametrize(("body", "expected"), [
    (b"\x00\x0b\x0cdeallocate x\x00\x00\x00", True),  # vertical tab, form feed: \s
    (b"\x00;DeAlLoCaTe x\x00\x00\x00", True),
    (b"\x00-- c\nSELECT 1\x00\x00\x00", True),
    (b"\x00\xa0deallocate x\x00\x00\x00", False),  # not ASCII whitespace
    (b"\x00", False),
    (b"", True),  # malformed: rewrite reports it
])
def test_an_unnamed_parse_that_may_be_deallocate_is_rewritten(body: bytes, expected: bool
                                                              ) -> None:
    assert needs_rewrite(FrontendTag.PARSE, body) is expected


@pytest.mark.parametrize(("data", "start", "end"), [
    (b"\x00", 0, 0), (b"abc\x00def\x00", 0, 3), (b"abc\x00def\x00", 4, 7), (b"abc", 0, -1),
    (b"", 0, -1), (b"ab\x00", 3, -1),
])
def test_find_nul(data: bytes, start: int, end: int) -> None:
    assert prepared._find_nul(data, start) == end
    if end < 0:
        with pytest.raises(ValueError):
            prepared._nul(data, start)
    else:
        assert prepared._nul(data, start) == end


# ---- renamed messages, built without the codec: byte for byte what the codec builds ----


@pytest.mark.parametrize("portal", [b"", b"p1", b"caf\xe9"])
def test_a_bind_goes_out_as_the_codec_would_write_it_under_the_servers_name(portal: bytes
                                                                             ) -> None:
    client = {"s1": ClientStatement(SELECT)}
    server = ServerStatements(10)
    target = server.add(SELECT)
    # Parameter formats, values (one NULL, one empty) and result formats, as sent.
    tail = messages.bind("", "", [b"42", None, b""], [1], [0, 1])[7:]
    bind = messages.frame(FrontendTag.BIND, portal + b"\x00s1\x00" + tail)
    done = rewrite([bind, messages.sync()], client, server, FORWARD, batch_start=True)
    assert done.data == messages.frame(
        FrontendTag.BIND, portal + b"\x00" + target.name.encode() + b"\x00" + tail
    ) + messages.sync()


def test_a_describe_of_a_statement_goes_out_as_the_codec_would_write_it() -> None:
    client = {"s1": ClientStatement(SELECT)}
    server = ServerStatements(10)
    target = server.add(SELECT)
    done = rewrite([messages.describe(b"S", "s1"), messages.sync()], client, server, FORWARD,
                   batch_start=True)
    assert done.data == messages.describe(b"S", target.name) + messages.sync()


def test_a_close_of_a_statement_mid_batch_goes_out_naming_missing() -> None:
    client = {"s1": ClientStatement(SELECT)}
    server = ServerStatements(10)
    done = rewrite([messages.bind("", "", []), messages.close(b"S", "s1"), messages.sync()],
                   client, server, FORWARD, batch_start=True)
    assert done.data == (messages.bind("", "", []) + messages.close(b"S", MISSING)
                         + messages.sync())
    assert "s1" not in client


def test_a_describe_or_close_without_a_body_passes_as_sent() -> None:
    bare = [messages.frame(FrontendTag.DESCRIBE, b""), messages.frame(FrontendTag.CLOSE, b""),
            messages.sync()]
    done = rewrite(bare, {}, ServerStatements(10), FORWARD, batch_start=True)
    assert done.data == b"".join(bare)


def test_a_bind_without_the_nul_of_its_statement_name_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        rewrite([messages.frame(FrontendTag.BIND, b"\x00s1")], {"s1": ClientStatement(SELECT)},
                ServerStatements(10), FORWARD, batch_start=True)


# ---- the server's statements: least recently used first --------------------------------


def test_the_least_recently_used_statement_is_evicted_first() -> None:
    server = ServerStatements(2)
    a, b, c = (_cstr(f"SELECT {n}") + b"\x00\x00" for n in "abc")
    server.add(a)
    server.add(b)
    assert server.get(b) is not None  # already the most recent
    assert server.get(a) is not None  # now b is the least recent
    assert server.get(a) is not None
    server.add(c)
    assert list(server.by_key) == [b, a, c]
    evicted = server.take_evictions(set())
    assert list(server.by_key) == [a, c] and len(evicted) == 1


def test_a_use_after_the_recent_statement_was_dropped_still_orders_by_use() -> None:
    server = ServerStatements(10)
    a, b = (_cstr(f"SELECT {n}") + b"\x00\x00" for n in "ab")
    server.add(a)
    server.add(b)
    server.unconfirmed = [b]
    server.invalidate_unconfirmed()  # b (the recent one) is gone
    assert server.get(b) is None
    server.add(b)
    assert server.get(a) is not None
    assert list(server.by_key) == [b, a]


def test_a_server_statement_knows_its_name_as_sent() -> None:
    stmt = ServerStatements(10).add(SELECT)
    assert messages.describe(b"S", stmt.name) == messages.frame(
        FrontendTag.DESCRIBE, b"S" + stmt.wire_name)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40), st.sampled_from([b"deallocate", b"DEALLOCATE", b"dEaLlOcAtE"]),
       st.binary(max_size=40))
def test_deallocate_is_found_among_any_bytes(before: bytes, word: bytes, after: bytes) -> None:
    assert needs_rewrite(FrontendTag.QUERY, before + word + after)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60))
def test_any_bytes_mention_deallocate_as_the_regex_says(text: bytes) -> None:
    assert needs_rewrite(FrontendTag.QUERY, text) is (_WORD.search(text) is not None)


def test_no_latin1_letter_stands_for_an_ascii_one() -> None:
    """Why latin-1 + lower() is an ASCII case fold: only A-Z lower into ASCII letters."""
    for byte in range(256):
        lowered = bytes((byte,)).decode("latin-1").lower()
        assert (lowered.isascii() and lowered.isalpha()) is (bytes((byte,)).isalpha())
