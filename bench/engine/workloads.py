"""The engine bench's transactions and workloads, and the fields of a workload's result.

One pgbench -S transaction (simple, extended or prepared protocol) as a client sends it
and the exact reply PostgreSQL sends back; the workloads (clients, pool mode, tenants);
:class:`WorkloadResult`, what the JSON output records. No proxy and no event loop here:
what is measured, not how.
"""

from __future__ import annotations

import dataclasses

from bench.fakepg import (
    ABALANCE,
    BIND_COMPLETE,
    INT4_OID,
    PARSE_COMPLETE,
    READY_IDLE,
    bind,
    command_complete,
    data_row,
    describe,
    execute,
    parse,
    query,
    row_description,
    sync,
)

TENANT = "acme"
# pgbench -S picks a random aid per transaction. In a simple Query it is in the text, which
# then differs each time (the guard answers it by its shape, not from its cache of exact
# texts): 16 aids of six digits, sent in turn (one shape; the fake PostgreSQL's memo stays
# small). In a Bind it is a parameter the proxy never reads: one aid.
AIDS = tuple(100_000 + 7_919 * i for i in range(16))
SELECT_PARAM = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
PREPARED_NAME = "P0_1"




@dataclasses.dataclass(frozen=True, slots=True)
class Workload:
    name: str
    protocol: str       # simple | extended | prepared
    clients: int
    pool_mode: str      # transaction | session
    # > 1: client i is of tenant i % tenants (its own JWT), and the clients run as
    # pgbench's do, each sending its next transaction once its reply is in (through the
    # event loop: more clients than pool_size wait in the pool).
    tenants: int = 1
    # Event-loop passes between a client's reply and its next transaction (pgbench-like
    # workloads): a client's think time, while its server may be kept for it.
    think: int = 0

    @property
    def pgbench_like(self) -> bool:
        return self.tenants > 1


WORKLOADS = (
    Workload("simple-c1", "simple", 1, "transaction"),
    Workload("simple-c8", "simple", 8, "transaction"),
    Workload("extended-c1", "extended", 1, "transaction"),
    Workload("extended-c8", "extended", 8, "transaction"),
    Workload("prepared-c1", "prepared", 1, "transaction"),
    Workload("prepared-c8", "prepared", 8, "transaction"),
    # More clients than pool_size (20): each round 44 of them wait, and each server's
    # ReadyForQuery hands it to a waiter (./dev bench's c64 rows).
    Workload("simple-c64", "simple", 64, "transaction"),
    Workload("session-simple-c1", "simple", 1, "session"),
    Workload("session-simple-c8", "simple", 8, "session"),
    # ./dev bench's tenant-c32: 8 tenants x 4 clients, 32 clients for pool_size 20.
    Workload("tenant-c32", "extended", 32, "transaction", tenants=8, think=1),
)


def requests_and_reply(protocol: str) -> tuple[tuple[bytes, ...], bytes]:
    """pgbench -S transactions as a client sends them (sent in turn; simple: one per aid
    of :data:`AIDS`), and PostgreSQL's exact reply (the same for every aid)."""
    columns = row_description((("abalance", INT4_OID),))
    rows = data_row((ABALANCE,)) + command_complete("SELECT 1") + READY_IDLE
    if protocol == "simple":
        requests = tuple(
            query(f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};") for aid in AIDS)
        return requests, columns + rows
    aid = [str(AIDS[0]).encode()]
    if protocol == "extended":
        request = (parse("", SELECT_PARAM) + bind("", "", aid) + describe(b"P", "")
                   + execute() + sync())
        return (request,), PARSE_COMPLETE + BIND_COMPLETE + columns + rows
    if protocol == "prepared":
        request = bind("", PREPARED_NAME, aid) + describe(b"P", "") + execute() + sync()
        return (request,), BIND_COMPLETE + columns + rows
    raise ValueError(f"unknown protocol {protocol!r}")


@dataclasses.dataclass(slots=True)
class WorkloadResult:
    workload: str
    guard: bool
    clients: int
    pool_mode: str
    protocol: str
    transactions: int           # per repeat
    repeats_us: list[float]     # CPU µs per transaction (this thread), one per repeat
    us_per_tx: float            # median of repeats_us
    wall_us_per_tx: float       # median of the repeats' wall time per transaction
    proxy_calls_per_tx: float   # Python function calls in proxy/ (profiled run)
    builtin_calls_per_tx: float  # builtins (C functions, methods) called by proxy/ code
    all_calls_per_tx: float     # every Python function call, the harness's included
    loop_waits_per_tx: float    # extra event-loop passes a reply needed (0: none)
    checked: int                # transactions whose reply was compared byte for byte
    servers_opened: int
    fake_replies_computed: int  # fake PostgreSQL replies not from its memo (whole run)
    delivery: str = "sync"      # server replies: after each callback, or by the event loop
    # The pool, per transaction of the timed repeats: clients that waited for a server,
    # tenant context sets (a lease to another tenant's or a fresh server), kept servers
    # taken back from their client.
    pool_waits_per_tx: float = 0.0
    tenant_sets_per_tx: float = 0.0
    kept_reclaims_per_tx: float = 0.0
    top_calls: list[tuple[str, float]] = dataclasses.field(default_factory=list)
