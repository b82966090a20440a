"""What the guard answers: a refusal, or a rule to check when parameters are bound.

Both are small frozen values so the proxy can keep them (a BindRule lives as long as
the prepared statement it belongs to) and tests can compare them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: SQLSTATE insufficient_privilege, used for every refusal.
INSUFFICIENT_PRIVILEGE = "42501"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A statement the proxy must not forward; answer it with an ErrorResponse.

    ``kind`` is a short stable label for metrics and logs (see :data:`REFUSAL_KINDS`);
    ``message`` and ``hint`` are written for the person who reads the client's error.
    """

    kind: str
    message: str
    hint: str | None = None
    sqlstate: str = INSUFFICIENT_PRIVILEGE


#: Every ``Refusal.kind`` the guard produces.
REFUSAL_KINDS = (
    "set_protected",      # SET of a protected setting to a value other than the own tenant
    "set_config",         # set_config() of a protected setting (or of an unprovable name)
    "set_role",           # SET ROLE / SET SESSION AUTHORIZATION (or set_config('role', ...))
    "persist_protected",  # ALTER ROLE/DATABASE/FUNCTION ... SET, CREATE FUNCTION ... SET, views
    "pg_settings",        # writing to pg_settings (its rules call set_config)
    "parser_state",       # standard_conforming_strings / client_encoding changes
    "copy_program",       # COPY ... TO/FROM PROGRAM
    "alter_system",       # ALTER SYSTEM
    "load",               # LOAD 'library'
    "dynamic_sql",        # EXECUTE of a computed string, query_to_xml(computed text), ...
    "unparsable",         # text the parser rejects that mentions protected things
    "startup_option",     # a protected setting or role in the startup packet
    "function_call",      # the FunctionCall ('F') protocol message
    # Statement policy for tenant clients (deny by default; see proxy.guard.statements):
    "statement",          # DDL or another statement outside the tenant allow-list
    "do",                 # DO blocks
    "role_admin",         # roles, grants, ALTER DATABASE, SECURITY LABEL, ...
    "maintenance",        # VACUUM, ANALYZE, CLUSTER, REINDEX, CHECKPOINT, REFRESH MAT. VIEW
    "truncate",           # TRUNCATE (ignores row-level security)
    "copy_file",          # COPY to or from a file on the server
    "two_phase",          # PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED
    "temp_table",         # a temp table other than the staging form
    "sql_prepare",        # SQL PREPARE/EXECUTE in transaction mode
    "proxy_statement",    # a statement name in the proxy's own pgtenant_ namespace
    "hold_cursor",        # DECLARE ... WITH HOLD in transaction mode
    "notify",             # LISTEN, NOTIFY, pg_notify()
    "session_lock",       # session-level advisory locks in transaction mode
    "signal_backend",     # pg_terminate_backend(), pg_cancel_backend(), ...
    "other_sessions",     # pg_stat_activity, pg_locks, pg_prepared_statements, ...
    "function",           # other refused functions: dblink, large objects, server files
)


class Special(enum.Enum):
    """Values of a setting write that are not a known string."""

    NULL = "NULL"          # SQL NULL (set_config with a NULL value)
    DEFAULT = "DEFAULT"    # SET ... TO DEFAULT / FROM CURRENT: back to a known state
    UNKNOWN = "UNKNOWN"    # an expression the guard cannot evaluate


@dataclass(frozen=True, slots=True)
class Param:
    """A bind parameter of the Parse being checked; ``index`` is 0-based ($1 is 0)."""

    index: int


#: A setting name in a write: a literal (lower-cased) or a bind parameter.
SettingName = str | Param
#: A setting value in a write: a literal, a bind parameter, or a special value.
SettingValue = str | Param | Special


@dataclass(frozen=True, slots=True)
class SettingWrite:
    """One write of a setting whose verdict depends on the tenant or on bound values.

    ``via`` is ``"set"`` for a SET statement and ``"set_config"`` for a call; it picks
    the refusal kind.
    """

    via: str
    name: SettingName
    value: SettingValue


@dataclass(frozen=True, slots=True)
class BindRule:
    """What a Bind of a flagged prepared statement must satisfy.

    Returned by :meth:`Guard.check_parse` for statements such as
    ``SELECT set_config('app.current_tenant', $1, false)``; the proxy keeps it with the
    statement and calls :meth:`Guard.check_bind` for every Bind of it. ``tenant`` is the
    identity that prepared it (None for a bypass identity, which may write no protected
    setting); ``writes`` are the writes that read a parameter.
    """

    tenant: str | None
    writes: tuple[SettingWrite, ...]


#: The answer for a FunctionCall ('F') message, which the guard cannot inspect by name.
FUNCTION_CALL_REFUSAL = Refusal(
    kind="function_call",
    message="the FunctionCall protocol message is not allowed through pgtenant",
    hint="call the function with a SELECT statement instead",
)


@dataclass(frozen=True, slots=True)
class Prepare:
    """SQL ``PREPARE name AS ...`` (``writes_settings``: its statement writes settings)."""

    name: str
    writes_settings: bool


@dataclass(frozen=True, slots=True)
class Execute:
    """SQL ``EXECUTE name(args)``; ``args`` are the constant arguments as they would be
    bound in text format (None = NULL), or None when one of them is not a constant."""

    name: str
    args: tuple[bytes | None, ...] | None


#: What a text does to the session's named statements, in statement order.
StatementOp = Prepare | Execute
