"""The numbers of a benchmark run: medians per workload and target, ratios to the
baselines (PgBouncer, direct, the bare pipe, a pgtenant ``@base`` twin), the
idle-connection summary.

Pure arithmetic over :class:`~bench.results.BenchResults`; the outputs built from it are
:mod:`bench.report` (results.md, results.json) and :mod:`bench.chart` (chart.png).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from bench.baseline import base_name
from bench.results import BenchResults, IdleMeasurement, Measurement

BASELINE_PROXY = "pgbouncer"
#: bench.pipe's target name (``PipeTarget.name``; this module imports no target), the bare
#: uvloop byte pipe: what pgtenant's own work costs is measured over it.
FLOOR = "pipe"
BASELINE_DIRECT = "direct"
LATENCY_WORKLOAD = "select-simple-c1"
KIB = 1024
MIB = 1024 * 1024


@dataclass(slots=True)
class Summary:
    """One workload on one target, over its repeats."""

    workload: str
    target: str
    runs: int
    ok_runs: int
    tps: float | None = None
    tps_min: float | None = None
    tps_max: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    proxy_cpu_us_per_tx: float | None = None
    pg_cpu_us_per_tx: float | None = None
    client_cpu_us_per_tx: float | None = None
    vs_pgbouncer: float | None = None
    vs_direct: float | None = None
    errors: list[str] = field(default_factory=list)


@dataclass(slots=True)
class IdleSummary:
    """One target's idle-connection test, over its repeats."""

    target: str
    runs: int
    ok_runs: int
    clients: int
    opened: int
    connect_seconds: float
    rss_before_bytes: float
    rss_after_bytes: float
    rss_per_client_bytes: float | None
    idle_cpu_percent: float
    answered: str
    errors: list[str] = field(default_factory=list)


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _unique(errors: Iterable[str | None]) -> list[str]:
    return list(dict.fromkeys(e for e in errors if e))


def summarize(results: BenchResults) -> list[Summary]:
    """Median per (workload, target) in measurement order, with ratios to the baselines."""
    groups: dict[tuple[str, str], list[Measurement]] = {}
    for m in results.measurements:
        groups.setdefault((m.workload, m.target), []).append(m)
    summaries: list[Summary] = []
    for (workload, target), runs in groups.items():
        good = [m for m in runs if m.ok]
        tps = [m.tps for m in good if m.tps is not None]
        summaries.append(Summary(
            workload=workload,
            target=target,
            runs=len(runs),
            ok_runs=len(good),
            tps=_median(tps),
            tps_min=min(tps) if tps else None,
            tps_max=max(tps) if tps else None,
            p50_ms=_median(m.p50_ms for m in good),
            p90_ms=_median(m.p90_ms for m in good),
            p99_ms=_median(m.p99_ms for m in good),
            proxy_cpu_us_per_tx=_median(m.proxy_cpu_us_per_tx for m in good),
            pg_cpu_us_per_tx=_median(m.pg_cpu_us_per_tx for m in good),
            client_cpu_us_per_tx=_median(m.client_cpu_us_per_tx for m in good),
            errors=_unique(m.error for m in runs),
        ))
    by_key = {(s.workload, s.target): s for s in summaries}
    for s in summaries:
        s.vs_pgbouncer = _ratio(s, by_key.get((s.workload, BASELINE_PROXY)))
        s.vs_direct = _ratio(s, by_key.get((s.workload, BASELINE_DIRECT)))
    return summaries


def _ratio(summary: Summary, baseline: Summary | None) -> float | None:
    if baseline is None or not baseline.tps or summary.tps is None:
        return None
    return summary.tps / baseline.tps


@dataclass(slots=True)
class Comparison:
    """One workload on a pgtenant target next to its ``@base`` twin: ratio = current /
    baseline (TPS above 1 is faster; CPU and p50 below 1 are cheaper / quicker).

    ``*_ratio`` divides the medians; ``*_paired`` are the ratios within each repeat, where
    the two ran back to back, so a slow drift of the machine cancels out."""

    workload: str
    target: str
    current: Summary
    base: Summary
    tps_ratio: float | None
    proxy_cpu_ratio: float | None
    p50_ratio: float | None
    tps_paired: list[float] = field(default_factory=list)
    proxy_cpu_paired: list[float] = field(default_factory=list)


def _over(current: float | None, base: float | None) -> float | None:
    return current / base if current is not None and base else None


