"""``pgtenant tenants move ID --to ENTRY``: move a tenant's rows to another cluster.

The sequence (docs/scale-out.md tells the why of each step):

1. check: the tenant is registered and not suspended; the destination is an entry of the
   placement; every table to move exists at the destination with the source's columns.
2. mark the tenant ``moving`` in the registry: proxies refuse its new logins (57P03) once
   their cached answer expires, and end its clients as soon as their transaction is over.
3. drain: wait ``drain_seconds`` (at least the proxies' ``registry_cache_seconds``).
4. barrier: ``LOCK TABLE ... IN SHARE MODE`` on the source, released at once. It waits for
   every write transaction still open on the moved tables; none of the tenant's can start
   after step 3. Bounded by ``lock_timeout``: when it expires, nothing was copied, the
   tenant is active again where it was, and the command says to retry.
5. copy: one REPEATABLE READ snapshot on the source, one transaction on the destination;
   per table (parents before children), stale rows of the tenant at the destination (an
   earlier interrupted move) are deleted, then ``COPY ... TO STDOUT`` is streamed into
   ``COPY ... FROM STDIN``. Verify: row count and a content checksum per table, source
   snapshot against destination, before the destination commits.
6. switch: the registry's ``placement`` becomes the destination (status still moving).
7. delete the source rows (unless ``keep_source``), checking the count matches the copy.
8. resume: status ``active``.

The tables moved are those with row-level security enabled and the tenant column (what
``policies protect`` and hand-written tenant policies cover). Not done: schema changes
(both clusters must already have the tables: migrations are the application's), sequences
(ids must not collide across clusters: UUIDs or disjoint ranges; a destination sequence
behind the copied ids is reported), rows in tables without RLS, rows other tables refer to
by foreign key outside the moved set (they must exist at the destination, or the copy
fails and nothing changes), large objects, and writes by bypass service accounts or
direct connections during the move.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from policies.catalog import PolicyError
from policies.check import NOT_SYSTEM_SCHEMA
from policies.registry import validate_tenant_id
from proxy.config.model import Placement
from proxy.config.placement import MOVING

# Tables under RLS with the tenant column; partitions go with their parent.
_TABLES: LiteralString = (
    "SELECT c.oid::int8, n.nspname, c.relname, c.relrowsecurity"
    " FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
    " JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attname = %s"
    "  AND a.attnum > 0 AND NOT a.attisdropped"
    " WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname <> 'pgtenant'"
    " AND " + NOT_SYSTEM_SCHEMA + " ORDER BY 2, 3"
)
_COLUMNS: LiteralString = (
    "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
    " AND NOT attisdropped AND attgenerated = '' ORDER BY attnum"
)
_FOREIGN_KEYS: LiteralString = (
    "SELECT conrelid::int8, confrelid::int8 FROM pg_constraint WHERE contype = 'f'"
    " AND conrelid = ANY(%s) AND confrelid = ANY(%s) AND conrelid <> confrelid"
)
_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_$]*")
# Both sides render values the same way, so the checksums compare.
_SAME_TEXT = ("SET LOCAL TimeZone = 'UTC'", "SET LOCAL DateStyle = 'ISO, YMD'",
              "SET LOCAL IntervalStyle = 'postgres'", "SET LOCAL extra_float_digits = 3",
              "SET LOCAL bytea_output = 'hex'")


@dataclass(frozen=True, slots=True)
class MovedTable:
    schema: str
    table: str
    columns: tuple[str, ...]
    rows: int = 0        # rows copied (and verified)
    stale: int = 0       # rows of the tenant found at the destination and replaced

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)

    @property
    def name(self) -> str:
        """Schema-qualified, quoted where SQL needs it (as format('%I.%I') does)."""
        return ".".join(p if _PLAIN_NAME.fullmatch(p) else sql.Identifier(p).as_string(None)
                        for p in (self.schema, self.table))


@dataclass(slots=True)
class MoveResult:
    tenant: str
    source: str
    destination: str
    tables: list[MovedTable] = field(default_factory=list)
    source_deleted: bool = False
    warnings: list[str] = field(default_factory=list)


Connect = Callable[[str], psycopg.Connection[Any]]


def move_tenant(registry: psycopg.Connection[Any], connect: Connect, placement: Placement,
                tenant: str, destination: str, *, column: str = "tenant_id",
                setting: str = "app.current_tenant", drain_seconds: float = 15.0,
                lock_timeout: float = 5.0, keep_source: bool = False,
                report: Callable[[str], None] = lambda _: None,
                sleep: Callable[[float], None] = time.sleep) -> MoveResult:
    """Move ``tenant``'s rows to the entry ``destination`` of ``placement`` (see the
    module docstring). ``registry`` is an autocommit connection to the registry entry's
    database; ``connect(entry)`` opens an autocommit connection, as a role that bypasses
    RLS or whose policies read ``setting``, to an entry's database. Raises PolicyError.
    """
    validate_tenant_id(tenant)
    if destination not in placement.entries:
        raise PolicyError(f"{destination} is not an entry of placement {placement.name} "
                          f"(entries: {', '.join(placement.entries)})")
    row = registry.execute("SELECT status, placement FROM pgtenant.tenants WHERE id = %s",
                           [tenant]).fetchone()
    if row is None:
        raise PolicyError(f"no tenant {tenant} in the registry")
    status, registered = row
    if status == "suspended":
        raise PolicyError(f"tenant {tenant} is suspended: resume it first (a move ends "
                          "with the tenant active)")
    source = placement.entry_for(tenant, registered)
    result = MoveResult(tenant, source, destination)
    if source == destination:
        if status == MOVING:  # interrupted after the switch: only the resume was missing
            result.warnings.append(f"an interrupted move had already switched {tenant} to "
                                   f"{destination}; rows may remain on the former cluster")
            _set_status(registry, tenant, "active")
            return result
        raise PolicyError(f"tenant {tenant} is already on {destination}")
    with connect(source) as src, connect(destination) as dst:
        tables = _tables(src, column, result)
        _check_destination(dst, tables, destination)
        _set_status(registry, tenant, MOVING)
        report(f"{tenant}: marked moving; new logins are refused, clients end after their "
               f"transaction; draining {drain_seconds:g}s")
        try:
            sleep(drain_seconds)
            _barrier(src, tables, lock_timeout, source)
            report(f"{tenant}: no write transaction open on {source}; copying "
                   f"{len(tables)} table(s) to {destination}")
            result.tables = _copy(src, dst, tables, tenant, column, setting)
        except BaseException:
            _set_status(registry, tenant, "active")  # nothing moved: back where it was
            raise
        result.warnings.extend(_sequences_behind(dst, result.tables, tenant, column))
        registry.execute("UPDATE pgtenant.tenants SET placement = %s WHERE id = %s",
                         [destination, tenant])
        report(f"{tenant}: placed on {destination}")
        if not keep_source:
            _delete_source(src, result.tables, tenant, column, setting, source)
            result.source_deleted = True
    _set_status(registry, tenant, "active")
    report(f"{tenant}: active on {destination}")
    return result


def _set_status(registry: psycopg.Connection[Any], tenant: str, status: str) -> None:
    registry.execute("UPDATE pgtenant.tenants SET status = %s WHERE id = %s", [status, tenant])


def _tables(src: psycopg.Connection[Any], column: str, result: MoveResult
            ) -> list[MovedTable]:
    """The tables to move, parents before children (foreign keys among them)."""
    found: dict[int, MovedTable] = {}
    for oid, schema, name, rls in src.execute(_TABLES, [column]).fetchall():
        if not rls:
            qualified = sql.Identifier(schema, name).as_string(src)
            result.warnings.append(f"{qualified} has column {column} but no row-level "
                                   "security: its rows were not moved")
            continue
        columns = tuple(r[0] for r in src.execute(_COLUMNS, [oid]).fetchall())
        found[oid] = MovedTable(schema, name, columns)
    if not found:
        raise PolicyError(f"no table under row-level security has a column {column} "
                          "on the source: nothing to move")
    parents: dict[int, set[int]] = {oid: set() for oid in found}
    for child, parent in src.execute(_FOREIGN_KEYS, [list(found), list(found)]).fetchall():
        parents[child].add(parent)
    ordered: list[int] = []
    while parents:
        ready = [oid for oid, deps in parents.items() if not deps - set(ordered)]
        if not ready:  # a cycle: the rest in name order (deferrable keys will cope)
            ready = list(parents)
        for oid in ready:
            ordered.append(oid)
            del parents[oid]
    return [found[oid] for oid in ordered]


def _check_destination(dst: psycopg.Connection[Any], tables: list[MovedTable],
                       destination: str) -> None:
    missing: list[str] = []
    for table in tables:
        if dst.execute("SELECT to_regclass(%s)", [table.name]).fetchone() == (None,):
            missing.append(f"table {table.name}")
            continue
        have = {r[0] for r in dst.execute(_COLUMNS, [table.name]).fetchall()}
        missing.extend(f"column {table.name}.{c}" for c in table.columns if c not in have)
    if missing:
        raise PolicyError(f"{destination} lacks {', '.join(missing)}: apply the "
                          "application's migrations there first; nothing was changed")


def _barrier(src: psycopg.Connection[Any], tables: list[MovedTable], lock_timeout: float,
             source: str) -> None:
    """Wait until no write transaction is open on the moved tables, at most lock_timeout."""
    names = sql.SQL(", ").join(t.ident for t in tables)
    try:
        with src.transaction():
            src.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                sql.Literal(f"{max(1, int(lock_timeout * 1000))}ms")))
            src.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(names))
    except psycopg.errors.LockNotAvailable:
        raise PolicyError(f"write transactions stayed open on {source} for more than "
                          f"{lock_timeout:g}s after the drain; nothing was moved and the "
                          "tenant is active again: retry later") from None


def _tenant_rows(table: MovedTable, column: str, tenant: str) -> sql.Composed:
    return sql.SQL("FROM {} WHERE {} = {}").format(
        table.ident, sql.Identifier(column), sql.Literal(tenant))


def _digest(conn: psycopg.Connection[Any], table: MovedTable, column: str, tenant: str
            ) -> tuple[int, int]:
    """Row count and an order-independent checksum of the rows' text."""
    cols = sql.SQL(", ").join(map(sql.Identifier, table.columns))
    row = conn.execute(sql.SQL(
        "SELECT count(*), coalesce(sum(hashtextextended(ROW({})::text, 0)::numeric), 0) {}"
    ).format(cols, _tenant_rows(table, column, tenant))).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _open(conn: psycopg.Connection[Any], setting: str, tenant: str, mode: str) -> None:
    conn.execute(sql.SQL("SET TRANSACTION ISOLATION LEVEL {}").format(sql.SQL(mode)))
    for statement in _SAME_TEXT:
        conn.execute(statement)
    conn.execute("SELECT set_config(%s, %s, true)", [setting, tenant])


