"""Admin console commands: SQL text in, PostgreSQL protocol bytes out.

Pure dispatch over the proxy's state: no sockets here. Each command answers with real
RowDescription/DataRow/CommandComplete messages (text columns), so psql renders tables
and drivers read rows; the session adds ReadyForQuery. Commands (case-insensitive, an
optional trailing ``;``, several may be separated by ``;``)::

    SHOW POOLS | CLIENTS | SERVERS | TENANTS | STATS | CONFIG | HELP
    PAUSE [db]   RESUME [db]   RELOAD   KILL_CLIENT id   SHUTDOWN

See ``docs/operations.md`` for what each column means.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from proxy.config import ConfigError
from proxy.session.server import TenantState
from proxy.wire import messages

if TYPE_CHECKING:
    from proxy.app import ProxyApp
    from proxy.pool.pool import ServerPool

COMMANDS = ("SHOW POOLS", "SHOW CLIENTS", "SHOW SERVERS", "SHOW TENANTS", "SHOW STATS",
            "SHOW CONFIG", "SHOW HELP", "PAUSE [db]", "RESUME [db]", "RELOAD",
            "KILL_CLIENT id", "SHUTDOWN")
_HINT = "commands: " + ", ".join(COMMANDS)

Row = list[str | None]


class ConsoleError(Exception):
    """A command the console refuses; becomes an ErrorResponse (the session goes on)."""

    def __init__(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.hint = hint


def _table(columns: list[str], rows: Iterable[Row]) -> bytes:
    out = [messages.row_description(columns)]
    count = 0
    for row in rows:
        out.append(messages.data_row(row))
        count += 1
    out.append(messages.command_complete(f"SHOW {count}"))
    return b"".join(out)


def _seconds(value: float) -> str:
    return f"{value:.3f}"


def _tenant_label(tenant: object) -> str | None:
    if isinstance(tenant, TenantState):
        return f"({tenant.value})"
    return None if tenant is None else str(tenant)


class AdminConsole:
    """Runs console commands against one :class:`ProxyApp`."""

    def __init__(self, app: ProxyApp, client_id: int = 0) -> None:
        self.app = app
        self.client_id = client_id  # the admin's own client id (SHOW CLIENTS marks it)
        self._show: dict[str, Callable[[], bytes]] = {
            "POOLS": self.show_pools,
            "CLIENTS": self.show_clients,
            "SERVERS": self.show_servers,
            "TENANTS": self.show_tenants,
            "STATS": self.show_stats,
            "CONFIG": self.show_config,
            "HELP": self.show_help,
        }

    def execute(self, sql: str) -> bytes:
        """Run every ``;``-separated command of a simple Query; stop at the first error."""
        out: list[bytes] = []
        statements = [s.strip() for s in sql.split(";")]
        statements = [s for s in statements if s]
        if not statements:
            return messages.empty_query_response()
        for statement in statements:
            try:
                out.append(self.run(statement))
            except ConsoleError as exc:
                out.append(messages.error_response(exc.sqlstate, str(exc), hint=exc.hint))
                break
        return b"".join(out)

    def run(self, statement: str) -> bytes:
        """One command, without its ``;``."""
        words = statement.split()
        verb = words[0].upper()
        args = words[1:]
        if verb == "SHOW" and len(args) == 1 and args[0].upper() in self._show:
            return self._show[args[0].upper()]()
        if verb in ("PAUSE", "RESUME") and len(args) <= 1:
            return self.pause_or_resume(verb, args[0] if args else None)
        if verb == "RELOAD" and not args:
            return self.reload()
        if verb == "KILL_CLIENT" and len(args) == 1:
            return self.kill_client(args[0])
        if verb == "SHUTDOWN" and not args:
            self.app.request_shutdown()
            return messages.command_complete("SHUTDOWN")
        if verb == "SET":  # drivers and psql scripts set client options; nothing to do
            return messages.command_complete("SET")
        raise ConsoleError("42601", f"unknown admin console command: {statement[:80]!r}",
                           _HINT)

    # ---- SHOW -------------------------------------------------------------------------

    def _pools(self) -> list[ServerPool]:
        return list(self.app.pools.values())

    def show_pools(self) -> bytes:
        app = self.app
        now = time.monotonic()
        rows: list[Row] = []
        for pool in self._pools():
            clients = [c for c in app.clients if c.pool is pool]
            linked = sum(1 for c in clients if c.server is not None)
            waiting = sum(1 for w in pool.waiters if not w.done()) + pool.paused_waiting
            waiting = min(waiting, len(clients) - linked)
            rows.append([
                pool.db.name, pool.db.pool_mode, "yes" if pool.paused else "no",
                str(linked), str(waiting), str(len(clients) - linked - waiting),
                str(len(pool.active)), str(len(pool.idle)), str(pool.connecting),
                str(pool.db.pool_size), _seconds(pool.traffic.oldest_wait(now)),
            ])
        return _table(["database", "pool_mode", "paused", "cl_active", "cl_waiting",
                       "cl_idle", "sv_active", "sv_idle", "sv_connecting", "pool_size",
                       "maxwait"], rows)

    def show_clients(self) -> bytes:
        rows: list[Row] = []
        for client in sorted(self.app.clients, key=lambda c: c.id):
            identity = client.identity
            tenant = None
            if identity is not None:
                tenant = identity.tenant if identity.tenant is not None else "(bypass)"
            server = client.server
            rows.append([
                str(client.id), client.database, tenant, client.state.value, client.peer,
                "yes" if client.tls else "no",
                str(server.backend_pid) if server is not None else None,
                "yes" if client.id == self.client_id else "no",
            ])
        return _table(["id", "database", "tenant", "state", "addr", "tls", "server_pid",
                       "self"], rows)

    def show_servers(self) -> bytes:
        now = time.monotonic()
        rows: list[Row] = []
        for pool in self._pools():
            for server in [*pool.active, *pool.idle]:
                receiver = server.receiver
                client_id = getattr(receiver, "id", None)
                rows.append([
                    pool.db.name, str(server.backend_pid), server.state.value,
                    _tenant_label(server.tenant),
                    None if client_id is None else str(client_id),
                    _seconds(now - server.created_at), _seconds(now - server.last_used),
                ])
        return _table(["database", "backend_pid", "state", "tenant", "client_id", "age",
                       "idle_for"], rows)

    def show_tenants(self) -> bytes:
        app = self.app
        connected: dict[str, list[int]] = {}
        for client in app.clients:
            identity = client.identity
            if identity is None:
                continue
            tenant = identity.tenant if identity.tenant is not None else "_bypass"
            counts = connected.setdefault(tenant, [0, 0])
            counts[0] += 1
            counts[1] += client.server is not None
        # Read-only look at every tracked tenant (export() would re-rank metric labels).
        tracked = app.stats.tenants._tenants
        rows: list[Row] = []
        for tenant in sorted(set(tracked) | set(connected)):
            stats = tracked.get(tenant)
            clients, active = connected.get(tenant, (0, 0))
            violations = ""
            if stats is not None:
                violations = ",".join(f"{kind}={n}" for kind, n in
                                      sorted(stats.violations.items()))
            rows.append([
                tenant, str(clients), str(active),
                str(stats.queries if stats else 0), str(stats.transactions if stats else 0),
                str(stats.errors if stats else 0),
                _seconds(stats.wait_seconds if stats else 0.0),
                str(sum(stats.violations.values()) if stats else 0), violations,
            ])
        return _table(["tenant", "clients", "active", "queries", "transactions", "errors",
                       "wait_seconds", "violations", "violation_kinds"], rows)

    def show_stats(self) -> bytes:
        rows: list[Row] = []
        for pool in self._pools():
            traffic = pool.traffic
            ps = pool.stats
            rows.append([
                pool.db.name, str(traffic.queries), str(traffic.transactions),
                str(traffic.errors), str(traffic.bytes_in), str(traffic.bytes_out),
                str(ps.waits), _seconds(ps.wait_seconds_total), str(ps.acquire_timeouts),
                str(ps.leases), str(ps.leases_with_context_set), str(ps.servers_opened),
                str(ps.servers_closed),
            ])
        return _table(["database", "queries", "transactions", "errors", "bytes_in",
                       "bytes_out", "waits", "wait_seconds", "wait_timeouts", "leases",
                       "context_sets", "servers_opened", "servers_closed"], rows)

    def show_config(self) -> bytes:
        config = self.app.config
        rows: list[Row] = [["path", config.path]]

        def section(prefix: str, obj: object) -> None:
            for f in dataclasses.fields(obj):  # type: ignore[arg-type]
                if f.name == "name":
                    continue
                value = getattr(obj, f.name)
                if isinstance(value, tuple):
                    value = ", ".join(value)
                rows.append([f"{prefix}.{f.name}", None if value is None else str(value)])

        # Only names of secrets (*_env, *_file) are in the config; values never are.
        section("server", config.server)
        section("auth.jwt", config.auth.jwt)
        section("tenancy", config.tenancy)
        for name, db in config.databases.items():
            section(f"databases.{name}", db)
        rows.append(["admin.users", ", ".join(sorted(config.admin.users)) or None])
        return _table(["key", "value"], rows)

    def show_help(self) -> bytes:
        return _table(["command"], ([c] for c in COMMANDS))

    # ---- actions ----------------------------------------------------------------------

    def pause_or_resume(self, verb: str, database: str | None) -> bytes:
        pools = self._pools()
        if database is not None:
            pool = self.app.pools.get(database)
            if pool is None:
                raise ConsoleError("3D000", f"database \"{database}\" does not exist",
                                   "name one of: " + ", ".join(self.app.pools))
            pools = [pool]
        for pool in pools:
            if verb == "PAUSE":
                pool.pause()
            else:
                pool.resume()
        return messages.command_complete(verb)

    def reload(self) -> bytes:
        try:
            self.app.reload()
        except ConfigError as exc:
            raise ConsoleError("F0000", f"configuration reload refused: {exc}",
                               "the previous configuration stays in effect") from None
        return messages.command_complete("RELOAD")

    def kill_client(self, text: str) -> bytes:
        if not text.isascii() or not text.isdigit():
            raise ConsoleError("42601", f"KILL_CLIENT expects a client id, got {text[:40]!r}",
                               "the id column of SHOW CLIENTS")
        if not self.app.kill_client(int(text)):
            raise ConsoleError("42704", f"no client with id {int(text)}",
                               "see SHOW CLIENTS")
        return messages.command_complete("KILL_CLIENT")
