"""Counters the proxy core increments on its hot path; the metrics layer reads them.

Everything here is plain Python: slotted objects holding ints, floats and small dicts.
Recording a transaction is a few attribute increments, one dict subscription and a
histogram bucket found by comparing with the bounds in order (no ``bisect``, no method
call; a pooled transaction is in one of the first few buckets); no locks (one event loop
owns all of it), no label formatting, no prometheus-client objects.
:mod:`proxy.metrics.collector` reads the numbers at scrape time.

Tenant label cardinality is capped at export time by :meth:`TenantStatsTable.export`:
the busiest tenants (any tenant with a refused statement first) keep their own label,
the rest are summed into ``_other``, and counters stay monotonic for Prometheus. See
``docs/metrics.md`` for the reasoning.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Final

#: The label that stands for every tenant without a label of its own.
OTHER_TENANT: Final = "_other"

#: Upper bounds (seconds) of the transaction-duration buckets: a pooled OLTP transaction
#: is milliseconds; the long tail is what an SRE hunts.
TRANSACTION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                       1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Upper bounds (seconds) of the pool-wait buckets, up to the default query_wait_timeout.
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 120.0)


class _Cell:
    """One bucket's count. Compiled, a native field incremented in place: an int kept in
    a list is a Python object, and past 256 each increment made a new one."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


