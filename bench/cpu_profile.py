"""Where a proxy's CPU goes per transaction, sampled by ``perf`` over real sockets.

Run: ``.venv/bin/python -m bench.cpu_profile [--tree DIR] [--seconds 5]
[--targets pgtenant,pgbouncer,pipe] [--clients 8] [--protocol simple] [--detail FUNCS]``.

``bench.instructions`` counts the proxy's own code in process; this looks at the live
process instead: a fresh PostgreSQL, pgtenant (transaction mode, pool 20; ``--tree DIR``
runs an installed, e.g. compiled, build as ``--baseline`` does), PgBouncer and, when
named, :mod:`bench.pipe` (a bare uvloop byte pipe: the floor) in front of it,
``pgbench -S -c 8`` (``--clients``, ``--protocol``) against each in turn while
``perf record -e cpu-clock --call-graph dwarf`` samples the proxy process. The process's
user and kernel CPU time per transaction come from /proc in a run of the same length
without perf (sampling with stacks costs the sampled process kernel time of its own, so a
sampled run's totals are inflated).
Each user-space sample is charged to the shared object its innermost frame runs in
(CPython, the compiled proxy, uvloop, libc, ...) and to the innermost proxy function on its
stack (what CPython, uvloop and libc do *for* it: a dict lookup, a bytes object,
``transport.write``); the user time is split in those proportions, in microseconds per
transaction. A function's line is what it costs in that process, not only its own code.
``--detail`` splits named functions (``-``: the samples with no proxy frame, the event
loop's own) by their innermost symbol: what a function's time goes to.
Functions are named only for a compiled build (mypyc's C functions; an interpreted one
shows as CPython's evaluation loop).

Needs ``perf`` (Debian: linux-perf) and permission to sample a child process (root, or
``kernel.perf_event_paranoid`` at most 1). Numbers vary by ±10% from run to run on a shared
machine; the split between kernel and user time and the ranking of functions do not.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: One frame of ``perf script``'s default output: address, symbol (with +offset), object.
_FRAME = re.compile(r"^\s+[0-9a-f]+ (.*?)(?:\+0x[0-9a-f]+)? \((.*)\)$")
_PROCESSED = re.compile(r"number of transactions actually processed: (\d+)")
#: Shared objects by what they are, first match wins (matched against the file name).
_PARTS: tuple[tuple[str, str], ...] = (
    ("kernel", "kernel"), ("__mypyc", "proxy (compiled)"), ("libpython", "CPython"),
    ("loop.cpython", "uvloop"), ("libc.so", "libc"),
    ("libevent", "libevent"), ("pgbouncer", "pgbouncer"),
)
#: Prefix of a mypyc-compiled function's C name (``CPyDef_module___Class___method``).
_COMPILED = "CPyDef_"


@dataclass(frozen=True)
class Frame:
    symbol: str
    obj: str  # the shared object's file name, or "[kernel.kallsyms]", "[vdso]", ...


def parse_samples(text: str) -> list[list[Frame]]:
    """The stacks of ``perf script`` output (innermost frame first), one per sample."""
    stacks: list[list[Frame]] = []
    current: list[Frame] | None = None
    for line in text.splitlines():
        if not line.strip():
            if current:
                stacks.append(current)
            current = None
            continue
        if not line[0].isspace():  # a sample's header line: command, pid, time, event
            current = []
            continue
        found = _FRAME.match(line)
        if found is not None and current is not None:
            current.append(Frame(found.group(1), found.group(2).rsplit("/", 1)[-1]))
    if current:
        stacks.append(current)
    return stacks


def part_of(obj: str) -> str:
    for needle, part in _PARTS:
        if needle in obj:
            return part
    return obj or "?"


def _function(symbol: str) -> str:
    """``CPyDef_relay___ClientRelay____flush`` -> ``relay.ClientRelay._flush``."""
    return symbol[len(_COMPILED):].replace("___", ".")


@dataclass
class Profile:
    """Sample counts: kernel ones, and user-space ones by part (shared object kind) and by
    the innermost compiled proxy function on the stack (``-`` when there is none: the
    event loop's own work)."""

    kernel: int
    parts: Counter[str]
    functions: Counter[str]
    # By (owner, innermost symbol): what a function's time goes to (CPython, uvloop, libc
    # working for it); for owner ``-``, what the event loop itself spends on.
    inner: Counter[tuple[str, str]]

    @property
    def user(self) -> int:
        return sum(self.parts.values())


@dataclass(frozen=True)
class CpuUse:
    """A process's CPU time per transaction, µs (from /proc, in a run without perf)."""

    user: float
    kernel: float


def summarize(stacks: Iterable[Sequence[Frame]]) -> Profile:
    """Count user-space samples (kernel ones only in :attr:`Profile.kernel`)."""
    parts: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    inner: Counter[tuple[str, str]] = Counter()
    kernel = 0
    for stack in stacks:
        # The innermost frame's object; an inlined frame is reported as "(inlined)".
        obj = next((f.obj for f in stack if f.obj != "inlined"), "")
        if not obj:
            continue
        part = part_of(obj)
        if part == "kernel":
            kernel += 1
            continue
        parts[part] += 1
        owner = next((_function(f.symbol) for f in stack if f.symbol.startswith(_COMPILED)),
                     "-")
        functions[owner] += 1
        first = next(f for f in stack if f.obj != "inlined")
        inner[owner, f"{first.symbol} ({part_of(first.obj)})"] += 1
    return Profile(kernel, parts, functions, inner)


def report(name: str, profile: Profile, cpu: CpuUse, top: int,
           detail: Sequence[str] = ()) -> str:
    """The lines for one target: user time by part and by function, µs/transaction; for
    each function in ``detail`` (``-``: the event loop), its time by innermost symbol."""
    scale = cpu.user / profile.user if profile.user else 0.0
    lines = [f"{name}: {cpu.user + cpu.kernel:.1f} us CPU per transaction: user {cpu.user:.1f}, "
             f"kernel {cpu.kernel:.1f} (user split by {profile.user} samples)"]
    for part, count in profile.parts.most_common():
        lines.append(f"  {part:<28} {count * scale:6.2f} us  {100 * count / profile.user:5.1f}%")
    if any(owner != "-" for owner in profile.functions):
        lines.append("  by the innermost proxy function on the stack:")
        for owner, count in profile.functions.most_common(top):
            label = owner if owner != "-" else "(no proxy frame: the event loop)"
            lines.append(f"    {count * scale:6.2f} us  {label}")
    for owner in detail:
        lines.append(f"  {owner if owner != '-' else 'the event loop'} by innermost symbol:")
        spent = Counter({symbol: count for (who, symbol), count in profile.inner.items()
                         if who == owner})
        for symbol, count in spent.most_common(top):
            lines.append(f"    {count * scale:6.2f} us  {symbol}")
    return "\n".join(lines)


# ---- running it ---------------------------------------------------------------------------


def _pgbench(env: dict[str, str], options: Sequence[str], seconds: int) -> int:
    """Run ``pgbench -n OPTIONS -T SECONDS``; the transactions it made."""
    done = subprocess.run(["pgbench", "-n", *options, "-T", str(seconds)],
                          env=env, capture_output=True, text=True, check=False)
    found = _PROCESSED.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"pgbench failed: {(done.stdout + done.stderr).strip()[-400:]}")
    return int(found.group(1))


