"""Tenants placed across two clusters behind one database name, and `tenants move`.

Cluster A is the suite's PostgreSQL (it also holds the registry); cluster B is a second
throwaway cluster started for this module. On each, a database of its own with the demo
``items`` table under RLS; acme and globex live on A (the default entry), initech on B
(placed there in the registry). B's ids start at 1000 (ids must not collide across
clusters: see docs/scale-out.md).
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from policies.cli import entry_dsn_env
from policies.install import install
from proxy.cli import main
from proxy.config import parse_config
from proxy.devtools import EmbeddedPostgres, provision_app
from tests.integration.test_metrics import scrape, value
from tests.proxy_harness import JWT_SECRET, JWT_SECRET_ENV, ThreadedProxy, startup_refusal
from tests.support import PostgresServer, free_port, wait_for

PASSWORD_ENV = "PGTENANT_TEST_PLACEMENT_PASSWORD"
ITEM = "SELECT id, tenant_id, name, created_at::text FROM items"


@pytest.fixture(scope="module")
def cluster_b() -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres() as server:
        yield server


@dataclass
class Clusters:
    a: PostgresServer
    b: EmbeddedPostgres
    dbname: str
    role: str
    password: str
    config_text: str = ""

    def admin(self, which: str) -> psycopg.Connection[Any]:
        """The superuser in the test database of cluster ``a`` or ``b``, autocommit."""
        server = self.a if which == "a" else self.b
        return psycopg.connect(server.dsn(self.dbname), autocommit=True)

    def rows(self, which: str, tenant: str) -> list[tuple[Any, ...]]:
        with self.admin(which) as conn:
            return conn.execute(ITEM + " WHERE tenant_id = %s ORDER BY id", [tenant]).fetchall()

    def registry(self, tenant: str) -> tuple[str, str | None]:
        with self.admin("a") as conn:
            row = conn.execute("SELECT status, placement FROM pgtenant.tenants WHERE id = %s",
                               [tenant]).fetchone()
        assert row is not None
        return row[0], row[1]


@pytest.fixture
def clusters(postgres: PostgresServer, cluster_b: EmbeddedPostgres) -> Iterator[Clusters]:
    suffix = secrets.token_hex(4)
    env = Clusters(postgres, cluster_b, f"pgtenant_place_{suffix}",
                   f"pgtenant_place_app_{suffix}", secrets.token_urlsafe(16))
    owner = f"pgtenant_place_owner_{suffix}"
    try:
        provision_app(postgres.superuser_dsn, dbname=env.dbname, app_user=env.role,
                      app_password=env.password, tenants=("acme", "globex"))
        provision_app(cluster_b.superuser_dsn, dbname=env.dbname, app_user=env.role,
                      app_password=env.password, tenants=())
        with env.admin("b") as conn:
            conn.execute("ALTER SEQUENCE items_id_seq RESTART 1000")
            conn.execute("INSERT INTO items (tenant_id, name) SELECT 'initech', "
                         "'initech-item-' || n FROM generate_series(1, 3) AS n")
        with env.admin("a") as conn, conn.transaction():
            install(conn, app_roles=[env.role], owner_role=owner)
            conn.execute("INSERT INTO pgtenant.tenants (id, placement) VALUES ('acme', NULL),"
                         " ('globex', NULL), ('initech', 'app_b')")
        yield env
    finally:
        for server in (postgres, cluster_b):
            with psycopg.connect(server.superuser_dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(env.dbname)))
                for role in (env.role, owner):
                    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def config_text(env: Clusters, pool_mode: str, **tenancy: Any) -> str:
    entries = []
    for name, server in (("app_a", env.a), ("app_b", env.b)):
        entries.append(f"""
[databases.{name}]
host = "{server.host}"
port = {server.port}
dbname = "{env.dbname}"
user = "{env.role}"
password_env = "{PASSWORD_ENV}"
sslmode = "disable"
pool_mode = "{pool_mode}"
pool_size = 3
query_wait_timeout = 10
""")
    extra = "".join(f"{k} = {str(v).lower() if isinstance(v, bool) else v}\n"
                    for k, v in tenancy.items())
    return f"""
