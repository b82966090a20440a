"""Medians, ratios and the three outputs: results.md, results.json and chart.png."""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.baseline import base_name
from bench.results import BenchResults, IdleMeasurement, Measurement

log = logging.getLogger("pgtenant.bench.report")

BASELINE_PROXY = "pgbouncer"
BASELINE_DIRECT = "direct"
LATENCY_WORKLOAD = "select-simple-c1"
_KIB = 1024
_MIB = 1024 * 1024


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


def compare_to_baseline(results: BenchResults) -> list[Comparison]:
    """Current vs baseline for every (workload, target) that has an ``@base`` twin."""
    summaries = summarize(results)
    by_key = {(s.workload, s.target): s for s in summaries}
    runs: dict[tuple[str, str], list[Measurement]] = {}
    for m in results.measurements:
        runs.setdefault((m.workload, m.target), []).append(m)
    comparisons = []
    for s in summaries:
        base = by_key.get((s.workload, base_name(s.target)))
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


def summarize_idle(results: BenchResults) -> list[IdleSummary]:
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


# -- Markdown ---------------------------------------------------------------------------


def _fmt(value: float | None, pattern: str = "{:,.0f}") -> str:
    return "-" if value is None else pattern.format(value)


def _spread(s: Summary) -> str:
    if not s.tps or s.tps_min is None or s.tps_max is None or s.ok_runs < 2:
        return "-"
    return f"±{50 * (s.tps_max - s.tps_min) / s.tps:.0f}%"


def _machine_line(results: BenchResults) -> str:
    m = results.machine
    return (
        f"{m.get('hostname')}: {m.get('cpu')}, {m.get('cores')} cores, "
        f"{m.get('memory_gib')} GiB, Linux {m.get('kernel')}; {m.get('postgresql')}; "
        f"{m.get('pgbench')}; PgBouncer: {m.get('pgbouncer', 'not used')}; "
        f"Python {m.get('python')}, uvloop {m.get('uvloop')}; pgtenant {m.get('pgtenant')}"
    )


