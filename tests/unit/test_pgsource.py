"""``PGTENANT_TEST_PG``: choosing the session's PostgreSQL, and the testcontainers path run
against a fake testcontainers and a fake Docker (this machine has no Docker engine).

The fake container is honest about what the suite gets from a container: it "publishes"
the session's own PostgreSQL, on which it creates the container's superuser with the
password the container was given (and drops it when the container stops). So the server
the suite gets is reached only through the DSN built from the container's host, port,
user and password.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from proxy.devtools.cluster import DEFAULT_SETTINGS
from tests import pgsource
from tests.conftest import pytest_configure
from tests.support import PostgresServer

_TESTCONTAINERS_MODULES = ("testcontainers", "testcontainers.community",
                           "testcontainers.community.postgres", "testcontainers.postgres")


class FakeDockerError(Exception):
    """Stands in for docker.errors.DockerException."""


@dataclass
class FakeDocker:
    """The engine behind the fake testcontainers: what was asked of it."""

    host_server: PostgresServer
    engine_up: bool = True
    pull_error: str | None = None
    containers: list[FakePostgresContainer] = field(default_factory=list)


class FakePostgresContainer:
    """testcontainers' PostgresContainer as the code under test uses it."""

    docker: FakeDocker

    def __init__(self, image: str, port: int = 5432, username: str | None = None,
                 password: str | None = None, dbname: str | None = None, **kwargs: Any) -> None:
        if not self.docker.engine_up:
            # What docker.from_env() raises when no engine listens on the socket.
            raise FakeDockerError("Error while fetching server API version: ('Connection "
                                  "aborted.', FileNotFoundError(2, 'No such file or directory'))")
        self.image, self.port = image, port
        self.username, self.password, self.dbname = username, password, dbname
        self.command: list[str] = []
        self.started = self.stopped = False
        self.docker.containers.append(self)

    def with_command(self, command: list[str]) -> FakePostgresContainer:
        self.command = command
        return self

    def start(self) -> FakePostgresContainer:
        if self.docker.pull_error:
            raise FakeDockerError(self.docker.pull_error)
        # The image's entrypoint: POSTGRES_USER is a superuser; POSTGRES_DB exists.
        assert self.dbname == "postgres" and self.username is not None
        with psycopg.connect(self.docker.host_server.superuser_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} SUPERUSER LOGIN PASSWORD {}").format(
                sql.Identifier(self.username), sql.Literal(self.password)))
        self.started = True
        return self

    def get_container_host_ip(self) -> str:
        assert self.started, "the container is not running"
        return self.docker.host_server.host

    def get_exposed_port(self, port: int) -> int:
        assert self.started and port == self.port
        return self.docker.host_server.port

    def stop(self) -> None:
        self.stopped = True
        if self.started:
            with psycopg.connect(self.docker.host_server.superuser_dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(self.username)))


@pytest.fixture
def fake_docker(monkeypatch: pytest.MonkeyPatch, postgres: PostgresServer) -> FakeDocker:
    """A fake testcontainers (the current module layout) and docker in sys.modules, and
    a container superuser of its own name, so the session's superuser is not the one used."""
    monkeypatch.setattr(pgsource, "CONTAINER_SUPERUSER", "pgsource_container_superuser")
    docker = FakeDocker(postgres)
    container_class = type("PostgresContainer", (FakePostgresContainer,), {"docker": docker})
    modules = {
        "docker": types.ModuleType("docker"),
        "docker.errors": types.ModuleType("docker.errors"),
        "testcontainers": types.ModuleType("testcontainers"),
        "testcontainers.community": types.ModuleType("testcontainers.community"),
        "testcontainers.community.postgres": types.ModuleType(
            "testcontainers.community.postgres"),
    }
    modules["docker.errors"].DockerException = FakeDockerError  # type: ignore[attr-defined]
    modules["testcontainers.community.postgres"].PostgresContainer = (  # type: ignore[attr-defined]
        container_class)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return docker


def _session(environ: dict[str, str]) -> tuple[Iterator[PostgresServer], PostgresServer]:
    session = pgsource.container_session({pgsource.SOURCE_ENV: "testcontainers", **environ})
    return session, next(session)


def _failure(environ: dict[str, str]) -> str:
    with pytest.raises(pytest.fail.Exception) as failed:
        _session(environ)
    message = str(failed.value)
    assert "\n" not in message.strip()
    return message


def test_testcontainers_session_uses_the_dsn_built_from_the_container(
    fake_docker: FakeDocker,
) -> None:
    session, server = _session({pgsource.IMAGE_ENV: "postgres:13-alpine"})
    try:
        _check_served_by(fake_docker, server)
    finally:
        session.close()
    [container] = fake_docker.containers
    assert container.stopped
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        psycopg.connect(server.superuser_dsn, connect_timeout=2).close()


