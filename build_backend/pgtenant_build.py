"""pgtenant's PEP 517 build backend: setuptools, plus mypyc for a compiled wheel.

``pip install .`` (a wheel) compiles the modules listed in ``proxy/build.py`` with mypyc,
so only that build asks for mypy; an editable install (``pip install -e .``, what ``./dev``
uses) and an sdist never do. ``setup.py`` makes the same decision with
:func:`compile_wanted`, so a wheel comes out pure when compiling is switched off
(``PGTENANT_PURE=1``) or no C compiler is found. See ``docs/building.md``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 - every other hook is setuptools' own

# What mypyc needs on top of setuptools. mypy type-checks the compiled modules again
# during the build (with the [tool.mypy] settings), so it also needs pgtenant's own
# dependencies to see the same types as `./dev lint`; they are read from pyproject.toml.
# mypyc's release is the one the compiled build was tested with (both suites green): a
# newer one may check more strictly or generate different code, so raise it on purpose.
MYPYC_REQUIRES = ["mypy[mypyc]>=2.4,<2.5"]


def compile_wanted() -> tuple[bool, str]:
    """Whether this wheel build compiles, and why (printed by ``setup.py``)."""
    if os.environ.get("PGTENANT_PURE", "").strip() not in ("", "0"):
        return False, "PGTENANT_PURE is set"
    if sys.implementation.name != "cpython":
        return False, f"{sys.implementation.name} is not CPython"
    compiler = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    if not compiler or shutil.which(compiler[0]) is None:
        return False, "no C compiler found"
    include = sysconfig.get_paths().get("include", "")
    if not Path(include, "Python.h").is_file():
        return False, f"no Python headers ({include}/Python.h)"
    return True, f"C compiler {compiler[0]}"


def _project_dependencies() -> list[str]:
    import tomllib

    with open("pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    requires = list(_setuptools.get_requires_for_build_wheel(config_settings))
    if compile_wanted()[0]:
        requires += MYPYC_REQUIRES + _project_dependencies()
    return requires
