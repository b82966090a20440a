"""Prometheus view of a running proxy, computed at scrape time.

:class:`ProxyCollector` reads what the proxy already keeps (pool lists, PoolStats, the
client set, :mod:`proxy.stats`) when Prometheus scrapes; nothing here runs per message.
It must be called on the proxy's event loop (the metrics HTTP server runs there), so it
sees a consistent state without locks. Metric names and meanings: ``docs/metrics.md``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from importlib import metadata
from typing import TYPE_CHECKING, get_args

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from proxy import build
from proxy.auth.errors import AuthReason
from proxy.stats import OTHER_TENANT, Histogram, TenantStats

if TYPE_CHECKING:
    from proxy.app import ProxyApp
    from proxy.pool.pool import ServerPool

# Per-pool series: the database clients name, the upstream role the pool logs in as, and
# the pool's kind (``tenant``: the database's own; ``bypass``: a bypass service account's).
POOL_LABELS = ["database", "user", "kind"]


def build_version() -> str:
    try:
        return metadata.version("pgtenant")
    except metadata.PackageNotFoundError:
        return "unknown"


def _histogram_buckets(hist: Histogram) -> list[tuple[str, float]]:
    return [("+Inf" if bound == float("inf") else repr(bound), float(n))
            for bound, n in hist.cumulative()]


class ProxyCollector(Collector):
    """Every ``pgtenant_*`` metric of one :class:`ProxyApp`."""

    def __init__(self, app: ProxyApp) -> None:
        self.app = app
        self.version = build_version()
        self.compiled = "true" if build.compiled() else "false"

    def collect(self) -> Iterator[Metric]:
        yield from self._process()
        yield from self._pools()
        yield from self._clients()
        yield from self._traffic()
        # One export per scrape: it also re-ranks which tenants get a label.
        per_tenant, other = self.app.stats.tenants.export()
        tenants = [*per_tenant.items(), (OTHER_TENANT, other)]
        yield from self._tenants(tenants)
        yield from self._security(tenants)

    # ---- process ------------------------------------------------------------------------

    def _process(self) -> Iterator[Metric]:
        stats = self.app.stats
        yield GaugeMetricFamily("pgtenant_uptime_seconds",
                                "Seconds since the proxy process started.",
                                value=stats.uptime())
        yield CounterMetricFamily("pgtenant_config_reloads",
                                  "Configuration reloads applied.",
                                  value=stats.config_reloads)
        yield CounterMetricFamily("pgtenant_config_reload_failures",
                                  "Configuration reloads refused (the old config stays).",
                                  value=stats.config_reload_failures)
        info = GaugeMetricFamily("pgtenant_build_info",
                                 "pgtenant version and whether it runs compiled (value is 1).",
                                 labels=["version", "compiled"])
        info.add_metric([self.version, self.compiled], 1)
        yield info

    # ---- pools --------------------------------------------------------------------------

    def _all_pools(self) -> list[tuple[list[str], ServerPool]]:
        """``(labels, pool)`` of every pool: each database's own (kind ``tenant``), then
        those of bypass service accounts (kind ``bypass``, labelled with their role)."""
        app = self.app
        return [([pool.db.name, pool.db.user, app.pool_kind(pool)], pool)
                for pool in [*app.pools.values(), *app.service_pools.values()]]

    def _pools(self) -> Iterator[Metric]:
        servers = GaugeMetricFamily("pgtenant_server_connections",
                                    "Server connections by state.",
                                    labels=[*POOL_LABELS, "state"])
        size = GaugeMetricFamily("pgtenant_pool_size", "Configured pool_size.",
                                 labels=POOL_LABELS)
        saturation = GaugeMetricFamily(
            "pgtenant_pool_saturation",
            "Leased server connections / pool_size (1 = every connection in use).",
            labels=POOL_LABELS)
        paused = GaugeMetricFamily(
            "pgtenant_pool_paused", "1 while the pool is paused (console PAUSE), else 0.",
            labels=POOL_LABELS)
        max_wait = GaugeMetricFamily(
            "pgtenant_pool_wait_max_seconds",
            "How long the longest current waiter for a server connection has waited.",
            labels=["database"])
        waits = HistogramMetricFamily(
            "pgtenant_pool_wait_seconds",
            "Time clients waited for a server connection when none was idle.",
            labels=["database"])
        counters = {
            "acquire_timeouts": CounterMetricFamily(
                "pgtenant_pool_acquire_timeouts",
                "Clients that gave up waiting for a server connection (query_wait_timeout).",
                labels=POOL_LABELS),
            "server_errors": CounterMetricFamily(
                "pgtenant_server_errors",
                "Failures to open or set up a server connection.", labels=POOL_LABELS),
            "servers_opened": CounterMetricFamily(
                "pgtenant_servers_opened", "Server connections opened.", labels=POOL_LABELS),
            "servers_closed": CounterMetricFamily(
                "pgtenant_servers_closed", "Server connections closed.", labels=POOL_LABELS),
            "leases": CounterMetricFamily(
                "pgtenant_pool_leases",
                "Server connections handed to a client.", labels=POOL_LABELS),
            "kept_reuses": CounterMetricFamily(
                "pgtenant_pool_kept_reuses",
                "Transactions served by the server connection their client kept since its "
                "last transaction (no lease needed: nobody else was waiting).",
                labels=POOL_LABELS),
            "kept_reclaimed": CounterMetricFamily(
                "pgtenant_pool_kept_reclaimed",
                "Kept server connections the pool took back for another client, PAUSE or "
                "maintenance.", labels=POOL_LABELS),
            "servers_failed_check": CounterMetricFamily(
                "pgtenant_servers_failed_check",
                "Idle server connections found dead by the server_check_delay check.",
                labels=POOL_LABELS),
            "leases_with_context_set": CounterMetricFamily(
                "pgtenant_pool_context_sets",
                "Times the tenant context had to be set on a leased connection "
                "(leases minus these were served by tenant affinity).", labels=POOL_LABELS),
        }
        all_pools = self._all_pools()
        for labels, pool in all_pools:
            active = len(pool.active)
            servers.add_metric([*labels, "active"], active)
            servers.add_metric([*labels, "idle"], pool.idle_count)
            servers.add_metric([*labels, "connecting"], pool.connecting)
            size.add_metric(labels, pool.db.pool_size)
            saturation.add_metric(labels, active / pool.db.pool_size if pool.db.pool_size else 0)
            paused.add_metric(labels, 1 if pool.paused else 0)
            for field, family in counters.items():
                family.add_metric(labels, getattr(pool.stats, field))
        # Waits are timed per database (its own pool and its bypass pools together).
        stats = self.app.stats
        now = time.monotonic()
        for name in self.app.pools:
            hist = stats.database(name).wait_seconds
            waits.add_metric([name], _histogram_buckets(hist), hist.sum)
            max_wait.add_metric([name], max(pool.oldest_wait(now) for _, pool in all_pools
                                            if pool.db.name == name))
        yield servers
        yield size
        yield saturation
        yield paused
        yield max_wait
        yield waits
        yield from counters.values()

    # ---- clients ------------------------------------------------------------------------

    def _clients(self) -> Iterator[Metric]:
        app = self.app
        pools = self._all_pools()
        linked: dict[int, int] = {id(pool): 0 for _, pool in pools}
        total: dict[int, int] = dict(linked)
        for client in app.clients:
            key = id(client.pool)
            if key in total:
                total[key] += 1
                if client.is_active:
                    linked[key] += 1
        clients = GaugeMetricFamily(
            "pgtenant_clients",
            "Client connections by state: active (linked to a server connection), "
            "waiting (queued for one, or for RESUME), idle (neither).",
            labels=[*POOL_LABELS, "state"])
        for labels, pool in pools:
            key = id(pool)
            idle = total[key] - linked[key]
            waiting = min(sum(1 for w in pool.waiters if not w.done()) + pool.paused_waiting,
                          idle)
            clients.add_metric([*labels, "active"], linked[key])
            clients.add_metric([*labels, "waiting"], waiting)
            clients.add_metric([*labels, "idle"], idle - waiting)
        yield clients
        yield GaugeMetricFamily(
            "pgtenant_client_connections",
            "All client connections, including those still logging in.",
            value=len(app.clients))
        yield GaugeMetricFamily("pgtenant_client_connections_max",
                                "Configured max_client_conn.",
                                value=app.config.server.max_client_conn)

    # ---- traffic ------------------------------------------------------------------------

    def _traffic(self) -> Iterator[Metric]:
        families = {
            "queries": CounterMetricFamily(
                "pgtenant_queries", "Statements (Query messages and Sync-terminated batches) "
                "sent by clients.", labels=["database"]),
            "transactions": CounterMetricFamily(
                "pgtenant_transactions", "Transactions completed.", labels=["database"]),
            "errors": CounterMetricFamily(
                "pgtenant_errors", "ErrorResponses sent to clients.", labels=["database"]),
            "bytes_in": CounterMetricFamily(
                "pgtenant_client_received_bytes", "Bytes received from clients.",
                labels=["database"]),
            "bytes_out": CounterMetricFamily(
                "pgtenant_client_sent_bytes", "Bytes sent to clients.", labels=["database"]),
        }
        durations = HistogramMetricFamily(
            "pgtenant_transaction_duration_seconds",
            "Transaction duration as the proxy sees it (first message to ReadyForQuery 'I').",
            labels=["database"])
        for name, traffic in self.app.stats.databases.items():
            for field, family in families.items():
                family.add_metric([name], getattr(traffic, field))
            hist = traffic.transaction_seconds
            durations.add_metric([name], _histogram_buckets(hist), hist.sum)
        yield from families.values()
        yield durations

    # ---- tenants ------------------------------------------------------------------------

    def _tenants(self, tenants: list[tuple[str, TenantStats]]) -> Iterator[Metric]:
        table = self.app.stats.tenants
        queries = CounterMetricFamily("pgtenant_tenant_queries", "Statements per tenant.",
                                      labels=["tenant"])
        transactions = CounterMetricFamily("pgtenant_tenant_transactions",
                                           "Transactions per tenant.", labels=["tenant"])
        errors = CounterMetricFamily("pgtenant_tenant_errors",
                                     "ErrorResponses per tenant.", labels=["tenant"])
        waited = CounterMetricFamily("pgtenant_tenant_wait_seconds",
                                     "Seconds a tenant's clients waited for a server connection.",
                                     labels=["tenant"])
        for tenant, stats in tenants:
            queries.add_metric([tenant], stats.queries)
            transactions.add_metric([tenant], stats.transactions)
            errors.add_metric([tenant], stats.errors)
            waited.add_metric([tenant], stats.wait_seconds)
        yield queries
        yield transactions
        yield errors
        yield waited
        yield GaugeMetricFamily("pgtenant_tenants_tracked",
                                "Tenants with counters in memory (labelled or in _other).",
                                value=len(table))
        yield GaugeMetricFamily("pgtenant_tenant_label_limit",
                                "Most tenants exported with their own label; the rest "
                                "are summed under tenant=\"_other\".",
                                value=table.max_labels)

    # ---- security -----------------------------------------------------------------------

    def _security(self, tenants: list[tuple[str, TenantStats]]) -> Iterator[Metric]:
        violations = CounterMetricFamily(
            "pgtenant_rls_violation_attempts",
            "Statements the guard refused because they would leave the tenant.",
            labels=["tenant", "kind"])
        for tenant, stats in tenants:
            for kind, n in sorted(stats.violations.items()):
                violations.add_metric([tenant, kind], n)
        yield violations
        security = self.app.stats.security
        auth = CounterMetricFamily("pgtenant_auth_failures",
                                   "Client authentication failures by reason.",
                                   labels=["reason"])
        # Every known reason from the start: a series born at 1 hides its first increase.
        failures = dict.fromkeys(get_args(AuthReason), 0) | security.auth_failures
        for reason, n in sorted(failures.items()):
            auth.add_metric([reason], n)
        yield auth
        yield CounterMetricFamily("pgtenant_suspended_tenant_attempts",
                                  "Logins refused because the tenant is suspended.",
                                  value=security.suspended_tenant_attempts)
        yield from self._jwks()

    def _jwks(self) -> Iterator[Metric]:
        """The identity provider's key set (only with auth.jwt.jwks_url)."""
        remote = self.app.verifier.remote
        if remote is None:
            return
        refreshes = CounterMetricFamily("pgtenant_jwks_refreshes",
                                        "Fetches of the JWKS URL, by result.",
                                        labels=["result"])
        refreshes.add_metric(["ok"], remote.refreshes_ok)
        refreshes.add_metric(["error"], remote.refreshes_failed)
        yield refreshes
        yield GaugeMetricFamily("pgtenant_jwks_keys", "Signing keys in the current set.",
                                value=len(remote.keys))
        yield GaugeMetricFamily("pgtenant_jwks_last_success_timestamp_seconds",
                                "Unix time of the last good fetch (0: never).",
                                value=remote.last_success_unix)


def make_registry(app: ProxyApp) -> CollectorRegistry:
    """A registry of its own (not the global one) holding the proxy's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(app))
    ProcessCollector(registry=registry)  # process_resident_memory_bytes, cpu, fds
    return registry
