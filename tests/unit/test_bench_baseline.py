"""``./dev bench --baseline``: option parsing, @base target wiring, the bootstrap that makes
a baseline run its own ``proxy`` package, and the current/baseline report. No PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from bench import baseline, report, summary
from bench.__main__ import _options, _parser, main
from bench.baseline import Baseline, BaselineError
from bench.database import BenchDatabase, TenantRange
from bench.environment import REPO, git_revision
from bench.results import BenchResults, Measurement
from bench.runner import BenchRun, Options
from bench.targets import PgtenantTarget, TargetUnavailable

# A stand-in for the baseline's proxy/cli.py: reports where it runs from and its argv.
_FAKE_CLI = """\
import os, sys
import proxy
print("fake cli", os.path.realpath(proxy.__file__), os.getcwd(), *sys.argv[1:], flush=True)
"""


def _targets(*argv: str) -> tuple[str, ...]:
    return _options(_parser().parse_args(list(argv))).targets


def _fake_source(root: Path) -> Path:
    package = root / "proxy"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "cli.py").write_text(_FAKE_CLI)
    return root


class _Database:
    """What a PgtenantTarget reads of the benchmark database (no cluster behind it)."""

    host = "127.0.0.1"
    port = 5999
    app_password = "not-a-real-password"
    tenants = (TenantRange("tenant1", 1, 10),)


def _run_with(workdir: Path, version: Baseline | None) -> BenchRun:
    options = Options(workloads=(), targets=(), duration=1.0, repeats=1, scale=1, tenants=1,
                      rows_per_tenant=10, idle_clients=10, warmup_seconds=0.0,
                      output_dir=workdir / "results", quick=True)
    run = BenchRun(options)
    run.db = cast(BenchDatabase, _Database())
    run.workdir = workdir
    run.baseline = version
    return run


# -- options ------------------------------------------------------------------------------


def test_baseline_adds_the_base_twin_after_each_named_pgtenant_target() -> None:
    assert _targets("--baseline", "main", "--targets", "direct,pgtenant-transaction") == (
        "direct", "pgtenant-transaction", "pgtenant-transaction@base")


def test_explicit_base_targets_are_taken_as_named() -> None:
    assert _targets("--baseline", "main", "--workloads", "tenant", "--targets",
                    "pgtenant-transaction,pgtenant-transaction@base") == (
        "pgtenant-transaction", "pgtenant-transaction@base")
    assert _targets("--baseline", "HEAD~5", "--targets", "pgtenant-session@base") == (
        "pgtenant-session@base",)


def test_baseline_without_targets_twins_session_and_transaction() -> None:
    targets = _targets("--baseline", "main")
    assert targets[targets.index("pgtenant-session") + 1] == "pgtenant-session@base"
    assert targets[targets.index("pgtenant-transaction") + 1] == "pgtenant-transaction@base"
    assert "pgbouncer@base" not in targets and "direct@base" not in targets


def test_no_base_targets_without_baseline() -> None:
    assert not any(t.endswith("@base") for t in _targets())
    with pytest.raises(ValueError, match="need --baseline"):
        _targets("--targets", "pgtenant-transaction@base")


@pytest.mark.parametrize("targets", ["direct,pgbouncer", "pgbouncer@base", "direct@base"])
def test_baseline_refuses_targets_without_a_pgtenant_twin(targets: str) -> None:
    with pytest.raises(ValueError):
        _targets("--baseline", "main", "--targets", targets)


def test_command_line_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--targets", "pgtenant-transaction@base", "--list"]) == 2
    assert "--baseline" in capsys.readouterr().err
    # A baseline that names nothing fails before anything starts (--list is not reached).
    for spec in ("no-such-revision-xyz", "", " "):
        assert main(["--baseline", spec, "--list"]) == 2
        captured = capsys.readouterr()
        assert "--baseline" in captured.err and captured.out == ""


# -- targets --------------------------------------------------------------------------------


def test_base_target_gets_the_same_config_and_the_baseline(tmp_path: Path) -> None:
    version = Baseline("main", tmp_path / "base", "abc123 subject", exported=True)
    run = _run_with(tmp_path, version)
    for name in ("pgtenant-session", "pgtenant-transaction", "pgtenant-workers2"):
        current = cast(PgtenantTarget, run._make_target(name, "jwt-secret", 64, 2000))
        base = cast(PgtenantTarget, run._make_target(f"{name}@base", "jwt-secret", 64, 2000))
        assert current.baseline is None and base.baseline is version
        # Both start through the same bootstrap; only the code's directory differs.
        assert current.source == REPO and base.source == version.source
        assert base.name == f"{name}@base" and current.port != base.port
        assert base.config_text() == current.config_text().replace(
            f"127.0.0.1:{current.port}", f"127.0.0.1:{base.port}")
        assert base.describe()["baseline"] == "abc123 subject"


def test_base_target_without_a_baseline_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(TargetUnavailable, match="needs --baseline"):
        _run_with(tmp_path, None)._make_target("pgtenant-transaction@base", "s", 8, 100)


def test_base_target_launches_the_baseline_code(tmp_path: Path) -> None:
    source = _fake_source(tmp_path / "base")
    version = Baseline(str(source), source, "fake", exported=False)
    target = cast(PgtenantTarget,
                  _run_with(tmp_path, version)._make_target("pgtenant-transaction@base",
                                                            "s", 8, 100))
    with target.log_path.open("wb") as log_file:
        process = target._launch(log_file)
    assert process.wait(30) == 0
    output = target.log_path.read_text()
    assert baseline.verify(source, output, target.name) == str(source / "proxy/__init__.py")
    assert f"fake cli {source / 'proxy/__init__.py'} {source} serve --config " \
           f"{target.config_path}" in output


# -- preparing and checking a baseline ------------------------------------------------------


def test_git_revision_is_exported_and_runs_its_own_proxy(tmp_path: Path) -> None:
    version = baseline.prepare("HEAD", tmp_path)  # includes the preflight
    assert version.exported and version.source == tmp_path / "baseline"
    assert (version.source / "proxy" / "cli.py").is_file()
    assert not (version.source / ".git").exists()
    done = subprocess.run(baseline.serve_argv(version.source, ["--help"]), cwd=version.source,
                          capture_output=True, text=True, timeout=60, check=True)
    assert "serve" in done.stdout
    baseline.verify(version.source, done.stderr, "preflight")


def test_a_directory_outside_git_is_named_so_not_by_gits_error(tmp_path: Path) -> None:
    # An unpacked wheel as --baseline: its revision heads the report's comparison.
    assert git_revision(tmp_path) == "not a git checkout"
    assert git_revision(REPO) not in ("not a git checkout", "unknown")


def test_checkout_path_is_used_in_place(tmp_path: Path) -> None:
    source = _fake_source(tmp_path / "checkout")
    version = baseline.prepare(str(source), tmp_path)
    assert version.source == source and not version.exported


@pytest.mark.parametrize("spec", ["no-such-revision-xyz", "HEAD~100000"])
def test_unknown_baseline_fails_loudly(tmp_path: Path, spec: str) -> None:
    with pytest.raises(BaselineError, match="neither a directory nor a git revision"):
        baseline.prepare(spec, tmp_path)


def test_directory_without_proxy_package_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match="no proxy/ package"):
        baseline.prepare(str(tmp_path), tmp_path)


def test_bootstrap_refuses_a_proxy_package_from_elsewhere(tmp_path: Path) -> None:
    elsewhere = _fake_source(tmp_path / "elsewhere")
    source = tmp_path / "base"
    source.mkdir()
    (source / "proxy").symlink_to(elsewhere / "proxy")
    version = Baseline("x", source, "x", exported=False)
    done = subprocess.run(baseline.serve_argv(source, ["serve"]), cwd=source,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and "refused" in done.stderr
    assert "fake cli" not in done.stdout
    with pytest.raises(BaselineError, match="refused"):
        baseline.preflight(version)


def test_verify_needs_the_import_line(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match=r"imported from \?"):
        baseline.verify(tmp_path, "serving on 127.0.0.1:6432\n", "t")
    installed = f"{baseline.IMPORT_MARKER}{Path(sys.prefix) / 'proxy/__init__.py'}\n"
    with pytest.raises(BaselineError):
        baseline.verify(tmp_path, installed, "t")
    # The last start counts: a log appended over restarts ends with the newest line.
    good = f"{baseline.IMPORT_MARKER}{os.path.realpath(tmp_path)}/proxy/__init__.py\n"
    assert baseline.verify(tmp_path, installed + good, "t")
    with pytest.raises(BaselineError):
        baseline.verify(tmp_path, good + installed, "t")


# -- report ---------------------------------------------------------------------------------


def _measurement(target: str, repeat: int, tps: float, cpu: float, p50: float) -> Measurement:
    return Measurement(workload="tenant-c32", target=target, repeat=repeat, started_at="",
                       ok=True, error=None, tps=tps, transactions=int(tps * 10), p50_ms=p50,
                       p90_ms=p50 * 2, p99_ms=p50 * 3, proxy_cpu_us_per_tx=cpu,
                       pg_cpu_us_per_tx=50.0, client_cpu_us_per_tx=20.0)


def test_report_shows_current_over_baseline_per_workload() -> None:
    results = BenchResults(started_at="now", settings={
        "repeats": 3, "baseline": {"spec": "main", "revision": "abc123 old", "source": "x"}})
    for repeat, (tps, base_tps) in enumerate([(1100, 1000), (1210, 1100), (990, 900)], 1):
        results.measurements.append(_measurement("pgtenant-transaction", repeat, tps, 80, 1.8))
        results.measurements.append(
            _measurement("pgtenant-transaction@base", repeat, base_tps, 100, 2.0))
    (comparison,) = summary.compare_to_baseline(results)
    assert comparison.target == "pgtenant-transaction"
    assert comparison.tps_ratio == pytest.approx(1.1)
    assert comparison.tps_paired == pytest.approx([1.1, 1.1, 1.1])
    assert comparison.proxy_cpu_ratio == pytest.approx(0.8)
    assert comparison.p50_ratio == pytest.approx(0.9)
    text = report.markdown(results)
    assert "## Current vs baseline (main = abc123 old)" in text
    assert ("| tenant-c32 | pgtenant-transaction | 1,100 | 1,000 | 1.100 | 1.100 (1.10-1.10) "
            "| ±10% / ±10% | 80.0 | 100.0 | 0.800 | 0.800 (0.80-0.80) | 1.800 | 2.000 "
            "| 0.900 |") in text


def test_per_repeat_ratios_pair_measurements_of_the_same_repeat() -> None:
    results = BenchResults(started_at="now")
    # The machine slows down over the run; within each repeat current is 2x baseline.
    for repeat, speed in enumerate([4000, 2000, 1000], 1):
        results.measurements.append(_measurement("pgtenant-session", repeat, speed, 50, 1))
        results.measurements.append(
            _measurement("pgtenant-session@base", repeat, speed / 2, 100, 1))
    failed = _measurement("pgtenant-session@base", 4, 10, 100, 1)
    failed.ok = False
    results.measurements += [_measurement("pgtenant-session", 4, 3000, 50, 1), failed]
    (comparison,) = summary.compare_to_baseline(results)
    assert comparison.tps_paired == pytest.approx([2.0, 2.0, 2.0])
    assert comparison.proxy_cpu_paired == pytest.approx([0.5, 0.5, 0.5])


def test_report_has_no_baseline_section_without_twins() -> None:
    results = BenchResults(started_at="now", settings={"repeats": 1})
    results.measurements.append(_measurement("pgtenant-transaction", 1, 1000, 80, 1.8))
    assert summary.compare_to_baseline(results) == []
    assert "Current vs baseline" not in report.markdown(results)


def test_results_json_carries_the_ratios(tmp_path: Path) -> None:
    results = BenchResults(started_at="now", settings={
        "baseline": {"spec": "main", "revision": "r", "source": "git archive"}})
    results.measurements += [_measurement("pgtenant-session", 1, 500, 90, 1.0),
                             _measurement("pgtenant-session@base", 1, 400, 100, 1.0)]
    document = _written(results, tmp_path)
    assert document["baseline_comparison"] == [{
        "workload": "tenant-c32", "target": "pgtenant-session",
        "baseline_target": "pgtenant-session@base", "tps_ratio": 1.25,
        "proxy_cpu_ratio": 0.9, "p50_ratio": 1.0, "tps_ratios_per_repeat": [1.25],
        "proxy_cpu_ratios_per_repeat": [0.9]}]


def _assert_paired_row(results: BenchResults, heading: str, p50_ratio: str) -> None:
    """results.md has the section, and pgtenant-transaction's row at 0.9x TPS, 1.2x CPU."""
    text = report.markdown(results)
    assert heading in text
    assert ("| tenant-c32 | pgtenant-transaction | 0.900 | 0.900 (0.90-0.90) | 1.200 "
            f"| 1.200 (1.20-1.20) | {p50_ratio} |") in text


