"""The SQL guard in a client's message stream (the guard itself is ``proxy.guard``).

Every Query, Parse, Bind and FunctionCall a client sends is judged before it is
forwarded. A refused message gets PostgreSQL's own semantics: a refused Query (or
FunctionCall) is replaced by a statement that raises the refusal on the server, so the
client gets ErrorResponse + ReadyForQuery and an open transaction is aborted; after a
refused Parse or Bind, messages up to Sync are dropped and the Sync is replaced by that
statement (the batch fails as a whole, as it would in PostgreSQL); a Flush while
dropping sends that statement at once (the client waits for the error) and the Sync is
then dropped.

Protocol Parse and SQL PREPARE share one namespace of statement names in PostgreSQL, so
the Bind rule of a statement (its set_config($n) writes) is checked for a Bind and for
a SQL ``EXECUTE name(args)`` alike. The guard also tells the session, once per message,
when a forwarded message may have changed session settings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from proxy.guard import (
    CLEAN,
    FUNCTION_CALL_REFUSAL,
    Analysis,
    BindRule,
    Guard,
    Prepare,
    Refusal,
)
from proxy.guard.guard import MAX_CACHED_LENGTH
from proxy.wire import messages
from proxy.wire.framing import frame_end
from proxy.wire.tags import F_BIND, F_FLUSH, F_FUNCTION_CALL, F_PARSE, F_QUERY, F_SYNC

# (Compiled, an imported name is a lookup in the module's dict at each use; a Final
# alias is a C static.)
_CLEAN: Final = CLEAN

# Verdicts of Parse messages, shared by the clients of a proxy: drivers send the same
# unnamed Parse over and over. A statement the guard finds CLEAN has the same verdict for
# every tenant and pool mode (none): it is kept by the message body alone. Any other is
# kept by (body, tenant, transaction mode). The value is the statement name, the verdict
# and whether the statement writes settings.
ParseVerdicts = dict[bytes | tuple[bytes, str | None, bool],
                     tuple[str, Refusal | BindRule | None, bool]]
_PARSE_CACHE_LIMIT: Final = 10_000


class StreamGuard:
    """One client's guard state: Bind rules of its statements, and a batch being skipped."""

    __slots__ = ("_batch", "_bind_rules", "_guard", "_in_batch", "_on_refusal",
                 "_on_state_change", "_parse_verdicts", "_raised",
                 "_refused_query", "_setting_writers", "_skipping", "_tenant",
                 "_transaction_mode")

    def __init__(self, guard: Guard, parse_verdicts: ParseVerdicts,
                 on_refusal: Callable[[Refusal, int], None], *, tenant: str | None,
                 transaction_mode: bool = False,
                 on_state_change: Callable[[], None] | None = None) -> None:
        self._guard = guard
        self._tenant = tenant  # the client's (None: a bypass identity)
        self._parse_verdicts = parse_verdicts
        self._on_refusal = on_refusal            # counts and logs
        # Called once per forwarded message that may have changed session settings.
        self._on_state_change = on_state_change
        self._transaction_mode = transaction_mode  # the pool mode (statement policy)
        # Statement name → what its Binds and EXECUTEs must pass, and the names whose
        # statement writes settings. A (re)definition that may not have taken effect (the
        # name may exist, or an earlier message of the batch may have failed) adds to
        # what the name had instead of replacing it: the old statement may still be there.
        self._bind_rules: dict[str, BindRule] = {}
        # A dict as a set: 64 bytes empty, not 216 (one per idle client adds up).
        self._setting_writers: dict[str, None] = {}
        # Definitions in the current batch (up to Sync): a Bind after them in the same
        # batch runs only if they took effect, so it is checked against them alone.
        self._batch: dict[str, tuple[BindRule | None, bool]] = {}
        self._in_batch = False                   # a message since Sync that may fail
        self._skipping = False                   # a refused Parse/Bind: drop up to Sync
        self._raised = False                     # ... and its refusal already sent (Flush)
        self._refused_query = b""

    def filter(self, block: bytes) -> bytes:
        """The block (whole messages) to forward: ``block`` itself unless something was
        refused."""
        tenant = self._tenant
        # Built only once something changes: kept (slices of the block) and replaced parts.
        parts: list[bytes] | None = None
        size = len(block)
        end = 0
        while end < size:
            start = end
            tag = block[start]
            end = frame_end(block, start)
            if self._skipping:
                if parts is None:
                    parts = [block[:start]] if start else []
                if tag == F_SYNC:
                    self._skipping = False
                    self._end_batch()
                    if not self._raised:
                        parts.append(self._refused_query)
                    self._raised = False
                elif tag == F_FLUSH and not self._raised:
                    # The client waits for the error before its Sync (asyncpg prepares
                    # with Parse, Describe, Flush): raise now; the Sync is then dropped,
                    # the raise's ReadyForQuery standing in for the one it asks for.
                    parts.append(self._refused_query)
                    self._raised = True
                continue
            refusal = None
            if tag == F_QUERY:
                # The analysis (tenant-independent) may be cached; the verdict for this
                # client's tenant, pool mode and statements is worked out every time.
                analysis = self._guard.analyze_query(block[start + 5:end])
                if analysis is not _CLEAN:
                    refusal = self._check_query(analysis, tenant)
            elif tag == F_PARSE or tag == F_FUNCTION_CALL:  # (no set: native)
                refusal = self._check(tag, block[start + 5:end], tenant)
            elif tag == F_BIND and (self._bind_rules or self._setting_writers):
                # (Without rules nor settings writers a Bind passes: not even sliced.)
                refusal = self._check(tag, block[start + 5:end], tenant)
            if tag == F_SYNC:
                self._end_batch()
            elif tag != F_QUERY and tag != F_FLUSH:
                self._in_batch = True
            if refusal is None:
                if parts is not None:
                    parts.append(block[start:end])
                continue
            if parts is None:
                parts = [block[:start]] if start else []
            self._on_refusal(refusal, tag)
            self._refused_query = refusal_query(refusal)
            if tag == F_QUERY or tag == F_FUNCTION_CALL:
                parts.append(self._refused_query)
            else:
                self._skipping = True
        return block if parts is None else b"".join(parts)

    def _check(self, tag: int, body: bytes, tenant: str | None) -> Refusal | None:
        """The guard's verdict on a Parse, Bind or FunctionCall (remembering Bind rules of
        Parses); Queries go to :meth:`_check_query`."""
        if tag == F_PARSE:
            cache = self._parse_verdicts
            hit = cache.get(body)
            if hit is None:
                key = (body, tenant, self._transaction_mode)
                hit = cache.get(key)
                if hit is None:
                    hit = self._judge_parse(body, key, tenant)
            name, verdict, writes_settings = hit
            if isinstance(verdict, Refusal):
                return verdict
            # The unnamed statement is dropped by any Parse of it that the server runs,
            # and one that opens a batch always runs. A named one fails if the name
            # exists, so it only adds to a rule the name still has.
            certain = name == "" and not self._in_batch
            if (certain and verdict is None and not writes_settings
                    and not self._bind_rules and not self._setting_writers):
                # The usual unnamed Parse: no rule before it, none after; a Bind of it in
                # this batch finds none either way (nothing to record).
                return None
            self._define(name, verdict, writes_settings, certain=certain)
            self._batch[name] = (verdict, writes_settings)
            return None
        if tag == F_BIND:
            if self._bind_rules or self._setting_writers:
                _, statement, formats, params = messages.decode_bind(body)
                rule, writes_settings = self._statement(statement)
                if rule is not None:
                    refusal = self._guard.check_bind(rule, params, formats)
                    if refusal is not None:
                        return refusal
                if writes_settings:
                    self._state_changed()
            return None
        return FUNCTION_CALL_REFUSAL

    def _judge_parse(self, body: bytes, key: tuple[bytes, str | None, bool],
                     tenant: str | None) -> tuple[str, Refusal | BindRule | None, bool]:
        """The guard's verdict on a Parse body not in the cache, kept there (by the body
        alone when the statement is CLEAN) unless the text is huge."""
        name, sql, types = messages.decode_parse(body)
        analysis = self._guard.analyze(sql)
        verdict = self._guard.parse_verdict(analysis, tenant, types,
                                            transaction_mode=self._transaction_mode)
        hit = (name, verdict, analysis.changes_settings)
        if len(body) <= MAX_CACHED_LENGTH:  # a huge text is judged every time:
            cache = self._parse_verdicts
            if len(cache) >= _PARSE_CACHE_LIMIT:  # the cache's size stays bounded
                cache.clear()
            if analysis is _CLEAN:
                cache[body] = hit
            else:
                cache[key] = hit
        return hit

    def _statement(self, name: str) -> tuple[BindRule | None, bool]:
        """The rule and settings flag that a Bind or EXECUTE of ``name`` runs under."""
        defined = self._batch.get(name)
        if defined is not None:
            return defined
        return self._bind_rules.get(name), name in self._setting_writers

    def _define(self, name: str, rule: BindRule | None, writes_settings: bool, *,
                certain: bool) -> None:
        """Record a (re)definition of the statement ``name`` (see ``__init__``)."""
        old = self._bind_rules.get(name)
        if certain or old is None:
            if rule is None:
                self._bind_rules.pop(name, None)
            else:
                self._bind_rules[name] = rule
        elif rule is not None:
            writes = old.writes + tuple(w for w in rule.writes if w not in old.writes)
            self._bind_rules[name] = BindRule(tenant=rule.tenant, writes=writes)
        if writes_settings:
            self._setting_writers[name] = None
        elif certain:
            self._setting_writers.pop(name, None)

    def _end_batch(self) -> None:
        if self._batch:
            self._batch.clear()
        self._in_batch = False

    def _check_query(self, analysis: Analysis, tenant: str | None) -> Refusal | None:
        """A Query (its analysis, not CLEAN): the guard's verdict for this client, then
        its SQL PREPARE/EXECUTE in order."""
        guard = self._guard
        refusal = guard.query_verdict(analysis, tenant, transaction_mode=self._transaction_mode)
        if refusal is not None:
            return refusal
        changed = analysis.changes_settings
        # A statement after a failed one in the same Query does not run, so an EXECUTE
        # after a PREPARE of the same Query runs the prepared statement or nothing.
        prepared: dict[str, tuple[BindRule | None, bool]] = {}
        for op in analysis.ops:
            if isinstance(op, Prepare):
                # SQL PREPARE never writes a protected setting (refused as persistent),
                # and fails when the name exists: it cannot replace a statement.
                self._define(op.name, None, op.writes_settings, certain=False)
                prepared[op.name] = (None, op.writes_settings)
                continue
            rule, writes_settings = prepared.get(op.name) or self._statement(op.name)
            if rule is not None:
                refusal = guard.check_execute(rule, op.args)
                if refusal is not None:
                    return refusal
            changed = changed or writes_settings
        if changed:
            self._state_changed()
        return None

    def _state_changed(self) -> None:
        if self._on_state_change is not None:
            self._on_state_change()


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
