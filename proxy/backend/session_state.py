"""What the proxy knows of one PostgreSQL session, and the rules that change it, without I/O.

:class:`SessionState` is the base of ``proxy.backend.routing.BackendSession``: the
session's place in its life (:class:`ServerState`), what it still owes (the pending-reply
queue), what the last ReadyForQuery said, the settings it reported, its prepared
statements, what the tenant setting holds (``tenant_state``) and whose clients used it
(``owner``), whether a client changed settings (``session_dirty``). The reply routing
reads the bytes and calls the named methods here; besides them only
``ServerConnection.apply_context`` (a context set, and a failed one; its one caller is
``proxy.pool.lease.Lease``) assigns the tenant setting (``proxy.backend.context``).

Also here: :class:`ServerError` (a server connection failed) and :class:`Transport`
(what a session writes to).
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

from proxy.backend.context import (
    NOBODY,
    PRISTINE,
    UNKNOWN,
    Stale,
    TenantContext,
    TenantState,
    _Nobody,
)
from proxy.backend.replies import FORWARD, Entry, ReplyQueue, new_reply_queue
from proxy.backend.statements import Amend, ServerStatements

if TYPE_CHECKING:
    from proxy.config import DatabaseConfig


class ServerState(enum.Enum):
    CONNECTING = "connecting"
    IDLE = "idle"          # in the pool
    ACTIVE = "active"      # leased to a client
    KEPT = "kept"          # idle, still linked to its last client (transaction mode)
    CLOSED = "closed"


class ServerError(Exception):
    """The server connection failed or refused the proxy; safe to show to the client."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate or "08006"


class Transport(Protocol):
    """What the session writes to (an asyncio transport; a recorder in tests)."""

    def write(self, data: bytes) -> None: ...
    def is_closing(self) -> bool: ...
    def close(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


_server_ids: Final = itertools.count(1)


class SessionState:
    """One PostgreSQL session's state as the proxy knows it (see the module docstring)."""

    def __init__(self, db: DatabaseConfig, clock: Callable[[], float]) -> None:
        self.id = next(_server_ids)
        self.db = db
        self.clock = clock
        self.state = ServerState.CONNECTING
        self.pending: ReplyQueue[Entry] = new_reply_queue()
        self.params: dict[str, str] = {}
        self.backend_pid = 0
        self.backend_key = b""
        self.tx_status = b"I"
        self.unsynced = False
        self.lessee: str | None = None  # the tenant whose client holds it (pool bookkeeping)
        self.fresh_kept = False  # in its pool's list of servers kept lately (pool bookkeeping)
        # A client ran SET/RESET/DISCARD: settings beyond the context may differ from the
        # role's defaults, so the pool resets it (RESET ALL) before another client. Set by
        # the reply routing, cleared by reset_done; independent of tenant_state (a context
        # set restores the client's settings, not the others).
        self.session_dirty = False
        self.statements = ServerStatements(db.max_prepared_statements)
        self.tenant_state: TenantState = PRISTINE
        # The tenant whose clients have used this backend since it was last scrubbed
        # (None: a bypass identity). Another tenant gets it only after the scrub.
        self.owner: str | _Nobody | None = NOBODY
        self.scrubs = 0
        self.created_at = clock()
        self.last_used = self.created_at
        self.ending = False  # PostgreSQL sent FATAL: never offered to anyone again

    # ---- the tenant setting ------------------------------------------------------------

    def mark_context_unknown(self) -> None:
        """A statement may have changed the tenant setting: re-set it (waiting for the
        set) before anything else runs here."""
        self.tenant_state = UNKNOWN

    def adopt_context(self, context: TenantContext) -> None:
        """The server, set to a context, carries ``context`` as well (an equal one, or
        settings the server itself reported changing): record it as set. Any other
        state stays: a context the proxy does not know to be set is set again."""
        if type(self.tenant_state) is TenantContext:
            self.tenant_state = context

    def _session_changed(self, setting: bool) -> None:
        """A client's SET (``setting``), RESET or DISCARD completed. After SET the tenant
        setting could hold anything; RESET and DISCARD can only restore the default."""
        self.session_dirty = True
        state = self.tenant_state
        if setting:
            self.tenant_state = UNKNOWN
        elif type(state) is TenantContext:
            self.tenant_state = Stale(state.tenant)

    def reset_done(self) -> None:
        """The pool's reset query (RESET ALL, server_reset_query) completed: the session
        holds the role's defaults again."""
        self.tenant_state = PRISTINE
        self.session_dirty = False

    # ---- state ---------------------------------------------------------------------------

    @property
    def runs_client_request(self) -> bool:
        """The next reply answers a client's request (not one of the proxy's own)."""
        pending = self.pending
        return bool(pending) and (pending.first() is FORWARD or type(pending.first()) is Amend)

    @property
    def is_clean(self) -> bool:
        """Idle, nothing outstanding: the only state in which it may serve another client."""
        return (self.state is not ServerState.CLOSED and not self.pending
                and self.tx_status == b"I" and not self.unsynced)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} #{self.id} {self.state.value} pid={self.backend_pid}>"
