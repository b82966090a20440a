"""Service accounts ([users.NAME]): SCRAM-SHA-256 logins, bound to a tenant or bypassing
tenancy with their own upstream role and pool, on a real PostgreSQL."""

from __future__ import annotations

import dataclasses
import os
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from proxy.config import AdminConfig, AdminUserConfig, ServiceAccountConfig
from proxy.config.scram_verifier import make_scram_verifier
from tests.proxy_harness import ThreadedProxy, make_config, startup_refusal, token

pytestmark = pytest.mark.usefixtures("clean_items")

ANALYTICS_ROLE = "pgtenant_test_analytics"
ANALYTICS_PASSWORD_ENV = "PGTENANT_TEST_ANALYTICS_PASSWORD"
ANALYTICS_SECRET = "analytics-scram-password"
MIGRATOR_SECRET = "acme-migrator-scram-password"
ADMIN_SECRET = "console-password-for-service-tests"


@pytest.fixture(scope="module")
def analytics_role(app_db: Any) -> str:
    """A BYPASSRLS login role that may read the items table (made by the superuser)."""
    password = secrets.token_urlsafe(18)
    with psycopg.connect(app_db.superuser_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                              (ANALYTICS_ROLE,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(f"{verb} ROLE {ANALYTICS_ROLE} LOGIN BYPASSRLS PASSWORD "
                     f"'{password}'")
        conn.execute(f"GRANT SELECT ON items TO {ANALYTICS_ROLE}")
    os.environ[ANALYTICS_PASSWORD_ENV] = password
    return ANALYTICS_ROLE


@pytest.fixture
def proxy(app_db: Any, analytics_role: str, request: pytest.FixtureRequest
          ) -> Iterator[ThreadedProxy]:
    pool_mode = getattr(request, "param", "session")
    users = {
        "analytics": ServiceAccountConfig(
            name="analytics", scram_verifier=make_scram_verifier(ANALYTICS_SECRET),
            bypass_tenancy=True, upstream_user=analytics_role,
            upstream_password_env=ANALYTICS_PASSWORD_ENV, allow_privileged_upstream=True),
        "acme_migrator": ServiceAccountConfig(
            name="acme_migrator", scram_verifier=make_scram_verifier(MIGRATOR_SECRET),
            tenant="acme", databases=("app",)),
    }
    admin = AdminConfig(users={"admin": AdminUserConfig(
        name="admin", scram_verifier=make_scram_verifier(ADMIN_SECRET))})
    config = make_config(app_db, pool_mode=pool_mode)
    databases = {**config.databases,
                 "app2": dataclasses.replace(config.databases["app"], name="app2")}
    config = dataclasses.replace(config, databases=databases, users=users, admin=admin)
    started = ThreadedProxy(config).start()
    yield started
    started.stop()


def dsn(proxy: ThreadedProxy, user: str, password: str, dbname: str = "app") -> str:
    return (f"postgresql://{user}:{password}@127.0.0.1:{proxy.port}/{dbname}"
            "?sslmode=disable")


def tenants_seen(conn_dsn: str) -> list[str]:
    with psycopg.connect(conn_dsn) as conn:
        rows = conn.execute("SELECT DISTINCT tenant_id FROM items ORDER BY 1").fetchall()
    return [r[0] for r in rows]


@pytest.mark.parametrize("proxy", ["session", "transaction"], indirect=True)
def test_bypass_account_sees_every_tenant(proxy: ThreadedProxy, app_db: Any) -> None:
    assert tenants_seen(dsn(proxy, "analytics", ANALYTICS_SECRET)) == sorted(app_db.tenants)
    with psycopg.connect(dsn(proxy, "analytics", ANALYTICS_SECRET)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (ANALYTICS_ROLE,)
        # The proxy set the tenant setting to empty: no tenant context at all.
        setting = conn.execute(
            "SELECT coalesce(current_setting('app.current_tenant', true), '')").fetchone()
        assert setting == ("",)


def test_bypass_account_works_through_psql(proxy: ThreadedProxy, app_db: Any) -> None:
    out = subprocess.run(
        ["psql", dsn(proxy, "analytics", ANALYTICS_SECRET), "-XAtc",
         "SELECT DISTINCT tenant_id FROM items ORDER BY 1"],
        capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.split() == sorted(app_db.tenants)


@pytest.mark.parametrize("proxy", ["session", "transaction"], indirect=True)
def test_tenant_bound_account_sees_only_its_tenant(proxy: ThreadedProxy) -> None:
    assert tenants_seen(dsn(proxy, "acme_migrator", MIGRATOR_SECRET)) == ["acme"]


def test_wrong_password_is_refused_with_28p01(proxy: ThreadedProxy) -> None:
    for user in ("analytics", "acme_migrator"):
        sqlstate, message = startup_refusal(dsn(proxy, user, "not-the-password"))
        assert sqlstate == "28P01"
        assert "not-the-password" not in message


def test_a_jwt_never_logs_in_as_a_service_account(proxy: ThreadedProxy) -> None:
    # The proxy asks a service account's name for SCRAM, so the JWT is just a wrong password.
    for user in ("analytics", "acme_migrator"):
        sqlstate, _ = startup_refusal(dsn(proxy, user, token("acme")))
        assert sqlstate == "28P01"
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn(proxy, user, token("globex"))).close()


def test_account_outside_its_databases_is_refused(proxy: ThreadedProxy, app_db: Any
                                                  ) -> None:
    # acme_migrator lists databases = ["app"]; analytics lists none, so it may use both.
    sqlstate, message = startup_refusal(dsn(proxy, "acme_migrator", MIGRATOR_SECRET, "app2"))
    assert sqlstate == "28000" and "app2" in message
    assert tenants_seen(dsn(proxy, "analytics", ANALYTICS_SECRET, "app2")) == sorted(
        app_db.tenants)
    # A service account is not an admin: the console refuses it.
    sqlstate, _ = startup_refusal(dsn(proxy, "acme_migrator", MIGRATOR_SECRET, "pgtenant"))
    assert sqlstate == "28P01"


def test_default_pool_never_runs_as_the_bypass_role(proxy: ThreadedProxy, app_db: Any
                                                    ) -> None:
    with psycopg.connect(dsn(proxy, "analytics", ANALYTICS_SECRET)) as conn:
        conn.execute("SELECT 1")
        with psycopg.connect(proxy.dsn("acme", user="analytics_jwt_client")) as jwt_conn:
            assert jwt_conn.execute("SELECT current_user").fetchone() == (app_db.user,)
            assert tenants_seen(proxy.dsn("acme")) == ["acme"]

    def pools(app: Any) -> tuple[list[str], dict[tuple[str, str], str]]:
        return (list(app.pools), {k: p.db.user for k, p in app.service_pools.items()})

    names, service = proxy.call(lambda: pools(proxy.app))
    assert names == ["app", "app2"]
    assert service == {("app", ANALYTICS_ROLE): ANALYTICS_ROLE}
    assert proxy.call(lambda: proxy.app.pools["app"].db.user) == app_db.user  # type: ignore[union-attr]
    assert not proxy.call(lambda: proxy.app.pools["app"].db.allow_privileged_upstream)  # type: ignore[union-attr]


def test_bypass_account_may_not_set_the_tenant(proxy: ThreadedProxy) -> None:
    with psycopg.connect(dsn(proxy, "analytics", ANALYTICS_SECRET), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET app.current_tenant = 'acme'")
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_admin_console_still_works(proxy: ThreadedProxy) -> None:
    with psycopg.connect(dsn(proxy, "admin", ADMIN_SECRET, "pgtenant"),
                         autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("SHOW POOLS")  # type: ignore[call-overload]
        assert cur.fetchall()