def _times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` (/proc/PID/stat utime, stime)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def measure(pid: int, env: dict[str, str], options: Sequence[str], seconds: int) -> CpuUse:
    """CPU of ``pid`` per transaction while pgbench runs, without perf."""
    user0, kernel0 = _times(pid)
    transactions = max(_pgbench(env, options, seconds), 1)
    user1, kernel1 = _times(pid)
    return CpuUse(1e6 * (user1 - user0) / transactions, 1e6 * (kernel1 - kernel0) / transactions)


def sample(pid: int, env: dict[str, str], options: Sequence[str], seconds: int,
           out: Path) -> Profile:
    """Samples of ``pid`` (with stacks) while pgbench runs."""
    perf = subprocess.Popen(
        ["perf", "record", "-q", "-e", "cpu-clock", "-F", "2999", "--call-graph",
         "dwarf,16384", "-o", str(out), "-p", str(pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _pgbench(env, options, seconds)
    finally:
        perf.send_signal(signal.SIGINT)
        _, err = perf.communicate(timeout=120)
    if perf.returncode not in (0, -signal.SIGINT):
        raise RuntimeError(f"perf record failed: {err.decode(errors='replace').strip()[-400:]}")
    script = subprocess.run(["perf", "script", "-i", str(out)], capture_output=True,
                            text=True, errors="replace", check=False)
    return summarize(parse_samples(script.stdout))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_profile",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=None,
                        help="run pgtenant from this directory (an installed build, e.g. "
                             "the compiled wheel unpacked); default: this checkout")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--targets", default="pgtenant,pgbouncer")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--detail", default="",
                        help="functions (as reported, e.g. routing.BackendSession._write; "
                             "'-' for the event loop) to split by innermost symbol, "
                             "comma-separated")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--protocol", choices=("simple", "extended", "prepared"),
                        default="simple")
    args = parser.parse_args(argv)
    options = ["-S", "-c", str(args.clients), "-j", "2", "-M", args.protocol]
    if shutil.which("perf") is None or shutil.which("pgbench") is None:
        print("bench.cpu_profile: needs perf (Debian: linux-perf) and pgbench", file=sys.stderr)
        return 1
    # (Imported here: the parsing above is usable, and tested, without a database.)
    from bench import baseline
    from bench.database import prepare, tenant_names
    from bench.pgbouncer import PgbouncerTarget, ensure_pgbouncer
    from bench.pipe import PipeTarget
    from bench.targets import PgtenantTarget, ProcessTarget
    from proxy.devtools import EmbeddedPostgres

    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cpu-profile-")))
        work.chmod(0o755)  # PgBouncer runs as the postgres OS user when we are root
        pg = stack.enter_context(EmbeddedPostgres(
            settings={"max_connections": str(args.clients + 100)}))
        db = prepare(pg, scale=10, tenants=tenant_names(2), rows_per_tenant=100)
        targets: list[ProcessTarget] = []
        for name in names:
            if name == "pgbouncer":
                targets.append(PgbouncerTarget(db, work, binary=ensure_pgbouncer(),
                                               max_client_conn=args.clients + 100))
            elif name == "pipe":
                targets.append(PipeTarget(db, work))
            elif name == "pgtenant":
                version = None
                if args.tree is not None:
                    (work / "tree").mkdir()
                    version = baseline.prepare(str(args.tree), work / "tree")
                targets.append(PgtenantTarget(
                    db, work, name="pgtenant", pool_mode="transaction", pool_size=20,
                    max_client_conn=args.clients + 100, jwt_secret=secrets.token_urlsafe(48),
                    baseline=version))
            else:
                parser.error(f"unknown target {name!r} (pgtenant, pgbouncer, pipe)")
        for target in targets:
            stack.callback(target.stop)
            target.start()
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("PG")},
                   **target.conninfo("tenant1").env()}
            _pgbench(env, options, 2)  # warm the pool
            pid = target.proxy_pids()[0]
            cpu = measure(pid, env, options, args.seconds)
            profile = sample(pid, env, options, args.seconds, work / f"{target.name}.perf")
            detail = [f.strip() for f in args.detail.split(",") if f.strip()]
            print(report(target.name, profile, cpu, args.top, detail), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
