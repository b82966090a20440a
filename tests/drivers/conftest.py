"""The proxy the driver tests talk to, in each pool mode.

In transaction mode it has fewer server connections than most tests open clients, so
the driver's statements really move between server connections (and get renamed);
in session mode every client needs its own server connection, so there are enough.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.proxy_harness import ThreadedProxy
from tests.support import AppDatabase

POOL_SIZE = {"session": 8, "transaction": 2}


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
