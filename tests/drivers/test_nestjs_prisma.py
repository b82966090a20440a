"""examples/nestjs-prisma end to end: a NestJS + Prisma (@prisma/adapter-pg) service per
tenant, each pointed at pgtenant by DATABASE_URL alone (its tenant's JWT as the
password), many concurrent HTTP requests from both tenants through a transaction pool
of one server connection (so every request of either tenant runs on the same backend),
and forged tenant hints (header, query parameter, body field)
that change nothing.

The schema goes in as a migration would: sql/*.sql through the proxy, as a
``bypass_tenancy`` service account whose upstream role owns the table, then
``pgtenant policies protect notes`` and the grants for the proxy's upstream role.
The example is built here (``prisma generate`` and ``tsc``: no network); `./dev test`
installs its packages with ``npm ci`` first (tests/drivers/toolchains.py).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from proxy.config import ServiceAccountConfig
from proxy.config.scram_verifier import make_scram_verifier
from tests.drivers import toolchains
from tests.drivers.tenancy import TENANTS
from tests.proxy_harness import ThreadedProxy, make_config, token
from tests.support import AppDatabase, free_port, run, wait_for_port

EXAMPLE = toolchains.NESTJS_DIR
DBNAME = "pgtenant_test_nestjs"
OWNER = "pgtenant_test_nestjs_owner"  # owns the schema; the migration account's role
OWNER_PASSWORD_ENV = "PGTENANT_TEST_NESTJS_OWNER_PASSWORD"
MIGRATOR = "notes_migrator"
MIGRATOR_SECRET = "notes-migrator-scram-password"
NOTES_PER_TENANT = 60
FORGED_HEADERS = {"X-Tenant-Id": "globex", "X-Forwarded-Tenant": "globex"}
NO_ENGINE = str(EXAMPLE / "prisma" / "no-engine.sh")


# Against acme's DATABASE_URL: the per-request tenant extension teams delete
# (examples/nestjs-prisma/README.md), as while it is still deployed, and an interactive
# transaction.
PRISMA_SCRIPT = r"""
const { PrismaClient } = require('./dist/generated/prisma/client.js');
const { PrismaPg } = require('@prisma/adapter-pg');
const prisma = new PrismaClient({
  adapter: new PrismaPg({ connectionString: process.env.DATABASE_URL }) });
function forTenant(tenantId) {
  return prisma.$extends({ query: { $allModels: {
    async $allOperations({ args, query }) {
      const [, result] = await prisma.$transaction([
        prisma.$executeRaw`SELECT set_config('app.current_tenant', ${tenantId}, TRUE)`,
        query(args)]);
      return result;
    } } } });
}
function sqlState(error) {  // as src/row-level-security.filter.ts finds it
  for (let e = error; e; e = e.meta?.driverAdapterError ?? e.cause) {
    if (typeof e.originalCode === 'string') return e.originalCode;
  }
  return String(error);
}
(async () => {
  const out = { extension: {} };
  for (const tenant of ['acme', 'globex']) {
    try {
      out.extension[tenant] = (await forTenant(tenant).note.findMany()).map((n) => n.tenantId);
    } catch (e) { out.extension[tenant] = sqlState(e); }
  }
  out.interactive = await prisma.$transaction(async (tx) => {
    const note = await tx.note.create({ data: { body: 'acme-interactive' } });
    const seen = await tx.note.findMany();
    return { created: note.tenantId, seen: [...new Set(seen.map((n) => n.tenantId))] };
  });
  await prisma.$disconnect();
  console.log(JSON.stringify(out));
})();
"""


@dataclasses.dataclass(frozen=True)
class Service:
    tenant: str
    url: str
    log: Path

    def call(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """``(status, decoded JSON)`` of one HTTP request to this service."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture(scope="module")
def built_example() -> Path:
    """``npm run build`` (prisma generate, tsc): offline, Prisma's engines stubbed out."""
    _, npm = toolchains.node_and_npm()
    env = {**os.environ, "CHECKPOINT_DISABLE": "1", "PRISMA_HIDE_UPDATE_MESSAGE": "1",
           "PRISMA_SCHEMA_ENGINE_BINARY": NO_ENGINE, "PRISMA_QUERY_ENGINE_LIBRARY": NO_ENGINE}
    run([npm, "run", "build"], cwd=EXAMPLE, env=env, timeout=180)
    return EXAMPLE / "dist" / "main.js"


