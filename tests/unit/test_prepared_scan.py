"""The cheap scans of proxy.backend.prepared say exactly what the regexes and slices they
replaced said: which client messages need rewriting (every case mix of DEALLOCATE is
still found) and where a name ends."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.backend import prepared
from proxy.backend.prepared import needs_rewrite
from proxy.wire.tags import FrontendTag

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


@settings(max_examples=3000, deadline=None)
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
