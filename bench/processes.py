"""The harness's child processes: started in their own session, killed with the harness.

PostgreSQL, pgtenant, PgBouncer and the pgbench clients all run as children of the
benchmark; these helpers start them so that a Ctrl-C or a killed harness leaves none
behind, stop them with a deadline, and read the end of their logs for error messages.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import IO

log = logging.getLogger("pgtenant.bench.targets")

_STOP_TIMEOUT = 10.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: be killed if the harness dies without cleaning up."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    stdout: IO[bytes] | int | None = None,
    stderr: IO[bytes] | int | None = None,
    cwd: Path | None = None,
    as_user: tuple[int, int] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child in its own session (a terminal's Ctrl-C is for the harness, which
    stops its children itself) that dies if the harness is killed."""
    return subprocess.Popen(
        argv,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=_die_with_parent,  # safe: the harness runs no threads
        user=as_user[0] if as_user else None,
        group=as_user[1] if as_user else None,
        extra_groups=[] if as_user else None,
    )


def terminate(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal ``process`` (and its process group), wait, then kill what is left."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("pid %d ignored signal %d; killing it", process.pid, sig)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
    # Stragglers of its session (e.g. worker processes) go too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty log)"
