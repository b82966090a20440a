"""A client with a JWT reaches PostgreSQL through pgtenant confined to its tenant."""

from __future__ import annotations

import io
import subprocess

import psycopg
import pytest

from tests.proxy_harness import ThreadedProxy

pytestmark = pytest.mark.usefixtures("clean_items")


def names(conn: psycopg.Connection, sql: str = "SELECT name FROM items ORDER BY name") -> list[str]:
    return [row[0] for row in conn.execute(sql).fetchall()]


def test_each_tenant_sees_only_its_rows_simple_protocol(proxy: ThreadedProxy) -> None:
    for tenant in ("acme", "globex"):
        out = subprocess.run(
            ["psql", proxy.dsn(tenant), "-XAtc", "SELECT DISTINCT tenant_id FROM items"],
            capture_output=True, text=True, timeout=30, check=True).stdout.split()
        assert out == [tenant]


def test_each_tenant_sees_only_its_rows_extended_protocol(proxy: ThreadedProxy) -> None:
    with psycopg.connect(proxy.dsn("acme"), prepare_threshold=0) as conn:
        for _ in range(3):  # prepared after the first execution
            rows = conn.execute("SELECT tenant_id FROM items WHERE id > %s", (0,)).fetchall()
            assert {r[0] for r in rows} == {"acme"}
            assert len(rows) == 3
        assert conn.execute("SELECT current_setting('app.current_tenant')").fetchone() == ("acme",)


def test_copy_to_returns_only_own_rows(proxy: ThreadedProxy) -> None:
    with psycopg.connect(proxy.dsn("globex")) as conn, conn.cursor() as cur:
        buf = io.BytesIO()
        with cur.copy("COPY (SELECT tenant_id, name FROM items ORDER BY name) TO STDOUT") as copy:
            for chunk in copy:
                buf.write(chunk)
    lines = buf.getvalue().decode().splitlines()
    assert lines and all(line.startswith("globex\t") for line in lines)


def test_writes_are_confined_to_own_tenant(proxy: ThreadedProxy) -> None:
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
        conn.execute("INSERT INTO items (name) VALUES ('acme-new')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO items (tenant_id, name) VALUES ('globex', 'planted')")
        assert conn.execute("UPDATE items SET name = 'x' WHERE tenant_id = 'globex'").rowcount == 0
        assert conn.execute("DELETE FROM items WHERE tenant_id = 'globex'").rowcount == 0
    with psycopg.connect(proxy.dsn("globex")) as conn:
        assert names(conn) == ["globex-item-1", "globex-item-2", "globex-item-3"]
    with psycopg.connect(proxy.dsn("acme")) as conn:
        assert "acme-new" in names(conn)


def test_copy_in_through_the_proxy(proxy: ThreadedProxy, app_db: object) -> None:
    # PostgreSQL refuses COPY FROM into an RLS table; the staging-table pattern works.
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn, conn.cursor() as cur:
        with conn.transaction():  # the guard wants ON COMMIT DROP (transaction pooling)
            cur.execute("CREATE TEMP TABLE staging (name text) ON COMMIT DROP")
            with cur.copy("COPY staging (name) FROM STDIN") as copy:
                for i in range(1000):
                    copy.write_row((f"bulk-{i}",))
            cur.execute("INSERT INTO items (name) SELECT name FROM staging")
            assert cur.rowcount == 1000
        with pytest.raises(psycopg.errors.FeatureNotSupported), \
                cur.copy("COPY items (name) FROM STDIN") as copy:
            copy.write_row(("direct",))
        assert cur.execute("SELECT count(*) FROM items").fetchone() == (1003,)


def test_startup_parameters_reach_the_server(proxy: ThreadedProxy) -> None:
    dsn = proxy.dsn("acme", application_name="billing", options="-c%20statement_timeout%3D4321")
    with psycopg.connect(dsn) as conn:
        assert conn.info.parameter_status("application_name") == "billing"
        assert conn.execute("SHOW application_name").fetchone() == ("billing",)
        assert conn.execute("SHOW statement_timeout").fetchone() == ("4321ms",)
        assert conn.info.backend_pid != conn.execute("SELECT pg_backend_pid()").fetchone()[0]


def test_notice_and_errors_pass_through(proxy: ThreadedProxy) -> None:
    notices: list[str] = []
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("ROLLBACK")  # outside a transaction: a WARNING (DO is refused)
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert notices == ["there is no transaction in progress"]


def test_session_state_does_not_leak_to_next_client(start_proxy: object) -> None:
    proxy = start_proxy(pool_mode="session", pool_size=1)  # type: ignore[operator]
    with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
        conn.execute("SET search_path = pg_catalog")
        conn.execute("PREPARE leftover AS SELECT 1")
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()
    with psycopg.connect(proxy.dsn("globex"), autocommit=True) as conn:
        assert conn.execute("SELECT pg_backend_pid()").fetchone() == pid  # same server reused
        assert conn.execute("SHOW search_path").fetchone() == ('"$user", public',)
        with pytest.raises(psycopg.errors.InvalidSqlStatementName), \
                psycopg.ClientCursor(conn) as cur:
            cur.execute("EXECUTE leftover")
        tenant = conn.execute("SELECT current_setting('app.current_tenant')").fetchone()
        assert tenant == ("globex",)
        assert {r[0] for r in conn.execute("SELECT tenant_id FROM items")} == {"globex"}


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_server_connections_are_reused(start_proxy: object, mode: str) -> None:
    proxy = start_proxy(pool_mode=mode, pool_size=1)  # type: ignore[operator]
    pids = set()
    for i in range(6):
        with psycopg.connect(proxy.dsn("acme" if i % 2 else "globex")) as conn:
            pids.add(conn.execute("SELECT pg_backend_pid()").fetchone())
    assert len(pids) == 1
