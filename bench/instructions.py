"""Instructions per transaction of the in-process engine benchmark, counted by callgrind.

Run: ``.venv/bin/python -m bench.instructions [--workloads simple-c8,extended-c8]
[--tree DIR] [--guard on|off]``.

Time on a shared machine varies by tens of percent from run to run; the number of
instructions a run executes does not (valgrind's callgrind counts them; the same code,
inputs and environment give the same count within a fraction of a percent). So a change to
the hot path is judged here: ``python -m bench.engine`` runs under callgrind twice, with
``--small`` and ``--large`` transactions (one repeat each), and the difference divided by
the difference in transactions is the cost of one transaction, start-up, imports, login
and the engine's profiled pass (at most 2,000 transactions, so the same in both runs when
``--small`` is at least 2,000) cancelling out. The harness's share is included (about
11,000 instructions per transaction: the fake PostgreSQL and transports of
``bench/engine/``); it does not change when the proxy does.

``--tree DIR`` puts ``DIR`` first on ``PYTHONPATH``: a directory holding an installed
(compiled) ``proxy`` package and its ``*__mypyc*.so``, copied out of a virtualenv's
``site-packages``, measures the compiled build; without it this checkout's (pure) code runs.
Every run checks each reply byte for byte (``bench.engine``): a broken path cannot pass
for a cheap one.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.engine.workloads import WORKLOADS

REPO = Path(__file__).resolve().parents[1]
_COLLECTED = re.compile(r"Collected : (\d+)")


class InstructionCountError(RuntimeError):
    """valgrind is missing, or a run under it failed."""


def count(workload: str, transactions: int, *, tree: Path | None, guard: str) -> int:
    """Instructions callgrind counted for one ``bench.engine`` run of ``workload``."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise InstructionCountError("valgrind is not installed (Debian package: valgrind)")
    path = [str(tree)] if tree is not None else []
    # A fixed hash seed: with a random one, set and dict layouts (and so the instructions
    # of every lookup and of the garbage collector) differ run to run, by ±2,000 a
    # transaction on the same code.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(REPO)]),
           "PYTHONHASHSEED": "0"}
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run(
            [valgrind, "--tool=callgrind", f"--callgrind-out-file={scratch}/callgrind.out",
             sys.executable, "-m", "bench.engine", "--workloads", workload, "--guard", guard,
             "--transactions", str(transactions), "--repeats", "1"],
            cwd=scratch, env=env, capture_output=True, text=True, check=False,
            stdin=subprocess.DEVNULL)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        raise InstructionCountError(f"{workload}: bench.engine under callgrind failed: "
                                    + " | ".join(tail))
    return int(found.group(1))


def per_transaction(workload: str, small: int, large: int, *, tree: Path | None,
                    guard: str) -> float:
    """Instructions of one transaction: the difference of a large and a small run (each
    runs whole rounds, one transaction per client: what it runs is counted)."""
    clients = next((w.clients for w in WORKLOADS if w.name == workload), 1)
    ran = (large // clients - small // clients) * clients
    return (count(workload, large, tree=tree, guard=guard)
            - count(workload, small, tree=tree, guard=guard)) / ran


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads",
                        default="simple-c8,extended-c8,prepared-c8,simple-c64",
                        help="bench.engine workloads, comma-separated (tenant-c32 is not "
                             "a default: its pool decisions follow the wall clock, which "
                             "callgrind slows, so its count differs from run to run)")
    parser.add_argument("--tree", type=Path, default=None,
                        help="a directory with an installed proxy package to measure "
                             "(put first on PYTHONPATH); default: this checkout")
    parser.add_argument("--guard", choices=("on", "off"), default="on")
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=6000)
    args = parser.parse_args(argv)
    if args.small < 2000 or args.large <= args.small:
        parser.error("--small must be at least 2000 (the profiled pass) and below --large")
    where = str(args.tree) if args.tree is not None else f"{REPO} (this checkout)"
    print(f"instructions per transaction (callgrind; {args.large} minus {args.small} "
          f"transactions), guard {args.guard}, code from {where}")
    try:
        for workload in (w.strip() for w in args.workloads.split(",") if w.strip()):
            cost = per_transaction(workload, args.small, args.large, tree=args.tree,
                                   guard=args.guard)
            print(f"{workload:<20} {cost:>10,.0f}", flush=True)
    except InstructionCountError as exc:
        print(f"bench.instructions: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