def _copy(src: psycopg.Connection[Any], dst: psycopg.Connection[Any],
          tables: list[MovedTable], tenant: str, column: str, setting: str
          ) -> list[MovedTable]:
    moved: list[MovedTable] = []
    with src.transaction(), dst.transaction():
        _open(src, setting, tenant, "REPEATABLE READ, READ ONLY")
        _open(dst, setting, tenant, "READ COMMITTED")
        stale = {t.name: dst.execute(sql.SQL("DELETE {}").format(
            _tenant_rows(t, column, tenant))).rowcount for t in reversed(tables)}
        for table in tables:
            cols = sql.SQL(", ").join(map(sql.Identifier, table.columns))
            out = sql.SQL("COPY (SELECT {} {}) TO STDOUT").format(
                cols, _tenant_rows(table, column, tenant))
            into = sql.SQL("COPY {} ({}) FROM STDIN").format(table.ident, cols)
            try:
                with src.cursor().copy(out) as reader, dst.cursor().copy(into) as writer:
                    for chunk in reader:
                        writer.write(chunk)
            except psycopg.errors.IntegrityError as exc:
                raise PolicyError(
                    f"copying {table.name} failed: {exc.diag.message_primary}; ids must "
                    "be unique across clusters, and rows referred to by foreign key must "
                    "exist at the destination. Nothing was moved") from None
            expected, copied = _digest(src, table, column, tenant), _digest(dst, table,
                                                                             column, tenant)
            if expected != copied:
                raise PolicyError(f"{table.name}: the destination holds {copied[0]} rows "
                                  f"(checksum {copied[1]}) where the source has "
                                  f"{expected[0]} ({expected[1]}); nothing was moved")
            moved.append(MovedTable(table.schema, table.table, table.columns, expected[0],
                                    stale[table.name]))
    return moved


