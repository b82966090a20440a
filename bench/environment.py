"""The machine and software a run measured on, for the report's header."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path

from proxy.devtools import find_bindir

REPO = Path(__file__).resolve().parent.parent


def _first_line(argv: list[str], env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False,
                              stdin=subprocess.DEVNULL, env=env)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def git_revision(repo: Path = REPO) -> str:
    """The checkout's short commit, noting uncommitted changes under proxy/."""
    # Read-only git: GIT_OPTIONAL_LOCKS=0 keeps `status` from refreshing the index.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        found = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                               capture_output=True, text=True, timeout=10, check=False,
                               env=env, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if found.returncode != 0:  # e.g. an unpacked wheel given as --baseline
        return "not a git checkout"
    revision = found.stdout.strip()
    try:
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "proxy"],
            capture_output=True, text=True, timeout=10, check=False, env=env,
            stdin=subprocess.DEVNULL,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        dirty = ""
    return f"{revision} + uncommitted changes in proxy/" if dirty else revision


def _uvloop_version() -> str:
    try:
        import uvloop
    except ImportError:
        return "not installed (stock asyncio loop)"
    return str(getattr(uvloop, "__version__", "installed"))


def proxy_source_fingerprint() -> str:
    """A short hash of proxy/*.py: pgtenant restarted mid-run loads whatever is there then."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "proxy").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode())
        try:
            digest.update(path.read_bytes())
        except OSError:
            continue
    return digest.hexdigest()[:12]


def describe_machine() -> dict[str, object]:
    """Hostname, CPU, memory, kernel and the versions of everything measured."""
    return {
        "hostname": platform.node(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "postgresql": _first_line([str(find_bindir() / "postgres"), "--version"]),
        "pgbench": _first_line(["pgbench", "--version"]),
        "python": sys.version.split()[0],
        "uvloop": _uvloop_version(),
        "pgtenant": git_revision(),
        "pgtenant_source": proxy_source_fingerprint(),
    }