def _paired(
    runs: Sequence[Measurement], base_runs: Sequence[Measurement],
    value: Callable[[Measurement], float | None],
) -> list[float]:
    base_by_repeat = {m.repeat: value(m) for m in base_runs if m.ok}
    ratios = (_over(value(m), base_by_repeat.get(m.repeat)) for m in runs if m.ok)
    return [r for r in ratios if r is not None]


def _compare(results: BenchResults, base_of: Callable[[str], str | None]) -> list[Comparison]:
    """Each (workload, target) next to the target ``base_of`` names for it, when that one
    ran the workload too."""
    summaries = summarize(results)
    by_key = {(s.workload, s.target): s for s in summaries}
    runs: dict[tuple[str, str], list[Measurement]] = {}
    for m in results.measurements:
        runs.setdefault((m.workload, m.target), []).append(m)
    comparisons = []
    for s in summaries:
        base_target = base_of(s.target)
        base = by_key.get((s.workload, base_target)) if base_target is not None else None
        if base is None:
            continue
        mine, theirs = runs[(s.workload, s.target)], runs[(s.workload, base.target)]
        comparisons.append(Comparison(
            workload=s.workload,
            target=s.target,
            current=s,
            base=base,
            tps_ratio=_over(s.tps, base.tps),
            proxy_cpu_ratio=_over(s.proxy_cpu_us_per_tx, base.proxy_cpu_us_per_tx),
            p50_ratio=_over(s.p50_ms, base.p50_ms),
            tps_paired=_paired(mine, theirs, lambda m: m.tps),
            proxy_cpu_paired=_paired(mine, theirs, lambda m: m.proxy_cpu_us_per_tx),
        ))
    return comparisons


def compare_to_baseline(results: BenchResults) -> list[Comparison]:
    """Current vs baseline for every (workload, target) that has an ``@base`` twin."""
    return _compare(results, base_name)


def compare_to_pgbouncer(results: BenchResults) -> list[Comparison]:
    """Every pgtenant target next to PgBouncer on the workloads both ran. Its per-repeat
    ratios are the steadier reading: on a shared machine the medians of two targets drift
    apart over minutes, the ratio within a repeat much less. Workloads PgBouncer failed
    (prepared statements, in 1.18) are left out."""
    comparisons = _compare(results, lambda target: BASELINE_PROXY
                           if target.startswith("pgtenant") or target == FLOOR else None)
    return [c for c in comparisons if c.base.ok_runs]


def compare_to_pipe(results: BenchResults) -> list[Comparison]:
    """Every pgtenant target next to the bare pipe (when it ran): the cost of pgtenant's
    own work, over what any proxy on the same event loop pays to move the bytes."""
    comparisons = _compare(results, lambda target: FLOOR
                           if target.startswith("pgtenant") else None)
    return [c for c in comparisons if c.base.ok_runs]


def summarize_idle(results: BenchResults) -> list[IdleSummary]:
    """Median per target of the idle-connection measurements."""
    groups: dict[str, list[IdleMeasurement]] = {}
    for m in results.idle:
        groups.setdefault(m.target, []).append(m)
    summaries = []
    for target, runs in groups.items():
        measured = [m for m in runs if m.opened]
        summaries.append(IdleSummary(
            target=target,
            runs=len(runs),
            ok_runs=sum(1 for m in runs if m.ok),
            clients=max(m.clients for m in runs),
            opened=int(_median(m.opened for m in runs) or 0),
            connect_seconds=_median(m.connect_seconds for m in measured) or 0.0,
            rss_before_bytes=_median(m.rss_before_bytes for m in measured) or 0.0,
            rss_after_bytes=_median(m.rss_after_bytes for m in measured) or 0.0,
            rss_per_client_bytes=_median(m.rss_per_client_bytes for m in measured),
            idle_cpu_percent=_median(m.idle_cpu_percent for m in measured) or 0.0,
            answered=", ".join(f"{m.sample_ok}/{m.sample_size}" for m in runs),
            errors=_unique(m.error for m in runs),
        ))
    return summaries


def added_latency_us(summaries: Sequence[Summary]) -> dict[str, float]:
    """p50 latency added over direct at 1 client, per target, in microseconds."""
    at_one = {s.target: s for s in summaries if s.workload == LATENCY_WORKLOAD}
    direct = at_one.get(BASELINE_DIRECT)
    if direct is None or direct.p50_ms is None:
        return {}
    return {
        target: (s.p50_ms - direct.p50_ms) * 1000
        for target, s in at_one.items()
        if target != BASELINE_DIRECT and s.p50_ms is not None
    }
