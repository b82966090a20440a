"""Soak: mixed tenant traffic in transaction mode; memory and fds flat, no cross-tenant leak.

Opt-in, like every ``soak`` test (tests/adversity/conftest.py leaves them out of the default
run): ``./dev test -m soak`` runs the one-minute and the ten-minute soak.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from tests.proxy_harness import make_config, subprocess_proxy
from tests.rawclient import RawClient
from tests.support import rss_kib

TENANTS = ("acme", "globex", "initech", "umbrella")
CLIENTS = 16


async def _client_loop(port: int, seed: int, until: float, stats: dict[str, int]) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        tenant = rng.choice(TENANTS)
        client = await RawClient.login(port, tenant)
        for _ in range(rng.randint(5, 50)):  # then reconnect: churn exercises login/close
            kind = rng.random()
            if kind < 0.6:
                rows = await client.query(
                    "SELECT current_setting('app.current_tenant'), tenant_id FROM items")
            elif kind < 0.9:
                await client.query("BEGIN")
                await client.query(f"INSERT INTO items (name) VALUES ('soak-{seed}')")
                rows = await client.query(
                    "SELECT current_setting('app.current_tenant'), tenant_id FROM items")
                await client.query("ROLLBACK")
            else:
                await client.query("SET statement_timeout = '5s'")
                rows = await client.query(
                    "SELECT current_setting('app.current_tenant'), "
                    "current_setting('app.current_tenant')")
            for setting, row_tenant in rows:
                if setting != tenant or row_tenant != tenant:
                    stats["leaks"] += 1
            stats["queries"] += 1
        client.close()


def _soak(app_db: Any, tmp_path: Path, seconds: float) -> None:
    config = make_config(app_db, pool_mode="transaction", pool_size=6)
    samples: list[tuple[float, int, int]] = []
    stats = {"queries": 0, "leaks": 0}
    with subprocess_proxy(config, tmp_path) as (proc, port):

        async def sample(until: float) -> None:
            while time.monotonic() < until:
                await asyncio.sleep(1.0)
                fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
                samples.append((time.monotonic(), rss_kib(proc.pid), fds))

        async def main() -> None:
            until = time.monotonic() + seconds
            await asyncio.gather(sample(until),
                                 *(_client_loop(port, i, until, stats) for i in range(CLIENTS)))

        asyncio.run(main())
        assert proc.poll() is None, "the proxy died"
    warm = max(10, len(samples) // 5)  # warm-up: the first fifth, at least 10 s
    steady = samples[warm:]
    third = max(1, len(steady) // 3)
    first, last = steady[:third], steady[-third:]
    rss_first = statistics.median(s[1] for s in first)
    rss_last = statistics.median(s[1] for s in last)
    fds_first, fds_last = max(s[2] for s in first), max(s[2] for s in last)
    drift = (rss_last - rss_first) / 1024
    print(f"\nsoak {seconds:g}s: {stats['queries']} queries, {stats['leaks']} leaks; RSS "
          f"{rss_first / 1024:.1f} -> {rss_last / 1024:.1f} MiB (drift {drift:+.2f} MiB); "
          f"fds max {fds_first} -> {fds_last}")
    assert stats["leaks"] == 0
    assert stats["queries"] > seconds * 50
    assert drift < max(2.0, rss_first / 1024 * 0.05), "proxy RSS grows under steady load"
    assert fds_last <= fds_first + 4, "proxy leaks file descriptors"


@pytest.mark.soak
def test_soak_one_minute(clean_items: Any, tmp_path: Path) -> None:
    _soak(clean_items, tmp_path, 60)


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_soak_ten_minutes(clean_items: Any, tmp_path: Path) -> None:
    _soak(clean_items, tmp_path, 600)
