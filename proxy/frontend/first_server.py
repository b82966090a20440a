"""A client's first server: placement, the lease, the tenant context, the greeting.

The last step of a login (:mod:`proxy.frontend.login`), once the client has proved who
it is: the tenant's cluster is chosen, a server is leased and given the client's tenant
context (and scrubbed, when it last served another tenant), the tenant registry is
checked, and the client is greeted with the server's parameters, its cancel key and
ReadyForQuery. Apart from the login's startup and authentication, which only read
bytes from the client; this step waits on the pool and the server.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Final

from proxy.backend.server import ServerError, ServerState
from proxy.frontend.interfaces import ClientError, ClientState, LoginClient, LoginHost
from proxy.placement import PlacementRefused  # --- placement ---
from proxy.pool.pool import PoolTimeoutError
from proxy.wire import authentication, messages
from proxy.wire.tags import BackendTag

if TYPE_CHECKING:
    from proxy.backend.context import TenantContext
    from proxy.backend.server import ServerConnection
    from proxy.pool.lease import Lease

log = logging.getLogger("pgtenant.client")

# Servers a login tries when each dies before the client's first message reached it.
_LEASE_ATTEMPTS: Final = 3


async def greet_on_first_server(client: LoginClient, settings: dict[str, str]) -> bool:
    """Lease a server, give it the client's context, greet the client with its parameters.

    ``settings`` are the client's startup settings; they are updated to the server's
    spellings. False when the client was refused or went away (it has been told).
    """
    app = client.app
    assert client.pool is not None and client.context is not None
    # --- placement (proxy/placement.py): the tenant's own cluster, known only now ---
    try:
        placed = await app.router.place(client)
    except PlacementRefused as refused:
        client.fatal(refused.sqlstate, str(refused))
        return False
    if placed is not None:
        client.pool, client.traffic = placed, placed.traffic
    # --- end placement ---
    lease = await _lease_with_context(client)
    if lease is None:
        return False
    server = lease.server
    tenant = client.context.tenant
    if app.config.tenancy.require_registered_tenant and tenant and placed is None:
        # --- placement --- (the router checked the registry)
        try:
            status = await _registry_status(app, server, tenant)
        except ServerError as no_registry:
            client.fatal(no_registry.sqlstate, str(no_registry))
            return False
        if status != "active":
            app.stats.security.suspended_tenant_attempts += 1
            what = "is suspended" if status == "suspended" else "is not registered"
            log.info("client #%s (%s): tenant %s %s", client.id, client.peer, tenant, what,
                     extra={"client_id": client.id, "tenant": tenant,
                            "database": client.database, "event": "tenant_refused"})
            client.fatal("28000", f"tenant \"{tenant}\" {what}")
            return False
    # Canonical spellings (client_encoding 'utf-8' → 'UTF8') as the server reports them.
    changed = False
    for name in settings:
        value = server.params.get(name)
        if value is not None and value != settings[name]:
            settings[name] = value
            changed = True
    if changed:
        client.context = client.context.with_settings(settings)
        lease.context_changed(client.context)
    client.cancel_pid, client.cancel_secret = app.register_cancel_key(client)
    greeting = [authentication.authentication_ok()]
    greeting.extend(messages.parameter_status(k, v) for k, v in server.params.items())
    greeting.append(messages.backend_key_data(client.cancel_pid, client.cancel_secret))
    greeting.append(messages.ready_for_query(b"I"))
    client.write(b"".join(greeting))
    return True


async def _lease_with_context(client: LoginClient) -> Lease | None:
    """A server leased and linked to the client, carrying its context (and scrubbed,
    when it last served another tenant: even the proxy's own registry query runs on a
    clean backend). None when the client was refused or went away (it has been told).

    A server may die the moment it is lent: PostgreSQL restarted, or the network cut
    every connection while the pool had not yet read the news from an idle one's
    socket. Nothing of the client's has reached it then, so another one is leased, up
    to _LEASE_ATTEMPTS in all, instead of failing the login.
    """
    assert client.pool is not None and client.context is not None
    for attempt in range(1, _LEASE_ATTEMPTS + 1):
        try:
            lease = await client.pool.acquire(client.context.tenant)
        except (PoolTimeoutError, ServerError) as no_server:
            client.fatal(no_server.sqlstate, str(no_server))
            return None
        if client.state is not ClientState.LOGIN:
            lease.release()
            return None
        server = lease.server
        lost = "upstream closed the connection"
        if server.state is not ServerState.CLOSED:  # (it died while the lease was on its way)
            client.link(lease)
            try:
                await _apply_context(lease, client.context)
            except ClientError as not_set:
                client.fatal(not_set.sqlstate, str(not_set))
                return None
            except ServerError as gone:
                lost = str(gone)
            else:
                return lease if client.state is ClientState.LOGIN else None
        if client.state is not ClientState.LOGIN:
            return None
        lease.release()  # (the pool forgot a dead server already: nothing happens)
        log.info("client #%s: server #%s lost at login, before any client message (%s)%s",
                 client.id, server.id, lost,
                 "; leasing another" if attempt < _LEASE_ATTEMPTS else "",
                 extra={"client_id": client.id, "event": "server_replaced"})
    client.fatal("08006", f"server connection lost: {lost}")
    return None


async def _apply_context(lease: Lease, context: TenantContext) -> None:
    """Set our context on the lent server and wait for it (ServerError: it was lost)."""
    fut = lease.set_context(context, counted=False)
    if fut is None:  # same tenant and settings: nothing to set
        return
    error = await fut
    if error is not None:
        raise ClientError(error.get("C", "08006"),
                          f"could not set the session context: {error.get('M', '')}")


async def _registry_status(app: LoginHost, server: ServerConnection, tenant: str) -> str | None:
    """The tenant's status in pgtenant.tenants, cached for registry_cache_seconds."""
    registry = app.registry
    now = time.monotonic()
    cached = registry.get(tenant)
    if cached is not None and cached[1] > now:
        return cached[0]
    rows = await server.query("SELECT pgtenant.tenant_status($1)", [tenant.encode()])
    status: str | None = None
    for tag, body in rows:
        if tag == BackendTag.ERROR_RESPONSE:
            fields = messages.decode_error_fields(body)
            raise ServerError(f"could not read the tenant registry: {fields.get('M', '')}",
                              "08006")
        if tag == BackendTag.DATA_ROW and body[2:6] != b"\xff\xff\xff\xff":
            status = body[6:].decode()
    registry[tenant] = (status, now + app.config.tenancy.registry_cache_seconds)
    return status