@pytest.fixture(scope="module")
def notes_database(app_db: AppDatabase) -> str:
    """An empty database owned by OWNER (no ``notes`` yet); its superuser DSN."""
    password = secrets.token_urlsafe(18)
    os.environ[OWNER_PASSWORD_ENV] = password
    with psycopg.connect(app_db.superuser_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [OWNER]).fetchone()
        conn.execute(sql.SQL("{} ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD {}").format(
            sql.SQL("ALTER" if exists else "CREATE"), sql.Identifier(OWNER),
            sql.Literal(password)))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(DBNAME)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(DBNAME), sql.Identifier(OWNER)))
    return make_conninfo(app_db.superuser_dsn, dbname=DBNAME)


@pytest.fixture(scope="module")
def notes_proxy(app_db: AppDatabase, notes_database: str) -> Iterator[ThreadedProxy]:
    """pgtenant in transaction mode with one server connection for both tenants, and the
    migration account ``[users.notes_migrator]`` (bypass_tenancy, upstream role OWNER)."""
    config = make_config(app_db, dbname=DBNAME, pool_mode="transaction", pool_size=1)
    migrator = ServiceAccountConfig(
        name=MIGRATOR, scram_verifier=make_scram_verifier(MIGRATOR_SECRET),
        bypass_tenancy=True, upstream_user=OWNER, upstream_password_env=OWNER_PASSWORD_ENV)
    proxy = ThreadedProxy(dataclasses.replace(config, users={MIGRATOR: migrator})).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def migrated(notes_proxy: ThreadedProxy, app_db: AppDatabase) -> None:
    """The example's migrations, then protect and grant: all through the proxy, as the
    migration account."""
    dsn = notes_proxy.dsn(MIGRATOR_SECRET, raw_token=True, user=MIGRATOR)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for migration in sorted((EXAMPLE / "sql").glob("*.sql")):
            conn.execute(migration.read_text().encode())
        app_role = sql.Identifier(app_db.user)
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO {}").format(
            app_role))
        conn.execute(sql.SQL("GRANT USAGE ON SEQUENCE notes_id_seq TO {}").format(app_role))
    run([sys.executable, "-m", "proxy.cli", "policies", "protect", "notes", "--dsn", dsn],
        timeout=60)


@pytest.fixture(scope="module")
def services(built_example: Path, migrated: None, notes_proxy: ThreadedProxy,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Service]]:
    """The example's HTTP server once per tenant: its DATABASE_URL carries that tenant's
    JWT, and nothing else in its environment names a tenant."""
    node, _ = toolchains.node_and_npm()
    logs = tmp_path_factory.mktemp("nestjs")
    started: dict[str, tuple[Service, subprocess.Popen[bytes]]] = {}
    try:
        for tenant in TENANTS:
            port = free_port()
            env = {"PATH": os.environ.get("PATH", ""),
                   "DATABASE_URL": database_url(notes_proxy, tenant),
                   "HOST": "127.0.0.1", "PORT": str(port), "NODE_ENV": "production"}
            log = logs / f"{tenant}.log"
            with log.open("wb") as out:
                process = subprocess.Popen([node, str(built_example)], cwd=EXAMPLE, env=env,
                                           stdin=subprocess.DEVNULL, stdout=out,
                                           stderr=subprocess.STDOUT)
            started[tenant] = Service(tenant, f"http://127.0.0.1:{port}", log), process
            try:
                wait_for_port("127.0.0.1", port, timeout=30)
            except TimeoutError:
                raise AssertionError(f"the {tenant} service did not start:\n"
                                     f"{log.read_text()}") from None
        yield {tenant: service for tenant, (service, _) in started.items()}
    finally:
        for _, process in started.values():
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def database_url(proxy: ThreadedProxy, tenant: str) -> str:
    """The service's only configuration: the tenant's JWT as the password."""
    return f"postgresql://notes:{token(tenant)}@127.0.0.1:{proxy.port}/app?sslmode=disable"


def rows_in_database(notes_database: str) -> list[tuple[str, str]]:
    """Every note as ``(tenant_id, body)``, read directly as the superuser."""
    with psycopg.connect(notes_database) as conn:
        return conn.execute("SELECT tenant_id, body FROM notes ORDER BY id").fetchall()


