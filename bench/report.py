"""The report of a benchmark run: results.md and results.json (and chart.png, drawn by
:mod:`bench.chart`), from the numbers in :mod:`bench.summary`."""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
from collections.abc import Sequence
from pathlib import Path

from bench.chart import chart
from bench.results import BenchResults
from bench.summary import (
    KIB,
    LATENCY_WORKLOAD,
    MIB,
    Comparison,
    Summary,
    added_latency_us,
    compare_to_baseline,
    compare_to_pgbouncer,
    compare_to_pipe,
    summarize,
    summarize_idle,
)

log = logging.getLogger("pgtenant.bench.report")


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
    lines += _pgbouncer_section(results)
    lines += _pipe_section(results)
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
            per_client = (_fmt(i.rss_per_client_bytes / KIB, "{:.2f}")
                          if i.rss_per_client_bytes is not None else "-")
            lines.append(
                f"| {i.target} | {i.clients:,} | {i.opened:,} | {i.connect_seconds:.1f} "
                f"| {i.rss_before_bytes / MIB:.1f} | {i.rss_after_bytes / MIB:.1f} "
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


def _paired_section(comparisons: Sequence[Comparison], title: str, intro: str,
                    reference: str) -> list[str]:
    if not comparisons:
        return []
    lines = [
        f"## {title}, paired by repeat",
        "",
        intro,
        "",
        f"| workload | target | TPS x {reference} | per repeat | CPU x {reference} | per repeat "
        f"| p50 x {reference} |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    lines.extend(
        f"| {c.workload} | {c.target} | {_fmt(c.tps_ratio, '{:.3f}')} "
        f"| {_paired_text(c.tps_paired)} | {_fmt(c.proxy_cpu_ratio, '{:.3f}')} "
        f"| {_paired_text(c.proxy_cpu_paired)} | {_fmt(c.p50_ratio, '{:.3f}')} |"
        for c in comparisons
    )
    return [*lines, ""]


def _pgbouncer_section(results: BenchResults) -> list[str]:
    return _paired_section(
        compare_to_pgbouncer(results), "pgtenant vs PgBouncer",
        "per repeat = the median (and range) of pgtenant (or the pipe) / PgBouncer within "
        "each repeat, "
        "where the two ran minutes apart at most: steadier than the ratio of the medians "
        "(x PgBouncer above) when the machine's load drifts during a run.", "PgBouncer")


def _pipe_section(results: BenchResults) -> list[str]:
    return _paired_section(
        compare_to_pipe(results), "pgtenant vs the bare pipe (the floor)",
        "pipe = bench/pipe.py, a uvloop byte pipe that parses, pools and counts nothing: "
        "what any proxy on this event loop pays per message. pgtenant / pipe is the cost "
        "of pgtenant's own work; per repeat as above.", "pipe")


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
    for key, comparisons in (("baseline_comparison", compare_to_baseline(results)),
                             ("pgbouncer_comparison", compare_to_pgbouncer(results)),
                             ("pipe_comparison", compare_to_pipe(results))):
        document[key] = [
            {"workload": c.workload, "target": c.target, "baseline_target": c.base.target,
             "tps_ratio": c.tps_ratio, "proxy_cpu_ratio": c.proxy_cpu_ratio,
             "p50_ratio": c.p50_ratio, "tps_ratios_per_repeat": c.tps_paired,
             "proxy_cpu_ratios_per_repeat": c.proxy_cpu_paired}
            for c in comparisons
        ]
    document["added_p50_latency_us_at_1_client"] = added_latency_us(summarize(results))
    (directory / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    chart(results, directory / "chart.png")
    print(text, flush=True)  # the report itself is the command's output
    log.info("results written to %s", directory)
