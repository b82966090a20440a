"""The two builds (docs/building.md): which one runs, how it is reported, and when the
wheel build asks for mypyc. ``./dev test`` runs the suite on the pure build and
``./dev test-compiled`` on the compiled wheel; each tells these tests which to expect."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import pkgutil
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, cast

import pytest

import proxy
from proxy import build
from proxy.metrics.collector import ProxyCollector

REPO = Path(__file__).resolve().parents[2]


def _backend() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "pgtenant_build", REPO / "build_backend" / "pgtenant_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_listed_module_is_built_the_same_way() -> None:
    compiled = {name: build.is_compiled_module(name) for name in build.COMPILED_MODULES}
    assert set(compiled.values()) == {build.compiled()}, compiled


def test_the_running_build_is_the_one_the_runner_built() -> None:
    expected = os.environ.get("PGTENANT_EXPECT_BUILD")
    if expected is None:  # plain pytest: a source checkout is imported as Python
        source_checkout = (Path(proxy.__file__).resolve().parents[1] / "setup.py").is_file()
        assert not (source_checkout and build.compiled())
    else:
        assert expected in ("compiled", "pure")
        assert build.compiled() == (expected == "compiled")
    if build.compiled():  # the installed package, never the checkout's proxy/
        assert Path(proxy.__file__).resolve().parents[1] != REPO


def test_exactly_the_listed_modules_are_compiled_and_all_exist() -> None:
    modules = {info.name for info in pkgutil.walk_packages(proxy.__path__, "proxy.")}
    assert set(build.COMPILED_MODULES) <= modules
    assert "proxy.build" not in build.COMPILED_MODULES  # setup.py executes it as a script
    for name in sorted(modules):
        spec = importlib.util.find_spec(name)  # where it loads from, without running it
        assert spec is not None and spec.origin is not None, name
        native = spec.origin.endswith(tuple(EXTENSION_SUFFIXES))
        assert native == (build.compiled() and name in build.COMPILED_MODULES), name


def _compiled_sources() -> list[tuple[str, ast.Module]]:
    """The source tree of each listed module (from the checkout: a wheel has it too)."""
    return [(name, ast.parse((REPO / (name.replace(".", "/") + ".py")).read_text()))
            for name in build.COMPILED_MODULES]


def _open_to_interpreted_subclasses() -> set[tuple[str, str]]:
    """(module, class) of the compiled classes marked
    ``@mypyc_attr(allow_interpreted_subclasses=True)``."""
    marked = set()
    for name, tree in _compiled_sources():
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and any(
                    "allow_interpreted_subclasses=True" in ast.unparse(decorator)
                    for decorator in node.decorator_list):
                marked.add((name, node.name))
    return marked


def test_no_interpreted_class_subclasses_a_compiled_one() -> None:
    # mypyc refuses (TypeError at import) an interpreted subclass of a compiled class,
    # unless the class allows it (a base such as Receiver, which stand-ins subclass).
    compiled = set(build.COMPILED_MODULES)
    open_bases = _open_to_interpreted_subclasses()
    for info in pkgutil.walk_packages(proxy.__path__, "proxy."):
        if info.name in compiled:
            continue
        module = importlib.import_module(info.name)
        for cls in vars(module).values():
            if inspect.isclass(cls) and cls.__module__ == info.name:
                bases = [base for base in cls.__mro__[1:] if base.__module__ in compiled
                         and (base.__module__, base.__qualname__) not in open_bases]
                assert not bases, f"{cls.__qualname__} ({info.name}) subclasses {bases}"


def test_exception_classes_of_compiled_modules_keep_class_attributes_as_classvars() -> None:
    # mypyc drops a plain class-level default of an Exception subclass (ClassVar keeps it).
    for name, tree in _compiled_sources():
        module = importlib.import_module(name)
        for node in tree.body:
            cls = getattr(module, node.name, None) if isinstance(node, ast.ClassDef) else None
            if not (inspect.isclass(cls) and issubclass(cls, BaseException)):
                continue
            assert isinstance(node, ast.ClassDef)
            for item in node.body:
                plain = isinstance(item, ast.Assign) or (
                    isinstance(item, ast.AnnAssign) and item.value is not None
                    and "ClassVar" not in ast.unparse(item.annotation))
                assert not plain, f"{name}.{node.name}: {ast.unparse(item)} needs ClassVar"


def test_compiled_modules_do_not_bind_one_name_to_two_exception_types() -> None:
    # `except A as e` beside `except B as e` in one function: mypyc gives `e` A's type and
    # raises TypeError when B is caught.
    for name, tree in _compiled_sources():
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            caught: dict[str, set[str]] = {}
            for node in ast.walk(func):
                if isinstance(node, ast.ExceptHandler) and node.name and node.type:
                    caught.setdefault(node.name, set()).add(ast.unparse(node.type))
            for var, types in caught.items():
                assert len(types) == 1, f"{name}.{func.name}: `as {var}` binds {sorted(types)}"


def test_build_info_metric_says_whether_it_runs_compiled() -> None:
    stats = SimpleNamespace(uptime=lambda: 1.0, config_reloads=0, config_reload_failures=0)
    collector = ProxyCollector(cast(Any, SimpleNamespace(stats=stats)))
    [info] = [family for family in collector._process() if family.name == "pgtenant_build_info"]
    [sample] = info.samples
    assert sample.labels["compiled"] == ("true" if build.compiled() else "false")
    assert sample.labels["version"] and sample.value == 1


def test_command_line_check_fails_on_a_pure_build(capsys: pytest.CaptureFixture[str]) -> None:
    status = build.main(["--require-compiled"])
    out, err = capsys.readouterr()
    assert status == (0 if build.compiled() else 1)
    assert ("compiled (mypyc) build" if build.compiled() else "pure Python build") in out
    assert (f"not compiled: {build.COMPILED_MODULES[0]}" in err) != build.compiled()


def test_wheel_build_asks_for_mypyc_only_when_it_will_compile(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    backend = _backend()
    monkeypatch.setattr(backend, "_setuptools", SimpleNamespace(
        get_requires_for_build_wheel=lambda settings: ["wheel"]))
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("PGTENANT_PURE", raising=False)
    monkeypatch.setenv("CC", sys.executable)  # any executable stands in for a compiler
    (tmp_path / "Python.h").touch()  # whether or not this machine has python3-dev
    monkeypatch.setattr(backend, "sysconfig", SimpleNamespace(
        get_config_var=lambda name: None, get_paths=lambda: {"include": str(tmp_path)}))
    assert backend.compile_wanted()[0]
    requires = backend.get_requires_for_build_wheel()
    assert requires[0] == "wheel" and any(r.startswith("mypy[mypyc]") for r in requires)
    assert any(r.startswith("pglast") for r in requires)  # mypy sees the real types

    monkeypatch.setenv("PGTENANT_PURE", "1")
    assert backend.compile_wanted() == (False, "PGTENANT_PURE is set")
    assert backend.get_requires_for_build_wheel() == ["wheel"]

    monkeypatch.setenv("PGTENANT_PURE", "0")
    monkeypatch.setenv("CC", "/nonexistent/cc -O2")
    assert backend.compile_wanted() == (False, "no C compiler found")
    assert backend.get_requires_for_build_wheel() == ["wheel"]

    monkeypatch.setenv("CC", sys.executable)
    (tmp_path / "Python.h").unlink()
    assert backend.compile_wanted() == (False, f"no Python headers ({tmp_path}/Python.h)")


def test_editable_install_never_asks_for_mypyc() -> None:
    backend = _backend()
    # The editable hook is setuptools' own, untouched: no mypy download for ./dev.
    hook = backend.get_requires_for_build_editable
    assert hook is backend._setuptools.get_requires_for_build_editable
