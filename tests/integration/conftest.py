"""Integration tests: fixtures shared with adversity are in tests/conftest.py; these are
the ones of several files here (admin console, prepared statements, scratch databases)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from policies.install import set_key
from proxy.config import Config, TenancyConfig
from tests.integration.admin_console import admin_config
from tests.integration.policies_db import KEY_A, Scratch, installed, scratch_database
from tests.integration.prepared_wire import Start, Wire
from tests.proxy_harness import ThreadedProxy, make_config
from tests.support import PostgresServer

# ---- admin console -----------------------------------------------------------------------


RunProxy = Callable[[Config], ThreadedProxy]


@pytest.fixture
def start_admin_proxy(app_db: Any, run_proxy: RunProxy) -> Callable[..., ThreadedProxy]:
    """Factory: a threaded proxy with an admin user; keyword arguments as make_config."""

    def start(**overrides: Any) -> ThreadedProxy:
        return run_proxy(dataclasses.replace(make_config(app_db, **overrides),
                                             admin=admin_config()))

    return start


@pytest.fixture
def admin_proxy(start_admin_proxy: Callable[..., ThreadedProxy]) -> ThreadedProxy:
    return start_admin_proxy(pool_mode="transaction", pool_size=2)


# ---- prepared statements, by hand -----------------------------------------------------


@pytest.fixture
def unguarded(app_db: Any, run_proxy: RunProxy) -> ThreadedProxy:
    """Transaction mode on one server connection, SQL guard off."""
    config = make_config(app_db, pool_mode="transaction", pool_size=1)
    return run_proxy(dataclasses.replace(config, tenancy=TenancyConfig(guard=False)))


@pytest.fixture
def wire(start_proxy: Start) -> Iterator[Callable[..., Wire]]:
    opened: list[Wire] = []

    def open_wire(proxy: ThreadedProxy, tenant: str = "acme") -> Wire:
        w = Wire(proxy, tenant)
        opened.append(w)
        return w

    yield open_wire
    for w in opened:
        w.close()


# ---- scratch databases ------------------------------------------------------------------


@pytest.fixture
def scratch(postgres: PostgresServer) -> Iterator[Scratch]:
    with scratch_database(postgres) as db:
        yield db


@pytest.fixture
def signed(scratch: Scratch) -> Scratch:
    """pgtenant installed and KEY_A stored."""
    installed(scratch)
    with scratch.admin() as conn, conn.transaction():
        set_key(conn, KEY_A)
    return scratch
