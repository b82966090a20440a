"""Microbenchmark of the SQL guard: µs per statement on each path.

Run: ``.venv/bin/python -m bench.guard_bench [--seconds S]``.

Paths: statements the pre-filter (an allow-filter) lets through without parsing, statements that
need the parser without the cache (cache_size=0) and from the cache, and attack
statements (refused) uncached and cached. pglast's bare parse is shown for reference.
The Query-message rows take the proxy's own path (``Guard.analyze_query`` on the message
body, then the verdict): the same bytes again (the by-bytes cache), and pgbench -S's
statement with a new literal every time (by-bytes misses; the clean-shape cache).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from pglast.parser import parse_sql_json

from proxy.config import TenancyConfig
from proxy.guard import Guard, needs_inspection
from proxy.wire import messages

TENANT = "acme"
T = TypeVar("T")

#: Typical ORM statements with no trigger word: the pre-filter skips the parser.
PREFILTERED = [
    "SELECT users.id AS users_id, users.name AS users_name FROM users WHERE users.id = $1",
    "INSERT INTO users (name, email) VALUES ($1, $2) RETURNING users.id",
    "UPDATE users SET name = $1, updated_at = now() WHERE users.id = $2",
    "DELETE FROM sessions WHERE sessions.expires_at < $1",
    'SELECT "auth_user"."id", "auth_user"."username" FROM "auth_user" WHERE '
    '"auth_user"."username" = $1 LIMIT 21 OFFSET 40',
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    'INSERT INTO "public"."Item" ("sku","qty") VALUES ($1,$2) ON CONFLICT ("sku") DO UPDATE '
    'SET "qty" = EXCLUDED."qty" RETURNING "id"',
    "BEGIN ISOLATION LEVEL READ COMMITTED",
    "COMMIT",
    "SHOW standard_conforming_strings",
]
#: Statements that need the parser: session SETs and resets, set_config, upserts,
#: catalog reads (``pg_`` names), statements outside the pre-filter's allow-list.
PARSED = [
    "RESET ALL",
    "DISCARD ALL",
    "SELECT t.typname FROM pg_catalog.pg_type t WHERE t.oid = $1",
    "COPY items (name) FROM STDIN",
    "SELECT set_config('search_path', 'public', false)",
    "SELECT set_config('app.current_tenant', 'acme', true)",
    "SET TIME ZONE 'UTC'",
    "SET search_path TO public",
]
ATTACKS = [
    "SELECT 1; SET app.current_tenant = 'globex'",
    "select * from (select set_config('app.current_tenant', 'globex', false)) s",
    "DO $$ BEGIN PERFORM set_config('app.current_tenant', 'globex', false); END $$",
    "SET ROLE postgres",
    "CREATE TEMP VIEW items AS SELECT 1",
    "SELECT * FROM pg_stat_activity",
    "SELECT pg_terminate_backend(42)",
]


def per_call_us(fn: Callable[[T], object], statements: Sequence[T], seconds: float) -> float:
    """Median over rounds of the mean µs per call, cycling through ``statements``."""
    rounds: list[float] = []
    deadline = time.perf_counter() + seconds
    while True:
        start = time.perf_counter_ns()
        n = 0
        for _ in range(20):
            for sql in statements:
                fn(sql)
                n += 1
        rounds.append((time.perf_counter_ns() - start) / n / 1000)
        if time.perf_counter() > deadline and len(rounds) >= 5:
            return statistics.median(rounds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.guard_bench")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args(argv)
    seconds: float = args.seconds

    assert not any(needs_inspection(s) for s in PREFILTERED)
    assert all(needs_inspection(s) for s in PARSED + ATTACKS)
    tenancy = TenancyConfig()
    cached = Guard(tenancy)
    uncached = Guard(tenancy, cache_size=0)
    assert all(cached.check_query(s, TENANT) is None for s in PREFILTERED + PARSED)
    assert all(cached.check_query(s, TENANT) is not None for s in ATTACKS)

    def query(guard: Guard) -> Callable[[str], object]:
        return lambda sql: guard.check_query(sql, TENANT)

    def query_message(guard: Guard) -> Callable[[bytes], object]:
        def check(body: bytes) -> object:
            return guard.query_verdict(guard.analyze_query(body), TENANT)
        return check

    # More distinct literals than the by-bytes cache holds: every one misses, as with
    # pgbench's random aid (100,000 accounts per scale unit).
    literals = [messages.query(f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};")[5:]
                for aid in range(1, 25_001)]

    rows = [
        ("pre-filter only (no parse)", query(cached), PREFILTERED),
        ("parsed, uncached", query(uncached), PARSED),
        ("parsed, cached hit", query(cached), PARSED),
        ("attack, uncached", query(uncached), ATTACKS),
        ("attack, cached hit", query(cached), ATTACKS),
        ("Query message, same bytes", query_message(cached), literals[:10]),
        ("Query message, new literal each", query_message(cached), literals),
        ("reference: pglast parse_sql_json", parse_sql_json, PARSED),
    ]
    print(f"{'path':<36} {'us/statement':>12}")
    for label, fn, statements in rows:
        print(f"{label:<36} {per_call_us(fn, statements, seconds):>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
