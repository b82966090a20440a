"""The pools: server connections lent to clients.

- ``pool``: ``ServerPool`` — what the proxy calls: acquire, wait_for_server,
  maintenance, shutdown, PAUSE/RESUME, reload; it is ``PoolServers`` plus these.
- ``servers``: ``PoolServers`` — the server connections of one database entry, each in
  one state (connecting, idle, kept, active), and the only code that moves them: lease,
  keep, take back, check, reset, offer (a server that comes back goes to a waiting
  client here, ``_offer``), open, close.
- ``waits``: ``Waits`` — the clients waiting for a server, in arrival order: their
  timeouts and reserve openings (one timer), which waiter a freed server goes to, the
  patience rule (idle servers of other tenants after a moment), clients held by PAUSE.
- ``selection``: ``Selection`` — which server a client gets and which waiting client a
  freed server goes to (pure: no I/O), over idle and kept servers indexed by tenant.
- ``lease``: ``Lease`` — one server connection lent to one client: the only code that
  sets the tenant context on it (and so runs the scrub) and the only way it goes back.

Each module imports only modules listed after it; ``waits`` reaches the pool through
its ``Supplier`` protocol, ``lease`` through ``Lender`` (a base class of
``PoolServers``: a vtable call when compiled). Sits on ``proxy.backend``;
knows no client (``proxy.frontend`` is above it).
"""
