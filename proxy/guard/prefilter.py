"""The cheap test in front of the parser: can this text possibly need a refusal?

Every construct the guard refuses needs one of these in the (lower-cased) text, and
none of them can be spelled without its letters (keywords cannot be quoted or escaped):

- ``set_config`` (also ``"set_config"``, ``pg_catalog.set_config``);
- ``set`` as the first word of a statement (SET, SET ROLE, SET SESSION AUTHORIZATION):
  only blanks or ``;`` before it. A ``set`` further into a statement is UPDATE's, or
  belongs to ALTER ... SET or CREATE FUNCTION ... SET, which the words ``alter``,
  ``function`` and ``procedure`` catch. When the text holds a comment (``--`` or
  ``/*``), any ``set`` word counts, since a comment may stand between ``;`` and SET;
- ``pg_settings`` (UPDATE on it calls set_config through a rule; views over it);
- ``u&``: a Unicode-escaped identifier (``U&"s\\0065t_config"``) can spell any name;
- the words ``program`` (COPY ... PROGRAM), ``alter`` (ALTER SYSTEM, ALTER ... SET),
  ``load`` (LOAD), ``do``, ``function``, ``procedure`` (bodies that run SQL from strings,
  where E'' escapes can hide anything);
- ``query_to_xml``, ``ts_stat``, ``ts_rewrite``: core functions that run a query given
  as text.

"Word" means not preceded or followed by an identifier character (ASCII letter or
digit, ``_``, or any non-ASCII character, as PostgreSQL's lexer sees them); ``$`` does
not count, so ``$$do`` or ``do$$`` are treated as words (a false positive only costs a
parse, never a miss). The protected prefixes themselves are not triggers: naming
``app.x`` without one of the above cannot change it.
"""

from __future__ import annotations

_NAMES = ("set_config", "pg_settings", "u&", "query_to_xml", "ts_stat", "ts_rewrite")
_WORDS = ("do", "alter", "load", "program", "function", "procedure")
# PostgreSQL's whitespace (scan.l); Python's str.isspace() knows more, which PostgreSQL
# reads as identifier characters.
_PG_SPACE = frozenset(" \t\n\r\f\v")


def _ident(ch: str) -> bool:
    return ("a" <= ch <= "z") or ("0" <= ch <= "9") or ch == "_" or ch >= "\x80"


def _has_word(text: str, word: str) -> bool:
    end = len(text)
    at = text.find(word)
    while at >= 0:
        after = at + len(word)
        if (at == 0 or not _ident(text[at - 1])) and (after == end or not _ident(text[after])):
            return True
        at = text.find(word, at + 1)
    return False


def _has_statement_set(text: str) -> bool:
    """A ``set`` word that may start a statement."""
    anywhere = "--" in text or "/*" in text
    end = len(text)
    at = text.find("set")
    while at >= 0:
        after = at + 3
        left = text[at - 1] if at else ";"
        if not _ident(left) or "0" <= left <= "9":
            if after == end or not _ident(text[after]):
                if anywhere:
                    return True
                i = at - 1
                while i >= 0 and text[i] in _PG_SPACE:
                    i -= 1
                if i < 0 or text[i] == ";":
                    return True
        at = text.find("set", after)
    return False


def needs_inspection(sql: str) -> bool:
    """False only when ``sql`` certainly holds nothing the guard could refuse."""
    text = sql.lower()
    for name in _NAMES:
        if name in text:
            return True
    for word in _WORDS:
        if word in text and _has_word(text, word):
            return True
    return "set" in text and _has_statement_set(text)
