"""The engine bench's command line: ``python -m bench.engine`` (``./dev bench --engine``).

Parses the options, prints one row per workload as it finishes, and writes the JSON
record when asked.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.engine.adapter import build_kind, compiled_modules
from bench.engine.drive import EngineBenchError
from bench.engine.measure import run_engine
from bench.engine.workloads import WORKLOADS, WorkloadResult

_RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"


def _row(result: WorkloadResult) -> str:
    spread = f"{min(result.repeats_us):.2f}-{max(result.repeats_us):.2f}"
    guard = "-" if result.pool_mode == "-" else ("on" if result.guard else "off")
    proxy = result.pool_mode != "-"
    calls = f"{result.proxy_calls_per_tx:.1f}" if proxy else "-"
    builtins = f"{result.builtin_calls_per_tx:.1f}" if proxy else "-"
    every = f"{result.all_calls_per_tx:.1f}" if proxy else "-"
    waits = f"{result.loop_waits_per_tx:.3f}" if proxy else "-"
    return (f"{result.workload:<20} {guard:>5} {result.us_per_tx:>7.2f} {spread:>13} "
            f"{result.wall_us_per_tx:>7.2f} {calls:>6} {builtins:>6} {every:>6} {waits:>6}")


_HEADER = (f"{'workload':<20} {'guard':>5} {'cpu us':>7} {'cpu range':>13} {'wall us':>7} "
           f"{'py':>6} {'C':>6} {'all py':>6} {'loop':>6}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.engine",
        description="The proxy's own cost per transaction (pgbench -S shaped), in process: "
                    "real ProxyApp, client and server connections, fake transports and a "
                    "fake PostgreSQL; no sockets. Also: ./dev bench --engine.")
    parser.add_argument("--transactions", type=int, default=20_000,
                        help="transactions per timed repeat (default 20000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (default 5)")
    parser.add_argument("--workloads", default=",".join(w.name for w in WORKLOADS),
                        help="comma-separated (default all): "
                             + ", ".join(w.name for w in WORKLOADS))
    parser.add_argument("--guard", choices=("on", "off", "both"), default="both",
                        help="SQL guard on (the default config), off, or both (default)")
    parser.add_argument("--delivery", choices=("sync", "loop"), default="sync",
                        help="server replies delivered right after each callback (sync, "
                             "default: the proxy alone) or by the event loop (loop: "
                             "call_soon, one loop pass per round)")
    parser.add_argument("--calls", type=int, default=0, metavar="N",
                        help="also list the N proxy functions called most per transaction")
    parser.add_argument("--output", nargs="?", type=Path, const=_RESULTS_DIR, default=None,
                        metavar="PATH",
                        help="write JSON: a file, or a directory for engine-<date>.json "
                             "(without PATH: bench/results/)")
    parser.add_argument("--quick", action="store_true",
                        help="2 repeats x 2000 transactions (a smoke run)")
    return parser


def _output_path(output: Path) -> Path:
    if output.suffix == ".json":
        return output
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    return output / f"engine-{stamp}.json"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = {w.name: w for w in WORKLOADS}
    try:
        workloads = [names[n.strip()] for n in args.workloads.split(",") if n.strip()]
    except KeyError as exc:
        print(f"bench.engine: unknown workload {exc}", file=sys.stderr)
        return 2
    transactions, repeats = (2000, 2) if args.quick else (args.transactions, args.repeats)
    if transactions < 8 or repeats < 1:
        print("bench.engine: --transactions must be >= 8 and --repeats >= 1", file=sys.stderr)
        return 2
    guards = {"on": [True], "off": [False], "both": [True, False]}[args.guard]
    kind = build_kind()
    compiled = compiled_modules()
    print(f"pgtenant engine bench: {kind} build"
          + (f" ({len(compiled)} compiled modules)" if compiled else "")
          + f", Python {platform.python_version()}, {repeats} x {transactions} transactions, "
          f"{args.delivery} delivery")
    print(_HEADER)

    def progress(result: WorkloadResult) -> None:
        print(_row(result), flush=True)
        if result.pool_waits_per_tx or result.tenant_sets_per_tx or result.kept_reclaims_per_tx:
            print(f"    pool per tx: {result.pool_waits_per_tx:.3f} waits, "
                  f"{result.tenant_sets_per_tx:.4f} tenant sets, "
                  f"{result.kept_reclaims_per_tx:.3f} kept servers reclaimed"
                  + (f" ({result.delivery} delivery)" if result.delivery != args.delivery
                     else ""))
        for name, per_tx in result.top_calls:
            print(f"    {per_tx:6.2f}  {name}")

    try:
        results = run_engine(workloads, guards, transactions, repeats, detail=args.calls,
                             delivery=args.delivery, progress=progress)
    except EngineBenchError as exc:
        print(f"bench.engine: {exc}", file=sys.stderr)
        return 1
    print("Per transaction: cpu us = CPU time of the bench thread (median, and range, of the "
          "repeats), wall us = wall time (median), both with the harness's share (its own "
          "row); calls: py = Python functions in proxy/ (a compiled module's are not seen), "
          "C = builtins called from them, all py = every Python function (harness too); "
          "loop = extra event-loop passes per transaction a reply needed (0: none)")
    if args.output is not None:
        path = _output_path(args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "commit": _git_commit(),
            "build": kind,
            "compiled_modules": compiled,
            "python": platform.python_version(),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "settings": {"transactions": transactions, "repeats": repeats,
                         "delivery": args.delivery},
            "results": [dataclasses.asdict(r) for r in results],
        }
        path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"results: {path}")
    return 0


def _git_commit() -> str | None:
    import subprocess

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10, check=False)
        if out.returncode == 0:
            return out.stdout.strip()
    return None