def _check_served_by(fake_docker: FakeDocker, server: PostgresServer) -> None:
    [container] = fake_docker.containers
    assert container.image == "postgres:13-alpine"
    assert container.started and not container.stopped
    # The embedded cluster's settings, as the image's `postgres -c name=value` arguments.
    assert container.command == ["postgres", *(
        arg for name, value in DEFAULT_SETTINGS.items() for arg in ("-c", f"{name}={value}"))]
    host = fake_docker.host_server
    assert conninfo_to_dict(server.superuser_dsn) == {
        "host": host.host, "port": str(host.port), "user": "pgsource_container_superuser",
        "password": container.password, "dbname": "postgres",
    }
    assert (server.host, server.port) == (host.host, host.port)
    assert (server.superuser, server.superuser_password) == (
        "pgsource_container_superuser", container.password)
    # What the suite needs: the postgres database and a superuser (roles, databases).
    with psycopg.connect(server.superuser_dsn) as conn:
        assert conn.execute(
            "SELECT current_user, current_database(), rolsuper FROM pg_roles "
            "WHERE rolname = current_user").fetchone() == (
                "pgsource_container_superuser", "postgres", True)


def test_default_image_and_a_container_that_fails_to_start_is_removed(
    fake_docker: FakeDocker,
) -> None:
    fake_docker.pull_error = "pull access denied for postgres, repository does not exist"
    message = _failure({})
    assert message == (f"could not start the {pgsource.DEFAULT_IMAGE} container with "
                       f"testcontainers: {fake_docker.pull_error}")
    [container] = fake_docker.containers
    assert container.image == "postgres:16-alpine"
    assert container.stopped


def test_too_old_a_server_is_refused_and_its_container_removed(
    fake_docker: FakeDocker, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pgsource, "MIN_SERVER_VERSION", 990000)
    message = _failure({pgsource.IMAGE_ENV: "postgres:12"})
    assert message.startswith(f"{pgsource.IMAGE_ENV}=postgres:12 runs PostgreSQL ")
    assert message.endswith("the suite needs 13 or later")
    [container] = fake_docker.containers
    assert container.stopped


def test_no_docker_engine_says_to_start_one(fake_docker: FakeDocker) -> None:
    fake_docker.engine_up = False
    message = _failure({})
    assert message.startswith("PGTENANT_TEST_PG=testcontainers needs a running Docker engine "
                              "(start Docker, or set DOCKER_HOST to one): Error while fetching")
    assert fake_docker.containers == []


def test_releases_before_the_community_package_are_found(
    fake_docker: FakeDocker, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Older 4.x releases have PostgresContainer in testcontainers.postgres only."""
    modern = sys.modules["testcontainers.community.postgres"]
    monkeypatch.setitem(sys.modules, "testcontainers.community.postgres", None)
    monkeypatch.setitem(sys.modules, "testcontainers.postgres", modern)
    fake_docker.engine_up = False
    assert "needs a running Docker engine" in _failure({})


def test_missing_testcontainers_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _TESTCONTAINERS_MODULES:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: ImportError
    assert _failure({}) == ("PGTENANT_TEST_PG=testcontainers needs the testcontainers package: "
                            f"{pgsource.INSTALL_HINT}")


@pytest.mark.parametrize(("environ", "source", "restartable"), [
    ({}, "embedded", True),
    ({"PGTENANT_TEST_PG": ""}, "embedded", True),
    ({"PGTENANT_TEST_PG": "embedded"}, "embedded", True),
    ({"PGTENANT_TEST_DSN": "postgresql://postgres@db/postgres"}, "embedded", False),
    ({"PGTENANT_TEST_PG": " testcontainers "}, "testcontainers", False),
])
def test_the_source_the_environment_selects(
    environ: dict[str, str], source: str, restartable: bool,
) -> None:
    assert pgsource.selected(environ) == source
    assert pgsource.restartable(environ) is restartable


def test_unknown_source_and_two_sources_are_refused() -> None:
    with pytest.raises(pgsource.PostgresSourceError, match=(
            r"^PGTENANT_TEST_PG='docker' is not a PostgreSQL source: use embedded or "
            r"testcontainers \(or unset it; PGTENANT_TEST_DSN names an existing server\)$")):
        pgsource.selected({"PGTENANT_TEST_PG": "docker"})
    with pytest.raises(pgsource.PostgresSourceError, match=(
            r"^PGTENANT_TEST_PG=testcontainers and PGTENANT_TEST_DSN are both set")):
        pgsource.selected({"PGTENANT_TEST_PG": "testcontainers",
                           "PGTENANT_TEST_DSN": "postgresql://postgres@db/postgres"})


def test_unknown_source_stops_the_session_at_start(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGTENANT_TEST_PG", "docker")
    with pytest.raises(pytest.UsageError, match="PGTENANT_TEST_PG='docker' is not"):
        pytest_configure(request.config)
    # And for real: pytest refuses to start, with the one line and no traceback.
    env = {**os.environ, "PGTENANT_TEST_PG": "docker"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         __file__], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert "PGTENANT_TEST_PG='docker' is not a PostgreSQL source" in done.stderr
    assert "Traceback" not in done.stderr
