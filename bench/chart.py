"""chart.png of a benchmark run (matplotlib, when installed): TPS, the latency
distribution and proxy CPU per workload and target, RSS per idle client.

Apart from the text report (:mod:`bench.report`): it needs matplotlib, which the rest
of the bench does not, and its geometry (bar positions, latency ranges) is tested on
its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.results import BenchResults
from bench.summary import BASELINE_DIRECT, KIB, Summary, summarize, summarize_idle


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
                 [(i.rss_per_client_bytes or 0.0) / KIB for i in idle],
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
