"""The server side: one connection to PostgreSQL and what rides on it.

- ``server``: ``ServerConnection`` — handshake, the pending-reply queue that routes each
  reply (forward, skip, collect, amend), cancels in flight, the scrub and the tenant
  context set (``ServerConnection.apply_context``, the one place their bytes are written;
  ``proxy.pool.lease.Lease`` is its only caller), and what the proxy knows of the tenant
  setting (``tenant_state``: pristine, set to a context, stale, unknown).
- ``context``: ``TenantContext`` (a client's tenant and settings) and the bytes that set
  it on a server connection.
- ``prepared``: statement names the proxy owns on a server (``ServerStatements``) and the
  rewriting of a client's named statements onto them (transaction mode).

Imports nothing above it (``proxy.pool``, ``proxy.frontend``, ``proxy.app``).
"""
