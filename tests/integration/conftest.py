"""Integration tests: fixtures shared with adversity are in tests/conftest.py; these are
the ones of several files here (scratch databases)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from policies.install import set_key
from tests.integration.policies_db import KEY_A, Scratch, installed, scratch_database
from tests.support import PostgresServer

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
