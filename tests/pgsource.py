"""Where the test session's PostgreSQL comes from, chosen by the environment.

- ``embedded`` (the default): a throwaway cluster from the machine's PostgreSQL binaries
  (``proxy.devtools.EmbeddedPostgres``, started in conftest.py).
- ``PGTENANT_TEST_DSN``: an existing server, named by a superuser DSN.
- ``PGTENANT_TEST_PG=testcontainers``: a PostgreSQL container started with testcontainers
  (image ``PGTENANT_TEST_PG_IMAGE``, default ``postgres:16-alpine``) and removed when the
  session ends. The suite then uses it exactly as it uses a ``PGTENANT_TEST_DSN`` server:
  an :class:`~tests.support.ExternalPostgres` built from the container's superuser DSN.

testcontainers is an optional dependency (``pip install -e '.[testcontainers]'``); it is
imported only when selected. The container's port is published by Docker and may change
when the container restarts, so, as with ``PGTENANT_TEST_DSN``, tests that restart
PostgreSQL are skipped.
"""

from __future__ import annotations

import gc
import importlib
import secrets
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg
import pytest

from proxy.devtools.cluster import DEFAULT_SETTINGS
from tests.support import ExternalPostgres, PostgresServer, libpq_uri

SOURCE_ENV = "PGTENANT_TEST_PG"
IMAGE_ENV = "PGTENANT_TEST_PG_IMAGE"
DSN_ENV = "PGTENANT_TEST_DSN"
EMBEDDED = "embedded"
TESTCONTAINERS = "testcontainers"
SOURCES = (EMBEDDED, TESTCONTAINERS)
DEFAULT_IMAGE = "postgres:16-alpine"
MIN_SERVER_VERSION = 130000

INSTALL_HINT = ("pip install -e '.[testcontainers]' "
                "(or .venv/bin/pip install 'testcontainers[postgres]>=4')")
_CONTAINER_PORT = 5432
CONTAINER_SUPERUSER = "postgres"  # the image's POSTGRES_USER
# The image's entrypoint creates the superuser and this database; the suite expects both.
_DBNAME = "postgres"
_CONNECT_TIMEOUT = 15.0


class PostgresSourceError(Exception):
    """The session's PostgreSQL cannot be had; the message is one line saying what to do."""


def selected(environ: Mapping[str, str]) -> str:
    """The source ``PGTENANT_TEST_PG`` selects (``embedded`` when unset or empty).

    PostgresSourceError for an unknown value, and for ``testcontainers`` together with
    ``PGTENANT_TEST_DSN`` (which one was meant is not ours to guess).
    """
    source = environ.get(SOURCE_ENV, "").strip() or EMBEDDED
    if source not in SOURCES:
        raise PostgresSourceError(
            f"{SOURCE_ENV}={source!r} is not a PostgreSQL source: use "
            f"{' or '.join(SOURCES)} (or unset it; {DSN_ENV} names an existing server)")
    if source == TESTCONTAINERS and environ.get(DSN_ENV):
        raise PostgresSourceError(
            f"{SOURCE_ENV}=testcontainers and {DSN_ENV} are both set: unset one of them")
    return source


def restartable(environ: Mapping[str, str]) -> bool:
    """Whether the session's server is one the suite may restart (only the embedded one)."""
    return selected(environ) == EMBEDDED and not environ.get(DSN_ENV)


def server_command() -> list[str]:
    """The container's command: the embedded cluster's settings (300 connections, no
    fsync, SCRAM passwords, ...), so both sources behave alike. The image's entrypoint
    also takes ``password_encryption`` from here for its pg_hba.conf (SCRAM on 13 too)."""
    command = ["postgres"]
    for name, value in DEFAULT_SETTINGS.items():
        command += ["-c", f"{name}={value}"]
    return command


def _postgres_container_class() -> Any:
    """testcontainers' PostgresContainer, imported now (newer releases keep it under
    ``testcontainers.community``; the old path warns there, older releases have only it)."""
    for module_name in ("testcontainers.community.postgres", "testcontainers.postgres"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                module = importlib.import_module(module_name)
        except ImportError:
            continue
        return module.PostgresContainer
    raise PostgresSourceError(
        f"{SOURCE_ENV}=testcontainers needs the testcontainers package: {INSTALL_HINT}")


def _connect_superuser(dsn: str, image: str) -> ExternalPostgres:
    """ExternalPostgres for the container's DSN, once the published port answers."""
    deadline = time.monotonic() + _CONNECT_TIMEOUT
    while True:
        try:
            server = ExternalPostgres(dsn)
            break
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise PostgresSourceError(
                    f"the {image} container started but its PostgreSQL did not accept "
                    f"connections within {_CONNECT_TIMEOUT:.0f}s: {_first_line(exc)}") from exc
        time.sleep(0.2)
    with psycopg.connect(server.superuser_dsn, connect_timeout=10) as conn:
        version = conn.info.server_version
    if version < MIN_SERVER_VERSION:
        raise PostgresSourceError(
            f"{IMAGE_ENV}={image} runs PostgreSQL {version // 10000}; the suite needs 13 or "
            "later")
    return server


@contextmanager
def container_postgres(image: str = DEFAULT_IMAGE) -> Iterator[ExternalPostgres]:
    """A PostgreSQL container from ``image``, as the suite's superuser server; the
    container is removed on the way out. PostgresSourceError, in one line, when
    testcontainers is missing, no Docker engine answers, or the container fails."""
    container_class = _postgres_container_class()
    # docker is a dependency of testcontainers: importable once testcontainers is.
    from docker.errors import DockerException  # type: ignore[import-not-found, unused-ignore]

    password = secrets.token_urlsafe(24)
    no_engine: str | None = None
    with warnings.catch_warnings():
        # Without an engine, docker-py leaves its socket to the garbage collector, whose
        # ResourceWarning would fail the session long after this message.
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            container = container_class(image, username=CONTAINER_SUPERUSER,
                                        password=password, dbname=_DBNAME)
        except DockerException as exc:
            no_engine = _first_line(exc)
        if no_engine is not None:
            gc.collect()
    if no_engine is not None:
        raise PostgresSourceError(
            f"{SOURCE_ENV}=testcontainers needs a running Docker engine (start Docker, or set "
            f"DOCKER_HOST to one): {no_engine}")
    container.with_command(server_command())
    try:
        try:
            container.start()
            dsn = libpq_uri({"host": container.get_container_host_ip(),
                             "port": container.get_exposed_port(_CONTAINER_PORT),
                             "user": CONTAINER_SUPERUSER, "password": password,
                             "dbname": _DBNAME})
        except (DockerException, RuntimeError, TimeoutError) as exc:
            raise PostgresSourceError(
                f"could not start the {image} container with testcontainers: "
                f"{_first_line(exc)}") from exc
        yield _connect_superuser(dsn, image)
    finally:
        container.stop()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def container_session(environ: Mapping[str, str]) -> Iterator[PostgresServer]:
    """The ``postgres`` fixture's body for ``PGTENANT_TEST_PG=testcontainers``: the server
    for the session, or the test fails with the one-line reason (no traceback)."""
    image = environ.get(IMAGE_ENV, "").strip() or DEFAULT_IMAGE
    with ExitStack() as stack:
        problem: PostgresSourceError | None = None
        try:
            server = stack.enter_context(container_postgres(image))
        except PostgresSourceError as exc:
            problem = exc
        if problem:  # outside the except block: the reason alone, no chained traceback
            pytest.fail(str(problem), pytrace=False)
        print(f"\nPostgreSQL container {image} on {server.host}:{server.port}")
        yield server
