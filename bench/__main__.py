"""``python -m bench`` (``./dev bench``): run the side-by-side benchmarks."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from bench import runner
from bench.baseline import BaselineError, locate
from bench.workloads import GROUPS, QUICK_WORKLOADS, catalog, resolve

_DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run the same pgbench workloads against PostgreSQL directly, pgtenant "
                    "(session and transaction mode) and PgBouncer, interleaved; write "
                    "results.md, results.json and chart.png under bench/results/<timestamp>/.",
        epilog="workload groups: " + "; ".join(f"{k} = {v}" for k, v in GROUPS.items()),
    )
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (~2 min): short runs, 1 repeat, a few workloads, "
                             "1,000 idle clients; no thresholds")
    parser.add_argument("--duration", type=float, help="seconds per measurement (default 20; "
                                                       "--quick: 4)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats (default 3; --quick: 1)")
    parser.add_argument("--workloads", help="comma-separated group letters (a-e) and/or "
                                            "workload names (default: all)")
    parser.add_argument("--targets", help="comma-separated: "
                                          + ",".join((*runner.TARGET_NAMES,
                                                      runner.WORKERS_TARGET,
                                                      runner.PIPE_TARGET))
                                          + "; with --baseline also NAME@base for the "
                                            "pgtenant ones (default: all available)")
    parser.add_argument("--baseline", metavar="REV_OR_PATH",
                        help="also run another pgtenant version, a git revision of this "
                             "repository (e.g. main, HEAD~3) or another checkout's path, as "
                             "pgtenant-*@base targets with the same config, and report "
                             "current/baseline ratios; pgtenant targets named in --targets "
                             "without any @base one get their @base twin")
    parser.add_argument("--idle-clients", type=int,
                        help="clients of the idle test (default 10000; --quick: 1000)")
    parser.add_argument("--tenants", type=int, default=8, help="tenants (default 8)")
    parser.add_argument("--tenant-clients", type=int,
                        help="clients of the tenant workload, spread over the tenants "
                             "(default 32; --quick: 16)")
    parser.add_argument("--rows-per-tenant", type=int, default=10_000,
                        help="rows per tenant in items (default 10000)")
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale (default 10)")
    parser.add_argument("--output", type=Path, default=_DEFAULT_OUTPUT,
                        help="results parent directory (default bench/results)")
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    parser.add_argument("--engine", action="store_true",
                        help="instead: the in-process engine benchmark (no sockets, no "
                             "PostgreSQL); the other options are its own, see "
                             "./dev bench --engine --help")
    return parser


def _options(args: argparse.Namespace) -> runner.Options:
    quick: bool = args.quick
    idle_clients = args.idle_clients or (1000 if quick else 10_000)
    tenant_clients = args.tenant_clients or (16 if quick else 32)
    everything = catalog(tenant_clients=tenant_clients, idle_clients=idle_clients)
    spec = args.workloads or (QUICK_WORKLOADS if quick else ",".join(GROUPS))
    with_baseline = args.baseline is not None
    if with_baseline:
        try:
            locate(args.baseline)  # a typo fails here, before anything starts
        except BaselineError as exc:
            raise ValueError(str(exc)) from None
    targets = (runner.planned_targets([t.strip() for t in args.targets.split(",") if t.strip()],
                                      with_baseline=with_baseline)
               if args.targets else runner.default_targets(with_baseline=with_baseline))
    duration = args.duration if args.duration is not None else (4.0 if quick else 20.0)
    repeats = args.repeats if args.repeats is not None else (1 if quick else 3)
    if duration < 1 or repeats < 1 or args.tenants < 1 or idle_clients < 1:
        raise ValueError("--duration, --repeats, --tenants and --idle-clients must be >= 1")
    return runner.Options(
        workloads=tuple(resolve(spec, everything)),
        targets=targets,
        duration=duration,
        repeats=repeats,
        scale=args.scale,
        tenants=args.tenants,
        rows_per_tenant=args.rows_per_tenant,
        idle_clients=idle_clients,
        warmup_seconds=1.0 if quick else 3.0,
        output_dir=args.output,
        quick=quick,
        baseline=args.baseline,
    )


def _stop(signum: int, frame: FrameType | None) -> None:
    """SIGINT and SIGTERM: stop cleanly (partial report, everything stopped and removed)."""
    runner.STOP_REQUESTED.set()
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--engine" in argv:
        from bench.engine.cli import main as engine_main

        argv.remove("--engine")
        return engine_main(argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    try:
        options = _options(args)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for workload in options.workloads:
            print(f"{workload.group}  {workload.name:<22} {workload.summary}")
        return 0
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop)
    try:
        results = runner.run(options)
    except KeyboardInterrupt:
        print("bench: interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except BaselineError as exc:
        print(f"bench: baseline: {exc}", file=sys.stderr)
        return 2
    print(f"results: {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
