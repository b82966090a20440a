"""Which build of pgtenant is running: compiled with mypyc, or pure Python.

``pip install .`` compiles the modules in :data:`COMPILED_MODULES` with mypyc when a C
compiler is present (``setup.py`` reads the list from this file, so it is kept in one
place); an editable install, ``PGTENANT_PURE=1`` or a machine without a compiler gives
the same modules as plain Python. Both builds run the same typed source and pass the same
tests (``docs/building.md``). The proxy logs which one runs and exports it as
``pgtenant_build_info{compiled=...}``.

This module imports only the standard library: ``setup.py`` executes it before pgtenant's
dependencies are installed.
"""

from __future__ import annotations

import importlib
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_extensions import mypyc_attr as mypyc_attr
else:
    def mypyc_attr(*attrs, **kwattrs):
        """mypyc reads ``@mypyc_attr(...)`` on a class from the source (a compiled class
        never applies it); at run time it does nothing, so the proxy does not need
        mypy_extensions installed. Mypy checks the real one."""
        return lambda cls: cls

# The hot modules: per message (wire), per statement (guard, session helpers), per
# transaction (stats, the client and server connections, the pool) and per connection
# (the client's login). The app, admin, metrics and startup-only code stay interpreted;
# add a module here to compile it.
# Traps to avoid in a compiled module: an interpreted subclass of a compiled class
# (unless the class says @mypyc_attr(allow_interpreted_subclasses=True)),
# tests that monkeypatch a compiled class's methods, class-level defaults on Exception
# subclasses (use ClassVar), sibling ``except A as e`` / ``except B as e`` of
# different types binding one name.
COMPILED_MODULES: tuple[str, ...] = (
    "proxy.config.model",
    "proxy.wire.errors",
    "proxy.wire.tags",
    "proxy.wire.framing",
    "proxy.wire.startup",
    "proxy.wire.messages",
    "proxy.wire.authentication",
    "proxy.guard.verdict",
    "proxy.guard.prefilter",
    "proxy.guard.policy",
    "proxy.guard.statements",
    "proxy.guard.findings",
    "proxy.guard.parse_tree",
    "proxy.guard.analysis",
    "proxy.guard.guard",
    "proxy.backend.statements",
    "proxy.backend.deallocate",
    "proxy.backend.prepared",
    "proxy.backend.verification",
    "proxy.backend.context",
    "proxy.backend.replies",
    "proxy.frontend.guarding",
    "proxy.stats",
    "proxy.backend.session_state",
    "proxy.backend.routing",
    "proxy.backend.server",
    "proxy.frontend.requests",
    "proxy.frontend.interfaces",
    "proxy.frontend.first_server",
    "proxy.frontend.login",
    "proxy.frontend.leasing",
    "proxy.frontend.named_statements",
    "proxy.frontend.relay",
    "proxy.frontend.client",
    "proxy.pool.counters",
    "proxy.pool.lease",
    "proxy.pool.selection",
    "proxy.pool.waits",
    "proxy.pool.servers",
    "proxy.pool.pool",
)

# The module whose file tells the build apart: the framer runs on every client message.
_PROBE = "proxy.wire.framing"


def is_compiled_module(name: str) -> bool:
    """Whether the module ``name`` was loaded from a native extension (``.so``/``.pyd``)."""
    module = sys.modules.get(name) or importlib.import_module(name)
    path = getattr(module, "__file__", None) or ""
    return path.endswith(tuple(EXTENSION_SUFFIXES))


def compiled() -> bool:
    """Whether this process runs the mypyc-compiled build."""
    return is_compiled_module(_PROBE)


def describe() -> str:
    """One phrase for the start-up log line."""
    return "compiled (mypyc)" if compiled() else "pure Python"


def main(argv: list[str]) -> int:
    """``python -m proxy.build [--require-compiled]``: print which build is imported (and
    from where); with ``--require-compiled``, fail unless every listed module is compiled."""
    pure = [name for name in COMPILED_MODULES if not is_compiled_module(name)]
    package = sys.modules["proxy"].__file__
    print(f"pgtenant {describe()} build, imported from {package}")
    if "--require-compiled" in argv and pure:
        print(f"not compiled: {', '.join(pure)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
