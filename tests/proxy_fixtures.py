"""Pytest fixtures that start pgtenant in front of the test database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from proxy.config import Config
from tests.proxy_harness import ThreadedProxy, make_config, with_database_keys


@pytest.fixture
def run_proxy() -> Iterator[Callable[[Config], ThreadedProxy]]:
    """Factory: ``run_proxy(config)`` starts a threaded proxy; every one it started stops
    when the test ends. The one place the factories below start and stop proxies."""
    started: list[ThreadedProxy] = []

    def run(config: Config) -> ThreadedProxy:
        proxy = ThreadedProxy(config).start()
        started.append(proxy)
        return proxy

    yield run
    for proxy in started:
        proxy.stop()


@pytest.fixture
def start_proxy(app_db: Any, run_proxy: Callable[[Config], ThreadedProxy]
                ) -> Callable[..., ThreadedProxy]:
    """Factory: ``start_proxy(pool_mode="transaction", pool_size=2, server_max_client_conn=5)``;
    ``database={...}`` sets keys of the database entry that make_config would read as
    [server] ones (``server_check_delay``, ...)."""

    def start(*, database: dict[str, Any] | None = None, **overrides: Any) -> ThreadedProxy:
        return run_proxy(with_database_keys(make_config(app_db, **overrides),
                                            **(database or {})))

    return start


@pytest.fixture(params=["session", "transaction"])
def proxy(request: pytest.FixtureRequest, start_proxy: Callable[..., ThreadedProxy]
          ) -> ThreadedProxy:
    """A proxy in each pool mode."""
    return start_proxy(pool_mode=request.param)


@pytest.fixture
def session_proxy(start_proxy: Callable[..., ThreadedProxy]) -> ThreadedProxy:
    return start_proxy(pool_mode="session")