def _written(results: BenchResults, directory: Path) -> dict[str, Any]:
    report.write(results, directory)
    document: dict[str, Any] = json.loads((directory / "results.json").read_text())
    return document


def test_pgtenant_targets_are_paired_with_pgbouncer_repeat_by_repeat(tmp_path: Path) -> None:
    # The machine slows down over the run; within each repeat pgtenant (either build)
    # does 0.9x PgBouncer's TPS at 1.2x its CPU. direct is no pgtenant target.
    results = BenchResults(started_at="now", settings={"repeats": 3})
    for repeat, speed in enumerate([3000, 2000, 1000], 1):
        results.measurements += [
            _measurement("direct", repeat, speed * 2, 0, 0.5),
            _measurement("pgtenant-transaction", repeat, speed * 0.9, 60, 2.0),
            _measurement("pgtenant-transaction@base", repeat, speed * 0.9, 60, 2.0),
            _measurement("pgbouncer", repeat, speed, 50, 1.0),
        ]
    comparisons = summary.compare_to_pgbouncer(results)
    assert [c.target for c in comparisons] == ["pgtenant-transaction",
                                               "pgtenant-transaction@base"]
    for c in comparisons:
        assert c.base.target == "pgbouncer"
        assert c.tps_paired == pytest.approx([0.9, 0.9, 0.9])
        assert c.proxy_cpu_paired == pytest.approx([1.2, 1.2, 1.2])
    _assert_paired_row(results, "## pgtenant vs PgBouncer, paired by repeat", "2.000")
    document = _written(results, tmp_path)
    assert [c["target"] for c in document["pgbouncer_comparison"]] == [
        "pgtenant-transaction", "pgtenant-transaction@base"]
    without = BenchResults(started_at="now", settings={"repeats": 1})
    without.measurements.append(_measurement("pgtenant-transaction", 1, 1000, 80, 1.8))
    failed = _measurement("pgbouncer", 1, 0, 0, 0)  # as with prepared statements in 1.18
    failed.ok = False
    assert "paired by repeat" not in report.markdown(without)
    without.measurements.append(failed)
    assert summary.compare_to_pgbouncer(without) == []


