"""Another version of pgtenant measured in the same run (``--baseline REV_OR_PATH``).

The baseline is either a git revision of this repository, exported with ``git archive``
into the run's temporary directory, or the path of another checkout. Its ``pgtenant
serve`` runs with this harness's Python and virtualenv (same dependencies), with the
baseline's directory first on ``sys.path`` and as the working directory, so that its
``proxy`` and ``policies`` packages are imported instead of the installed ones (and the
worker processes of ``[server] workers``, started with ``python -m proxy.cli``, import
them from the working directory too).

Which ``proxy`` package a child really imported is checked, not assumed: the bootstrap
prints ``proxy.__file__`` and refuses to serve from anywhere else, a preflight runs it
before the cluster starts, and the harness reads the line back after every start.

Every pgtenant target starts through the same bootstrap, the current ones with this
checkout as their directory: current and baseline differ only in the code they load.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.environment import REPO, git_revision

#: Target names ending in this run the baseline's pgtenant: ``pgtenant-transaction@base``.
BASE_SUFFIX = "@base"
#: The line the bootstrap writes to the proxy's log; the rest of the line is the path.
IMPORT_MARKER = "pgtenant-bench: proxy imported from "
_PREFLIGHT_TIMEOUT = 120.0

# Run as ``python -c BOOTSTRAP SOURCE ARGS...``: import ``proxy`` from SOURCE, say where
# from, then run ``proxy.cli`` as ``python -m proxy.cli ARGS...`` would.
BOOTSTRAP = f"""\
import os, runpy, sys
source = os.path.realpath(sys.argv[1])
sys.path.insert(0, source)
import proxy
where = os.path.realpath(proxy.__file__)
print({IMPORT_MARKER!r} + where, file=sys.stderr, flush=True)
if not where.startswith(source + os.sep):
    sys.exit(f"pgtenant-bench: proxy is {{where}}, not under {{source}}: refused")
sys.argv = [os.path.join(source, "proxy", "cli.py"), *sys.argv[2:]]
runpy.run_module("proxy.cli", run_name="__main__", alter_sys=True)
"""


class BaselineError(RuntimeError):
    """The baseline cannot be prepared, or a pgtenant target does not run the code it
    should: the run stops."""


@dataclass(frozen=True, slots=True)
class Baseline:
    """The version of pgtenant the ``@base`` targets run."""

    spec: str  # as given to --baseline
    source: Path  # the directory whose proxy/ package runs
    revision: str  # commit (and subject) or the checkout's revision
    exported: bool  # True: a git revision exported into the run's temporary directory

    def describe(self) -> dict[str, object]:
        return {"spec": self.spec, "revision": self.revision,
                "source": "git archive" if self.exported else str(self.source)}


def base_name(target: str) -> str:
    """``pgtenant-transaction`` -> ``pgtenant-transaction@base``."""
    return target + BASE_SUFFIX


def is_base(target: str) -> bool:
    return target.endswith(BASE_SUFFIX)


def current_name(target: str) -> str:
    """``pgtenant-transaction@base`` -> ``pgtenant-transaction``."""
    return target.removesuffix(BASE_SUFFIX)


def _git(*args: str, repo: Path = REPO) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, timeout=120,
                          check=False, stdin=subprocess.DEVNULL,
                          env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})


def locate(spec: str, repo: Path = REPO) -> Path | str:
    """What ``spec`` names: an existing directory (a checkout with a proxy/ package), else
    a git revision of ``repo``, returned as its full commit id."""
    if not spec.strip():
        raise BaselineError("--baseline needs a git revision or a directory")
    path = Path(spec).expanduser()
    if path.is_dir():
        source = path.resolve()
        if not (source / "proxy" / "__init__.py").is_file():
            raise BaselineError(f"--baseline {spec}: {source} has no proxy/ package")
        return source
    resolved = _git("rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}", repo=repo)
    if resolved.returncode != 0:
        raise BaselineError(f"--baseline {spec}: neither a directory nor a git revision "
                            f"of {repo}")
    return resolved.stdout.decode().strip()


def prepare(spec: str, workdir: Path, repo: Path = REPO) -> Baseline:
    """Make the source ``spec`` names available (see :func:`locate`); a revision is
    exported into ``workdir/baseline`` (removed with ``workdir``). Checks with
    :func:`preflight` that it runs its own code."""
    found = locate(spec, repo)
    if isinstance(found, Path):
        baseline = Baseline(spec, found, git_revision(found), exported=False)
    else:
        commit = found
        archive = _git("archive", "--format=tar", commit, repo=repo)
        if archive.returncode != 0:
            raise BaselineError(f"--baseline {spec}: git archive failed: "
                                f"{archive.stderr.decode(errors='replace').strip()}")
        source = workdir / "baseline"
        source.mkdir()
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(source, filter="data")
        subject = _git("log", "-1", "--format=%s", commit, repo=repo).stdout.decode().strip()
        baseline = Baseline(spec, source, f"{commit[:12]} {subject[:72]}".strip(),
                            exported=True)
    preflight(baseline)
    return baseline


def serve_argv(source: Path, args: Sequence[str]) -> list[str]:
    """The command line that runs ``pgtenant ARGS`` from ``source`` (run it with ``source``
    as the working directory)."""
    return [sys.executable, "-c", BOOTSTRAP, str(source), *args]


def serve_env(base: dict[str, str]) -> dict[str, str]:
    """The environment for a pgtenant process: without PYTHONSAFEPATH, which would keep
    ``python -m`` (the workers) from putting the working directory first on sys.path."""
    return {k: v for k, v in base.items() if k != "PYTHONSAFEPATH"}


def imported_from(output: str) -> str | None:
    """The path the bootstrap reported last in ``output`` (a log), or None."""
    found = None
    for line in output.splitlines():
        if line.startswith(IMPORT_MARKER):
            found = line[len(IMPORT_MARKER):].strip()
    return found


def verify(source: Path, output: str, what: str) -> str:
    """Raise BaselineError unless ``output`` shows ``proxy`` imported from ``source``."""
    where = imported_from(output)
    root = os.path.realpath(source) + os.sep
    if where is None or not where.startswith(root):
        raise BaselineError(
            f"{what} did not run the code it should: proxy imported from {where or '?'}, "
            f"expected under {root}"
        )
    return where


def preflight(baseline: Baseline) -> None:
    """Run ``pgtenant --help`` from the baseline: it must import the baseline's ``proxy``
    (and everything its command line needs) with this Python."""
    done = subprocess.run(serve_argv(baseline.source, ["--help"]), cwd=baseline.source,
                          env=serve_env(dict(os.environ)), capture_output=True, text=True,
                          timeout=_PREFLIGHT_TIMEOUT, check=False, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise BaselineError(f"--baseline {baseline.spec}: 'pgtenant --help' failed "
                            f"(exit {done.returncode}): {done.stderr.strip()[-600:]}")
    verify(baseline.source, done.stderr, f"--baseline {baseline.spec}")
