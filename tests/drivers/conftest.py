"""The proxy the driver tests talk to, in each pool mode.

In transaction mode it has fewer server connections than most tests open clients, so
the driver's statements really move between server connections (and get renamed);
in session mode every client needs its own server connection, so there are enough.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.drivers import toolchains
from tests.proxy_harness import ThreadedProxy
from tests.support import AppDatabase

POOL_SIZE = {"session": 8, "transaction": 2}
TOOLCHAINS = {"test_node_postgres.py": toolchains.node_missing,
              "test_jdbc.py": toolchains.jdbc_missing,
              "test_nestjs_prisma.py": toolchains.nestjs_missing}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests of a driver whose toolchain this machine lacks (pytest -ra folds them
    into one line per file saying what to install) -- except in CI, where they run and
    fail (toolchains.require)."""
    if toolchains.in_ci():
        return
    here = Path(__file__).parent
    missing: dict[str, str | None] = {}
    for item in items:
        check = TOOLCHAINS.get(item.path.name) if item.path.parent == here else None
        if check is None:
            continue
        if item.path.name not in missing:
            missing[item.path.name] = check()
        if reason := missing[item.path.name]:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(params=["session", "transaction"])
def driver_proxy(request: pytest.FixtureRequest, start_proxy: Callable[..., ThreadedProxy],
                 clean_items: AppDatabase) -> ThreadedProxy:
    """pgtenant in ``request.param`` pool mode, in front of ``items`` reset to its seed rows."""
    mode = request.param
    return start_proxy(pool_mode=mode, pool_size=POOL_SIZE[mode])


@pytest.fixture
def pool_mode(driver_proxy: ThreadedProxy) -> str:
    """The pool mode ``driver_proxy`` runs in."""
    return driver_proxy.config.databases["app"].pool_mode
