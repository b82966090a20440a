"""The counters of one pool (``ServerPool.stats``), in a module of their own: the pool,
its wait queue (:mod:`proxy.pool.waits`) and its leases move them, and a compiled
attribute update is native only when the counter object's class is known where it is
updated (through a Protocol it is a generic getattr and setattr).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class PoolStats:
    leases: int = 0
    leases_with_context_set: int = 0
    acquire_timeouts: int = 0
    server_errors: int = 0
    servers_opened: int = 0
    servers_closed: int = 0
    wait_seconds_total: float = 0.0
    waits: int = 0
    reserve_opened: int = 0   # connections opened beyond pool_size (reserve_pool_size)
    servers_failed_check: int = 0  # idle connections found dead by server_check_delay
    kept_reuses: int = 0      # transactions served by the server their client kept
    kept_reclaimed: int = 0   # kept servers taken back for another client (or PAUSE)
