"""Fixtures for every test directory: the PostgreSQL server and the demo app database.

The suite starts its own throwaway cluster (``proxy.devtools.EmbeddedPostgres``) the
first time a test asks for it, unless ``PGTENANT_TEST_DSN`` names an existing server (a
superuser DSN) or ``PGTENANT_TEST_PG=testcontainers`` asks for a container (tests/pgsource.py).
A test that cannot reach PostgreSQL fails; it never skips. The one skip allowed: tests
marked ``restarts_postgres`` when the server is not ours to restart.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from proxy.devtools import EmbeddedPostgres, EmbeddedPostgresError, provision_app, reset_items
from tests import pgsource
from tests.drivers.toolchains import in_ci
from tests.support import AppDatabase, ExternalPostgres, PostgresServer

pytest_plugins = ["tests.proxy_fixtures"]

TEST_DSN_ENV = "PGTENANT_TEST_DSN"
RESTARTS_POSTGRES = "restarts_postgres"
REQUIRES_PROGRAMS = "requires_programs"

# Distinctive names: with PGTENANT_TEST_DSN these are created on somebody else's server.
APP_DBNAME = "pgtenant_test"
APP_USER = "pgtenant_test_app"
TENANTS = ("acme", "globex")


def pytest_configure(config: pytest.Config) -> None:
    try:
        pgsource.selected(os.environ)
    except pgsource.PostgresSourceError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.addinivalue_line(
        "markers",
        f"{REQUIRES_PROGRAMS}(package, *programs): skipped outside CI when a program is "
        "missing (CI fails instead)",
    )
    config.addinivalue_line(
        "markers",
        f"{RESTARTS_POSTGRES}: the test restarts PostgreSQL (skipped only when the server "
        f"comes from {TEST_DSN_ENV} or testcontainers: not ours to restart)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _skip_without_programs(items)
    if pgsource.restartable(os.environ):
        return
    skip = pytest.mark.skip(reason="restarts PostgreSQL, and the session's server (from "
                            f"{TEST_DSN_ENV} or testcontainers) is not one it can restart")
    for item in items:
        if item.get_closest_marker(RESTARTS_POSTGRES):
            item.add_marker(skip)


def _skip_without_programs(items: list[pytest.Item]) -> None:
    """Tests marked ``requires_programs(package, *programs)`` are skipped at collection when
    a program is missing, with one line naming the Debian package -- except in CI, where
    they run and fail (tests.support.require_tool), as the driver toolchains do."""
    if in_ci():
        return
    for item in items:
        marker = item.get_closest_marker(REQUIRES_PROGRAMS)
        if marker is None:
            continue
        package, *programs = marker.args
        missing = [p for p in programs if shutil.which(p) is None]
        if missing:
            item.add_marker(pytest.mark.skip(
                reason=f"{', '.join(missing)} not installed (Debian package: {package})"))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The PostgreSQL server for the whole session (ours, the one in PGTENANT_TEST_DSN, or
    a testcontainers container)."""
    if pgsource.selected(os.environ) == pgsource.TESTCONTAINERS:
        yield from pgsource.container_session(os.environ)
        return
    external_dsn = os.environ.get(TEST_DSN_ENV)
    # pytest.fail is called outside the except blocks: the reason alone, no chained traceback.
    problem: Exception | None = None
    if external_dsn:
        try:
            external = ExternalPostgres(external_dsn)
        except (psycopg.Error, ValueError) as exc:
            problem = exc
        if problem:
            pytest.fail(f"cannot use the server in {TEST_DSN_ENV}: {problem}", pytrace=False)
        yield external
        return
    began = time.monotonic()
    try:
        server = EmbeddedPostgres()
        server.start()
    except (EmbeddedPostgresError, OSError, subprocess.SubprocessError, psycopg.Error) as exc:
        problem = exc
    if problem:
        pytest.fail(
            f"could not start PostgreSQL for the tests: {problem}\n"
            f"Install the server (Debian: apt-get install postgresql) or set {TEST_DSN_ENV} "
            "to a superuser DSN of an existing server.",
            pytrace=False,
        )
    print(f"\nembedded PostgreSQL on {server.host}:{server.port} "
          f"ready in {time.monotonic() - began:.2f}s ({server.root})")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def app_db(postgres: PostgresServer) -> AppDatabase:
    """The demo database (``items`` under RLS, tenants acme and globex) and its upstream role."""
    password = secrets.token_urlsafe(18)
    try:
        provision_app(
            postgres.superuser_dsn,
            dbname=APP_DBNAME, app_user=APP_USER, app_password=password, tenants=TENANTS,
        )
    except psycopg.Error as exc:
        pytest.fail(f"could not provision the test database {APP_DBNAME}: {exc}", pytrace=False)
    return AppDatabase(
        host=postgres.host,
        port=postgres.port,
        dbname=APP_DBNAME,
        user=APP_USER,
        password=password,
        superuser_dsn=postgres.dsn(APP_DBNAME),
        tenants=TENANTS,
        superuser=postgres.superuser,
        superuser_password=postgres.superuser_password,
    )


@pytest.fixture
def clean_items(app_db: AppDatabase) -> AppDatabase:
    """Reset ``items`` to the seed rows (ids 1-3 acme, 4-6 globex) before the test."""
    reset_items(app_db.superuser_dsn, dbname=app_db.dbname, tenants=app_db.tenants)
    return app_db


# Direct connections to PostgreSQL (no proxy in between), for setting up and checking.
@pytest.fixture
def superuser_conn(app_db: AppDatabase) -> Iterator[psycopg.Connection[Any]]:
    """The superuser in the app database, autocommit; sees every tenant's rows."""
    with psycopg.connect(app_db.superuser_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def app_user_conn(app_db: AppDatabase) -> Iterator[psycopg.Connection[Any]]:
    """The upstream app role straight to PostgreSQL, autocommit, no tenant set yet."""
    with psycopg.connect(app_db.upstream_dsn, autocommit=True) as conn:
        yield conn
