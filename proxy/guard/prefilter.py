"""The cheap test in front of the parser: can this text possibly need a refusal?

Every construct the guard refuses needs one of these tokens in the statement text, and
none of them can be spelled without its letters:

- ``set`` not preceded by an identifier character: SET statements (``SET ROLE``,
  ``SET SESSION AUTHORIZATION``, ``ALTER ... SET``, ``CREATE FUNCTION ... SET``) and
  ``set_config`` (also ``"set_config"``, ``pg_catalog.set_config``). Keywords cannot be
  quoted or escaped; ``offset``, ``reset`` and ``asset`` are left out because an identifier
  character before ``set`` makes it part of another word (RESET is allowed anyway).
- ``pg_settings``: UPDATE on it calls set_config through a rule; views over it.
- ``u&``: a Unicode-escaped identifier (``U&"s\\0065t_config"``) can spell any name.
- ``program`` (COPY ... PROGRAM), ``alter`` (ALTER SYSTEM), ``load`` (LOAD).
- ``do`` as a word, ``function``, ``procedure``: bodies that run SQL from strings, where
  E'' escapes can hide anything; ``query_to_xml``, ``ts_stat``, ``ts_rewrite``: core
  functions that execute a query given as text.

Comments cannot split a keyword or an identifier, so a comment never hides a token;
it can only add false positives, which cost a parse, never a miss. The protected
prefixes themselves are not triggers: naming ``app.x`` without one of the tokens
above cannot change it.
"""

from __future__ import annotations

import re

# Identifier characters in PostgreSQL: ASCII letters, digits, "_", "$" and every byte
# of a multi-byte character. "$" and digits are left out of the lookarounds on purpose
# (conservative: "$$do" ends a dollar quote; a false positive only costs a parse).
_IDENT = r"a-z_\u0080-\U0010ffff"

_TRIGGER = re.compile(
    rf"(?<![{_IDENT}])set"
    r"|pg_settings|u&|program|alter|load|function|procedure"
    r"|query_to_xml|ts_stat|ts_rewrite"
    rf"|(?<![{_IDENT}0-9])do(?![{_IDENT}0-9])"
)


def needs_inspection(sql: str) -> bool:
    """False only when ``sql`` certainly holds nothing the guard could refuse."""
    return _TRIGGER.search(sql.lower()) is not None
