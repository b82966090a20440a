"""The server side: one connection to PostgreSQL and what rides on it.

- ``routing``: ``BackendSession`` — one logged-in session's reply routing without I/O
  (bytes in, calls out): the pending-reply queue that routes each reply (forward, skip,
  collect, amend), and writes held while a cancel is in flight.
- ``session_state``: ``SessionState``, the base of ``BackendSession`` — the session's
  protocol state and the rules that change it: what it still owes, its transaction
  status, and what the proxy knows of the tenant setting (``tenant_state``).
- ``server``: ``ServerConnection`` — the I/O around it: connecting (TLS, authentication),
  the query timer, cancels completing, the scrub and the tenant context set
  (``ServerConnection.apply_context``, the one place their bytes are written;
  ``proxy.pool.lease.Lease`` is its only caller).
- ``context``: ``TenantContext`` (a client's tenant and settings), the bytes that set it
  on a server connection, and ``TenantState`` (pristine, set to a context, stale, unknown).
- ``statements``: the prepared statements of a server and of each client, and the reply
  amendments; ``prepared``: the rewriting of a client's named statements onto them
  (transaction mode); ``deallocate``: a client's DEALLOCATE answered through a stand-in.

Imports nothing above it (``proxy.pool``, ``proxy.frontend``, ``proxy.app``).
"""
