"""Dependencies point one way: each package imports only what lies below it.

Every ``import`` in ``proxy/`` and ``policies/`` is read with :mod:`ast` (module level,
inside functions and under ``TYPE_CHECKING`` alike: a type-only import is still a
dependency) and checked against :data:`RULES`, a table of package -> what it must not
import. To fence a new layer in, add one :class:`Rule` line.

Import cycles are held to :data:`KNOWN_CYCLES`: a new one fails, and so does one that
was broken but is still listed (remove it from the list then).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TOP_PACKAGES = ("proxy", "policies")


@dataclass(frozen=True)
class Rule:
    """Modules under ``package`` must not import anything under a ``forbidden`` prefix,
    except what lies under an ``allowed`` prefix or in the module's own subpackage
    (``proxy.wire.framing`` may always import ``proxy.wire.*``). ``exempt`` modules
    (and their submodules) are not checked by this rule."""

    package: str
    forbidden: tuple[str, ...]
    why: str
    allowed: tuple[str, ...] = ()
    exempt: tuple[str, ...] = ()


# The app and its own modules (cancel forwarding, ending clients after their transaction).
_APP = ("proxy.app", "proxy.cancel", "proxy.draining")
# The layers above the sans-I/O parts, for rules that say "nothing from up there".
_UPPER = ("proxy.backend", "proxy.pool", "proxy.placement", "proxy.frontend", "proxy.admin",
          *_APP, "proxy.metrics", "proxy.supervisor", "proxy.cli", "proxy.devtools")
# What sits above the pools: the client side and the process around it.
_ABOVE_POOLS = ("proxy.frontend", "proxy.admin", *_APP, "proxy.metrics",
                "proxy.supervisor", "proxy.cli", "proxy.devtools", "policies")

RULES = (
    Rule("proxy.wire", ("proxy", "policies"),
         "the sans-I/O protocol is the bottom layer: it imports nothing of the proxy"),
    Rule("proxy.config", ("proxy", "policies"),
         "loading the config needs nothing of the proxy (auth, guard, ... read it)"),
    Rule("proxy.tenancy", ("proxy", "policies"),
         "tenancy helpers (the proof) sit below both the proxy and policies"),
    Rule("proxy.backend", ("proxy.pool", "proxy.placement", *_ABOVE_POOLS),
         "a server connection knows nothing of the pool that owns it or of clients"),
    Rule("proxy.pool", ("proxy.placement", *_ABOVE_POOLS),
         "pools lend server connections; they know no client"),
    Rule("proxy.auth", (*_UPPER, "proxy.guard", "policies"),
         "authentication is below the connections that use it"),
    Rule("proxy.guard", (*_UPPER, "proxy.auth", "policies"),
         "the SQL guard judges statements; it knows nothing of connections or pools"),
    Rule("proxy.frontend", ("proxy.admin", *_APP, "proxy.metrics", "proxy.supervisor",
                            "proxy.cli", "proxy.devtools", "policies"),
         "a client connection reaches the proxy through ClientHost/LoginHost, the admin "
         "console through the host: it imports neither"),
    Rule("proxy.admin", ("proxy.cli", "proxy.devtools", "policies"),
         "the admin console is reached from the proxy, never the other way"),
    Rule("proxy.metrics", ("proxy.admin", "proxy.cli", "proxy.devtools", "policies"),
         "metrics read the proxy's state and nothing else"),
    Rule("proxy.devtools", ("proxy.cli",),
         "the dev tooling is started by the command line, never imports it back"),
    Rule("proxy", ("policies", "proxy.devtools"),
         "the proxy never imports the database tooling or the dev tooling; only the "
         "command line (the composition root) wires them in",
         exempt=("proxy.cli",)),
    Rule("policies", ("proxy",),
         "policies/ installs what the proxy relies on; of the proxy it needs only the "
         "tenancy helpers and the config types",
         allowed=("proxy.tenancy", "proxy.config")),
)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _module_names() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for top in TOP_PACKAGES:
        for path in sorted((REPO_ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = _module_names()


def _resolve(name: str) -> str | None:
    """The longest known module ``name`` lies in (``proxy.config.Config`` -> ``proxy.config``)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


@functools.cache
def imports_of(module: str) -> tuple[tuple[int, str], ...]:
    """``(line, imported module)`` for every import of a project module in ``module``."""
    return tuple(_imports(module))


