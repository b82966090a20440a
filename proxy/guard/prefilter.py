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
- it names nothing refused: no ``pg_``, ``lo_`` at the start of a word (every refused
  catalog function and view, large objects), and none of :data:`_NAMES` anywhere
  (``set_config``, query runners, ``u&`` which can spell any name with escapes,
  ``prepared`` for COMMIT/ROLLBACK PREPARED, ...);
- unless it is an INSERT, no ``into`` (``SELECT ... INTO`` creates a table).

"Start of a word" means not preceded by an ASCII letter, ``_`` or a non-ASCII character;
digits and ``$`` count as boundaries, so ``1pg_x`` or ``$pg_x`` are parsed.
"""

from __future__ import annotations

_FIRST_WORDS = frozenset({
    "select", "insert", "update", "delete", "with", "values", "table", "begin", "start",
    "commit", "end", "rollback", "abort", "savepoint", "release", "show", "fetch", "move",
    "close",
})
_NAMES = ("set_config", "pg_settings", "u&", "_to_xml", "ts_stat", "ts_rewrite", "dblink",
          "loread", "lowrite", "crosstab", "connectby", "postgres_fdw", "prepared")
_WORD_STARTS = ("pg_", "lo_")
# PostgreSQL's whitespace (scan.l); Python's str.isspace() knows more, which PostgreSQL
# reads as identifier characters.
_PG_SPACE = " \t\n\r\f\v"


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
    text = sql.lower()
    body = text.lstrip(_PG_SPACE)
    end = 0
    size = len(body)
    while end < size and "a" <= body[end] <= "z":
        end += 1
    first = body[:end]
    if first not in _FIRST_WORDS:
        return True
    if end < size:
        after = body[end]
        if ("0" <= after <= "9") or after == "_" or after == "$" or after >= "\x80":
            return True
    semicolon = body.find(";")
    if semicolon >= 0 and body[semicolon:].strip(_PG_SPACE + ";"):
        return True
    for name in _NAMES:
        if name in body:
            return True
    for name in _WORD_STARTS:
        if name in body and _word_start(body, name):
            return True
    return first != "insert" and "into" in body
