"""The cheap scans of proxy.backend.prepared say exactly what the regexes and slices they
replaced said: which client messages need rewriting (every case mix of DEALLOCATE is
still found) and where a name ends."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import build
from proxy.backend import deallocate, prepared
from proxy.backend.prepared import rewrite
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


# Around a body read in place: what a scan running past its end would misread (a NUL,
# another byte where a NUL or the end decides, the word), and a byte before it.
_BEFORE = b"\x01S"
_AFTERS = (b"\x00\x01S deallocate\x00", b"S\x00\x00", b" dEaLlOcAtE x\x00")


def needs_rewrite(tag: int, body: bytes) -> bool:
    """prepared.needs_rewrite of ``body`` alone, checked to say the same of it in place."""
    alone = prepared.needs_rewrite(tag, body, 0, len(body))
    for after in _AFTERS:
        data = _BEFORE + body + after
        assert prepared.needs_rewrite(tag, data, len(_BEFORE), len(_BEFORE) + len(body)
                                      ) is alone
    return alone


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


@pytest.mark.parametrize("tag", TAGS)
@pytest.mark.parametrize("body", [b"", b"S", b"S\x00", b"\x00", b"\x00\x00", b"abc", b"p\x00",
                                  b"p\x00s", b"\x00 ", b"deallocat", b"DEALLOCATE"])
def test_the_edges_of_a_body_read_in_place(tag: int, body: bytes) -> None:
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
    assert prepared._find_nul(data, start, len(data)) == end
    assert prepared._find_nul(data + b"\x00", start, len(data)) == end
    if end < 0:
        with pytest.raises(ValueError):
            prepared.string_end(data, start)
    else:
        assert prepared.string_end(data, start) == end


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


# ---- the two searches of mentions_deallocate (one per build), on any bytes -------------

SEARCHES = [deallocate._search_bytes, deallocate._search_str]
# The word's letters in both cases, and bytes a bit (0x40, 0x80) away from them: what a
# case fold by bits could confuse.
NEAR_WORD = b"deallocateDEALLOCATE\x04\x05\x01\x0c\x0f\x03\x14\x24\x25\x21\x2c\x2f\x23\x34" \
    b"\xc4\xc5\xc1\xcc\xcf\xc3\xd4\xe4\xe5\xe1\xec\xef\xe3\xf4@`\x00 ;'"


def near_word_texts() -> st.SearchStrategy[bytes]:
    """Texts made of pieces of the word (either case) and bytes close to its letters."""
    pieces = st.one_of(
        st.lists(st.sampled_from(sorted(set(NEAR_WORD))), max_size=12).map(bytes),
        st.sampled_from([b"deallocate", b"DEALLOCATE", b"dEaLlOcAtE", b"deallocat", b"eallocate",
                         b"dealloc", b"llocate", b"dde", b"ee", b"deallocatedeallocate"]),
        st.binary(max_size=8))
    return st.lists(pieces, max_size=8).map(b"".join)


@pytest.mark.parametrize("search", SEARCHES)
@settings(max_examples=500, deadline=None)
@given(text=near_word_texts(), cut=st.tuples(st.integers(0, 80), st.integers(0, 80)))
def test_each_search_says_what_the_regex_says_on_any_slice(
        search: Callable[[bytes, int, int], bool], text: bytes, cut: tuple[int, int]) -> None:
    start, end = min(cut[0], len(text)), min(cut[1], len(text))
    start = min(start, end)
    assert search(text, start, end) is (_WORD.search(text, start, end) is not None)
    assert search(text, 0, len(text)) is ("deallocate" in text.decode("latin-1").lower())


@pytest.mark.parametrize("search", SEARCHES)
@settings(max_examples=300, deadline=None)
@given(before=st.binary(max_size=30), word=st.sampled_from(
    [bytes(w) for w in ([b"deallocate"[i] ^ (0x20 * ((mask >> i) & 1)) for i in range(10)]
                        for mask in (0, 1023, 0b0101010101, 0b1010101010, 0b1000000001))]),
    after=st.binary(max_size=30))
def test_each_search_finds_the_word_in_any_case_anywhere(
        search: Callable[[bytes, int, int], bool], before: bytes, word: bytes, after: bytes
        ) -> None:
    text = before + word + after
    assert search(text, 0, len(text))
    assert search(text, len(before), len(before) + len(word))
    assert not search(text, len(before), len(before) + len(word) - 1)
    assert not search(text, len(before) + 1, len(before) + len(word))


@pytest.mark.parametrize("search", SEARCHES)
def test_each_search_on_every_short_window_of_a_query(
        search: Callable[[bytes, int, int], bool]) -> None:
    text = b"SELECT 'x' FROM t; DeAlLoCaTe  all; select 'deallocat', 'eallocate'\x00"
    for start in range(len(text) + 1):
        for end in range(start, len(text) + 1):
            assert search(text, start, end) is (_WORD.search(text, start, end) is not None)


def test_the_build_uses_its_cheaper_search() -> None:
    assert deallocate._NATIVE is build.compiled()


def test_no_latin1_letter_stands_for_an_ascii_one() -> None:
    """Why latin-1 + lower() is an ASCII case fold: only A-Z lower into ASCII letters."""
    for byte in range(256):
        lowered = bytes((byte,)).decode("latin-1").lower()
        assert (lowered.isascii() and lowered.isalpha()) is (bytes((byte,)).isalpha())
