"""The admin console: database ``pgtenant``, SCRAM-authenticated, PgBouncer-like commands.

- :mod:`proxy.admin.scram`: re-exports :mod:`proxy.auth.scram_server` (SCRAM-SHA-256).
- :mod:`proxy.admin.console`: the command dispatcher (SQL text in, protocol bytes out).
- :mod:`proxy.admin.session`: the asyncio protocol a ``ClientConnection`` hands over to.
"""
