"""The client side: one client connection from startup to goodbye.

- ``client``: ``ClientConnection`` — the asyncio protocol of one client: its login
  (``login``: startup, TLS, JWT or SCRAM; ``first_server``: the first lease, the tenant
  context and the greeting), then relaying, with its timers and tasks.
- ``interfaces``: ``ClientState``, ``ClientError`` and the Protocols a login and a client
  talk through (``LoginClient``, ``LoginHost``, ``ClientHost``).
- ``relay``: ``ClientRelay`` — the relaying rules without the event loop: the client's
  messages to the server its pool lends it, held as a ``proxy.pool.lease.Lease`` (the lease
  sets the tenant on it and gives it back; transaction mode keeps it between transactions
  while nobody else needs one), the server's replies back. Its bases: ``leasing``
  (``ClientLeasing``: the messages waiting for a server, the lease and the context set
  before they go out) and ``named_statements`` (``NamedStatementRelay``: named prepared
  statements rewritten onto the server's, in transaction mode).
- ``requests``: what a batch of client messages asks of a server (pure).
- ``guarding``: the SQL guard in the client's message stream.

Sits on ``proxy.pool`` and ``proxy.backend``; nothing below imports it.
"""
