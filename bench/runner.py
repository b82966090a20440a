"""One benchmark run: set up PostgreSQL and the targets, interleave, measure, report.

Order: for each repeat, for each workload, every target in turn (A B C D, A B C D …), so
that a noisy neighbour or a slow drift of the machine hits every target alike.
Everything started here is stopped and every temporary directory removed on the way
out, also after Ctrl-C or an error; a report of what was measured so far is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import resource
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import baseline, idle, pgbench, report
from bench.database import BenchDatabase, prepare, tenant_names
from bench.environment import describe_machine, proxy_source_fingerprint
from bench.pgbouncer import PgbouncerTarget, ensure_pgbouncer
from bench.pipe import PipeTarget
from bench.processes import tail
from bench.procstat import cpu_seconds
from bench.results import BenchResults, IdleMeasurement, Measurement
from bench.targets import (
    PROXY_POOL_SIZE,
    DirectTarget,
    PgtenantTarget,
    Target,
    TargetUnavailable,
)
from bench.workloads import Workload, invocations, write_scripts
from proxy.config import ServerConfig
from proxy.devtools import EmbeddedPostgres

log = logging.getLogger("pgtenant.bench")

TARGET_NAMES = ("direct", "pgtenant-session", "pgtenant-transaction", "pgbouncer")
WORKERS_TARGET = "pgtenant-workers2"
#: The bare uvloop byte pipe (bench.pipe): the floor under a Python proxy; only when named.
PIPE_TARGET = PipeTarget.name
#: Targets that run pgtenant serve: each has an ``@base`` twin with --baseline.
PGTENANT_TARGETS = ("pgtenant-session", "pgtenant-transaction", WORKERS_TARGET)
#: Twins added when --baseline is given without --targets.
DEFAULT_BASE_TARGETS = ("pgtenant-session", "pgtenant-transaction")
_WARMUP_CLIENTS = 4
_PER_RUN_OVERHEAD = 2.0  # seconds around each pgbench run, for the time estimate

#: Set by the signal handlers. They also raise KeyboardInterrupt, but Python drops an
#: exception raised where it cannot propagate (e.g. in an at-fork hook while a child is
#: spawned), so the run also checks this between measurements.
STOP_REQUESTED = threading.Event()


@dataclass(frozen=True, slots=True)
class Options:
    """What to run, from the command line."""

    workloads: tuple[Workload, ...]
    targets: tuple[str, ...]
    duration: float
    repeats: int
    scale: int
    tenants: int
    rows_per_tenant: int
    idle_clients: int
    warmup_seconds: float
    output_dir: Path
    quick: bool
    baseline: str | None = None  # --baseline: a git revision or a checkout's path


def workers_supported() -> bool:
    """Whether pgtenant's config has a ``[server] workers`` key yet."""
    return any(f.name == "workers" for f in dataclasses.fields(ServerConfig))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class BenchRun:
    """State of one run; :meth:`execute` does the work and always writes a report."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.results = BenchResults(started_at=_now())
        self.stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.results_dir = options.output_dir / self.stamp
        self.targets: list[Target] = []
        self.db: BenchDatabase | None = None
        self.baseline: baseline.Baseline | None = None
        self.workdir = Path()
        self.scripts: tuple[Path, Path] = (Path(), Path())
        self._done = 0
        self._total = 0
        self._began = 0.0

    # -- the run ------------------------------------------------------------------

    def execute(self) -> Path:
        """Run everything; return the results directory."""
        opts = self.options
        self.results.machine = describe_machine()
        self.results.settings = {
            "duration_seconds": opts.duration,
            "repeats": opts.repeats,
            "pgbench_scale": opts.scale,
            "tenants": opts.tenants,
            "rows_per_tenant": opts.rows_per_tenant,
            "idle_clients": opts.idle_clients,
            "quick": opts.quick,
            "order": "interleaved: repeat > workload > target, target order reversed "
                     "every other repeat",
        }
        self.results.workloads = {w.name: w.summary for w in opts.workloads}
        try:
            with contextlib.ExitStack() as stack:
                self.workdir = Path(tempfile.mkdtemp(prefix="pgtenant-bench-"))
                stack.callback(shutil.rmtree, self.workdir, ignore_errors=True)
                self.workdir.chmod(0o711)  # PgBouncer's OS user must reach its own subdirectory
                try:
                    self._setup(stack)
                    self._measure_all()
                finally:
                    self._collect_logs()
        except KeyboardInterrupt:
            self.results.interrupted = True
            self.results.notes.append("interrupted (Ctrl-C): partial results")
            raise
        finally:
            self.results.finished_at = _now()
            if proxy_source_fingerprint() != self.results.machine.get("pgtenant_source"):
                self.results.notes.append(
                    "proxy/ source changed during the run: a pgtenant restarted after the "
                    "change (e.g. by the idle test) ran different code"
                )
            report.write(self.results, self.results_dir)
        return self.results_dir

    def _setup(self, stack: contextlib.ExitStack) -> None:
        opts = self.options
        if opts.baseline is not None:
            # Before the cluster: a baseline that does not run its own code stops the run.
            self.baseline = baseline.prepare(opts.baseline, self.workdir)
            self.results.settings["baseline"] = self.baseline.describe()
            log.info("baseline %s: %s", opts.baseline, self.baseline.revision)
        if any(w.kind == "idle" for w in opts.workloads):
            limit = idle.raise_open_files_limit(opts.idle_clients + 2048)
            if limit < opts.idle_clients + 256:
                self.results.notes.append(
                    f"open files limit is {limit}: fewer idle clients than asked may connect"
                )
        max_clients = max((w.clients for w in opts.workloads if w.kind != "idle"), default=8)
        log.info("starting a fresh PostgreSQL cluster")
        pg = stack.enter_context(EmbeddedPostgres(settings={
            "shared_buffers": "256MB",
            "max_connections": str(max(300, 3 * max_clients + 100)),
        }))
        log.info("loading pgbench tables (scale %d) and %d tenants x %d rows",
                 opts.scale, opts.tenants, opts.rows_per_tenant)
        self.db = prepare(pg, scale=opts.scale, tenants=tenant_names(opts.tenants),
                          rows_per_tenant=opts.rows_per_tenant)
        self.scripts = write_scripts(self.workdir)
        jwt_secret = secrets.token_urlsafe(48)
        max_client_conn = opts.idle_clients + 1000
        for name in opts.targets:
            try:
                target = self._make_target(name, jwt_secret, max_clients, max_client_conn)
            except TargetUnavailable as exc:
                self._unavailable(name, str(exc))
                continue
            stack.callback(target.stop)
            try:
                target.start()
            except TargetUnavailable as exc:
                self._unavailable(name, str(exc))
                continue
            self.targets.append(target)
            self.results.targets[name] = target.describe()
            pids = target.proxy_pids()
            log.info("%s is up%s", name, f" (pid {pids[0]})" if pids else "")
        if not workers_supported():
            self.results.notes.append(
                "pgtenant workers = 2: not supported yet (no [server] workers key)"
            )
        self._warm_up()

    def _make_target(
        self, name: str, jwt_secret: str, max_clients: int, max_client_conn: int
    ) -> Target:
        db = self.db
        assert db is not None
        if name == "direct":
            return DirectTarget(db)
        if name == PIPE_TARGET:
            return PipeTarget(db, self.workdir)
        if name == "pgbouncer":
            self.results.machine["pgbouncer"] = "missing"
            bouncer = PgbouncerTarget(db, self.workdir, binary=ensure_pgbouncer(),
                                      max_client_conn=max_client_conn)
            self.results.machine["pgbouncer"] = bouncer.version
            return bouncer
        # An @base twin gets the same settings and runs the baseline's code.
        version = self.baseline if baseline.is_base(name) else None
        if baseline.is_base(name) and version is None:
            raise TargetUnavailable(f"{name}: needs --baseline")
        kind = baseline.current_name(name)
        if kind == WORKERS_TARGET:
            # The baseline's own config loader decides whether it knows `workers`.
            if version is None and not workers_supported():
                raise TargetUnavailable("pgtenant workers = 2: not supported yet")
            return PgtenantTarget(db, self.workdir, name=name, pool_mode="transaction",
                                  pool_size=PROXY_POOL_SIZE, max_client_conn=max_client_conn,
                                  jwt_secret=jwt_secret, workers=2, baseline=version)
        mode = kind.removeprefix("pgtenant-")
        if mode == "session":
            # Session mode pins a server connection per client: a pool smaller than the
            # client count would leave clients queued until query_wait_timeout.
            return PgtenantTarget(db, self.workdir, name=name, pool_mode="session",
                                  pool_size=max(PROXY_POOL_SIZE, max_clients),
                                  max_client_conn=max_client_conn, jwt_secret=jwt_secret,
                                  baseline=version)
        if mode == "transaction":
            return PgtenantTarget(db, self.workdir, name=name, pool_mode="transaction",
                                  pool_size=PROXY_POOL_SIZE, max_client_conn=max_client_conn,
                                  jwt_secret=jwt_secret, baseline=version)
        raise TargetUnavailable(f"unknown target {name!r}")

    def _unavailable(self, name: str, reason: str) -> None:
        self.results.unavailable[name] = reason
        first_line = reason.splitlines()[0] if reason else name
        log.warning("%s: unavailable: %s", name, first_line)

    def _warm_up(self) -> None:
        """A short unrecorded select-only run per target: pools and caches warm."""
        assert self.db is not None
        warmup = Workload("warm-up", "-", "pgbench", _WARMUP_CLIENTS, "warm-up")
        for target in self.targets:
            outcome = pgbench.run(invocations(warmup, target, self.db, self.scripts),
                                  duration=self.options.warmup_seconds, workdir=self.workdir)
            if not outcome.ok:
                log.warning("warm-up on %s failed: %s", target.name, outcome.error)

    def _measure_all(self) -> None:
        opts = self.options
        plan = [
            (repeat, workload, target)
            for repeat in range(1, opts.repeats + 1)
            for workload in opts.workloads
            for target in interleaved(self.targets, repeat)
            if workload.runs_on(target)
        ]
        self._total = len(plan)
        self._began = time.monotonic()
        log.info("%d measurements planned (about %.0f min)", self._total,
                 self._total * (opts.duration + _PER_RUN_OVERHEAD) / 60)
        for repeat, workload, target in plan:
            if STOP_REQUESTED.is_set():
                raise KeyboardInterrupt
            if target.name in self.results.unavailable:
                continue
            if not self._ensure_running(target):
                continue
            self._done += 1
            if workload.kind == "idle":
                self._record_idle(workload, target, repeat)
            else:
                self._record_pgbench(workload, target, repeat)

    def _ensure_running(self, target: Target) -> bool:
        if target.alive():
            return True
        log.warning("%s is not running (it died); restarting it", target.name)
        self.results.notes.append(f"{target.name} died during the run and was restarted")
        try:
            target.restart()
        except TargetUnavailable as exc:
            self._unavailable(target.name, f"died and could not be restarted: {exc}")
            return False
        return True

    # -- one measurement -------------------------------------------------------------

    def _progress(self, workload: Workload, target: Target, repeat: int, text: str) -> None:
        elapsed = time.monotonic() - self._began
        remaining = elapsed / self._done * (self._total - self._done) if self._done else 0.0
        log.info("[%d/%d] rep %d %s @ %s: %s (about %.0f min left)", self._done, self._total,
                 repeat, workload.name, target.name, text, remaining / 60)

    def _record_pgbench(self, workload: Workload, target: Target, repeat: int) -> None:
        assert self.db is not None
        started_at = _now()
        pg_pids = [self.db.pg.pid] if self.db.pg.pid is not None else []
        proxy_before = cpu_seconds(target.proxy_pids())
        pg_before = cpu_seconds(pg_pids)
        client_before = _children_cpu()
        outcome = pgbench.run(invocations(workload, target, self.db, self.scripts),
                              duration=self.options.duration, workdir=self.workdir)
        client_cpu = _children_cpu() - client_before
        proxy_cpu = cpu_seconds(target.proxy_pids()) - proxy_before
        pg_cpu = cpu_seconds(pg_pids) - pg_before
        error = outcome.error
        if not target.alive():
            error = f"{target.name} died during the run; log tail: {self._log_tail(target)}"
        ok = outcome.ok and error is None
        per_tx = 1e6 / outcome.transactions if outcome.transactions else None
        measurement = Measurement(
            workload=workload.name,
            target=target.name,
            repeat=repeat,
            started_at=started_at,
            ok=ok,
            error=error,
            tps=outcome.tps if ok else None,
            transactions=outcome.transactions,
            p50_ms=outcome.p50_us / 1000 if outcome.p50_us is not None else None,
            p90_ms=outcome.p90_us / 1000 if outcome.p90_us is not None else None,
            p99_ms=outcome.p99_us / 1000 if outcome.p99_us is not None else None,
            proxy_cpu_us_per_tx=proxy_cpu * per_tx if per_tx and target.proxy_pids() else None,
            pg_cpu_us_per_tx=pg_cpu * per_tx if per_tx else None,
            client_cpu_us_per_tx=client_cpu * per_tx if per_tx else None,
        )
        self.results.measurements.append(measurement)
        if ok:
            proxy = (f", proxy {measurement.proxy_cpu_us_per_tx:.0f} µs/tx"
                     if measurement.proxy_cpu_us_per_tx is not None else "")
            self._progress(workload, target, repeat,
                           f"{outcome.tps:,.0f} tps, p50 {measurement.p50_ms:.2f} ms, "
                           f"p99 {measurement.p99_ms:.2f} ms{proxy}")
        else:
            self._progress(workload, target, repeat, f"FAILED: {error}")

    def _record_idle(self, workload: Workload, target: Target, repeat: int) -> None:
        assert self.db is not None
        started_at = _now()
        error: str | None = None
        outcome: idle.IdleOutcome | None = None
        try:
            target.restart()  # a fresh process, so the memory baseline is clean
            infos = [target.conninfo(t.tenant) for t in self.db.tenants]
            credentials = [idle.Credentials(i.user, i.password, i.dbname) for i in infos]
            outcome = asyncio.run(idle.measure(
                infos[0].host, infos[0].port, credentials, clients=workload.clients,
                proxy_pids=target.proxy_pids,
            ))
        except TargetUnavailable as exc:
            error = f"could not restart: {exc}"
        finally:
            with contextlib.suppress(TargetUnavailable):
                target.restart()  # later workloads get a process not bloated by this one
        if outcome is not None and outcome.failed:
            error = f"{outcome.failed} of {outcome.clients} clients failed: {outcome.first_error}"
        if outcome is not None and outcome.sample_ok < outcome.sample_size:
            error = (error + "; " if error else "") + (
                f"only {outcome.sample_ok}/{outcome.sample_size} idle clients answered a query"
            )
        measurement = IdleMeasurement(
            workload=workload.name,
            target=target.name,
            repeat=repeat,
            started_at=started_at,
            ok=outcome is not None and error is None,
            error=error,
            clients=workload.clients,
            opened=outcome.opened if outcome else 0,
            connect_seconds=outcome.connect_seconds if outcome else 0.0,
            rss_before_bytes=outcome.rss_before if outcome else 0,
            rss_after_bytes=outcome.rss_after if outcome else 0,
            rss_per_client_bytes=outcome.rss_per_client if outcome else None,
            idle_cpu_percent=outcome.idle_cpu_percent if outcome else 0.0,
            sample_ok=outcome.sample_ok if outcome else 0,
            sample_size=outcome.sample_size if outcome else 0,
        )
        self.results.idle.append(measurement)
        if outcome is not None and outcome.rss_per_client is not None:
            self._progress(workload, target, repeat,
                           f"{outcome.opened} idle clients in {outcome.connect_seconds:.1f}s, "
                           f"{outcome.rss_per_client / 1024:.2f} kB RSS each, "
                           f"{outcome.idle_cpu_percent:.1f}% CPU while idle"
                           + (f"; {error}" if error else ""))
        else:
            self._progress(workload, target, repeat, f"FAILED: {error}")

    # -- odds and ends ------------------------------------------------------------------

    def _log_tail(self, target: Target) -> str:
        files = target.log_files()
        return tail(files[0], 8).replace("\n", " | ") if files else "(no log)"

    def _collect_logs(self) -> None:
        """Keep the proxies' logs with the results (the temporary directory goes)."""
        for target in self.targets:
            for path in target.log_files():
                if path.exists() and path.stat().st_size:
                    self.results_dir.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, self.results_dir / path.name)