def markdown(results: BenchResults) -> str:
    """The human-readable report."""
    summaries = summarize(results)
    idle_summaries = summarize_idle(results)
    settings = results.settings
    lines = [
        f"# pgtenant benchmark, {results.started_at}",
        "",
        f"Machine: {_machine_line(results)}.",
        "",
        f"Run: {settings.get('repeats')} repeat(s) x {settings.get('duration_seconds')} s per "
        f"measurement, targets interleaved; pgbench scale {settings.get('pgbench_scale')}; "
        f"{settings.get('tenants')} tenants x {settings.get('rows_per_tenant')} rows in items."
        + (" **Interrupted: partial results.**" if results.interrupted else ""),
        "",
    ]
    if summaries:
        lines += [
            "## Throughput, latency and CPU (medians over the repeats)",
            "",
            "| workload | target | TPS | spread | x PgBouncer | x direct | p50 ms | p90 ms "
            "| p99 ms | proxy CPU µs/tx | PG CPU µs/tx | ok runs |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in summaries:
            tps = _fmt(s.tps) if s.tps is not None else "**failed**"
            lines.append(
                f"| {s.workload} | {s.target} | {tps} | {_spread(s)} "
                f"| {_fmt(s.vs_pgbouncer, '{:.2f}')} | {_fmt(s.vs_direct, '{:.2f}')} "
                f"| {_fmt(s.p50_ms, '{:.3f}')} | {_fmt(s.p90_ms, '{:.3f}')} "
                f"| {_fmt(s.p99_ms, '{:.3f}')} "
                f"| {_fmt(s.proxy_cpu_us_per_tx, '{:.1f}')} | {_fmt(s.pg_cpu_us_per_tx, '{:.1f}')} "
                f"| {s.ok_runs}/{s.runs} |"
            )
        lines.append("")
    lines += _baseline_section(results)
    if idle_summaries:
        lines += [
            "## Idle connections",
            "",
            "| target | clients | logged in | login time s | RSS before MiB | RSS after MiB "
            "| RSS per idle client kB | CPU while idle | still answering |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for i in idle_summaries:
            per_client = (_fmt(i.rss_per_client_bytes / _KIB, "{:.2f}")
                          if i.rss_per_client_bytes is not None else "-")
            lines.append(
                f"| {i.target} | {i.clients:,} | {i.opened:,} | {i.connect_seconds:.1f} "
                f"| {i.rss_before_bytes / _MIB:.1f} | {i.rss_after_bytes / _MIB:.1f} "
                f"| {per_client} | {i.idle_cpu_percent:.1f}% | {i.answered} |"
            )
        lines.append("")
    lines += _highlights(results, summaries)
    failures = [(s.workload, s.target, e) for s in summaries for e in s.errors]
    failures += [("idle", i.target, e) for i in idle_summaries for e in i.errors]
    if failures:
        lines += ["## Failures", ""]
        lines += [f"- {w} @ {t}: {e}" for w, t, e in failures]
        lines.append("")
    if results.unavailable:
        lines += ["## Targets not measured", ""]
        lines += [f"- {name}: {reason.splitlines()[0]}"
                  for name, reason in results.unavailable.items()]
        lines.append("")
    lines += [
        "Ratios compare median TPS on the same workload. CPU per transaction is the "
        "process tree's utime+stime over the run (from /proc) divided by the transactions. "
        "See bench/README.md for how to read this.",
        "",
    ]
    return "\n".join(lines)


def _paired_text(ratios: Sequence[float]) -> str:
    """Median of the per-repeat ratios and their range: ``1.02 (0.97-1.05)``."""
    if not ratios:
        return "-"
    middle = statistics.median(ratios)
    if len(ratios) == 1:
        return f"{middle:.3f}"
    return f"{middle:.3f} ({min(ratios):.2f}-{max(ratios):.2f})"


def _baseline_section(results: BenchResults) -> list[str]:
    comparisons = compare_to_baseline(results)
    described = results.settings.get("baseline")
    if not comparisons or not isinstance(described, dict):
        return []
    lines = [
        f"## Current vs baseline ({described.get('spec')} = {described.get('revision')})",
        "",
        "x base = current / baseline of the medians: TPS above 1 is faster, CPU and p50 "
        "below 1 are cheaper and quicker. per repeat = the median (and range) of the ratios "
        "within each repeat, where the two ran back to back: a range that straddles 1 "
        "means no measurable difference.",
        "",
        "| workload | target | TPS | base TPS | TPS x base | per repeat | spread / base "
        "| proxy CPU µs/tx | base µs/tx | CPU x base | per repeat | p50 ms | base p50 ms "
        "| p50 x base |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in comparisons:
        cur, base = c.current, c.base
        lines.append(
            f"| {c.workload} | {c.target} | {_fmt(cur.tps)} | {_fmt(base.tps)} "
            f"| {_fmt(c.tps_ratio, '{:.3f}')} | {_paired_text(c.tps_paired)} "
            f"| {_spread(cur)} / {_spread(base)} "
            f"| {_fmt(cur.proxy_cpu_us_per_tx, '{:.1f}')} "
            f"| {_fmt(base.proxy_cpu_us_per_tx, '{:.1f}')} "
            f"| {_fmt(c.proxy_cpu_ratio, '{:.3f}')} | {_paired_text(c.proxy_cpu_paired)} "
            f"| {_fmt(cur.p50_ms, '{:.3f}')} | {_fmt(base.p50_ms, '{:.3f}')} "
            f"| {_fmt(c.p50_ratio, '{:.3f}')} |"
        )
    return [*lines, ""]


def _highlights(results: BenchResults, summaries: Sequence[Summary]) -> list[str]:
    lines: list[str] = []
    added = added_latency_us(summaries)
    if added:
        parts = ", ".join(f"{target} {value:+.0f} µs" for target, value in added.items())
        lines.append(f"- Added p50 latency over direct at 1 client ({LATENCY_WORKLOAD}): {parts}")
    lines += [f"- {note}" for note in results.notes]
    for name, settings in results.targets.items():
        if settings.get("restarts"):
            lines.append(f"- {name} was restarted {settings['restarts']} time(s) "
                         "(the idle test restarts proxies on purpose; more means crashes)")
    return ["## Notes", "", *lines, ""] if lines else []


# -- files ------------------------------------------------------------------------------


def write(results: BenchResults, directory: Path) -> None:
    """Write results.md, results.json and (with matplotlib) chart.png into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    text = markdown(results)
    (directory / "results.md").write_text(text)
    document = dataclasses.asdict(results)
    document["summary"] = [dataclasses.asdict(s) for s in summarize(results)]
    document["idle_summary"] = [dataclasses.asdict(s) for s in summarize_idle(results)]
    document["baseline_comparison"] = [
        {"workload": c.workload, "target": c.target, "baseline_target": c.base.target,
         "tps_ratio": c.tps_ratio, "proxy_cpu_ratio": c.proxy_cpu_ratio,
         "p50_ratio": c.p50_ratio, "tps_ratios_per_repeat": c.tps_paired,
         "proxy_cpu_ratios_per_repeat": c.proxy_cpu_paired}
        for c in compare_to_baseline(results)
    ]
    document["added_p50_latency_us_at_1_client"] = added_latency_us(summarize(results))
    (directory / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    chart(results, directory / "chart.png")
    print(text, flush=True)  # the report itself is the command's output
    log.info("results written to %s", directory)


@dataclass(frozen=True, slots=True)
class LatencyRange:
    """One target on one workload in the chart's latency-distribution panel (ms)."""

    workload: str
    target: str
    position: float  # on the x axis: the workload's slot, shifted by the target's offset
    p50_ms: float
    p90_ms: float | None
    p99_ms: float


#: The latency percentiles the chart marks: label, matplotlib marker, value.
LATENCY_MARKERS: tuple[tuple[str, str, Callable[[LatencyRange], float | None]], ...] = (
    ("p50", "o", lambda r: r.p50_ms),
    ("p90", "D", lambda r: r.p90_ms),
    ("p99", "^", lambda r: r.p99_ms),
)


def _position(workload_index: int, target_index: int, targets: int) -> float:
    """Where a target's bar (or latency range) stands in its workload's group on the x axis."""
    width = 0.8 / max(1, targets)
    return workload_index + (target_index - (targets - 1) / 2) * width


def latency_ranges(
    summaries: Sequence[Summary], workloads: Sequence[str], targets: Sequence[str],
) -> list[LatencyRange]:
    """The points of the latency-distribution panel: per workload and target that has
    latencies (p50 and p99 above zero, for the log scale), at its bar's x position."""
    by_key = {(s.workload, s.target): s for s in summaries}
    ranges = []
    for w_index, workload in enumerate(workloads):
        for t_index, target in enumerate(targets):
            s = by_key.get((workload, target))
            if s is None or not s.p50_ms or not s.p99_ms:
                continue
            ranges.append(LatencyRange(
                workload=workload, target=target,
                position=_position(w_index, t_index, len(targets)),
                p50_ms=s.p50_ms, p90_ms=s.p90_ms or None, p99_ms=s.p99_ms,
            ))
    return ranges


def draw_latency_distribution(
    axis: Any, ranges: Sequence[LatencyRange], colors: Mapping[str, str],
) -> None:
    """On a matplotlib axis: per target and workload a line from p50 to p99 in the target's
    colour, with a marker at p50, p90 and p99 (a legend names the markers)."""
    for r in ranges:
        axis.vlines(r.position, r.p50_ms, r.p99_ms, colors=colors[r.target], linewidth=2.5)
    for label, marker, value in LATENCY_MARKERS:
        marked = [(r, y) for r in ranges if (y := value(r)) is not None]
        axis.scatter([r.position for r, _ in marked], [y for _, y in marked], marker=marker,
                     c=[colors[r.target] for r, _ in marked], s=28, zorder=3,
                     edgecolors="black", linewidths=0.5)
        axis.plot([], [], marker=marker, linestyle="none", color="white",
                  markeredgecolor="black", label=label)  # the legend's entry
    # Above the plot's top right corner, beside the title: never over the data.
    axis.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize="small",
                ncols=len(LATENCY_MARKERS), frameon=False, columnspacing=1.0,
                handletextpad=0.2, borderaxespad=0.1)


def chart(results: BenchResults, path: Path) -> None:
    """Per workload and target (log scales): TPS vs direct, the latency distribution (p50,
    p90, p99) and proxy CPU per transaction; plus RSS per idle client when the idle test
    ran."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
        from matplotlib import ticker  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        print("matplotlib missing: no chart (pip install matplotlib)", flush=True)
        return
    summaries = [s for s in summarize(results) if s.tps is not None]
    idle = [i for i in summarize_idle(results) if i.rss_per_client_bytes is not None]
    if not summaries and not idle:
        return
    workloads = list(dict.fromkeys(s.workload for s in summaries))
    targets = list(dict.fromkeys([*(s.target for s in summaries), *(i.target for i in idle)]))
    colors = {t: f"C{n}" for n, t in enumerate(targets)}
    by_key = {(s.workload, s.target): s for s in summaries}
    has_direct = any(s.target == BASELINE_DIRECT for s in summaries)
    width = 0.8 / max(1, len(targets))

    def bars(value: Callable[[Summary], float | None]) -> Callable[[Any], None]:
        def draw(axis: Any) -> None:
            for index, target in enumerate(targets):
                heights = [
                    (value(by_key[(w, target)]) or 0.0) if (w, target) in by_key else 0.0
                    for w in workloads
                ]
                positions = [_position(x, index, len(targets)) for x in range(len(workloads))]
                axis.bar(positions, heights, width, label=target, color=colors[target])
        return draw

    ranges = latency_ranges(summaries, workloads, targets)
    panels: list[tuple[str, Callable[[Any], None]]] = [
        ("TPS relative to direct (log)" if has_direct else "TPS (log)",
         bars((lambda s: s.vs_direct) if has_direct else (lambda s: s.tps))),
        ("latency per transaction, p50 to p99, ms (log)",
         lambda axis: draw_latency_distribution(axis, ranges, colors)),
        ("proxy CPU per transaction, µs (log)", bars(lambda s: s.proxy_cpu_us_per_tx)),
    ] if summaries else []
    rows = len(panels) + (1 if idle else 0)
    figure, axes = plt.subplots(rows, 1, figsize=(max(9, 1.2 * len(workloads)), 3.6 * rows),
                                squeeze=False)
    for axis, (title, draw) in zip(axes[:, 0], panels, strict=False):
        draw(axis)
        axis.set_yscale("log")
        axis.set_title(title)
        axis.grid(axis="y", which="both", alpha=0.3)
        axis.set_xticks(range(len(workloads)), workloads, rotation=25, ha="right",
                        fontsize="small")
    if panels and has_direct:
        axes[0, 0].axhline(1.0, color="black", linewidth=0.8)
    if panels:
        # Latencies read as plain milliseconds (0.2, 0.5, 1, 2, 5), not powers of ten.
        latency_axis = axes[1, 0]
        latency_axis.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        latency_axis.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        latency_axis.yaxis.set_minor_formatter(ticker.NullFormatter())
    if idle:
        axis = axes[-1, 0]
        axis.bar([i.target for i in idle],
                 [(i.rss_per_client_bytes or 0.0) / _KIB for i in idle],
                 color=[colors[i.target] for i in idle])
        axis.set_title(f"RSS per idle client, kB ({idle[0].clients:,} idle clients)")
        axis.grid(axis="y", alpha=0.3)
    if panels:
        handles, labels = axes[0, 0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="lower center", ncols=len(targets))
    figure.suptitle(f"pgtenant benchmark {results.started_at} "
                    f"({results.machine.get('cores')} cores)")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
