"""The guard: per-message verdicts from the cached analysis plus the client's tenant."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from proxy.config import TenancyConfig
from proxy.guard.analysis import Analyzer
from proxy.guard.findings import CLEAN, Analysis
from proxy.guard.policy import Deferred, SettingClass, SettingPolicy
from proxy.guard.prefilter import needs_inspection
from proxy.guard.statements import StatementPolicy
from proxy.guard.verdict import BindRule, Param, Refusal, SettingValue, SettingWrite, Special

#: Parameter type OIDs whose text and binary forms are the value's UTF-8 bytes and whose
#: conversion to text keeps them: unspecified (0, inferred as text), text, varchar, name,
#: unknown. Anything else could reach set_config() through a cast that changes the value.
SAFE_PARAM_TYPES: Final = frozenset({0, 25, 1043, 19, 705})
#: Texts longer than this are inspected every time instead of being kept in the cache.
MAX_CACHED_LENGTH: Final = 16 * 1024
#: Bounds of :attr:`Guard.query_analyses` (Query message bodies and their analyses): when
#: either would be passed it is emptied (cheaper than LRU bookkeeping on every hit; a
#: workload that repeats its queries refills it at once).
QUERY_CACHE_ENTRIES: Final = 10_000
QUERY_CACHE_BYTES: Final = 8 * 1024 * 1024

#: Query bytes with every ASCII digit made ``0``: the key of :attr:`Guard.clean_shapes`.
_DIGITS_AS_ZERO: Final = bytes.maketrans(b"123456789", b"000000000")

_STARTUP_PLUMBING: Final = frozenset({"user", "database", "application_name"})
_FALSE: Final = frozenset({"false", "off", "no", "0", ""})


class Guard:
    """Inspects client SQL; see the package docstring for the rules and the API."""

    def __init__(
        self,
        tenancy: TenancyConfig,
        *,
        cache_size: int = 4096,
        allowed_roles: frozenset[str] = frozenset(),
    ) -> None:
        self.policy = SettingPolicy(tenancy, allowed_roles)
        self.statements = StatementPolicy(tenancy)
        self._analyzer = Analyzer(self.policy, self.statements)
        self._analyze: Callable[[str], Analysis] = self._analyzer.analyze
        self._cached = cache_size > 0
        if self._cached:
            self._analyze = functools.lru_cache(maxsize=cache_size)(self._analyzer.analyze)
        #: Query message body (SQL text and NUL, raw bytes) -> its analysis, for the
        #: texts the pre-filter sends to the parser; see :meth:`analyze_query`.
        self.query_analyses: dict[bytes, Analysis] = {}
        self._query_bytes = 0
        #: Query bodies the pre-filter found harmless, with their digits made ``0`` (see
        #: :meth:`analyze_query`); bounded like :attr:`query_analyses`.
        self.clean_shapes: set[bytes] = set()
        self._shape_bytes = 0

    def analyze(self, sql: str) -> Analysis:
        """The tenant-independent analysis of ``sql`` (pre-filter, then cache, then parse)."""
        if not needs_inspection(sql):
            return CLEAN
        if len(sql) > MAX_CACHED_LENGTH:
            return self._analyzer.analyze(sql)
        return self._analyze(sql)

    def analyze_query(self, body: bytes) -> Analysis:
        """:meth:`analyze` of a Query message body (the SQL text and its NUL terminator),
        remembered: by its shape when the pre-filter finds it harmless, else by its bytes.

        Sound because an analysis depends on the text alone (never on the tenant, the pool
        mode or the session: those are applied to it afterwards, on every hit, by
        :meth:`query_verdict` and the caller), the text is a function of the bytes, and the
        guard's configuration never changes (tenancy changes need a restart). Drivers and
        ORMs send the same bytes again and again: a hit skips decoding and the pre-filter.

        The pre-filter's "harmless" is kept in :attr:`clean_shapes`, by the bytes with
        each ASCII digit made ``0``, so texts that differ only in their literals' digits
        (``pgbench -S``, an application that inlines ids) hit it too. Sound because the
        pre-filter's answer cannot change when a digit becomes another: none of the
        words it looks for holds a digit, it reads a digit next to a word the same
        whatever the digit, and UTF-8 never uses the bytes of ASCII digits inside a
        multi-byte character (``tests/unit/test_guard_query_cache.py`` checks it by
        example and at random). A text the pre-filter sends to the parser is analysed
        and kept as itself, in :attr:`query_analyses`, looked up second.

        The shape is looked up first: the common Query is harmless, and a text whose
        literals differ every time would miss a lookup by its own bytes (a hash of the
        text, ~300 instructions compiled) before reaching its shape.
        """
        size = len(body)
        if not self._cached or size > MAX_CACHED_LENGTH:
            sql = body[:-1].decode("utf-8", "replace")
            return self._analyzer.analyze(sql) if needs_inspection(sql) else CLEAN
        shape = body.translate(_DIGITS_AS_ZERO)  # (body itself when it holds no digit)
        if shape in self.clean_shapes:
            return CLEAN
        cache = self.query_analyses
        analysis = cache.get(body)
        if analysis is not None:
            return analysis
        sql = body[:-1].decode("utf-8", "replace")
        if not needs_inspection(sql):
            self._remember_shape(shape)
            return CLEAN
        analysis = self._analyze(sql)
        if len(cache) >= QUERY_CACHE_ENTRIES or self._query_bytes + size > QUERY_CACHE_BYTES:
            cache.clear()
            self._query_bytes = 0
        cache[body] = analysis
        self._query_bytes += size
        return analysis

    def _remember_shape(self, shape: bytes) -> None:
        shapes = self.clean_shapes
        size = len(shape)
        if len(shapes) >= QUERY_CACHE_ENTRIES or self._shape_bytes + size > QUERY_CACHE_BYTES:
            shapes.clear()
            self._shape_bytes = 0
        shapes.add(shape)
        self._shape_bytes += size

    def check_query(self, sql: str, tenant: str | None, *,
                    transaction_mode: bool = False) -> Refusal | None:
        """Verdict for a Query message (simple protocol; may hold several statements).

        ``transaction_mode``: the client's pool runs in transaction mode, where the
        statement policy refuses what would outlive the transaction on the backend.
        """
        return self.query_verdict(self.analyze(sql), tenant, transaction_mode=transaction_mode)

    def query_verdict(self, analysis: Analysis, tenant: str | None, *,
                      transaction_mode: bool = False) -> Refusal | None:
        """:meth:`check_query` for an analysis already at hand."""
        if analysis is CLEAN:
            return None
        verdict = self._apply(analysis, tenant, param_types=None,
                              transaction_mode=transaction_mode)
        return verdict if isinstance(verdict, Refusal) else None

    def check_parse(
        self, sql: str, tenant: str | None, param_types: Sequence[int] = (), *,
        transaction_mode: bool = False,
    ) -> Refusal | BindRule | None:
        """Verdict for a Parse message; a BindRule when Binds must be checked.

        ``param_types`` are the parameter type OIDs of the Parse message.
        """
        return self.parse_verdict(self.analyze(sql), tenant, param_types,
                                  transaction_mode=transaction_mode)

    def parse_verdict(
        self, analysis: Analysis, tenant: str | None, param_types: Sequence[int] = (), *,
        transaction_mode: bool = False,
    ) -> Refusal | BindRule | None:
        """:meth:`check_parse` for an analysis already at hand."""
        if analysis is CLEAN:
            return None
        return self._apply(analysis, tenant, param_types=param_types,
                           transaction_mode=transaction_mode)

    def check_bind(
        self, rule: BindRule, params: Sequence[bytes | None], formats: Sequence[int]
    ) -> Refusal | None:
        """Verdict for a Bind of a statement that :meth:`check_parse` gave ``rule`` for.

        ``params`` are the raw parameter values (None for NULL) and ``formats`` the
        parameter format codes as sent (none: all text; one: for all; else one each).
        """
        for write in rule.writes:
            name = _bound(write.name, params, formats)
            value = _bound(write.value, params, formats)
            if not isinstance(name, str):
                return _unprovable(write)
            verdict = self.policy.judge(write.via, name, value, persistent=False,
                                        tenant=rule.tenant)
            if isinstance(verdict, Refusal):
                return verdict
        return None

    def check_execute(self, rule: BindRule, args: Sequence[bytes | None] | None
                      ) -> Refusal | None:
        """Verdict for SQL ``EXECUTE name(args)`` of a statement with a Bind rule.

        ``args`` are the constant arguments in text form (None = NULL), or None when
        some argument is not a constant: then nothing can be proven and it is refused.
        """
        if args is None:
            return _unprovable(rule.writes[0]) if rule.writes else None
        return self.check_bind(rule, args, ())

    def check_startup(self, settings: Mapping[str, str]) -> Refusal | None:
        """Verdict for the settings of a StartupMessage.

        ``settings`` are the startup parameters other than ``user`` and ``database``
        together with the ``-c name=value`` pairs of ``options`` (already split). A
        protected setting is refused whatever its value (the proxy sets it itself);
        a role only when allowed; ``replication`` connections are refused because
        replication commands are a different language the guard does not inspect.
        """
        for raw_name, value in settings.items():
            name = raw_name.replace("-", "_")
            lowered = name.strip().lower()
            if lowered in _STARTUP_PLUMBING:
                continue
            if lowered == "replication":
                if value.strip().lower() in _FALSE:
                    continue
                return _startup_refusal(raw_name)
            if lowered == "options":
                if self._analyzer_mentions(value):
                    return _startup_refusal(raw_name)
                continue
            if self.policy.classify(name) is SettingClass.PROTECTED:
                return _startup_refusal(raw_name)
            verdict = self.policy.judge("set", name, value, persistent=False, tenant=None)
            if isinstance(verdict, Refusal):
                if verdict.kind == "parser_state":  # its own message says why
                    return dataclasses.replace(verdict, kind="startup_option")
                return _startup_refusal(raw_name)
        return None

    def cache_info(self) -> functools._CacheInfo | None:
        """Hits, misses and size of the analysis cache (None when caching is off)."""
        info = getattr(self._analyze, "cache_info", None)
        return info() if info is not None else None

    def cache_clear(self) -> None:
        """Forget every cached analysis."""
        self.query_analyses.clear()
        self._query_bytes = 0
        self.clean_shapes.clear()
        self._shape_bytes = 0
        clear = getattr(self._analyze, "cache_clear", None)
        if clear is not None:
            clear()

    # ---- internals --------------------------------------------------------------------

    def _analyzer_mentions(self, text: str) -> bool:
        lowered = text.lower()
        return lowered.startswith(self.policy.prefixes) or any(
            word in lowered
            for word in (*self.policy.prefixes, "role", "authoriz", "standard_conforming",
                         "client_encoding", "session_", "replication")
        )

    def _apply(
        self, analysis: Analysis, tenant: str | None, *, param_types: Sequence[int] | None,
        transaction_mode: bool,
    ) -> Refusal | BindRule | None:
        if analysis.refusal is not None:
            return analysis.refusal
        if analysis.dynamic is not None and tenant is not None:
            return analysis.dynamic
        pending: list[SettingWrite] = []
        for write in analysis.writes:
            name, value = write.name, write.value
            if isinstance(name, Param) or isinstance(value, Param):
                # Only a Parse has parameters, and only text-like ones are comparable.
                if param_types is None or not _safe_params(write, param_types):
                    return _unprovable(write)
                if isinstance(name, str):
                    verdict = self.policy.judge(write.via, name, value, persistent=False,
                                                tenant=Deferred.TENANT)
                    if isinstance(verdict, Refusal):
                        return verdict
                    if tenant is None and self.policy.classify(name) is \
                            SettingClass.PROTECTED:  # no tenant: no value can be right
                        return _unprovable(write)
                pending.append(write)
                continue
            verdict = self.policy.judge(write.via, name, value, persistent=False,
                                        tenant=tenant)
            if isinstance(verdict, Refusal):
                return verdict
        if tenant is not None:
            # The statement policy, after the setting writes: a tenant switch attempt
            # keeps its own kind (set_config, set_protected) whatever statement holds it.
            policy = (analysis.transaction_refusal if transaction_mode
                      else analysis.session_refusal)
            if policy is not None:
                return policy
        if pending:
            return BindRule(tenant=tenant, writes=tuple(pending))
        return None


def _safe_params(write: SettingWrite, param_types: Sequence[int]) -> bool:
    for part in (write.name, write.value):
        if isinstance(part, Param):
            oid = param_types[part.index] if part.index < len(param_types) else 0
            if oid not in SAFE_PARAM_TYPES:
                return False
    return True


def _bound(
    part: str | Param | Special, params: Sequence[bytes | None], formats: Sequence[int]
) -> SettingValue:
    """The value a bound parameter gives ``part`` (literals pass through)."""
    if not isinstance(part, Param):
        return part
    index = part.index
    if index >= len(params):
        return Special.UNKNOWN
    raw = params[index]
    if raw is None:
        return Special.NULL
    if len(formats) > 1:
        fmt = formats[index] if index < len(formats) else -1
    else:
        fmt = formats[0] if formats else 0
    if fmt not in (0, 1):  # binary text/varchar/name is the same UTF-8 bytes as text
        return Special.UNKNOWN
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return Special.UNKNOWN


def _unprovable(write: SettingWrite) -> Refusal:
    shown = write.name if isinstance(write.name, str) else "a setting named by a parameter"
    quoted = f'"{shown}"' if isinstance(write.name, str) else shown
    return Refusal(
        kind="set_config" if write.via == "set_config" else "set_protected",
        message=f"permission denied: cannot prove the value written to {quoted} is "
        "your own tenant",
        hint="bind the value as a text parameter of set_config(), or use a constant",
    )


def _startup_refusal(name: str) -> Refusal:
    return Refusal(
        kind="startup_option",
        message=f'permission denied to set "{name}" in the startup packet through pgtenant',
        hint="pgtenant sets the tenant and role from your credential",
    )
