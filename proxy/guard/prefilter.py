"""The cheap test in front of the parser: is this text certainly harmless?

With a deny-by-default statement policy this is an allow-filter: text skips the parser
only when it is certainly one plain statement that every identity may run in every
pool mode, that changes no setting and names nothing the guard refuses. Everything
else is parsed (and the analysis cached by text). A false "needs inspection" costs a
parse; a false "harmless" would be a hole, so every test below errs towards parsing.

Harmless text, lower-cased:

- its first word (after PostgreSQL blanks only: a leading comment or parenthesis means
  "parse") is one of :data:`_FIRST_WORDS`: queries, DML, transaction control without
  two-phase commit, SHOW, FETCH, MOVE, CLOSE. Keywords cannot be quoted or escaped;
- it holds one statement: no ``;`` other than trailing ones (a ``;`` inside a string or
  comment only costs a parse);
- it names nothing refused: no ``pg_`` at the start of a word (every refused catalog
  function and view, ``pg_settings``), no ``u&`` (a Unicode-escaped identifier can spell
  any name), no ``prepared`` (COMMIT/ROLLBACK PREPARED); and, when it holds a ``(``
  (every function call does), no name of :data:`_CALLS` (``set_config``, query runners,
  dblink, ...) and no ``lo_`` at the start of a word (large objects);
- unless it is an INSERT, no ``into`` (``SELECT ... INTO`` creates a table).

"Start of a word" means not preceded by an ASCII letter, ``_`` or a non-ASCII character;
digits and ``$`` count as boundaries, so ``1pg_x`` or ``$pg_x`` are parsed.
"""

from __future__ import annotations

from typing import Final

_FIRST_WORDS: Final = frozenset({
    "select", "insert", "update", "delete", "with", "values", "table", "begin", "start",
    "commit", "end", "rollback", "abort", "savepoint", "release", "show", "fetch", "move",
    "close",
})
#: Functions: a call needs "(" after the name, so text without "(" cannot hold one.
_CALLS: Final = ("set_config", "_to_xml", "ts_stat", "ts_rewrite", "dblink", "loread", "lowrite",
          "crosstab", "connectby", "postgres_fdw")
# PostgreSQL's whitespace (scan.l); Python's str.isspace() knows more, which PostgreSQL
# reads as identifier characters.
_PG_SPACE: Final = " \t\n\r\f\v"
_LETTERS: Final = "abcdefghijklmnopqrstuvwxyz"


def _word_start(text: str, name: str) -> bool:
    at = text.find(name)
    while at >= 0:
        if at == 0:
            return True
        left = text[at - 1]
        if not (("a" <= left <= "z") or left == "_" or left >= "\x80"):
            return True
        at = text.find(name, at + 1)
    return False


def needs_inspection(sql: str) -> bool:
    """False only when ``sql`` is certainly one harmless statement (see module doc)."""
    body = sql.lower().lstrip(_PG_SPACE)
    rest = body.lstrip(_LETTERS)
    if body[:len(body) - len(rest)] not in _FIRST_WORDS:
        return True
    if rest:
        after = rest[0]
        if ("0" <= after <= "9") or after == "_" or after == "$" or after >= "\x80":
            return True
    semicolon = body.find(";")
    if semicolon >= 0 and body[semicolon:].strip(_PG_SPACE + ";"):
        return True
    if "u&" in body or "prepared" in body:
        return True
    if "pg_" in body and _word_start(body, "pg_"):  # catalog functions and views
        return True
    if "(" in body:
        for name in _CALLS:
            if name in body:
                return True
        if "lo_" in body and _word_start(body, "lo_"):  # large objects
            return True
    return "into" in body and not body.startswith("insert")
