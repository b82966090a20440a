"""Admin console commands run against one proxy process: SQL text in, an Answer out.

Dispatch over the proxy's state (the statements themselves are parsed by
:mod:`proxy.admin.commands`). Each command answers with real
RowDescription/DataRow/CommandComplete messages (text columns), so psql renders tables
and drivers read rows; the session adds ReadyForQuery. Commands (case-insensitive, an
optional trailing ``;``, several may be separated by ``;``)::

    SHOW POOLS | CLIENTS | SERVERS | TENANTS | STATS | CONFIG | HELP
    PAUSE [db]   RESUME [db]   RELOAD   KILL_CLIENT id   SHUTDOWN

Under a supervisor (``[server] workers`` > 1) the console of the worker an admin lands on
sends every command but ``SHOW CONFIG``/``SHOW HELP``/``SET`` to the supervisor, which runs
it on every worker (:mod:`proxy.admin.cluster`) and merges the answers.
See ``docs/operations.md`` for what each column means.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from proxy.admin import control
from proxy.admin.commands import (
    COMMANDS,
    LOCAL_ONLY,
    Answer,
    ConsoleError,
    Row,
    parse,
)
from proxy.backend.server import ContextMark, TenantState
from proxy.config import ConfigError
from proxy.tasks import TaskSet
from proxy.wire import messages

if TYPE_CHECKING:
    from proxy.app import ProxyApp
    from proxy.pool.pool import ServerPool

log = logging.getLogger("pgtenant.admin")

_background = TaskSet()  # fire-and-forget messages to the supervisor

PAUSE_POLL = 0.02  # seconds between two looks at the pools a PAUSE waits for


async def _tell_supervisor(path: str, statement: str) -> None:
    try:
        await control.ask_briefly(path, statement)
    except (OSError, EOFError, ValueError, TimeoutError, ConsoleError) as exc:
        log.error("the supervisor did not take %r: %r", statement, exc)


def _table(columns: list[str], rows: Iterable[Row]) -> Answer:
    listed = list(rows)
    return Answer(f"SHOW {len(listed)}", columns, listed)


def _seconds(value: float) -> str:
    return f"{value:.3f}"


def _tenant_label(state: TenantState) -> str | None:
    """SHOW SERVERS' tenant: the tenant the setting holds (also after a client's RESET:
    that tenant or the default), ``(pristine)`` or ``(unknown)``; NULL for bypass."""
    if isinstance(state, ContextMark):
        return f"({state.value})"
    return state.tenant


class AdminConsole:
    """Runs console commands against one :class:`ProxyApp` (and, under a supervisor,
    through it against every worker)."""

    def __init__(self, app: ProxyApp, client_id: int = 0) -> None:
        self.app = app
        self.client_id = client_id  # the admin's own client id (SHOW CLIENTS marks it)
        self._show: dict[str, Callable[[], Answer]] = {
            "POOLS": self.show_pools,
            "CLIENTS": self.show_clients,
            "SERVERS": self.show_servers,
            "TENANTS": self.show_tenants,
            "STATS": self.show_stats,
            "CONFIG": self.show_config,
            "HELP": self.show_help,
        }

    async def execute(self, sql: str) -> bytes:
        """Run every ``;``-separated command of a simple Query; stop at the first error."""
        out: list[bytes] = []
        statements = [s.strip() for s in sql.split(";")]
        statements = [s for s in statements if s]
        if not statements:
            return messages.empty_query_response()
        for statement in statements:
            try:
                out.append((await self.run(statement)).encode())
            except ConsoleError as exc:
                out.append(messages.error_response(exc.sqlstate, str(exc), hint=exc.hint))
                break
        return b"".join(out)

    async def run(self, statement: str) -> Answer:
        """One command, without its ``;``: on this process, or on every worker."""
        command = parse(statement)
        worker = self.app.worker
        if worker is None or (command.verb, command.arg) in LOCAL_ONLY:
            return await self.run_local(statement)
        if command.verb == "SHUTDOWN":
            # After this answer is written (the task's current step), not before it.
            asyncio.get_running_loop().call_soon(
                _background.spawn, _tell_supervisor(worker.supervisor_socket(), statement))
            return Answer("SHUTDOWN")
        try:
            answer = await control.ask(worker.supervisor_socket(), statement)
        except (OSError, EOFError, ValueError) as exc:
            raise ConsoleError("58000", f"the supervisor did not answer ({exc!r})",
                               "a command that needs every worker cannot run now; "
                               "signal the supervisor instead") from None
        if command.arg == "CLIENTS" and answer.columns is not None:
            mine, me = answer.columns.index("id"), answer.columns.index("self")
            for row in answer.rows:
                row[me] = "yes" if row[mine] == str(self.client_id) else "no"
        return answer

    async def run_local(self, statement: str) -> Answer:
        """One command against this process only."""
        command = parse(statement)
        if command.verb == "SHOW":
            assert command.arg is not None
            return self._show[command.arg]()
        if command.verb == "PAUSE":
            return await self.pause(command.arg)
        if command.verb == "RESUME":
            return self.resume(command.arg)
        if command.verb == "RELOAD":
            return self.reload()
        if command.verb == "KILL_CLIENT":
            assert command.arg is not None
            return self.kill_client(command.arg)
        if command.verb == "SHUTDOWN":
            self.app.request_shutdown()
            return Answer("SHUTDOWN")
        return Answer("SET")

    # ---- SHOW -------------------------------------------------------------------------

    def _pools(self) -> list[ServerPool]:
        """Every pool: each database's own, then the bypass service accounts' pools."""
        return [*self.app.pools.values(), *self.app.service_pools.values()]

    def show_pools(self) -> Answer:
        app = self.app
        now = time.monotonic()
        rows: list[Row] = []
        for pool in self._pools():
            clients = [c for c in app.clients if c.pool is pool]
            linked = sum(1 for c in clients if c.is_active)
            waiting = sum(1 for w in pool.waiters if not w.done()) + pool.paused_waiting
            waiting = min(waiting, len(clients) - linked)
            rows.append([
                pool.db.name, pool.db.pool_mode, "yes" if pool.paused else "no",
                str(linked), str(waiting), str(len(clients) - linked - waiting),
                str(len(pool.active)), str(pool.idle_count), str(pool.connecting),
                str(pool.db.pool_size), _seconds(pool.oldest_wait(now)),
                pool.db.user, app.pool_kind(pool),
            ])
        return _table(["database", "pool_mode", "paused", "cl_active", "cl_waiting",
                       "cl_idle", "sv_active", "sv_idle", "sv_connecting", "pool_size",
                       "maxwait", "user", "kind"], rows)

    def show_clients(self) -> Answer:
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

    def show_servers(self) -> Answer:
        now = time.monotonic()
        rows: list[Row] = []
        for pool in self._pools():
            kind = self.app.pool_kind(pool)
            for server in [*pool.active, *pool.kept, *pool.idle]:
                receiver = server.receiver
                client_id = getattr(receiver, "id", None)
                rows.append([
                    pool.db.name, str(server.backend_pid), server.state.value,
                    _tenant_label(server.tenant_state),
                    None if client_id is None else str(client_id),
                    _seconds(now - server.created_at), _seconds(now - server.last_used),
                    pool.db.user, kind,
                ])
        return _table(["database", "backend_pid", "state", "tenant", "client_id", "age",
                       "idle_for", "user", "kind"], rows)

    def show_tenants(self) -> Answer:
        app = self.app
        connected: dict[str, list[int]] = {}
        for client in app.clients:
            identity = client.identity
            if identity is None:
                continue
            tenant = identity.tenant if identity.tenant is not None else "_bypass"
            counts = connected.setdefault(tenant, [0, 0])
            counts[0] += 1
            counts[1] += client.is_active
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

    def show_stats(self) -> Answer:
        # Traffic is counted per database; pool counters are summed over its pools (its
        # own and those of bypass service accounts).
        rows: list[Row] = []
        for name, pool in self.app.pools.items():
            traffic = pool.traffic
            pools = self._database_pools(name)
            ps = [p.stats for p in pools]
            rows.append([
                name, str(traffic.queries), str(traffic.transactions),
                str(traffic.errors), str(traffic.bytes_in), str(traffic.bytes_out),
                str(sum(s.waits for s in ps)),
                _seconds(sum(s.wait_seconds_total for s in ps)),
                str(sum(s.acquire_timeouts for s in ps)), str(sum(s.leases for s in ps)),
                str(sum(s.leases_with_context_set for s in ps)),
                str(sum(s.servers_opened for s in ps)), str(sum(s.servers_closed for s in ps)),
            ])
        return _table(["database", "queries", "transactions", "errors", "bytes_in",
                       "bytes_out", "waits", "wait_seconds", "wait_timeouts", "leases",
                       "context_sets", "servers_opened", "servers_closed"], rows)

    def show_config(self) -> Answer:
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

    def show_help(self) -> Answer:
        return _table(["command"], ([c] for c in COMMANDS))

    # ---- PAUSE, RESUME ------------------------------------------------------------------

    def _database_pools(self, database: str | None) -> list[ServerPool]:
        """The pools PAUSE/RESUME ``database`` act on: its own and its bypass accounts'."""
        app = self.app
        if database is None:
            return self._pools()
        pool = app.pools.get(database)
        if pool is None:
            raise ConsoleError("3D000", f"database \"{database}\" does not exist",
                               "name one of: " + ", ".join(app.pools))
        return [pool, *(p for (name, _), p in app.service_pools.items() if name == database)]

    async def pause(self, database: str | None) -> Answer:
        """Hold new transactions, wait until no server connection is in use, close the idle
        ones. Waits at most [server] pause_timeout (0: no limit); a PAUSE that fails, is
        interrupted by RESUME, or whose admin goes away, resumes what it paused."""
        pools = self._database_pools(database)
        newly = [p for p in pools if not p.paused]
        for pool in pools:
            pool.pause()
        limit = self.app.config.server.pause_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit if limit else None
        try:
            while True:
                if not all(p.paused for p in pools):
                    raise ConsoleError("57014", "PAUSE interrupted: RESUME was run while it "
                                                "waited; the pause was undone")
                busy = [p for p in pools if p.in_use]
                if not busy:
                    break
                if deadline is not None and loop.time() >= deadline:
                    raise ConsoleError(
                        "57014", f"PAUSE did not complete within pause_timeout ({limit:g}s): "
                                 f"{self._still_in_use(busy)}; the pause was undone",
                        "let those transactions finish or end them with KILL_CLIENT, then "
                        "PAUSE again ([server] pause_timeout = 0 waits without limit)")
                await asyncio.sleep(PAUSE_POLL)
        except BaseException:  # ConsoleError, or cancelled: the admin went away
            for pool in newly:
                pool.resume()
            log.info("PAUSE %s did not complete; resumed", database or "(all)")
            raise
        for pool in pools:
            pool.disconnect_idle()
        log.info("PAUSE %s complete: no server connection in use", database or "(all)")
        return Answer("PAUSE", paused=sorted({p.db.name for p in newly}))

    def _still_in_use(self, busy: list[ServerPool]) -> str:
        parts = []
        for pool in busy:
            holders = sorted(c.id for c in self.app.clients
                             if c.pool is pool and c.server is not None)
            held = (f" (client{'s' if len(holders) > 1 else ''} "
                    f"{', '.join(map(str, holders[:10]))})" if holders else "")
            parts.append(f"database \"{pool.db.name}\" ({self.app.pool_kind(pool)} pool) "
                         f"has {pool.in_use} server connection(s) in use{held}")
        return "; ".join(parts)

    def resume(self, database: str | None) -> Answer:
        for pool in self._database_pools(database):
            pool.resume()
        return Answer("RESUME")

    # ---- RELOAD, KILL_CLIENT ------------------------------------------------------------

    def reload(self) -> Answer:
        try:
            self.app.reload()
        except ConfigError as exc:
            raise ConsoleError("F0000", f"configuration reload refused: {exc}",
                               "the previous configuration stays in effect") from None
        return Answer("RELOAD")

    def kill_client(self, text: str) -> Answer:
        if not self.app.kill_client(int(text)):
            raise ConsoleError("42704", f"no client with id {int(text)}",
                               "see SHOW CLIENTS")
        return Answer("KILL_CLIENT")