def _sequences_behind(dst: psycopg.Connection[Any], tables: list[MovedTable], tenant: str,
                      column: str) -> list[str]:
    """Destination sequences that would hand out ids the copied rows already use."""
    warnings = []
    for table in tables:
        for col in table.columns:
            row = dst.execute("SELECT pg_get_serial_sequence(%s, %s)", [table.name, col]
                              ).fetchone()
            if row is None or row[0] is None:
                continue
            sequence = row[0]
            top = dst.execute(sql.SQL("SELECT max({}) {}").format(
                sql.Identifier(col), _tenant_rows(table, column, tenant))).fetchone()
            last = dst.execute("SELECT coalesce(pg_sequence_last_value(%s::regclass), 0)",
                               [sequence]).fetchone()
            if top and last and top[0] is not None and top[0] > last[0]:
                warnings.append(f"sequence {sequence} at the destination is at {last[0]}, "
                                f"below the copied {table.name}.{col} up to {top[0]}: "
                                "new rows may collide (ids are the application's)")
    return warnings


def _delete_source(src: psycopg.Connection[Any], tables: list[MovedTable], tenant: str,
                   column: str, setting: str, source: str) -> None:
    with src.transaction():
        _open(src, setting, tenant, "READ COMMITTED")
        for table in reversed(tables):
            deleted = src.execute(sql.SQL("DELETE {}").format(
                _tenant_rows(table, column, tenant))).rowcount
            if deleted != table.rows:
                raise PolicyError(
                    f"{table.name} on {source} held {deleted} rows of {tenant} where "
                    f"{table.rows} were copied: something wrote during the move. The "
                    f"tenant is placed on its new cluster and still 'moving'; the source "
                    f"rows were kept. Compare them, then `pgtenant tenants resume {tenant}`")
