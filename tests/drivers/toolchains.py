"""What the node-postgres and pgJDBC tests need beyond Python, and where it is found.

Node.js/npm and a JDK are system packages (Debian: ``nodejs npm default-jdk-headless``).
Everything else ``./dev test`` fetches itself, without root, by running this module first:

- the node packages: ``npm ci`` in tests/drivers/node and in examples/nestjs-prisma (the
  latter with ``--ignore-scripts``: Prisma's install scripts would download Rust engines
  from binaries.prisma.sh, which its client does not need), again only when a
  package-lock.json changed (a stamp in node_modules remembers the lock it installed);
- the pgJDBC jar: Debian's ``libpostgresql-jdbc-java`` (the driver the distribution
  ships), downloaded with ``apt-get download`` and unpacked into ``.venv/drivers``.

The tests find the jar in ``$PGTENANT_JDBC_JAR``, the system location or that cache. A
missing toolchain skips its tests (tests/drivers/conftest.py), one summary line per file
saying what to install, except in CI (``CI=true``), where they run and fail: CI never
passes on tests that did not run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Resolved like ROOT: ./dev test-compiled runs from a tree whose tests/ is a symlink.
NODE_DIR = Path(__file__).resolve().parent / "node"
STAMP_NAME = ".pgtenant-package-lock"
NESTJS_DIR = ROOT / "examples" / "nestjs-prisma"
SYSTEM_JAR = Path("/usr/share/java/postgresql.jar")
CACHED_JAR = ROOT / ".venv" / "drivers" / "postgresql.jar"
JDBC_PACKAGE = "libpostgresql-jdbc-java"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def jdbc_jar() -> Path | None:
    """The pgJDBC jar the tests compile against, or None."""
    configured = os.environ.get("PGTENANT_JDBC_JAR")
    if configured:
        return Path(configured)
    return next((jar for jar in (SYSTEM_JAR, CACHED_JAR) if jar.is_file()), None)


def jdbc_missing() -> str | None:
    """What the pgJDBC tests lack here (what to install), or None."""
    if not (shutil.which("javac") and shutil.which("java")):
        return "pgJDBC tests need a JDK (Debian: apt-get install default-jdk-headless)"
    jar = jdbc_jar()
    if jar is None or not jar.is_file():
        return (f"pgJDBC jar missing: `./dev test` fetches it ({JDBC_PACKAGE}) into "
                f"{CACHED_JAR.parent}; or set PGTENANT_JDBC_JAR")
    return None


def node_missing() -> str | None:
    """What the node-postgres tests lack here (what to install), or None."""
    if not shutil.which("node"):
        return "node-postgres tests need Node.js (Debian: apt-get install nodejs npm)"
    if not node_packages_current():
        return (f"node packages missing or stale in {NODE_DIR}: `./dev test` runs `npm ci` "
                "there (needs npm and the npm registry)")
    return None


def nestjs_missing() -> str | None:
    """What the NestJS + Prisma example's test lacks here (what to install), or None."""
    if not (shutil.which("node") and shutil.which("npm")):
        return ("the NestJS + Prisma example needs Node.js and npm "
                "(Debian: apt-get install nodejs npm)")
    if not node_packages_current(NESTJS_DIR):
        return (f"node packages missing or stale in {NESTJS_DIR}: `./dev test` runs `npm ci` "
                "there (needs npm and the npm registry)")
    return None


def require(missing: str | None) -> None:
    """Fail a driver test whose toolchain is missing. Only CI gets here with one missing:
    elsewhere tests/drivers/conftest.py has skipped those tests at collection."""
    if missing:
        pytest.fail(missing, pytrace=False)


def jdk_and_jar() -> tuple[str, str, Path]:
    """``(javac, java, pgJDBC jar)`` for the pgJDBC tests."""
    require(jdbc_missing())
    javac, java, jar = shutil.which("javac"), shutil.which("java"), jdbc_jar()
    assert javac and java and jar
    return javac, java, jar


def node() -> str:
    """The ``node`` binary, with the scenarios' packages installed."""
    require(node_missing())
    binary = shutil.which("node")
    assert binary
    return binary


def node_and_npm() -> tuple[str, str]:
    """``(node, npm)`` for the NestJS + Prisma example, its packages installed."""
    require(nestjs_missing())
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm
    return node, npm


def lock_digest(directory: Path = NODE_DIR) -> str:
    return hashlib.sha1((directory / "package-lock.json").read_bytes()).hexdigest()


def node_packages_current(directory: Path = NODE_DIR) -> bool:
    stamp = directory / "node_modules" / STAMP_NAME
    return stamp.is_file() and stamp.read_text().strip() == lock_digest(directory)


# ---- bootstrap (python -m tests.drivers.toolchains, run by ./dev test) -----------------

def install_node_packages(directory: Path = NODE_DIR, *extra_args: str) -> None:
    npm = shutil.which("npm")
    if npm is None or node_packages_current(directory):
        return  # no npm: the node tests say what to install
    where = directory.relative_to(ROOT)
    print(f"driver tests: npm ci in {where} (first run, or package-lock.json changed)",
          file=sys.stderr)
    done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error",
                           *extra_args],
                          cwd=directory, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        print(f"driver tests: npm ci in {where} failed: {_last_line(done)}", file=sys.stderr)
        return
    (directory / "node_modules" / STAMP_NAME).write_text(lock_digest(directory) + "\n")


def fetch_jdbc_jar() -> None:
    """Debian's pgJDBC jar into .venv/drivers: `apt-get download` needs no root."""
    if jdbc_jar() is not None or not shutil.which("javac"):
        return  # found already, or no JDK to use it with (the tests say what to install)
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        print("driver tests: no apt-get here to fetch pgJDBC; set PGTENANT_JDBC_JAR to a "
              "pgJDBC jar", file=sys.stderr)
        return
    print(f"driver tests: fetching pgJDBC ({JDBC_PACKAGE}) into {CACHED_JAR.parent}",
          file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(["apt-get", "download", "-q", JDBC_PACKAGE], cwd=tmp,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              check=False)
        debs = list(Path(tmp).glob("*.deb"))
        if done.returncode != 0 or not debs:
            print(f"driver tests: apt-get download failed: {_last_line(done)}",
                  file=sys.stderr)
            return
        unpacked = Path(tmp) / "root"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], check=True)
        CACHED_JAR.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(unpacked / SYSTEM_JAR.relative_to("/"), CACHED_JAR)


def _last_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit code {done.returncode}"


if __name__ == "__main__":
    install_node_packages()
    install_node_packages(NESTJS_DIR, "--ignore-scripts")
    fetch_jdbc_jar()
