"""The admin console: database ``pgtenant``, SCRAM-authenticated, PgBouncer-like commands.

- :mod:`proxy.admin.scram`: the server side of SCRAM-SHA-256 (sans-I/O).
- :mod:`proxy.admin.console`: the command dispatcher (SQL text in, protocol bytes out).
- :mod:`proxy.admin.session`: the asyncio protocol a ``ClientConnection`` hands over to.
"""
