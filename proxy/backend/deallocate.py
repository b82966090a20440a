"""DEALLOCATE in transaction mode: answered as PostgreSQL would, through a stand-in.

A client's DEALLOCATE names one of *its* statements, which exist only in the proxy
(:mod:`proxy.backend.prepared`): the server's statements are the proxy's, shared by
clients. So a Query (or an unnamed Parse, psycopg's pipeline mode) that is exactly
``DEALLOCATE [PREPARE] name`` or ``DEALLOCATE ALL`` is replaced by a stand-in that
prepares and deallocates a throwaway statement, and the reply amendment (``Amend``)
makes its CommandComplete the one PostgreSQL would send, forgetting the client's name;
an unknown name gets PostgreSQL's 26000 (the stand-in names :data:`MISSING`). A DEALLOCATE
inside a longer text cannot be hidden: refused with 0A000. Pure, like ``prepared``, whose
:func:`proxy.backend.prepared.rewrite` calls :func:`deallocate` and
:func:`deallocate_parse` with its batch state.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Final, Protocol

from proxy import build
from proxy.backend.statements import (
    MISSING,
    NAME_ERRORS,
    PREFIX,
    Amend,
    ClientStatement,
    ServerStatements,
    missing_error,
    parse_frame,
    statement_numbers,
)
from proxy.wire import messages

if TYPE_CHECKING:
    from mypy_extensions import i64  # compiled, a machine integer; interpreted, an int


class Batch(Protocol):
    """What of the rewriting state of a batch (``proxy.backend.prepared._Batch``) the
    stand-in uses."""

    client: dict[str, ClientStatement]
    server: ServerStatements
    exact: bool
    parses: int

    def amended(self) -> Amend: ...
    def synced(self, frame: bytes) -> None: ...
    def send_parse(self, frame: bytes, *, drop: bool = False) -> None: ...

# The throwaway statement of the DEALLOCATE stand-in.
_THROWAWAY: Final = PREFIX + "deallocate"
# An unnamed Parse's text that may be a DEALLOCATE (one statement: it begins with it).
_MAYBE_DEALLOCATE: Final = re.compile(rb"\x00[\s;]*(?:deallocate|/\*|--)", re.IGNORECASE)
# The bytes that may follow the NUL in a match of _MAYBE_DEALLOCATE (\s is ASCII
# whitespace for bytes): any other byte there, and the regex cannot match.
_MAYBE_DEALLOCATE_FIRST: Final = frozenset(b" \t\n\r\x0b\x0c;dD/-")
_DEALLOCATE: Final = re.compile(
    rb"\s*deallocate\s+(?:prepare\s+)?(?:\"((?:[^\"]|\"\")+)\"|([A-Za-z_][A-Za-z0-9_$]*))"
    rb"\s*;?\s*\x00$", re.IGNORECASE)
_STAND_IN: Final = messages.query(f"PREPARE {_THROWAWAY} AS SELECT; DEALLOCATE {_THROWAWAY}")
_MISSING_QUERY: Final = messages.query(f"DEALLOCATE {MISSING}")
_COMPLETE_ALL: Final = messages.command_complete("DEALLOCATE ALL")
_DEALLOCATE_NOT_ALONE: Final = messages.error_response(
    "0A000", "DEALLOCATE must be sent as a query of its own in transaction pooling mode",
    hint="send DEALLOCATE in a separate query, or close the statement with a Close message")
# The word every Query is searched for; see mentions_deallocate.
_WORD: Final = b"deallocate"


def _skips() -> bytes:
    """Per byte ending a window: the distance from its last place in the word's first
    nine letters (either case) to the word's end; the word's length for any other byte."""
    table = bytearray([len(_WORD)] * 256)
    for at, letter in enumerate(_WORD[:-1]):
        table[letter] = table[letter - 0x20] = len(_WORD) - 1 - at
    return bytes(table)


_SKIPS: Final = _skips()
# Which of the two searches of mentions_deallocate is the cheaper in this build.
_NATIVE: Final = build.compiled()


def may_deallocate(data: bytes, nul: int, end: int) -> bool:
    """Whether the text of an unnamed Parse, after the NUL of its empty name at ``nul``
    (the message ends at ``end``), may be a DEALLOCATE: one byte decides for almost every
    text, the regex for the rest."""
    return (nul + 1 < end and data[nul + 1] in _MAYBE_DEALLOCATE_FIRST
            and _MAYBE_DEALLOCATE.match(data, nul, end) is not None)


def mentions_deallocate(data: bytes, start: int, end: int) -> bool:
    """Whether ``data[start:end]`` holds the word DEALLOCATE in any mix of case (as a bytes
    regex with IGNORECASE finds it); asked of every Query in transaction mode.

    Compiled, :func:`_search_bytes` (~200 instructions for a pgbench query) instead of
    :func:`_search_str` (~1,200: two str made, then searched); interpreted, the byte
    loop costs ~9,000 and the str methods ~1,500. Both say the same on any bytes
    (``tests/unit/test_prepared_scan.py``)."""
    if _NATIVE:
        return _search_bytes(data, start, end)
    return _search_str(data, start, end)


def _search_str(data: bytes, start: int, end: int) -> bool:
    """Latin-1 makes each byte one character, and lower() maps no character of latin-1
    but A-Z to an ASCII letter: a case-insensitive search for an ASCII word."""
    return "deallocate" in data[start:end].decode("latin-1").lower()


def _search_bytes(data: bytes, start: i64, end: i64) -> bool:
    """Horspool's search, case-folded: the window of ten bytes ending at ``last`` is
    compared when its last byte is an E; then it moves on by :data:`_SKIPS` of that byte,
    as far as no occurrence can be passed over. ``byte | 0x20`` equals a lower-case
    letter exactly for that letter and its capital."""
    last: i64 = start + 9
    skips = _SKIPS
    while last < end:
        byte: i64 = data[last]
        if byte | 0x20 == 0x65:
            first = last - 9
            k: i64 = 0
            while k < 9 and data[first + k] | 0x20 == _WORD[k]:
                k += 1
            if k == 9:
                return True
        last += skips[byte]
    return False


def deallocate(batch: Batch, frame: bytes) -> None:
    """A Query: DEALLOCATE of one of the client's names, or ALL, becomes a stand-in that
    answers as PostgreSQL would without touching the proxy's statements; other queries
    mentioning DEALLOCATE pass unless they hold a DEALLOCATE statement, refused."""
    body = frame[5:]
    m = _DEALLOCATE.match(body)
    if m is None:
        if _has_deallocate(body[:-1]):
            batch.amended().error = _DEALLOCATE_NOT_ALONE
            batch.synced(_MISSING_QUERY)
        else:
            batch.synced(frame)
        return
    amend = batch.amended()
    if _deallocation(batch, *m.groups()):
        amend.drop_prepares += 1
        batch.synced(_STAND_IN)
    else:
        batch.synced(_MISSING_QUERY)


def deallocate_parse(batch: Batch, frame: bytes) -> None:
    """An unnamed Parse of DEALLOCATE: as :func:`deallocate`, for the extended protocol
    (psycopg in pipeline mode). The stand-in deallocates a throwaway statement prepared
    in line just before; its ParseComplete is dropped."""
    body = frame[5:]
    text_end = body.index(0, 1)
    params = body[text_end + 1:]
    m = _DEALLOCATE.match(body, 1, text_end + 1)
    if m is None and not _has_deallocate(body[1:text_end]):
        batch.send_parse(frame)
        return
    if m is None or not batch.exact:
        # Comments before it, or after messages the proxy did not see: cannot be hidden.
        batch.amended().error = _DEALLOCATE_NOT_ALONE
        batch.send_parse(parse_frame("", f"DEALLOCATE {MISSING}", params))
    elif _deallocation(batch, *m.groups()):
        throwaway = f"{PREFIX}d{next(statement_numbers)}"
        amend = batch.amended()
        complete, succeeded, _ = amend.deallocations[-1]
        amend.deallocations[-1] = (complete, succeeded, (batch.parses, throwaway, batch.server))
        batch.send_parse(parse_frame(throwaway, "SELECT", b"\x00\x00"), drop=True)
        batch.send_parse(parse_frame("", f"DEALLOCATE {throwaway}", params))
    else:
        batch.send_parse(parse_frame("", f"DEALLOCATE {MISSING}", params))


def _deallocation(batch: Batch, quoted: bytes | None, plain: bytes | None) -> bool:
    """Prepare the reply changes for DEALLOCATE of ``quoted`` or ``plain``; True when it
    is one of the client's names (or ALL), False for the 26000 of an unknown name."""
    client = batch.client
    amend = batch.amended()
    if quoted:
        name = quoted.replace(b'""', b'"').decode("utf-8", NAME_ERRORS)
    else:
        assert plain is not None
        name = plain.decode("utf-8", NAME_ERRORS).lower()
        if name == "all":
            amend.deallocations.append((_COMPLETE_ALL, client.clear, None))
            return True
    if name in client:
        amend.deallocations.append((None, functools.partial(client.pop, name, None), None))
        return True
    amend.error = missing_error(name)
    return False


def _has_deallocate(text: bytes) -> bool:
    """Whether a query text holds a DEALLOCATE statement (not just the word)."""
    if not mentions_deallocate(text, 0, len(text)):
        return False
    from pglast import parser

    try:
        # Bytes not valid UTF-8 (another client encoding) only ever stand inside names
        # and strings: replaced, the statement's structure is the same.
        tree = parser.parse_sql_json(text.decode("utf-8", "replace"))
    except parser.ParseError:
        return False  # PostgreSQL reports the syntax error
    return '"DeallocateStmt"' in tree
