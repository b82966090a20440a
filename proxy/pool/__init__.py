"""The pools: server connections lent to clients.

- ``pool``: ``ServerPool`` — the server connections of one database entry (idle, kept,
  active, connecting), waiting clients, maintenance, PAUSE/RESUME, reload.
- ``selection``: ``Selection`` — which server a client gets and which waiting client a
  freed server goes to (pure: no I/O), over idle and kept servers indexed by tenant.
- ``lease``: ``Lease`` — one server connection lent to one client: the only code that
  sets the tenant context on it (and so runs the scrub) and the only way it goes back.

Sits on ``proxy.backend``; knows no client (``proxy.frontend`` is above it).
"""
