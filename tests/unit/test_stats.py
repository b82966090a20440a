"""Hot-path counters: histogram buckets, tenant label cap, bounded memory, wait tracking."""

from __future__ import annotations

import bisect
import math
import random

import pytest

from proxy.stats import (
    OTHER_TENANT,
    TRANSACTION_BUCKETS,
    WAIT_BUCKETS,
    Histogram,
    ProxyStats,
    TenantStats,
    TenantStatsTable,
)


def totals(table: TenantStatsTable) -> tuple[dict[str, TenantStats], TenantStats, int]:
    """Export once; also the sum of queries over every exported series."""
    per_tenant, other = table.export()
    return per_tenant, other, sum(s.queries for s in per_tenant.values()) + other.queries


def add_queries(table: TenantStatsTable, tenant: str, n: int) -> None:
    table.get(tenant).queries += n


def test_histogram_buckets_are_upper_bounds_inclusive() -> None:
    hist = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        hist.observe(v)
    assert hist.cumulative() == [(0.1, 2), (1.0, 4), (float("inf"), 5)]
    assert hist.count == 5
    assert hist.sum == pytest.approx(8.65)


def _edge_values(bounds: tuple[float, ...]) -> list[float]:
    """Every bound, its float neighbours and near misses, plus random durations."""
    rng = random.Random(20261202)
    values = [0.0, -0.0, -1e-9, -0.0004, 1e-9, 0.25, 0.2499999, 1e3, 1e9]
    for bound in bounds:
        values += [bound, math.nextafter(bound, 0.0), math.nextafter(bound, math.inf),
                   bound * (1 - 1e-12), bound * (1 + 1e-12), bound / 2, bound * 0.999]
    values += [rng.uniform(0.0, 0.3) for _ in range(20_000)]
    values += [math.exp(rng.uniform(-16.0, 5.0)) for _ in range(20_000)]
    values += [k / 2000 for k in range(-2, 700)] + [k / 4000 for k in range(1200)]
    return values


def test_transaction_buckets_found_in_line_are_exactly_the_bisect_buckets() -> None:
    # record_transaction compares with the bounds in line, not bisect: same bucket, same
    # sum, same count as Histogram.observe for every value, boundaries included.
    stats = ProxyStats(["app"])
    traffic = stats.databases["app"]
    reference = Histogram(TRANSACTION_BUCKETS)
    for value in _edge_values(TRANSACTION_BUCKETS):
        before = list(traffic.transaction_seconds.counts)
        stats.record_transaction(traffic, "acme", value)
        reference.observe(value)
        assert traffic.transaction_seconds.counts == reference.counts, value
        assert traffic.transaction_seconds.counts != before, value
    assert traffic.transaction_seconds.sum == reference.sum
    assert traffic.transaction_seconds.count == reference.count == traffic.transactions


def test_only_the_busiest_tenants_get_a_label_the_rest_is_other() -> None:
    table = TenantStatsTable(max_labels=2)
    for tenant, n in {"a": 50, "b": 40, "c": 3, "d": 2, "e": 1}.items():
        add_queries(table, tenant, n)
    per_tenant, other, total = totals(table)
    assert set(per_tenant) == {"a", "b"}
    assert other.queries == 6
    assert total == 96


def test_cap_of_zero_exports_only_other() -> None:
    table = TenantStatsTable(max_labels=0)
    add_queries(table, "a", 5)
    per_tenant, other, _ = totals(table)
    assert per_tenant == {}
    assert other.queries == 5


def test_a_tenant_that_tries_to_break_out_is_never_hidden_in_other() -> None:
    stats = ProxyStats(max_tenant_labels=1)
    add_queries(stats.tenants, "busy", 1000)
    stats.record_violation("quiet", "set_role")
    per_tenant, other, _ = totals(stats.tenants)
    assert set(per_tenant) == {"quiet"}
    assert per_tenant["quiet"].violations == {"set_role": 1}
    assert other.queries == 1000 and other.violations == {}