class Histogram:
    """Fixed-bucket histogram: one count per bucket (not cumulative), plus sum and count.

    ``counts[i]`` counts observations ``<= bounds[i]`` and ``> bounds[i - 1]``; the last
    slot is the ``+Inf`` bucket. Prometheus' cumulative form comes from :meth:`cumulative`.
    ``count`` is the sum of ``counts``, computed when read (one increment less per
    observation). The hot path may add to ``cells[i].n`` and ``sum`` directly (see
    ``ProxyStats.record_transaction``).
    """

    __slots__ = ("bounds", "cells", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.cells = [_Cell() for _ in range(len(bounds) + 1)]
        self.sum = 0.0

    @property
    def counts(self) -> list[int]:
        """The count of each bucket (a new list)."""
        return [cell.n for cell in self.cells]

    @property
    def count(self) -> int:
        return sum(cell.n for cell in self.cells)

    def observe(self, value: float) -> None:
        # The bucket bisect_left would give, found by a scan from the smallest bound: most
        # observations (waits for a server, transactions) fall in the first buckets, and
        # compiled each step is a float comparison where bisect is a generic call.
        bounds = self.bounds
        i = 0
        n = len(bounds)
        while i < n and value > bounds[i]:
            i += 1
        self.cells[i].n += 1
        self.sum += value

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` pairs, ending with ``(inf, count)``."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class TrafficStats:
    """Traffic through one configured database (never evicted: safe to keep a reference).

    ``bytes_in`` counts bytes received from clients, ``bytes_out`` bytes sent to them.
    """

    __slots__ = ("bytes_in", "bytes_out", "errors", "queries", "transaction_seconds",
                 "transactions", "wait_seconds")

    def __init__(self) -> None:
        self.queries = 0
        self.transactions = 0
        self.errors = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.transaction_seconds = Histogram(TRANSACTION_BUCKETS)
        self.wait_seconds = Histogram(WAIT_BUCKETS)


class TenantStats:
    """What one tenant did; ``violations`` maps a guard refusal kind to its count."""

    __slots__ = ("errors", "queries", "transactions", "violations", "wait_seconds")

    def __init__(self) -> None:
        self.queries = 0
        self.transactions = 0
        self.errors = 0
        self.wait_seconds = 0.0
        self.violations: dict[str, int] = {}

    @property
    def traffic(self) -> int:
        return self.queries + self.transactions

    def copy(self) -> TenantStats:
        out = TenantStats()
        out.add(self)
        return out

    def add(self, other: TenantStats) -> None:
        self.queries += other.queries
        self.transactions += other.transactions
        self.errors += other.errors
        self.wait_seconds += other.wait_seconds
        for kind, n in other.violations.items():
            self.violations[kind] = self.violations.get(kind, 0) + n

    def since(self, base: TenantStats | None) -> TenantStats:
        """These counts minus ``base`` (an earlier copy of them); a new object."""
        out = self.copy()
        if base is not None:
            out.queries -= base.queries
            out.transactions -= base.transactions
            out.errors -= base.errors
            out.wait_seconds -= base.wait_seconds
            for kind, n in base.violations.items():
                out.violations[kind] -= n
        return out


def _rank(item: tuple[str, TenantStats]) -> tuple[bool, int, str]:
    # Tenants with refused statements outrank traffic: "who tries to break out" must
    # never hide in _other. Name as tie-breaker keeps the choice stable across scrapes.
    name, stats = item
    return (bool(stats.violations), stats.traffic, name)


class TenantStatsTable:
    """Per-tenant counters with a bounded number of exported tenant labels.

    Hot path: :meth:`get` (one dict lookup; an allocation for a tenant not seen yet).
    Callers must not keep the returned object across events: :meth:`_compact` may drop
    a quiet tenant's entry (its counts are kept, in ``_other``).

    Export (:meth:`export`): the top ``max_labels`` tenants by rank get a label and
    report their full totals (what an admin would expect to read for a tenant).
    ``_other`` reports what unlabelled tenants did while unlabelled; when a tenant is
    promoted, what it had added to ``_other`` stays there, so ``_other`` never goes
    down. Consequence: summing raw counter values over tenants over-counts promoted
    tenants' past; ``sum(rate(...))`` is right, since a series that appears is not an
    increase. Ranking by totals changes slowly, so labels rarely churn.
    """

    __slots__ = ("_bases", "_exported", "_labelled", "_retired", "_tenants", "max_labels",
                 "max_tracked")

    def __init__(self, max_labels: int = 100, max_tracked: int = 10_000) -> None:
        if max_labels < 0 or max_tracked < max(1, max_labels):
            raise ValueError("need 0 <= max_labels <= max_tracked and max_tracked >= 1")
        self.max_labels = max_labels
        self.max_tracked = max_tracked
        self._tenants: dict[str, TenantStats] = {}
        #: An unlabelled tenant's counts when it lost its label; _other gets what is above.
        self._bases: dict[str, TenantStats] = {}
        self._labelled: set[str] = set()
        #: Tenants that existed at the last export (only they can have shown in _other).
        self._exported: set[str] = set()
        #: What tenants contributed to _other before they got a label or were dropped.
        self._retired = TenantStats()

    def __len__(self) -> int:
        return len(self._tenants)

    def get(self, tenant: str) -> TenantStats:
        """The counters of ``tenant``, created on first use."""
        stats = self._tenants.get(tenant)
        if stats is None:
            if len(self._tenants) >= self.max_tracked:
                self._compact()
            stats = self._tenants[tenant] = TenantStats()
        return stats

    def export(self) -> tuple[dict[str, TenantStats], TenantStats]:
        """``({tenant: counts}, counts of _other)`` for the metrics layer; re-ranks labels."""
        # A tenant really called "_other" is never labelled: it would collide with the fold.
        ranked = sorted((item for item in self._tenants.items() if item[0] != OTHER_TENANT),
                        key=_rank, reverse=True)
        labelled = {name for name, _ in ranked[: self.max_labels]}
        for name in labelled - self._labelled:      # promoted: its past stays in _other
            base = self._bases.pop(name, None)
            if name in self._exported:
                self._retired.add(self._tenants[name].since(base))
        for name in self._labelled - labelled:      # demoted: adds to _other from zero
            if name in self._tenants:
                self._bases[name] = self._tenants[name].copy()
        self._labelled = labelled
        self._exported = set(self._tenants)
        other = self._retired.copy()
        out: dict[str, TenantStats] = {}
        for name, stats in self._tenants.items():
            if name in labelled:
                out[name] = stats
            else:
                other.add(stats.since(self._bases.get(name)))
        return out, other

    def _compact(self) -> None:
        """Bound memory: fold the quietest unlabelled tenants into _other, keep half."""
        keep = self.max_tracked // 2
        ranked = sorted(self._tenants.items(), key=_rank, reverse=True)
        for name, stats in ranked[keep:]:
            if name in self._labelled:
                continue
            self._retired.add(stats.since(self._bases.pop(name, None)))
            self._exported.discard(name)
            del self._tenants[name]


class SecurityStats:
    """Security events that are not per tenant (refusals per tenant live in TenantStats).

    ``auth_failures`` is keyed by :class:`proxy.auth.errors.AuthError` ``reason``; ProxyApp
    passes its own dict so there is one counter, not two.
    """

    __slots__ = ("auth_failures", "suspended_tenant_attempts")

    def __init__(self, auth_failures: dict[str, int] | None = None) -> None:
        self.auth_failures: dict[str, int] = {} if auth_failures is None else auth_failures
        self.suspended_tenant_attempts = 0

    def record_auth_failure(self, reason: str) -> None:
        self.auth_failures[reason] = self.auth_failures.get(reason, 0) + 1


class ProxyStats:
    """All counters of one proxy process; ``ProxyApp.stats``.

    The ``record_*`` methods are the hot-path API. ``traffic`` is the database's
    :class:`TrafficStats` (``stats.databases[name]``, safe to keep on the client). They
    look a tenant up with one dict subscription (``_tenant_counts`` is the table's own
    dict) and call :meth:`TenantStatsTable.get` only for a tenant not tracked yet.
    """

    __slots__ = ("_tenant_counts", "config_reload_failures", "config_reloads", "databases",
                 "security", "started_at", "started_monotonic", "tenants")

    def __init__(self, databases: Iterable[str] = (), *, max_tenant_labels: int = 100,
                 max_tracked_tenants: int = 10_000,
                 auth_failures: dict[str, int] | None = None) -> None:
        self.started_at = time.time()
        self.started_monotonic = time.monotonic()
        self.databases: dict[str, TrafficStats] = {name: TrafficStats() for name in databases}
        self.tenants = TenantStatsTable(max_tenant_labels, max_tracked_tenants)
        # The very dict the table keeps (never replaced, only added to and pruned).
        self._tenant_counts: dict[str, TenantStats] = self.tenants._tenants
        self.security = SecurityStats(auth_failures)
        self.config_reloads = 0
        self.config_reload_failures = 0

    def database(self, name: str) -> TrafficStats:
        """The TrafficStats of ``name`` (created for a database added by a reload)."""
        traffic = self.databases.get(name)
        if traffic is None:
            traffic = self.databases[name] = TrafficStats()
        return traffic

    # ---- hot path ---------------------------------------------------------------------

    def record_queries(self, traffic: TrafficStats, tenant: str, n: int = 1) -> None:
        """``n`` statements sent by a client (Query or Sync-terminated batch)."""
        traffic.queries += n
        try:
            self._tenant_counts[tenant].queries += n
        except KeyError:
            self.tenants.get(tenant).queries += n

    def record_transaction(self, traffic: TrafficStats, tenant: str, seconds: float) -> None:
        """A transaction ended (ReadyForQuery 'I' after work); ``seconds`` since it began."""
        traffic.transactions += 1
        # Histogram.observe inlined, bisect_left(TRANSACTION_BUCKETS, seconds) unrolled:
        # native float comparisons when compiled, the fastest in pure Python too.
        # (test_stats checks that it stays exactly the bisect bucket.)
        hist = traffic.transaction_seconds
        if seconds <= 0.0005:
            i = 0
        elif seconds <= 0.001:
            i = 1
        elif seconds <= 0.0025:
            i = 2
        elif seconds <= 0.005:
            i = 3
        elif seconds <= 0.01:
            i = 4
        elif seconds <= 0.025:
            i = 5
        elif seconds <= 0.05:
            i = 6
        elif seconds <= 0.1:
            i = 7
        elif seconds <= 0.25:
            i = 8
        elif seconds <= 0.5:
            i = 9
        elif seconds <= 1.0:
            i = 10
        elif seconds <= 2.5:
            i = 11
        elif seconds <= 5.0:
            i = 12
        elif seconds <= 10.0:
            i = 13
        elif seconds <= 30.0:
            i = 14
        elif seconds <= 60.0:
            i = 15
        else:
            i = 16
        hist.cells[i].n += 1
        hist.sum += seconds
        try:
            self._tenant_counts[tenant].transactions += 1
        except KeyError:
            self.tenants.get(tenant).transactions += 1

    def record_error(self, traffic: TrafficStats, tenant: str) -> None:
        """An ErrorResponse went to the client (from the server or from the proxy)."""
        traffic.errors += 1
        try:
            self._tenant_counts[tenant].errors += 1
        except KeyError:
            self.tenants.get(tenant).errors += 1

    def record_violation(self, tenant: str, kind: str) -> None:
        """The guard refused a statement that would leave the tenant (``kind``: short,
        fixed vocabulary such as ``set_role``, ``set_config``, ``function_call``)."""
        violations = self.tenants.get(tenant).violations
        violations[kind] = violations.get(kind, 0) + 1

    def wait_ended(self, traffic: TrafficStats, tenant: str | None, seconds: float) -> None:
        """A client's wait for a server connection is over (served, timed out or
        cancelled), after ``seconds``. (Who waits now, and since when, is the pools' to
        say: ``ServerPool.oldest_wait``.)"""
        traffic.wait_seconds.observe(seconds)
        if tenant is not None:
            self.tenants.get(tenant).wait_seconds += seconds

    # ---- scrape side ------------------------------------------------------------------

    def uptime(self) -> float:
        return time.monotonic() - self.started_monotonic

