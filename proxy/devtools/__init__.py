"""Development tooling: a throwaway PostgreSQL for ``pgtenant demo``, the tests and the benchmarks.

Nothing in the proxy itself imports this package. Modules:

- ``host``: the PostgreSQL server binaries, the OS user they run as, a free port.
- ``cluster``: :class:`EmbeddedPostgres`, one throwaway cluster's life cycle.
- ``provisioning``: the demo application database (upstream role, RLS-confined ``items``).
- ``demo``: ``pgtenant demo``, a cluster with two tenants and the proxy in front of it.
"""

from proxy.devtools.cluster import DEFAULT_SETTINGS, EmbeddedPostgres, ShutdownMode, Statement
from proxy.devtools.host import EmbeddedPostgresError, find_bindir, free_port, server_account
from proxy.devtools.provisioning import (
    DEFAULT_TENANTS,
    SEED_ITEMS_PER_TENANT,
    provision_app,
    reset_items,
)

__all__ = [
    "DEFAULT_SETTINGS",
    "DEFAULT_TENANTS",
    "SEED_ITEMS_PER_TENANT",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "ShutdownMode",
    "Statement",
    "find_bindir",
    "free_port",
    "provision_app",
    "reset_items",
    "server_account",
]