def run(options: Options) -> Path:
    """Run the benchmark described by ``options``; return where the results are."""
    return BenchRun(options).execute()


def interleaved(targets: Sequence[Target], repeat: int) -> Sequence[Target]:
    """The targets in run order for ``repeat`` (1-based): A B C, then C B A, … so that no
    target always runs right after the same neighbour (matters for current vs @base)."""
    return targets if repeat % 2 else targets[::-1]


def _with_twins(names: Sequence[str], twins: Sequence[str]) -> tuple[str, ...]:
    """``names`` with ``name@base`` right after each name in ``twins``."""
    out: list[str] = []
    for name in names:
        out.append(name)
        if name in twins:
            out.append(baseline.base_name(name))
    return tuple(out)


def planned_targets(requested: Sequence[str], *, with_baseline: bool = False) -> tuple[str, ...]:
    """Validate ``--targets``. With --baseline and no ``@base`` target named, each named
    pgtenant target gets its ``@base`` twin; an ``@base`` target needs --baseline."""
    known = (*TARGET_NAMES, WORKERS_TARGET, PIPE_TARGET,
             *map(baseline.base_name, PGTENANT_TARGETS))
    unknown = [name for name in requested if name not in known]
    if unknown:
        raise ValueError(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    requested = tuple(dict.fromkeys(requested))
    named_base = any(baseline.is_base(name) for name in requested)
    if named_base and not with_baseline:
        raise ValueError("@base targets need --baseline REV_OR_PATH")
    if with_baseline and not named_base:
        requested = _with_twins(requested, PGTENANT_TARGETS)
        if not any(baseline.is_base(name) for name in requested):
            raise ValueError("--baseline needs a pgtenant target in --targets")
    return requested


def default_targets(*, with_baseline: bool = False) -> tuple[str, ...]:
    """Every target available; the workers target when supported, and with --baseline the
    session and transaction targets' ``@base`` twins."""
    names = (*TARGET_NAMES, WORKERS_TARGET) if workers_supported() else TARGET_NAMES
    return _with_twins(names, DEFAULT_BASE_TARGETS) if with_baseline else names
