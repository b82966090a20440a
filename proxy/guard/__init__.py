"""The SQL guard: refuse statements that would move a client out of its tenant.

Pure (no I/O) and fast: the proxy calls it for every Query and Parse message.

API
---
``Guard(tenancy, *, cache_size=4096, allowed_roles=frozenset())``

- ``check_query(sql, tenant, *, transaction_mode=False) -> Refusal | None`` for a Query
  ('Q') message; the text may hold several statements, and any refused statement refuses
  the whole message. ``transaction_mode`` is the client's pool mode (see the statement
  policy). ``query_verdict(analysis, tenant, ...)`` is the same for an analysis at hand.
- ``check_parse(sql, tenant, param_types=(), *, transaction_mode=False) -> Refusal |
  BindRule | None`` for a Parse ('P') message. A :class:`BindRule` means "allowed, but
  check every Bind of this statement": keep it with the prepared statement.
  ``parse_verdict(analysis, ...)`` is the same for an analysis at hand.
- ``check_bind(rule, params, formats) -> Refusal | None`` for each Bind ('B') of a
  statement that got a BindRule. ``params`` are the raw values (None = NULL), ``formats``
  the parameter format codes as sent.
- ``check_execute(rule, args) -> Refusal | None`` for SQL ``EXECUTE name(args)`` of such a
  statement (``args`` the constant arguments as text, or None when one is not constant).
- ``check_startup(settings) -> Refusal | None`` for the StartupMessage settings
  (parameters other than user/database, plus the parsed ``-c`` options).
- :data:`FUNCTION_CALL_REFUSAL`: the answer for a FunctionCall ('F') message.
- ``analyze_query(body) -> Analysis`` for the body of a Query message (raw bytes, NUL
  included), remembered by its shape in ``clean_shapes`` when the pre-filter finds it
  harmless, else by its bytes in ``query_analyses`` (both bounded). Only the
  tenant-independent analysis is kept: apply ``query_verdict`` to it for every message.
- ``analyze(sql) -> Analysis``, ``cache_info()``, ``cache_clear()``: for tests, metrics
  and benchmarks.

A :class:`Refusal` carries ``sqlstate`` ("42501"), a ``message`` and ``hint`` for the
client's ErrorResponse, and a ``kind`` for metrics (:data:`REFUSAL_KINDS`). After a
refusal the client connection stays usable: answer the message with an ErrorResponse
(and, in the extended protocol, discard until Sync as PostgreSQL does).

``tenant`` is the client's own tenant. ``tenant=None`` is a bypass identity (admin,
migrations): every rule below applies to it too, it has no own tenant so it may write no
protected setting (RESET is fine), and the one relaxation is that dynamic SQL
(``EXECUTE`` of a computed string, ``query_to_xml(computed text)``) that mentions no
protected setting, role or command is allowed, because migrations use it.

Rules
-----
Refused (SQLSTATE 42501):

- ``SET`` / ``SET LOCAL`` / ``SET SESSION`` of the tenant setting or any protected
  setting (``protected_prefixes``, case-insensitive prefix match, quoted identifiers
  included) to anything but the client's own tenant; the same through ``set_config()``
  (any schema) anywhere in a statement, including sub-selects, CTEs, ``CASE``, function
  arguments, ``DO`` bodies (parsed with the PL/pgSQL parser), SQL-language bodies and
  constant strings given to ``EXECUTE``, ``query_to_xml*``, ``ts_stat``, ``ts_rewrite``;
  a name or value that is not a constant (a column, a variable, ``'app.' || 'x'``)
  cannot be proven and is refused. A NULL value is refused.
- Storing a protected setting: ``ALTER ROLE/DATABASE/FUNCTION ... SET``, ``CREATE
  FUNCTION ... SET``, set_config() inside a function body, view, rule, policy, default,
  prepared statement or any other persistent object (whatever the value: the object runs
  later for other sessions); persistent objects that name ``set_config``, ``pg_settings``
  or a query runner (operators, aggregates, casts, views).
- ``SET ROLE`` / ``SET SESSION AUTHORIZATION`` (and set_config('role', ...)) unless the
  role is in ``allowed_roles``; ``NONE``, ``DEFAULT`` and ``RESET`` are allowed.
- Writes to ``pg_settings`` (its rules call set_config).
- ``standard_conforming_strings`` to off and ``client_encoding`` to a client-only
  encoding (SJIS, BIG5, GBK, UHC, JOHAB, GB18030): either would make the server read the
  text differently from the guard. Every server encoding (LATIN1, EUC_JP, WIN1252, ...)
  is accepted: in those, bytes below 0x80 are always the ASCII characters they look like,
  so the statement's structure is the same to the guard and to the server.
- ``COPY ... TO/FROM PROGRAM``, ``ALTER SYSTEM``, ``LOAD``.
- For tenant identities, dynamic SQL the guard cannot see (``EXECUTE`` of a computed
  string in a DO/function body, a query runner given a computed query).
- Text the parser rejects when it mentions a protected prefix, set_config, pg_settings,
  role, authorization or PROGRAM (fail closed); other syntax errors are left to
  PostgreSQL (``None``).

Statement policy (tenant clients only; :mod:`proxy.guard.statements`): deny by default.
Queries, DML, transaction control, SHOW, EXPLAIN, COPY to/from the client, cursors,
SET/RESET/DISCARD, DEALLOCATE, LOCK, UNLISTEN, CALL and staging temp tables run; DDL, DO,
roles and grants, maintenance, TRUNCATE, LISTEN/NOTIFY, two-phase commit, COPY to/from
files, calls of functions that signal or show other sessions (and reads of such views),
dblink, large objects and server files are refused. In transaction mode also SQL
PREPARE/EXECUTE, WITH HOLD cursors, session-level advisory locks and temp tables without
ON COMMIT DROP. ``[tenancy]`` keys relax it. Statement names starting with ``pgtenant_``
(the proxy's) and renames to dangerous names are refused for every identity.

Allowed: ``SET`` / ``SET LOCAL`` / ``set_config`` of the tenant setting to the own tenant
(a ``$n`` value in a Parse becomes a BindRule that requires the bound text to be the
own tenant, NULL refused, binary format accepted because text's binary form is the same
bytes, parameter types limited to text-like OIDs), ``RESET`` of anything, ``RESET
ALL``, ``DISCARD ALL``, ``SET ... TO DEFAULT``, reading with ``current_setting``, and
every statement that touches no protected setting and passes the statement policy.

Performance: an allow-filter (:mod:`proxy.guard.prefilter`) lets plain queries and DML
skip the parser; parsed analyses are cached by text in an LRU (tenant-independent, the
tenant comparison is applied after), and those of Query messages also by their raw bytes
(a repeated Query skips decoding and the pre-filter); ``bench/guard_bench.py`` measures
all three paths.
"""

from proxy.guard.findings import CLEAN, Analysis
from proxy.guard.guard import SAFE_PARAM_TYPES, Guard
from proxy.guard.prefilter import needs_inspection
from proxy.guard.statements import PROXY_NAMESPACE, StatementPolicy
from proxy.guard.verdict import (
    FUNCTION_CALL_REFUSAL,
    REFUSAL_KINDS,
    BindRule,
    Execute,
    Param,
    Prepare,
    Refusal,
    SettingWrite,
    Special,
    StatementOp,
)

__all__ = [
    "CLEAN",
    "FUNCTION_CALL_REFUSAL",
    "PROXY_NAMESPACE",
    "REFUSAL_KINDS",
    "SAFE_PARAM_TYPES",
    "Analysis",
    "BindRule",
    "Execute",
    "Guard",
    "Param",
    "Prepare",
    "Refusal",
    "SettingWrite",
    "Special",
    "StatementOp",
    "StatementPolicy",
    "needs_inspection",
]