def _imports(module: str) -> Iterator[tuple[int, str]]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from proxy.admin import control` imports the module proxy.admin.control.
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                yield node.lineno, target


# Cycles that remain: the client and the process around it (proxy/frontend/client.py,
# proxy/app.py, the admin console and metrics). The server side, the pools and placement
# are out of every cycle.
KNOWN_CYCLES = {
    "package": [
        # admin.console, admin.session -> app [TC]; app -> admin, metrics, supervisor [TC];
        # metrics.* -> app [TC]; supervisor -> admin.cluster, admin.control,
        # metrics.aggregate.
        {"proxy.admin", "proxy.app", "proxy.metrics", "proxy.supervisor"},
    ],
    "module": [
        {"proxy.admin.console", "proxy.admin.session", "proxy.app", "proxy.metrics.aggregate",
         "proxy.metrics.collector", "proxy.metrics.http", "proxy.supervisor"},
    ],
}


def _subpackage(module: str) -> str:
    return ".".join(module.split(".")[:2])


def violations(rule: Rule) -> list[str]:
    found: set[str] = set()
    for module in MODULES:
        if not _under(module, rule.package):
            continue
        if any(_under(module, e) for e in rule.exempt):
            continue
        for line, target in imports_of(module):
            if _under(target, _subpackage(module)):
                continue
            if any(_under(target, a) for a in rule.allowed):
                continue
            if any(_under(target, f) for f in rule.forbidden):
                found.add(f"{MODULES[module].relative_to(REPO_ROOT)}:{line} imports {target}")
    return sorted(found)


@pytest.mark.parametrize("rule", RULES, ids=[r.package for r in RULES])
def test_dependencies_point_one_way(rule: Rule) -> None:
    found = violations(rule)
    assert not found, f"{rule.package}: {rule.why}\n" + "\n".join(found)


def import_cycles(level: str) -> list[set[str]]:
    """Strongly connected components of the import graph (type-only imports included),
    between modules or between subpackages (``proxy.admin``, ``proxy.app``, ...)."""
    node = (lambda m: m) if level == "module" else _subpackage
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        for _, target in imports_of(module):
            if node(module) != node(target):
                graph.setdefault(node(module), set()).add(node(target))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


@pytest.mark.parametrize("level", ["package", "module"])
def test_no_new_import_cycles(level: str) -> None:
    found = sorted(sorted(c) for c in import_cycles(level))
    known = sorted(sorted(c) for c in KNOWN_CYCLES[level])
    assert found == known, (
        f"{level} import cycles changed; found {found}: fix a new cycle, or remove a "
        "broken one from KNOWN_CYCLES")


def test_every_rule_names_an_existing_package() -> None:
    # A renamed package must not leave a rule that silently checks nothing.
    for rule in RULES:
        assert rule.package in MODULES, rule.package
        for prefix in (*rule.allowed, *rule.exempt):
            assert prefix in MODULES, f"{rule.package}: {prefix} does not exist"


def test_the_checker_sees_every_kind_of_import() -> None:
    def targets(module: str) -> set[str]:
        return {target for _, target in imports_of(module)}

    # `from proxy.admin import control` names the module, not the package.
    assert "proxy.admin.control" in targets("proxy.admin.cluster")
    # Imports inside functions (the command line's lazy ones) count.
    assert {"proxy.devtools.demo", "proxy.supervisor", "policies.cli"} <= targets("proxy.cli")
    # So do imports under TYPE_CHECKING.
    assert "proxy.app" in targets("proxy.metrics.http")


# Where the tenant is set and where a server goes back: one place each (proxy/pool/lease.py).
# Calls by method name, anywhere in proxy/: only the lease makes them.
LEASE_ONLY_CALLS = ("apply_context", "adopt_context", "take_back", "resume_kept")
# Server fields only the server's own named methods assign (the session's state in
# session_state.py, the context set in server.py).
SERVER_OWN_FIELDS = ("tenant_state", "session_dirty", "owner")
SERVER_MODULES = ("proxy.backend.session_state", "proxy.backend.server")


def _calls_and_assignments(module: str) -> Iterator[tuple[str, int, str]]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            yield "call", node.lineno, node.func.attr
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Attribute):
                yield "assign", node.lineno, target.attr


def test_only_the_lease_sets_the_tenant_and_gives_a_server_back() -> None:
    found = []
    for module in MODULES:
        if not _under(module, "proxy"):
            continue
        for kind, line, name in _calls_and_assignments(module):
            if kind == "call" and name in LEASE_ONLY_CALLS and module != "proxy.pool.lease":
                found.append(f"{module}:{line} calls {name}")
            if (kind == "assign" and name in SERVER_OWN_FIELDS
                    and module not in SERVER_MODULES):
                found.append(f"{module}:{line} assigns {name}")
    assert not found, "\n".join(found)
    assert "proxy.pool.pool" not in {t for _, t in imports_of("proxy.pool.lease")}
