"""What the machine provides for a throwaway cluster: server binaries, an OS user, a port.

:func:`find_bindir` locates ``initdb`` and ``postgres``; :func:`server_account` names the
unprivileged OS user the server runs as when we are root (PostgreSQL refuses root);
:func:`free_port` asks the kernel for a free TCP port.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
from pathlib import Path

_SERVER_OS_USER = "postgres"
_DEBIAN_BINDIRS = Path("/usr/lib/postgresql")


class EmbeddedPostgresError(RuntimeError):
    """The cluster could not be created, started or stopped; the message says why."""



def find_bindir() -> Path:
    """Return the directory holding ``initdb`` and ``postgres``.

    Looked up in order: ``$PGTENANT_PG_BINDIR``, ``pg_config --bindir``, the newest
    ``/usr/lib/postgresql/*/bin`` (Debian/Ubuntu layout), then ``PATH``.
    """
    configured = os.environ.get("PGTENANT_PG_BINDIR")
    if configured:
        if _has_server_binaries(Path(configured)):
            return Path(configured)
        raise EmbeddedPostgresError(
            f"PGTENANT_PG_BINDIR={configured} does not contain executable initdb and postgres"
        )
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            done = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError):
            pass  # a broken pg_config is not fatal: the other places may still have a server
        else:
            # On Debian, pg_config comes with libpq-dev and may name a server that is not installed.
            if _has_server_binaries(Path(done.stdout.strip())):
                return Path(done.stdout.strip())
    versioned = sorted(
        (bindir for bindir in _DEBIAN_BINDIRS.glob("*/bin") if _has_server_binaries(bindir)),
        key=lambda bindir: _version_key(bindir.parent.name),
        reverse=True,
    )
    if versioned:
        return versioned[0]
    initdb = shutil.which("initdb")
    if initdb and _has_server_binaries(Path(initdb).parent):
        return Path(initdb).parent
    raise EmbeddedPostgresError(
        "PostgreSQL server binaries (initdb, postgres) not found in $PGTENANT_PG_BINDIR, "
        "pg_config --bindir, /usr/lib/postgresql/*/bin or PATH; install them "
        "(Debian/Ubuntu: apt-get install postgresql) or set PGTENANT_PG_BINDIR"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def server_account() -> tuple[int, int] | None:
    """(uid, gid) of the OS user PostgreSQL runs as when we are root, else None."""
    if os.geteuid() != 0:
        return None
    try:
        account = pwd.getpwnam(_SERVER_OS_USER)
    except KeyError:
        raise EmbeddedPostgresError(
            f"PostgreSQL refuses to run as root and there is no {_SERVER_OS_USER!r} OS user to "
            f"run it as: install the server package (it creates one), "
            f"run `useradd --system {_SERVER_OS_USER}`, or run as an unprivileged user"
        ) from None
    return account.pw_uid, account.pw_gid


def server_environment() -> dict[str, str]:
    """The environment the server programs run with."""
    # libpq-style PG* variables (PGDATA, PGPORT, ...) must not steer the throwaway server.
    return {name: value for name, value in os.environ.items() if not name.startswith("PG")}


def _has_server_binaries(bindir: Path) -> bool:
    return all(os.access(bindir / program, os.X_OK) for program in ("initdb", "postgres"))


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name)) or (-1,)

