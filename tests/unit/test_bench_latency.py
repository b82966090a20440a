"""bench's latency percentiles (pgbench's per-transaction logs) and the chart's
latency-distribution panel. No pgbench, no PostgreSQL, no matplotlib: the panel is drawn
on an axis that records what it was asked to draw."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.chart import LatencyRange, draw_latency_distribution, latency_ranges
from bench.pgbench import percentile, read_transaction_logs
from bench.results import BenchResults, Measurement
from bench.summary import summarize


@pytest.mark.parametrize(("fraction", "expected"), [
    (0.0, 1.0), (0.01, 1.0), (0.50, 50.0), (0.90, 90.0), (0.99, 99.0), (0.995, 100.0),
    (1.0, 100.0),
])
def test_percentile_is_the_nearest_rank(fraction: float, expected: float) -> None:
    assert percentile(list(range(1, 101)), fraction) == expected


def test_percentile_of_few_and_of_no_transactions() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7], 0.99) == 7.0
    # 10 transactions: p90 is the 9th, p99 the 10th (nearest rank never interpolates).
    ordered = [100, 110, 120, 130, 140, 150, 160, 170, 180, 5000]
    assert [percentile(ordered, f) for f in (0.5, 0.9, 0.99)] == [140.0, 180.0, 5000.0]


def test_percentiles_match_a_sort_of_every_latency() -> None:
    rng = random.Random(13)
    latencies = sorted(int(rng.lognormvariate(6, 0.8)) + 1 for _ in range(10_001))
    for fraction in (0.5, 0.9, 0.99):
        value = percentile(latencies, fraction)
        assert value is not None
        below = sum(1 for v in latencies if v <= value)
        assert below >= fraction * len(latencies)  # at least that share is at or below it
        assert sum(1 for v in latencies if v < value) < fraction * len(latencies)


def test_transaction_logs_of_every_thread_are_read_and_removed(tmp_path: Path) -> None:
    prefix = tmp_path / "txlog-0"
    # pgbench --log: client_id transaction_no time_us script_no time_epoch time_us_part,
    # one file per thread: PREFIX.PID for the first, PREFIX.PID.N for the others.
    (tmp_path / "txlog-0.4242").write_text("0 0 812 0 1764662400 1000\n"
                                          "1 0 1650 0 1764662400 2000\n")
    (tmp_path / "txlog-0.4242.1").write_text("2 0 905 0 1764662400 3000\n"
                                            "3 0 skipped 0 1764662400 4000\n")
    (tmp_path / "txlog-1.4243").write_text("0 0 99999 0 1764662400 1000\n")  # another process
    assert sorted(read_transaction_logs(prefix)) == [812, 905, 1650]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["txlog-1.4243"]


def _measurement(workload: str, target: str, repeat: int, p50: float | None,
                 p90: float | None, p99: float | None, ok: bool = True) -> Measurement:
    return Measurement(workload=workload, target=target, repeat=repeat, started_at="", ok=ok,
                       error=None if ok else "failed", tps=1000.0 if ok else None,
                       transactions=10_000, p50_ms=p50, p90_ms=p90, p99_ms=p99,
                       proxy_cpu_us_per_tx=None, pg_cpu_us_per_tx=None,
                       client_cpu_us_per_tx=None)


def _results() -> BenchResults:
    results = BenchResults(started_at="2026-12-02T08:00:00Z")
    results.measurements = [
        # Two repeats: the panel shows the medians of each percentile over the repeats.
        _measurement("select-simple-c8", "direct", 1, 0.10, 0.20, 0.40),
        _measurement("select-simple-c8", "direct", 2, 0.12, 0.24, 0.60),
        _measurement("select-simple-c8", "pgtenant-transaction", 1, 0.30, 0.50, 1.00),
        _measurement("select-simple-c8", "pgtenant-transaction", 2, 0.50, 0.70, 3.00),
        _measurement("select-simple-c8", "pgbouncer", 1, 0.20, None, 0.80),
        _measurement("select-prepared-c8", "direct", 1, 0.09, 0.15, 0.30),
        _measurement("select-prepared-c8", "pgbouncer", 1, None, None, None, ok=False),
    ]
    return results


def test_latency_ranges_are_the_medians_at_each_targets_bar() -> None:
    summaries = summarize(_results())
    workloads = ["select-simple-c8", "select-prepared-c8"]
    targets = ["direct", "pgtenant-transaction", "pgbouncer"]
    ranges = latency_ranges(summaries, workloads, targets)
    width = 0.8 / 3
    assert ranges == [
        LatencyRange("select-simple-c8", "direct", -width, pytest.approx(0.11),
                     pytest.approx(0.22), pytest.approx(0.50)),
        LatencyRange("select-simple-c8", "pgtenant-transaction", 0.0, pytest.approx(0.40),
                     pytest.approx(0.60), pytest.approx(2.00)),
        LatencyRange("select-simple-c8", "pgbouncer", pytest.approx(width), 0.20, None, 0.80),
        # A failed run has no latencies: nothing to draw for it.
        LatencyRange("select-prepared-c8", "direct", pytest.approx(1 - width), 0.09, 0.15,
                     0.30),
    ]


class RecordingAxis:
    """Stands in for a matplotlib Axes: records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, args, kwargs))
        return record

    def named(self, name: str) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        return [(args, kwargs) for called, args, kwargs in self.calls if called == name]


def test_latency_panel_draws_p50_to_p99_with_a_marker_per_percentile() -> None:
    ranges = [
        LatencyRange("w1", "direct", -0.2, 0.1, 0.2, 0.4),
        LatencyRange("w1", "pgbouncer", 0.2, 0.3, None, 0.9),
        LatencyRange("w2", "direct", 0.8, 0.15, 0.25, 0.5),
    ]
    colors = {"direct": "C0", "pgbouncer": "C1"}
    axis = RecordingAxis()
    draw_latency_distribution(axis, ranges, colors)
    # One line per target and workload, from p50 to p99, in the target's colour.
    assert [(args, kwargs["colors"]) for args, kwargs in axis.named("vlines")] == [
        ((-0.2, 0.1, 0.4), "C0"), ((0.2, 0.3, 0.9), "C1"), ((0.8, 0.15, 0.5), "C0")]
    # A marker per percentile; p90 only where it was measured.
    scatters = {kwargs["marker"]: (args, kwargs["c"]) for args, kwargs in axis.named("scatter")}
    assert scatters == {
        "o": (([-0.2, 0.2, 0.8], [0.1, 0.3, 0.15]), ["C0", "C1", "C0"]),
        "D": (([-0.2, 0.8], [0.2, 0.25]), ["C0", "C0"]),
        "^": (([-0.2, 0.2, 0.8], [0.4, 0.9, 0.5]), ["C0", "C1", "C0"]),
    }
    # The legend names the markers.
    assert [kwargs["label"] for _, kwargs in axis.named("plot")] == ["p50", "p90", "p99"]
    assert [kwargs["marker"] for _, kwargs in axis.named("plot")] == ["o", "D", "^"]
    assert len(axis.named("legend")) == 1


def test_report_table_has_p90_between_p50_and_p99() -> None:
    text = report.markdown(_results())
    assert "| p50 ms | p90 ms | p99 ms |" in text
    assert "| select-simple-c8 | pgtenant-transaction | 1,000 |" in text
    row = next(line for line in text.splitlines()
               if line.startswith("| select-simple-c8 | pgtenant-transaction |"))
    assert "| 0.400 | 0.600 | 2.000 |" in row