def test_the_bare_pipe_is_the_floor_each_pgtenant_target_is_paired_with(tmp_path: Path) -> None:
    # Within each repeat the pipe does 0.95x PgBouncer's TPS at 1.25x its CPU, and
    # pgtenant 0.9x the pipe's TPS at 1.2x the pipe's CPU.
    results = BenchResults(started_at="now", settings={"repeats": 2})
    for repeat, speed in enumerate([2000, 1000], 1):
        results.measurements += [
            _measurement("pgbouncer", repeat, speed, 40, 1.0),
            _measurement("pipe", repeat, speed * 0.95, 50, 1.1),
            _measurement("pgtenant-transaction", repeat, speed * 0.95 * 0.9, 60, 1.32),
        ]
    to_pipe = summary.compare_to_pipe(results)
    assert [(c.target, c.base.target) for c in to_pipe] == [("pgtenant-transaction", "pipe")]
    assert to_pipe[0].tps_paired == pytest.approx([0.9, 0.9])
    assert to_pipe[0].proxy_cpu_paired == pytest.approx([1.2, 1.2])
    to_bouncer = summary.compare_to_pgbouncer(results)
    assert sorted(c.target for c in to_bouncer) == ["pgtenant-transaction", "pipe"]
    pipe_row = next(c for c in to_bouncer if c.target == "pipe")
    assert pipe_row.tps_paired == pytest.approx([0.95, 0.95])
    _assert_paired_row(results, "## pgtenant vs the bare pipe (the floor), paired by repeat",
                       "1.200")
    document = _written(results, tmp_path)
    assert [c["target"] for c in document["pipe_comparison"]] == ["pgtenant-transaction"]
    # No pipe in the run: no section, nothing paired with it.
    without = BenchResults(started_at="now", settings={"repeats": 1})
    without.measurements += [_measurement("pgbouncer", 1, 1000, 40, 1.0),
                             _measurement("pgtenant-transaction", 1, 900, 60, 1.3)]
    assert summary.compare_to_pipe(without) == []
    assert "the bare pipe" not in report.markdown(without)
