"""Microbenchmark of the per-transaction work that needs no socket: µs per pgbench -S
transaction (simple protocol) for each hot module, on whichever build is imported.

Run: ``.venv/bin/python -m bench.wire_bench [--seconds S]`` for the pure build; for the
compiled one, run the same module with ``.venv-compiled/bin/python`` from a directory
without ``proxy/`` (docs/building.md). The first line says which build ran.

Per transaction the client sends one Query and the server answers RowDescription, DataRow,
CommandComplete and ReadyForQuery 'I', as PostgreSQL answers pgbench's
``SELECT abalance FROM pgbench_accounts WHERE aid = N;``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bench.guard_bench import per_call_us
from proxy import build
from proxy.config import TenancyConfig
from proxy.frontend.guarding import StreamGuard
from proxy.guard import Guard
from proxy.stats import ProxyStats
from proxy.wire import messages
from proxy.wire.framing import BackendScanner, FrontendFramer
from proxy.wire.tags import BackendTag

TENANT = "acme"
# The tags the relay looks at on the server stream (proxy/backend/server.py FORWARD_TAGS).
FORWARD_TAGS = frozenset({BackendTag.READY_FOR_QUERY, BackendTag.ERROR_RESPONSE,
                          BackendTag.PARAMETER_STATUS, BackendTag.COMMAND_COMPLETE,
                          BackendTag.NOTICE_RESPONSE})


def pgbench_select_stream(n: int) -> tuple[list[bytes], list[bytes]]:
    """``n`` transactions of pgbench -S: the client's and the server's bytes, per transaction."""
    sql = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
    client = [messages.query(sql.format(1 + i * 7919 % 100_000)) for i in range(n)]
    reply = (messages.row_description(["abalance"]) + messages.data_row(["0"])
             + messages.command_complete("SELECT 1") + messages.ready_for_query(b"I"))
    return client, [reply] * n


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wire_bench")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args(argv)
    seconds: float = args.seconds
    n = 1000
    client, server = pgbench_select_stream(n)

    framer = FrontendFramer()

    def frame_client(i: int) -> None:
        framer.feed(client[i])
        assert framer.next_batch() is not None

    scanner = BackendScanner(FORWARD_TAGS)

    def scan_server(i: int) -> None:
        assert len(scanner.feed(server[i])) == 2  # CommandComplete, ReadyForQuery

    guard = StreamGuard(Guard(TenancyConfig()), {}, lambda refusal, tag: None,
                        tenant=TENANT, transaction_mode=True)
    batches = []
    for data in client:
        framer.feed(data)
        block = framer.next_batch()
        assert block is not None
        batches.append(block)

    def guard_client(i: int) -> None:
        block = batches[i]
        assert guard.filter(block) is block

    stats = ProxyStats(["app"])
    traffic = stats.database("app")

    def count(i: int) -> None:
        stats.record_queries(traffic, TENANT)
        stats.record_transaction(traffic, TENANT, 0.0002)

    def all_of_it(i: int) -> None:
        frame_client(i)
        guard_client(i)
        scan_server(i)
        count(i)

    print(f"build: {build.describe()}")
    print(f"{'per pgbench -S transaction':<44} {'us':>8}")
    for label, step in [
        ("FrontendFramer feed + next_batch (Query)", frame_client),
        ("StreamGuard.filter (Query, prefiltered)", guard_client),
        ("BackendScanner feed (T, D, C, Z)", scan_server),
        ("ProxyStats record_queries + transaction", count),
        ("all four", all_of_it),
    ]:
        print(f"{label:<44} {per_call_us(step, range(n), seconds):>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
