"""The SQL guard in a client's message stream (the guard itself is ``proxy.guard``).

Every Query, Parse, Bind and FunctionCall a client sends is judged before it is
forwarded. A refused message gets PostgreSQL's own semantics: a refused Query (or
FunctionCall) is replaced by a statement that raises the refusal on the server, so the
client gets ErrorResponse + ReadyForQuery and an open transaction is aborted; after a
refused Parse or Bind, messages up to Sync are dropped and the Sync is replaced by that
statement (the batch fails as a whole, as it would in PostgreSQL).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from proxy.guard import FUNCTION_CALL_REFUSAL, BindRule, Guard, Refusal
from proxy.wire import messages
from proxy.wire.framing import split_frames
from proxy.wire.tags import FrontendTag

_Q = FrontendTag.QUERY
_S = FrontendTag.SYNC
_F = FrontendTag.FUNCTION_CALL
_PARSE = FrontendTag.PARSE
_BIND = FrontendTag.BIND
GUARDED = frozenset({_Q, _PARSE, _BIND, _F})

Index = list[tuple[int, int, int]]
# Verdicts of Parse messages by (message body, tenant), shared by the clients of a proxy:
# drivers send the same unnamed Parse over and over.
ParseVerdicts = dict[tuple[bytes, str | None], tuple[str, Refusal | BindRule | None]]
_PARSE_CACHE_LIMIT = 10_000


class StreamGuard:
    """One client's guard state: Bind rules of its statements, and a batch being skipped."""

    __slots__ = ("_bind_rules", "_guard", "_on_refusal", "_parse_verdicts", "_refused_query",
                 "_skipping")

    def __init__(self, guard: Guard, parse_verdicts: ParseVerdicts,
                 on_refusal: Callable[[Refusal, int], None]) -> None:
        self._guard = guard
        self._parse_verdicts = parse_verdicts
        self._on_refusal = on_refusal            # counts and logs
        self._bind_rules: dict[str, BindRule] = {}  # statement → what its Binds must pass
        self._skipping = False                   # a refused Parse/Bind: drop up to Sync
        self._refused_query = b""

    def filter(self, block: bytes, index: Index, tenant: str | None) -> tuple[bytes, Index]:
        """The block to forward: ``block`` itself unless something was refused."""
        # Built only once something changes: kept (slices of the block) and replaced parts.
        parts: list[bytes] | None = None
        for tag, start, end in index:
            if self._skipping:
                if parts is None:
                    parts = [block[:start]] if start else []
                if tag == _S:
                    self._skipping = False
                    parts.append(self._refused_query)
                continue
            refusal = None
            if tag in GUARDED:
                refusal = self._check(tag, block[start + 5:end], tenant)
            if refusal is None:
                if parts is not None:
                    parts.append(block[start:end])
                continue
            if parts is None:
                parts = [block[:start]] if start else []
            self._on_refusal(refusal, tag)
            self._refused_query = refusal_query(refusal)
            if tag == _Q or tag == _F:
                parts.append(self._refused_query)
            else:
                self._skipping = True
        if parts is None:
            return block, index
        new = b"".join(parts)
        return new, _reindex(new)

    def _check(self, tag: int, body: bytes, tenant: str | None) -> Refusal | None:
        """The guard's verdict on one message (remembering Bind rules of Parses)."""
        guard = self._guard
        if tag == _Q:
            return guard.check_query(body[:-1].decode("utf-8", "replace"), tenant)
        if tag == _PARSE:
            cache = self._parse_verdicts
            key = (body, tenant)
            hit = cache.get(key)
            if hit is None:
                name, sql, types = messages.decode_parse(body)
                if len(cache) >= _PARSE_CACHE_LIMIT:
                    cache.clear()
                hit = cache[key] = (name, guard.check_parse(sql, tenant, types))
            name, verdict = hit
            if isinstance(verdict, BindRule):
                self._bind_rules[name] = verdict
                return None
            self._bind_rules.pop(name, None)
            return verdict
        if tag == _BIND:
            if self._bind_rules:
                _, statement, formats, params = messages.decode_bind(body)
                rule = self._bind_rules.get(statement)
                if rule is not None:
                    return guard.check_bind(rule, params, formats)
            return None
        return FUNCTION_CALL_REFUSAL


def refusal_query(refusal: Refusal) -> bytes:
    """A Query that makes the server raise ``refusal`` (so it aborts a transaction and
    answers ReadyForQuery exactly as for any other error). Only the proxy's own text is
    embedded, quoted as a literal."""
    def literal(text: str) -> str:
        return "'" + text.replace("'", "''").replace("$", "") + "'"

    code = refusal.sqlstate if re.fullmatch(r"[0-9A-Z]{5}", refusal.sqlstate) else "42501"
    items = [f"ERRCODE = '{code}'", f"MESSAGE = {literal(refusal.message)}"]
    if refusal.hint:
        items.append(f"HINT = {literal(refusal.hint)}")
    return messages.query(
        f"DO $pgtenant$BEGIN RAISE EXCEPTION USING {', '.join(items)}; END$pgtenant$")


def _reindex(block: bytes) -> Index:
    """``(tag, start, end)`` of each whole message in ``block``."""
    out = []
    pos = 0
    for frame in split_frames(block):
        out.append((frame[0], pos, pos + len(frame)))
        pos += len(frame)
    return out
