"""Tenancy helpers shared by the proxy and the database tooling in ``policies/``.

- ``proof``: the HMAC that makes the tenant context unforgeable inside PostgreSQL; the
  proxy computes it on each lease, ``policies`` installs the SQL that checks it.

The proxy never imports ``policies``; ``policies`` imports from here.
"""
