"""The admin console: database ``pgtenant``, SCRAM-authenticated, PgBouncer-like commands.

- :mod:`proxy.admin.commands`: the console's language (parse a statement, an Answer,
  ConsoleError); no proxy state, no I/O.
- :mod:`proxy.admin.console`: runs commands against one proxy process (SQL text in,
  protocol bytes out).
- :mod:`proxy.admin.control`: one JSON line each way between processes (workers > 1).
- :mod:`proxy.admin.cluster`: the supervisor's side, one command on every worker.
- :mod:`proxy.admin.session`: the asyncio protocol a ``ClientConnection`` hands over to.

SCRAM-SHA-256 itself is :mod:`proxy.auth.scram_server`.
"""