def test_concurrent_requests_of_two_tenants_stay_apart(services: dict[str, Service],
                                                       notes_proxy: ThreadedProxy,
                                                       notes_database: str) -> None:
    sets_before = context_sets(notes_proxy)
    requests = [(tenant, n) for n in range(NOTES_PER_TENANT) for tenant in TENANTS]
    with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
        created = list(pool.map(
            lambda r: services[r[0]].call("POST", "/notes", {"body": f"{r[0]}-{r[1]}"}),
            requests))
    for (tenant, n), (status, note) in zip(requests, created, strict=True):
        assert status == 201, note
        assert (note["tenantId"], note["body"]) == (tenant, f"{tenant}-{n}")

    for tenant, service in services.items():
        status, notes = service.call("GET", "/notes")
        assert status == 200
        assert {n["tenantId"] for n in notes} == {tenant}
        assert sorted(n["body"] for n in notes if is_numbered(n["body"])) == sorted(
            f"{tenant}-{n}" for n in range(NOTES_PER_TENANT))
        assert service.call("GET", "/notes/whoami") == (200, {"tenant": tenant})

    stored = rows_in_database(notes_database)
    assert sum(is_numbered(body) for _, body in stored) == NOTES_PER_TENANT * len(TENANTS)
    assert all(body.startswith(f"{tenant}-") for tenant, body in stored), "misrouted write"
    # The one backend changed hands between the tenants (each change sets the context).
    assert context_sets(notes_proxy) - sets_before >= 2


def context_sets(proxy: ThreadedProxy) -> int:
    """Leases on which the proxy set the tenant (pgtenant_pool_context_sets_total)."""
    return proxy.call(lambda: proxy.app.pools["app"].stats.leases_with_context_set)


def is_numbered(body: str) -> bool:
    """A note of the concurrent test (``<tenant>-<n>``), not one the other tests made."""
    return body.rpartition("-")[2].isdigit()


def test_forged_tenant_hints_change_nothing(services: dict[str, Service],
                                            notes_database: str) -> None:
    acme, globex = services["acme"], services["globex"]
    status, theirs = globex.call("POST", "/notes", {"body": "globex-private"})
    assert status == 201
    before = rows_in_database(notes_database)

    # A header or query parameter naming another tenant: the app reads none, RLS decides.
    status, seen = acme.call("GET", "/notes?tenantId=globex", headers=FORGED_HEADERS)
    assert (status, seen) == (200, [])
    status, seen = acme.call("GET", "/notes", headers=FORGED_HEADERS)
    assert status == 200 and {n["tenantId"] for n in seen} <= {"acme"}
    assert acme.call("GET", f"/notes/{theirs['id']}", headers=FORGED_HEADERS)[0] == 404
    assert acme.call("GET", "/notes/whoami", headers=FORGED_HEADERS) == (200, {"tenant": "acme"})

    # A body field the app passes straight to Prisma: the policy's WITH CHECK refuses it.
    status, refused = acme.call("POST", "/notes", {"body": "planted", "tenantId": "globex"},
                                headers=FORGED_HEADERS)
    assert status == 403, refused
    assert rows_in_database(notes_database) == before

    # With only the header forged, the note is acme's.
    status, note = acme.call("POST", "/notes", {"body": "acme-with-header"},
                             headers=FORGED_HEADERS)
    assert status == 201 and note["tenantId"] == "acme"
    status, notes = globex.call("GET", "/notes")
    assert status == 200 and "acme-with-header" not in {n["body"] for n in notes}
    assert {n["tenantId"] for n in notes} == {"globex"}


def test_old_tenant_extension_and_interactive_transaction(
        services: dict[str, Service], notes_proxy: ThreadedProxy) -> None:
    """While the per-request ``set_config`` extension is still deployed, naming the
    connection's own tenant passes (pgtenant's guard lets it through) and naming another
    is refused with 42501 before anything runs. An interactive transaction stays on one
    server connection and in the tenant."""
    status, _ = services["acme"].call("POST", "/notes", {"body": "acme-before-cutover"})
    assert status == 201
    node, _ = toolchains.node_and_npm()
    env = {"PATH": os.environ.get("PATH", ""),
           "DATABASE_URL": database_url(notes_proxy, "acme")}
    done = run([node, "-e", PRISMA_SCRIPT], cwd=EXAMPLE, env=env, timeout=60)
    out = json.loads(done.stdout)
    assert out["extension"]["globex"] == "42501"
    assert out["extension"]["acme"] and set(out["extension"]["acme"]) == {"acme"}
    assert out["interactive"] == {"created": "acme", "seen": ["acme"]}
