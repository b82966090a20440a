"""Direct connections to PostgreSQL (no proxy in between), for setting up and checking."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.support import AppDatabase


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
