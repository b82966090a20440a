"""Builds pgtenant; a wheel compiles the hot modules with mypyc (``docs/building.md``).

Everything else (metadata, packages, package data) is in ``pyproject.toml``. The modules
to compile are listed once, in ``proxy/build.py``; whether to compile is decided by
``build_backend/pgtenant_build.py``: never for an editable install, not with
``PGTENANT_PURE=1`` or without a C compiler.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "build_backend"))
from pgtenant_build import compile_wanted  # noqa: E402


def _ext_modules() -> list[object]:
    if any(cmd in sys.argv for cmd in ("editable_wheel", "develop")):
        return []  # editable: the source tree itself is imported, as plain Python
    if not any(cmd in sys.argv for cmd in ("bdist_wheel", "build", "build_ext", "install")):
        return []  # metadata only (egg_info, dist_info, sdist): nothing to compile
    wanted, why = compile_wanted()
    if not wanted:
        print(f"pgtenant: building pure Python ({why})", file=sys.stderr)
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("pgtenant: building pure Python (mypy[mypyc] is not installed)", file=sys.stderr)
        return []
    modules = runpy.run_path(str(HERE / "proxy" / "build.py"))["COMPILED_MODULES"]
    paths = [m.replace(".", "/") + ".py" for m in modules]
    print(f"pgtenant: compiling {len(paths)} modules with mypyc ({why})", file=sys.stderr)
    # mypy's cache of its own under build/ (which ./dev test-compiled removes first): in the
    # shared .mypy_cache, entries `./dev lint` wrote could make the build compile a stale
    # copy of a changed module (seen: the old body of a function in the wheel).
    cache = f"--cache-dir={HERE / 'build' / 'mypyc-cache'}"
    return mypycify([cache, *paths], opt_level="3", debug_level="0")


setup(ext_modules=_ext_modules())
