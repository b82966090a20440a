"""Run pgbench (one or several processes at once) and parse what it reports.

Throughput and the transaction count come from pgbench's summary. Latency percentiles
come from its per-transaction log (``--log``): every transaction's latency in
microseconds, so p50, p90 and p99 are exact rather than estimated from averages.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.processes import spawn, terminate
from bench.targets import ConnInfo

_TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)
_PROCESSED = re.compile(r"number of transactions actually processed: (\d+)")
_FAILED = re.compile(r"number of failed transactions: (\d+)")
_ERROR_HINTS = ("error", "aborted", "fatal")
_TIMEOUT_SLACK = 60.0


@dataclass(frozen=True, slots=True)
class Invocation:
    """One pgbench process: its connection, client count and options."""

    conn: ConnInfo
    clients: int
    options: tuple[str, ...]
    label: str
    variables: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PgbenchOutcome:
    """The sum over the processes of one measurement."""

    ok: bool
    tps: float
    transactions: int
    failed_transactions: int
    p50_us: float | None
    p90_us: float | None
    p99_us: float | None
    error: str | None


def percentile(ordered: Sequence[int], fraction: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence."""
    if not ordered:
        return None
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[rank - 1])


def _command(invocation: Invocation, duration: float, threads: int, log_prefix: Path) -> list[str]:
    command = [
        "pgbench", "--no-vacuum",
        "--time", str(max(1, round(duration))),
        "--client", str(invocation.clients),
        "--jobs", str(max(1, min(threads, invocation.clients))),
        "--log", "--log-prefix", str(log_prefix),
        *invocation.options,
    ]
    for name, value in invocation.variables.items():
        command += ["--define", f"{name}={value}"]
    return command


def _client_env(conn: ConnInfo) -> dict[str, str]:
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
    return {**inherited, **conn.env()}


def read_transaction_logs(log_prefix: Path) -> list[int]:
    """Per-transaction latencies (µs) from pgbench's logs (``PREFIX.PID`` and, with several
    threads, ``PREFIX.PID.N``); the log files are removed."""
    latencies: list[int] = []
    for path in log_prefix.parent.glob(f"{log_prefix.name}.*"):
        with path.open() as log_file:
            for line in log_file:
                # client_id transaction_no time script_no time_epoch time_us [...]
                fields = line.split(maxsplit=3)
                if len(fields) > 2 and fields[2].isdigit():
                    latencies.append(int(fields[2]))
        path.unlink()
    return latencies


def _first_error(stderr: str) -> str | None:
    for line in stderr.splitlines():
        if any(hint in line.lower() for hint in _ERROR_HINTS):
            return line.strip()[:400]
    return stderr.strip()[:400] or None


def run(
    invocations: Sequence[Invocation], *, duration: float, workdir: Path, threads: int = 2
) -> PgbenchOutcome:
    """Run all ``invocations`` at once for ``duration`` seconds; sum their results."""
    per_process_threads = max(1, threads // len(invocations))
    started: list[tuple[Invocation, subprocess.Popen[bytes], Path, Path]] = []
    try:
        for index, invocation in enumerate(invocations):
            base = workdir / f"pgbench-{index}"
            output = base.with_suffix(".out")
            log_prefix = workdir / f"txlog-{index}"
            with output.open("wb") as out, base.with_suffix(".err").open("wb") as err:
                process = spawn(
                    _command(invocation, duration, per_process_threads, log_prefix),
                    env=_client_env(invocation.conn), stdout=out, stderr=err, cwd=workdir,
                )
            started.append((invocation, process, output, log_prefix))
        deadline = time.monotonic() + duration + _TIMEOUT_SLACK
        timed_out = False
        for _, process, _, _ in started:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
                terminate(process)
    finally:
        for _, process, _, _ in started:
            terminate(process)
    return _combine(started, timed_out, duration)


def _combine(
    started: Sequence[tuple[Invocation, subprocess.Popen[bytes], Path, Path]],
    timed_out: bool,
    duration: float,
) -> PgbenchOutcome:
    tps = 0.0
    transactions = failed = 0
    errors: list[str] = []
    latencies: list[int] = []
    for invocation, process, output, log_prefix in started:
        stdout = output.read_text(errors="replace")
        stderr = output.with_suffix(".err").read_text(errors="replace")
        latencies += read_transaction_logs(log_prefix)
        tps_match = _TPS.search(stdout)
        processed = _PROCESSED.search(stdout)
        failed_match = _FAILED.search(stdout)
        if failed_match:
            failed += int(failed_match.group(1))
        if process.returncode != 0 or tps_match is None or processed is None:
            error = _first_error(stderr) or f"pgbench exited with code {process.returncode}"
            errors.append(f"{invocation.label}: {error}")
            continue
        tps += float(tps_match.group(1))
        transactions += int(processed.group(1))
    if timed_out:
        errors.insert(0, f"pgbench did not finish within {duration + _TIMEOUT_SLACK:.0f}s "
                         "(clients hung) and was killed")
    latencies.sort()
    return PgbenchOutcome(
        ok=not errors and transactions > 0,
        tps=tps,
        transactions=transactions,
        failed_transactions=failed,
        p50_us=percentile(latencies, 0.50),
        p90_us=percentile(latencies, 0.90),
        p99_us=percentile(latencies, 0.99),
        error="; ".join(errors) if errors else (None if transactions else "no transactions"),
    )
