"""Tenants placed across clusters: one client-facing database name, several clusters.

``[placement.NAME]`` lists the ``[databases.*]`` entries (clusters) that serve clients
connecting to database ``NAME``. A tenant's entry comes from, in this order: the
``placement`` column of ``pgtenant.tenants`` in the ``registry`` entry's database, the
static ``[placement.NAME.tenants]`` map, the ``default`` entry. Each entry keeps its own
pool (and so its own metrics, labelled with the entry's name).

The tenant is known only once its credential is verified, so the pool is chosen then
(:meth:`PlacementRouter.place`, called by the client at login). A tenant whose registry
status is ``moving`` (``pgtenant tenants move``) is refused with 57P03, and the clients it
still has are ended as soon as their transaction is over (:meth:`PlacementRouter.sweep`):
after that, nothing of the tenant runs on the old cluster.

Without any ``[placement]`` table nothing here runs: clients are served by the pool of
the database they name, exactly as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from proxy.config.model import Placement
from proxy.config.placement import MOVING

if TYPE_CHECKING:
    import psycopg

    from proxy.config import Config, DatabaseConfig
    from proxy.pool.pool import ServerPool

log = logging.getLogger("pgtenant.placement")

#: The registry lookup (psycopg placeholder): the tenant's status and placement entry,
#: no row for an unknown tenant. SECURITY DEFINER: the proxy's role needs only EXECUTE.
PLACEMENT_SQL = "SELECT status, placement FROM pgtenant.tenant_placement(%s)"
#: How often the clients of placed tenants are checked against the registry (seconds).
SWEEP_INTERVAL = 0.25

class PlacementRefused(Exception):
    """A login the placement refuses; carries the SQLSTATE for the client's ErrorResponse."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class _Tenanted(Protocol):
    @property
    def tenant(self) -> str | None: ...


class PlacedClient(Protocol):
    """What the router reads of a client (``proxy.frontend.client.ClientConnection``)."""

    @property
    def database(self) -> str: ...
    @property
    def context(self) -> _Tenanted | None: ...


class RoutingHost(Protocol):
    """What the router needs of the proxy (``proxy.app.ProxyApp``)."""

    config: Config
    pools: dict[str, ServerPool]


@dataclass(slots=True)
class _Answer:
    status: str | None
    entry: str
    expires: float


class _RegistryUnreadable(Exception):
    """The registry could not be queried (connection refused, lost, or an error)."""


class _Registry:
    """One connection to a registry entry's database, for placement lookups.

    psycopg is imported on first use: a proxy without placement never loads it.
    """

    def __init__(self, db: DatabaseConfig, password: str | None) -> None:
        self.db = db
        self._password = password
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    async def lookup(self, tenant: str) -> tuple[str | None, str | None]:
        """(status, placement) of ``tenant``; (None, None) when it is not registered."""
        import psycopg

        async with self._lock:
            for attempt in (1, 2):  # a connection the server closed is opened again once
                try:
                    conn = await self._connect()
                    cur = await conn.execute(PLACEMENT_SQL, [tenant])
                    row = await cur.fetchone()
                    return (row[0], row[1]) if row else (None, None)
                except psycopg.OperationalError as exc:
                    await self.close()
                    if attempt == 2:
                        raise _RegistryUnreadable(str(exc)) from None
                except psycopg.Error as exc:
                    raise _RegistryUnreadable(str(exc)) from None
        raise AssertionError("unreachable")

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        import psycopg
        from psycopg.conninfo import make_conninfo

        if self._conn is None or self._conn.closed:
            db = self.db
            params: dict[str, Any] = {
                "host": db.host, "port": db.port, "dbname": db.upstream_dbname,
                "user": db.user, "sslmode": db.sslmode,
                "application_name": "pgtenant-placement",
                "connect_timeout": max(1, int(db.server_connect_timeout))}
            if db.sslrootcert:
                params["sslrootcert"] = db.sslrootcert
            if self._password is not None:
                params["password"] = self._password
            self._conn = await psycopg.AsyncConnection.connect(make_conninfo(**params),
                                                               autocommit=True)
        return self._conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


