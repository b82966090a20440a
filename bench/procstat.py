"""CPU time and resident memory of process trees, read from /proc (Linux only).

CPU of a tree = each live process's utime + stime, plus cutime + cstime: the time of
children that already exited and were reaped. A postmaster reaps its backends, so the
CPU of backends that came and went during a connection storm is still counted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

_PROC = Path("/proc")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may hold spaces)."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None  # the process is gone
    return raw[raw.rindex(")") + 2 :].split()


def _parents() -> dict[int, int]:
    """pid -> parent pid for every process we can see."""
    parents: dict[int, int] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            parents[int(entry.name)] = int(fields[1])
    return parents


def process_tree(pids: Iterable[int]) -> list[int]:
    """``pids`` and all their live descendants."""
    roots = list(pids)
    if not roots:
        return []
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    tree: list[int] = []
    pending = roots
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, ()))
    return tree


def cpu_seconds(pids: Iterable[int]) -> float:
    """CPU seconds (user + system, reaped children included) of the trees under ``pids``."""
    ticks = 0
    for pid in process_tree(pids):
        fields = _stat_fields(pid)
        if fields is not None:
            # utime, stime, cutime, cstime: fields 14-17 of stat, 11-14 after the name.
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / _CLOCK_TICKS


def rss_bytes(pids: Iterable[int]) -> int:
    """Resident memory of the trees under ``pids`` (sum of each process's RSS)."""
    total = 0
    for pid in process_tree(pids):
        try:
            resident_pages = int((_PROC / str(pid) / "statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        total += resident_pages * _PAGE_SIZE
    return total