def test_a_promoted_tenant_reports_its_total_and_other_never_goes_down() -> None:
    table = TenantStatsTable(max_labels=1)
    add_queries(table, "old", 10)
    add_queries(table, "new", 5)
    first, other1, _ = totals(table)
    assert {t: s.queries for t, s in first.items()} == {"old": 10}
    assert other1.queries == 5

    add_queries(table, "new", 20)      # "new" overtakes "old"
    second, other2, _ = totals(table)
    assert {t: s.queries for t, s in second.items()} == {"new": 25}
    assert other2.queries == 25        # new's 25 stay in _other; "old" adds from zero

    add_queries(table, "new", 7)
    add_queries(table, "old", 3)
    third, other3, _ = totals(table)
    assert third["new"].queries == 32
    assert other3.queries == 28


def test_series_only_grow_while_tenants_churn_in_and_out_of_the_labels() -> None:
    table = TenantStatsTable(max_labels=2)
    previous: dict[str, int] = {}
    previous_other = 0
    for round_ in range(40):
        for i in range(6):
            add_queries(table, f"t{i}", (round_ * 7 + i * 13) % 11)
        per_tenant, other, _ = totals(table)
        assert len(per_tenant) <= 2
        assert other.queries >= previous_other
        for tenant, stats in per_tenant.items():
            assert stats.queries >= previous.get(tenant, 0)
        previous = {t: s.queries for t, s in per_tenant.items()}
        previous_other = other.queries


def test_a_tenant_called_other_is_folded_not_labelled() -> None:
    table = TenantStatsTable(max_labels=5)
    add_queries(table, OTHER_TENANT, 100)
    add_queries(table, "acme", 1)
    per_tenant, other, _ = totals(table)
    assert set(per_tenant) == {"acme"}
    assert other.queries == 100


def test_memory_stays_bounded_and_folded_counts_are_kept() -> None:
    table = TenantStatsTable(max_labels=2, max_tracked=100)
    add_queries(table, "whale", 10_000)
    table.export()  # whale gets a label and keeps it through compaction
    for i in range(1000):
        add_queries(table, f"minnow{i:04d}", 1)
    assert len(table) <= 100
    per_tenant, other, _ = totals(table)
    assert per_tenant["whale"].queries == 10_000
    assert len(per_tenant) == 2
    promoted_minnow = sum(s.queries for t, s in per_tenant.items() if t != "whale")
    assert other.queries + promoted_minnow == 1000   # dropped minnows are in _other


def test_proxy_stats_record_into_database_and_tenant() -> None:
    stats = ProxyStats(["app"], max_tenant_labels=10)
    traffic = stats.databases["app"]
    stats.record_queries(traffic, "acme", 3)
    stats.record_transaction(traffic, "acme", 0.002)
    stats.record_error(traffic, "acme")
    assert (traffic.queries, traffic.transactions, traffic.errors) == (3, 1, 1)
    assert traffic.transaction_seconds.count == 1
    per_tenant, _ = stats.tenants.export()
    acme = per_tenant["acme"]
    assert (acme.queries, acme.transactions, acme.errors) == (3, 1, 1)


def test_a_wait_is_counted_once_in_its_database_and_its_tenant() -> None:
    stats = ProxyStats(["app"])
    traffic = stats.databases["app"]
    stats.wait_ended(traffic, "acme", 2.0)
    stats.wait_ended(traffic, None, 0.5)
    assert traffic.wait_seconds.count == 2
    assert traffic.wait_seconds.sum == 2.5
    assert stats.tenants.get("acme").wait_seconds == 2.0


def test_wait_buckets_found_by_scan_are_exactly_the_bisect_buckets() -> None:
    histogram = Histogram(WAIT_BUCKETS)
    for value in _edge_values(WAIT_BUCKETS):
        before = list(histogram.counts)
        histogram.observe(value)
        changed = [i for i, (a, b) in enumerate(zip(before, histogram.counts, strict=True))
                   if a != b]
        assert changed == [bisect.bisect_left(WAIT_BUCKETS, value)], value


def test_auth_failures_share_the_apps_dict() -> None:
    shared: dict[str, int] = {"expired": 2}
    stats = ProxyStats(auth_failures=shared)
    stats.security.record_auth_failure("expired")
    assert shared == {"expired": 3}


def test_bad_caps_are_refused() -> None:
    with pytest.raises(ValueError):
        TenantStatsTable(max_labels=10, max_tracked=5)