class PlacementRouter:
    """Chooses a placed tenant's pool at login; ends clients of a tenant being moved.

    ``end_client`` ends a client once its current transaction is over (FATAL 57P01).
    Lookups are cached for ``[tenancy] registry_cache_seconds``, like the status check.
    """

    def __init__(self, host: RoutingHost, password: Callable[[DatabaseConfig], str | None],
                 end_client: Callable[[Any], None]) -> None:
        self._host = host
        self._password = password
        self._end_client = end_client
        self._answers: dict[tuple[str, str], _Answer] = {}  # (placement, tenant) -> answer
        self._registries: dict[str, _Registry] = {}
        self._placed: dict[Any, tuple[str, str, str]] = {}  # client -> (placement, tenant, entry)
        self._sweeper: asyncio.Task[None] | None = None

    def placement_of(self, database: str) -> Placement | None:
        """The placement clients of ``database`` are routed by (its name or an entry's)."""
        placements = self._host.config.placement
        found = placements.get(database)
        if found is not None or not placements:
            return found
        return next((p for p in placements.values() if database in p.entries), None)

    def front_pool(self, database: str) -> ServerPool | None:
        """At startup, before the tenant is known: the pool of ``database``, or of its
        placement's default entry when the name is not an entry itself."""
        pool = self._host.pools.get(database)
        if pool is None and database in self._host.config.placement:
            pool = self._host.pools.get(self._host.config.placement[database].default)
        return pool

    async def place(self, client: PlacedClient) -> ServerPool | None:
        """The pool of the client's tenant, or None when placement does not apply (no
        placement for its database, no tenant: a bypass service account). Raises
        :class:`PlacementRefused` for a tenant being moved, or one the registry refuses."""
        tenant = client.context.tenant if client.context is not None else None
        placement = self.placement_of(client.database)
        if placement is None or tenant is None:
            return None
        answer = await self._answer(placement, tenant)
        if answer.status == MOVING:
            raise PlacementRefused("57P03", f"tenant \"{tenant}\" is being moved to another "
                                   "cluster; try again shortly")
        if self._host.config.tenancy.require_registered_tenant and answer.status != "active":
            what = "is suspended" if answer.status == "suspended" else "is not registered"
            raise PlacementRefused("28000", f"tenant \"{tenant}\" {what}")
        pool = self._host.pools.get(answer.entry)
        if pool is None or answer.entry not in placement.entries:
            log.error("tenant %s is placed on %r, which is not an entry of placement %s",
                      tenant, answer.entry, placement.name)
            raise PlacementRefused("3D000", f"tenant \"{tenant}\" is placed on "
                                   f"\"{answer.entry}\", which is not an entry of "
                                   f"\"{placement.name}\"")
        self._placed[client] = (placement.name, tenant, answer.entry)
        self._start_sweeper()
        return pool

    async def _answer(self, placement: Placement, tenant: str, *,
                      fresh: bool = False) -> _Answer:
        key = (placement.name, tenant)
        now = time.monotonic()
        cached = self._answers.get(key)
        if cached is not None and cached.expires > now and not fresh:
            return cached
        status: str | None = None
        registered: str | None = None
        if placement.registry is not None:
            try:
                status, registered = await self._registry(placement.registry).lookup(tenant)
            except _RegistryUnreadable as exc:
                log.warning("placement %s: cannot read the registry in %s: %s",
                            placement.name, placement.registry, exc)
                raise PlacementRefused("08006", "could not read the tenant registry") from None
        ttl = self._host.config.tenancy.registry_cache_seconds
        answer = _Answer(status, placement.entry_for(tenant, registered), now + ttl)
        self._answers[key] = answer
        return answer

    def _registry(self, entry: str) -> _Registry:
        db = self._host.config.databases[entry]
        registry = self._registries.get(entry)
        if registry is None or registry.db != db:  # new, or changed by a reload
            if registry is not None:
                asyncio.get_running_loop().create_task(registry.close())
            registry = self._registries[entry] = _Registry(db, self._password(db))
        return registry

    # ---- clients of a tenant being moved ----------------------------------------------

    def _start_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while self._placed:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await self.sweep()
            except Exception:
                log.exception("placement sweep failed")

    async def sweep(self) -> None:
        """End the clients whose tenant is now ``moving`` or placed on another entry, each
        once its transaction is over. Registry answers are re-read when expired; a registry
        that cannot be read keeps the last answer (clients are not ended on a blip)."""
        placements = self._host.config.placement
        by_tenant: dict[tuple[str, str], list[tuple[Any, str]]] = {}
        for client, (name, tenant, entry) in self._placed.items():
            by_tenant.setdefault((name, tenant), []).append((client, entry))
        for (name, tenant), clients in by_tenant.items():
            placement = placements.get(name)
            if placement is None:  # removed by a reload: its clients finish as they are
                continue
            try:
                answer = await self._answer(placement, tenant)
            except PlacementRefused:
                continue
            for client, entry in clients:
                if answer.status == MOVING or answer.entry != entry:
                    log.info("tenant %s: %s; ending its client once its transaction ends",
                             tenant, "being moved" if answer.status == MOVING
                             else f"now placed on {answer.entry}")
                    if self._placed.pop(client, None) is not None:
                        self._end_client(client)

    def forget(self, client: Any) -> None:
        """The client has gone."""
        self._placed.pop(client, None)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for registry in self._registries.values():
            await registry.close()
        self._registries.clear()
