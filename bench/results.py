"""What a benchmark run measured: one record per measurement, plus the run's context.

Records are plain dataclasses so that ``results.json`` is ``dataclasses.asdict`` of a
:class:`BenchResults`, and the Markdown report and the chart are computed from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Measurement:
    """One pgbench measurement of one workload on one target."""

    workload: str
    target: str
    repeat: int
    started_at: str
    ok: bool
    error: str | None
    tps: float | None
    transactions: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    proxy_cpu_us_per_tx: float | None  # the proxy process tree (none for direct)
    pg_cpu_us_per_tx: float | None  # the postmaster and all its backends
    client_cpu_us_per_tx: float | None  # pgbench itself


@dataclass(slots=True)
class IdleMeasurement:
    """One idle-connections measurement on one proxy."""

    workload: str
    target: str
    repeat: int
    started_at: str
    ok: bool
    error: str | None
    clients: int
    opened: int
    connect_seconds: float
    rss_before_bytes: int
    rss_after_bytes: int
    rss_per_client_bytes: float | None
    idle_cpu_percent: float
    sample_ok: int
    sample_size: int


@dataclass(slots=True)
class BenchResults:
    """Everything one ``python -m bench`` run produced."""

    started_at: str
    finished_at: str = ""
    interrupted: bool = False
    machine: dict[str, object] = field(default_factory=dict)
    settings: dict[str, object] = field(default_factory=dict)
    targets: dict[str, dict[str, object]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    workloads: dict[str, str] = field(default_factory=dict)  # name -> summary
    measurements: list[Measurement] = field(default_factory=list)
    idle: list[IdleMeasurement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