[server]
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
[auth.jwt]
secret_env = "{JWT_SECRET_ENV}"
[tenancy]
registry_cache_seconds = 0.2
{extra}{"".join(entries)}
[placement.app]
entries = ["app_a", "app_b"]
registry = "app_a"
default = "app_a"
"""


@contextlib.contextmanager
def placed_proxy(env: Clusters, pool_mode: str = "transaction",
                 **tenancy: Any) -> Iterator[ThreadedProxy]:
    os.environ[JWT_SECRET_ENV] = JWT_SECRET
    os.environ[PASSWORD_ENV] = env.password
    env.config_text = config_text(env, pool_mode, **tenancy)
    proxy = ThreadedProxy(parse_config(env.config_text, "<placement test>")).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def server_port_and_rows(proxy: ThreadedProxy, tenant: str, dbname: str = "app"
                         ) -> tuple[int, list[tuple[Any, ...]]]:
    with psycopg.connect(proxy.dsn(tenant, dbname=dbname), autocommit=True) as conn:
        port_row = conn.execute("SELECT inet_server_port()").fetchone()
        assert port_row is not None
        return int(port_row[0]), conn.execute(ITEM + " ORDER BY id").fetchall()


def move(env: Clusters, tmp_path: Path, *argv: str) -> tuple[int, str, str]:
    """``pgtenant tenants move ARGV`` in this process, with the admin DSN of each entry."""
    config = tmp_path / "pgtenant.toml"
    config.write_text(env.config_text)
    os.environ[entry_dsn_env("app_a")] = env.a.dsn(env.dbname)
    os.environ[entry_dsn_env("app_b")] = env.b.dsn(env.dbname)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["tenants", "move", *argv, "--config", str(config)])
    return status, out.getvalue(), err.getvalue()


# -- routing ------------------------------------------------------------------------------

@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_each_tenant_lands_on_its_own_cluster_and_sees_only_its_rows(
        clusters: Clusters, pool_mode: str) -> None:
    with placed_proxy(clusters, pool_mode) as proxy:
        for tenant, server in (("acme", clusters.a), ("globex", clusters.a),
                               ("initech", clusters.b)):
            port, rows = server_port_and_rows(proxy, tenant)
            assert port == server.port, tenant
            assert rows == clusters.rows("a" if server is clusters.a else "b", tenant)
            assert rows and {r[1] for r in rows} == {tenant}


def test_naming_a_cluster_entry_still_lands_on_the_tenants_own_cluster(
        clusters: Clusters) -> None:
    # initech lives on B; asking for A by its entry name must not reach A's rows.
    with placed_proxy(clusters) as proxy:
        port, rows = server_port_and_rows(proxy, "initech", dbname="app_a")
        assert port == clusters.b.port
        assert {r[1] for r in rows} == {"initech"}
        port, _ = server_port_and_rows(proxy, "acme", dbname="app_b")
        assert port == clusters.a.port


def test_a_tenant_cannot_reach_the_other_clusters_rows(clusters: Clusters) -> None:
    with placed_proxy(clusters) as proxy, psycopg.connect(
            proxy.dsn("initech"), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FILTER (WHERE tenant_id <> 'initech'), count(*)"
                           " FROM items").fetchone()
        assert row == (0, 3)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET app.current_tenant = 'acme'")
        assert conn.execute("SELECT count(*) FROM items WHERE tenant_id = 'acme'"
                            ).fetchone() == (0,)


def test_each_cluster_has_its_own_pool_and_metrics(clusters: Clusters) -> None:
    with placed_proxy(clusters) as proxy:
        server_port_and_rows(proxy, "acme")
        server_port_and_rows(proxy, "initech")
        assert proxy.app is not None and set(proxy.app.pools) == {"app_a", "app_b"}
        samples = scrape(proxy)
        for entry in ("app_a", "app_b"):
            labels = {"database": entry, "user": clusters.role, "kind": "tenant"}
            assert value(samples, "pgtenant_pool_leases_total", **labels) >= 1


def test_a_moving_tenant_is_refused_with_57p03(clusters: Clusters) -> None:
    with placed_proxy(clusters) as proxy:
        with clusters.admin("a") as conn:
            conn.execute("UPDATE pgtenant.tenants SET status = 'moving' WHERE id = 'acme'")
        sqlstate, message = startup_refusal(proxy.dsn("acme"))
        assert sqlstate == "57P03" and "being moved" in message
        port, _ = server_port_and_rows(proxy, "globex")  # others are not held up
        assert port == clusters.a.port


def test_the_registry_cannot_send_a_tenant_outside_the_placements_entries(
        clusters: Clusters) -> None:
    with clusters.admin("a") as conn:
        conn.execute("UPDATE pgtenant.tenants SET placement = 'registry_down'"
                     " WHERE id = 'initech'")
    down = f"\n[databases.registry_down]\nport = {free_port()}\nsslmode = \"disable\"\n"
    os.environ[JWT_SECRET_ENV] = JWT_SECRET
    os.environ[PASSWORD_ENV] = clusters.password
    text = config_text(clusters, "transaction") + down
    proxy = ThreadedProxy(parse_config(text, "<placement test>")).start()
    try:
        sqlstate, message = startup_refusal(proxy.dsn("initech"))
        assert sqlstate == "3D000" and 'not an entry of "app"' in message
    finally:
        proxy.stop()


def test_an_unreachable_registry_fails_placed_logins_closed(clusters: Clusters) -> None:
    down = f"""
