"""The workloads, grouped by letter, and the pgbench invocations each one needs per target.

Groups (``--workloads`` takes letters, names, or both):

- ``a`` select-only: pgbench's built-in ``select-only`` over the simple, extended and
  prepared protocols at 8 and 64 clients, plus simple at 1 client (added latency).
- ``b`` tpcb-like: pgbench's built-in read-write transaction at 8 and 64 clients.
- ``c`` tenant: N tenants, each client its own tenant. Through pgtenant the client sends
  only its statement; directly and through PgBouncer it runs the usual application-side
  ``BEGIN; SELECT set_config('app.current_tenant', $1, true); …; COMMIT``.
- ``d`` connection storm: connect, one select-only query, disconnect (``pgbench -C``).
- ``e`` idle connections: thousands of clients log in and sit idle (proxies only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bench.database import BenchDatabase
from bench.pgbench import Invocation
from bench.targets import Target

Kind = Literal["pgbench", "tenant", "idle"]
QueryMode = Literal["simple", "extended", "prepared"]

GROUPS: dict[str, str] = {
    "a": "select-only (simple/extended/prepared x 8/64 clients; simple x 1 client)",
    "b": "tpcb-like (8 and 64 clients)",
    "c": "tenant workload (one JWT per tenant; app-side set_config for direct/PgBouncer)",
    "d": "connection storm (pgbench -C: connect, one query, disconnect)",
    "e": "idle connections (RSS per idle client of the proxy process)",
}

QUICK_WORKLOADS = "select-simple-c8,tenant,storm-c8,idle"

# What a tenant's client runs. The ids are the tenant's own rows; RLS still filters.
TENANT_STATEMENT = "SELECT id, name FROM items WHERE id = :id;"
_PICK_ID = r"\set id random(:first_id, :last_id)"
TENANT_SCRIPT_PROXY = f"{_PICK_ID}\n{TENANT_STATEMENT}\n"
TENANT_SCRIPT_APP_SIDE = (
    f"{_PICK_ID}\n"
    "BEGIN;\n"
    "SELECT set_config('app.current_tenant', :tenant, true);\n"
    f"{TENANT_STATEMENT}\n"
    "COMMIT;\n"
)


@dataclass(frozen=True, slots=True)
class Workload:
    """One measured workload; ``clients`` is the total over all pgbench processes."""

    name: str
    group: str
    kind: Kind
    clients: int
    summary: str
    query_mode: QueryMode = "simple"
    builtin: str = "select-only"
    reconnect: bool = False

    def runs_on(self, target: Target) -> bool:
        return self.kind != "idle" or target.holds_idle_clients


def catalog(*, tenant_clients: int, idle_clients: int) -> tuple[Workload, ...]:
    """Every workload, in the order a run measures them."""
    selects = [
        Workload(f"select-{mode}-c{clients}", "a", "pgbench", clients,
                 f"select-only, {mode} protocol, {clients} clients", query_mode=mode)
        for clients in (8, 64)
        for mode in ("simple", "extended", "prepared")
    ]
    return (
        *selects,
        Workload("select-simple-c1", "a", "pgbench", 1,
                 "select-only, simple protocol, 1 client (latency)"),
        Workload("tpcb-c8", "b", "pgbench", 8, "tpcb-like, 8 clients", builtin="tpcb-like"),
        Workload("tpcb-c64", "b", "pgbench", 64, "tpcb-like, 64 clients",
                 builtin="tpcb-like"),
        Workload(f"tenant-c{tenant_clients}", "c", "tenant", tenant_clients,
                 f"tenant point lookup, {tenant_clients} clients, extended protocol",
                 query_mode="extended"),
        Workload("storm-c8", "d", "pgbench", 8,
                 "connection storm: connect, select-only query, disconnect; 8 clients",
                 reconnect=True),
        Workload("idle", "e", "idle", idle_clients,
                 f"{idle_clients} idle logged-in clients"),
    )


def resolve(spec: str, workloads: Sequence[Workload]) -> list[Workload]:
    """Workloads named by ``spec``: comma-separated group letters and/or names.

    A ``tenant`` or ``tenant-cN`` name picks the tenant workload whatever its client count.
    """
    wanted: set[str] = set()
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        matches = {
            w.name for w in workloads
            if item in (w.group, w.name) or (w.kind == "tenant" and item.startswith("tenant"))
        }
        if not matches:
            known = ", ".join([*GROUPS, *(w.name for w in workloads)])
            raise ValueError(f"unknown workload {item!r}; choose from: {known}")
        wanted |= matches
    return [w for w in workloads if w.name in wanted]


def write_scripts(directory: Path) -> tuple[Path, Path]:
    """Write the tenant workload's two pgbench scripts; (through the proxy, app-side)."""
    proxy_script = directory / "tenant-proxy.sql"
    app_script = directory / "tenant-app-side.sql"
    proxy_script.write_text(TENANT_SCRIPT_PROXY)
    app_script.write_text(TENANT_SCRIPT_APP_SIDE)
    return proxy_script, app_script


def invocations(
    workload: Workload, target: Target, db: BenchDatabase, scripts: tuple[Path, Path]
) -> list[Invocation]:
    """The pgbench processes ``workload`` needs on ``target`` (run at the same time)."""
    if workload.kind == "pgbench":
        # pgbench's tables have no RLS; through pgtenant the client is the first tenant.
        options = ["-b", workload.builtin, "-M", workload.query_mode]
        if workload.reconnect:
            options.append("-C")
        return [Invocation(
            conn=target.conninfo(db.tenants[0].tenant),
            clients=workload.clients,
            options=tuple(options),
            label=workload.name,
        )]
    if workload.kind != "tenant":
        raise ValueError(f"{workload.name} is not a pgbench workload")
    # pgbench has one password per process, and with pgtenant the password is the
    # tenant's JWT: one process per tenant, for every target alike (same shape).
    script = scripts[0] if target.sets_tenant else scripts[1]
    tenants = db.tenants[: max(1, min(len(db.tenants), workload.clients))]
    per_tenant, extra = divmod(workload.clients, len(tenants))
    runs = []
    for index, tenant in enumerate(tenants):
        runs.append(Invocation(
            conn=target.conninfo(tenant.tenant),
            clients=per_tenant + (1 if index < extra else 0),
            options=("-f", str(script), "-M", workload.query_mode),
            variables={
                "tenant": tenant.tenant,
                "first_id": str(tenant.first_id),
                "last_id": str(tenant.last_id),
            },
            label=f"{workload.name}-{tenant.tenant}",
        ))
    return runs
