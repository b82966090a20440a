"""The client side: one client connection from startup to goodbye.

- ``client``: ``ClientConnection`` — startup, TLS, JWT or SCRAM login, then relaying the
  client's messages to the server its pool lends it, held as a ``proxy.pool.lease.Lease``
  (the lease sets the tenant on it and gives it back; transaction mode keeps it between
  transactions while nobody else needs one).
- ``guarding``: the SQL guard in the client's message stream.

Sits on ``proxy.pool`` and ``proxy.backend``; nothing below imports it.
"""
