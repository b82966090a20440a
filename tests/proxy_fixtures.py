"""Pytest fixtures that start pgtenant in front of the test database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.proxy_harness import ThreadedProxy, make_config, with_database_keys


@pytest.fixture
def start_proxy(app_db: Any) -> Iterator[Callable[..., ThreadedProxy]]:
    """Factory: ``start_proxy(pool_mode="transaction", pool_size=2, server_max_client_conn=5)``;
    ``database={...}`` sets keys of the database entry that make_config would read as
    [server] ones (``server_check_delay``, ...)."""
    started: list[ThreadedProxy] = []

    def start(*, database: dict[str, Any] | None = None, **overrides: Any) -> ThreadedProxy:
        config = with_database_keys(make_config(app_db, **overrides), **(database or {}))
        proxy = ThreadedProxy(config).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture(params=["session", "transaction"])
def proxy(request: pytest.FixtureRequest, start_proxy: Callable[..., ThreadedProxy]
          ) -> ThreadedProxy:
    """A proxy in each pool mode."""
    return start_proxy(pool_mode=request.param)


@pytest.fixture
def session_proxy(start_proxy: Callable[..., ThreadedProxy]) -> ThreadedProxy:
    return start_proxy(pool_mode="session")