[databases.registry_down]
port = {free_port()}
sslmode = "disable"
server_connect_timeout = 2
"""
    text = config_text(clusters, "transaction").replace('registry = "app_a"',
                                                        'registry = "registry_down"')
    os.environ[JWT_SECRET_ENV] = JWT_SECRET
    os.environ[PASSWORD_ENV] = clusters.password
    proxy = ThreadedProxy(parse_config(text + down, "<placement test>")).start()
    try:  # fail closed: no guess at the tenant's cluster
        assert startup_refusal(proxy.dsn("initech")) == (
            "08006", "could not read the tenant registry")
    finally:
        proxy.stop()


def test_registry_refusals_hold_on_every_cluster(clusters: Clusters) -> None:
    with clusters.admin("a") as conn:
        conn.execute("UPDATE pgtenant.tenants SET status = 'suspended' WHERE id = 'initech'")
    with placed_proxy(clusters, require_registered_tenant=True) as proxy:
        assert startup_refusal(proxy.dsn("initech")) == (
            "28000", 'tenant "initech" is suspended')
        assert startup_refusal(proxy.dsn("hooli")) == ("28000", 'tenant "hooli" is not registered')
        assert server_port_and_rows(proxy, "acme")[0] == clusters.a.port


# -- tenants move -------------------------------------------------------------------------

def _keep_writing(proxy: ThreadedProxy, tenant: str, stop: threading.Event,
                  errors: list[BaseException], done: list[int]) -> None:
    try:
        with psycopg.connect(proxy.dsn(tenant), autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO items (name) VALUES (%s)", [f"{tenant}-during-move"])
                conn.execute("SELECT count(*) FROM items").fetchone()
                done[0] += 1
    except BaseException as exc:
        errors.append(exc)


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_move_keeps_every_row_and_the_tenants_clients_follow(
        clusters: Clusters, tmp_path: Path, pool_mode: str) -> None:
    with placed_proxy(clusters, pool_mode) as proxy:
        with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
            conn.execute("INSERT INTO items (name, created_at) VALUES"
                         " ('quote '' and \"double\"', '2001-02-03 04:05:06.789+07'),"
                         " (E'tab\\tnewline\\nbackslash\\\\', NULL),"
                         " ('ünïcødé ✓', 'infinity')")
        before = clusters.rows("a", "acme")
        assert len(before) == 6
        old_client = psycopg.connect(proxy.dsn("acme"), autocommit=True)
        stop, errors, done = threading.Event(), [], [0]
        writer = threading.Thread(target=_keep_writing, args=(proxy, "globex", stop, errors,
                                                              done))
        writer.start()
        try:
            wait_for(lambda: done[0] > 0, "globex writing")
            status, out, err = move(clusters, tmp_path, "acme", "--to", "app_b",
                                    "--drain-seconds", "1")
            during = done[0]
            wait_for(lambda: done[0] > during, "globex writing after the move")
        finally:
            stop.set()
            writer.join(30)
        assert status == 0, err
        assert "moved tenant acme from app_a to app_b" in out
        assert "public.items: 6 rows" in out
        assert errors == []  # globex never noticed
        # The client connected before the move was ended, not left on the old cluster.
        with pytest.raises(psycopg.OperationalError):
            old_client.execute("SELECT 1")
        old_client.close()
        assert clusters.rows("b", "acme") == before
        assert clusters.rows("a", "acme") == []
        assert clusters.registry("acme") == ("active", "app_b")
        port, rows = server_port_and_rows(proxy, "acme")
        assert port == clusters.b.port and rows == before
        # globex stayed where it was, with every row it wrote during the move.
        assert server_port_and_rows(proxy, "globex")[0] == clusters.a.port
        assert len(clusters.rows("a", "globex")) == 3 + done[0]
        with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
            conn.execute("INSERT INTO items (name) VALUES ('acme-after-move')")
        assert [r[2] for r in clusters.rows("b", "acme")][-1] == "acme-after-move"


def test_kept_source_rows_are_out_of_the_tenants_reach(
        clusters: Clusters, tmp_path: Path) -> None:
    with placed_proxy(clusters, pool_mode="session") as proxy:
        before = clusters.rows("a", "globex")
        status, out, err = move(clusters, tmp_path, "globex", "--to", "app_b",
                                "--drain-seconds", "0.5", "--keep-source")
        assert status == 0, err
        assert "kept (--keep-source)" in out
        assert clusters.rows("a", "globex") == before  # still there ...
        port, rows = server_port_and_rows(proxy, "globex")
        assert port == clusters.b.port and rows == before  # ... but served once, from B
        with psycopg.connect(proxy.dsn("globex", dbname="app_a"), autocommit=True) as conn:
            conn.execute("DELETE FROM items")  # reaches B's rows only
        assert clusters.rows("b", "globex") == []
        assert clusters.rows("a", "globex") == before


def test_a_transaction_open_when_the_move_starts_is_moved_too(
        clusters: Clusters, tmp_path: Path) -> None:
    with placed_proxy(clusters) as proxy:
        conn = psycopg.connect(proxy.dsn("acme"))
        conn.execute("INSERT INTO items (name) VALUES ('acme-in-flight')")
        result: list[tuple[int, str, str]] = []
        mover = threading.Thread(target=lambda: result.append(
            move(clusters, tmp_path, "acme", "--to", "app_b", "--drain-seconds", "0.5",
                 "--lock-timeout", "20")))
        mover.start()
        wait_for(lambda: clusters.registry("acme")[0] == "moving", "acme marked moving")
        conn.commit()  # its transaction ends; the proxy ends the client right after
        mover.join(60)
        assert result and result[0][0] == 0, result
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        conn.close()
        names = [r[2] for r in clusters.rows("b", "acme")]
        assert "acme-in-flight" in names and len(names) == 4
        assert clusters.rows("a", "acme") == []


def test_move_refuses_a_destination_without_the_schema_and_changes_nothing(
        clusters: Clusters, tmp_path: Path) -> None:
    with clusters.admin("b") as conn:
        conn.execute("ALTER TABLE items DROP COLUMN created_at")
    with placed_proxy(clusters):
        status, _, err = move(clusters, tmp_path, "acme", "--to", "app_b")
    assert status == 2
    assert "app_b lacks column public.items.created_at" in err
    assert "migrations" in err
    assert clusters.registry("acme") == ("active", None)
    assert len(clusters.rows("a", "acme")) == 3


def test_move_refuses_colliding_ids_and_puts_the_tenant_back(
        clusters: Clusters, tmp_path: Path) -> None:
    with clusters.admin("b") as conn:  # B's ids now overlap A's
        conn.execute("UPDATE items SET id = id - 999")
    with placed_proxy(clusters) as proxy:
        status, _, err = move(clusters, tmp_path, "acme", "--to", "app_b",
                              "--drain-seconds", "0.3")
        assert status == 2
        assert "ids must be unique across clusters" in err and "Nothing was moved" in err
        assert clusters.registry("acme") == ("active", None)
        assert clusters.rows("b", "acme") == []
        assert server_port_and_rows(proxy, "acme")[0] == clusters.a.port


def test_move_needs_a_drain_at_least_the_registry_cache(
        clusters: Clusters, tmp_path: Path) -> None:
    with placed_proxy(clusters):
        status, _, err = move(clusters, tmp_path, "acme", "--to", "app_b",
                              "--drain-seconds", "0.1")
    assert status == 2 and "shorter than registry_cache_seconds" in err


def test_entry_dsns_come_from_one_variable_per_entry() -> None:
    assert entry_dsn_env("app-eu.1") == "PGTENANT_ADMIN_DSN_APP_EU_1"
