"""The one place where a server connection's tenant context is built.

The proxy sets the tenant (and the client's session settings) itself, with every name
and value sent as a bind parameter: nothing the client controls is ever spliced into
SQL text, and ``pg_stat_activity`` shows only the constant statement below.

``set_config(..., false)`` is transactional: sent in its own implicit transaction
(terminated by its own Sync) it either commits entirely or leaves the connection as
it was. Callers therefore only *pipeline* the context in front of client messages
when the server connection carries no other tenant (see ``ServerConnection``).

What the proxy knows of the tenant setting on a backend is one value, :data:`TenantState`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, final

from proxy.backend.statements import PREFIX
from proxy.tenancy.proof import compute_proof
from proxy.wire import messages

_TEXT_OID: Final = 25
#: The statement the context set is prepared as (in the proxy's random namespace).
CONTEXT_STATEMENT: Final = f"{PREFIX}context"


_INTERN_LIMIT: Final = 100_000


@dataclass(frozen=True, slots=True)
class TenantContext:
    """What a client's server connection must carry before any client message runs."""

    setting: str                        # the GUC RLS policies read, e.g. app.current_tenant
    tenant: str | None                  # None: bypass tenancy (service accounts)
    settings: tuple[tuple[str, str], ...] = ()   # client session settings (application_name, ...)
    # The signed context (``pgtenant policies install``): the HMAC key, and the setting
    # that carries the proof. Not part of equality: the proof is per server connection.
    proof_key: bytes | None = field(default=None, compare=False, repr=False)
    proof_setting: str = field(default="pgtenant.proof", compare=False)
    _wire: bytes = field(default=b"", compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_wire", self._build())

    @classmethod
    def make(cls, setting: str, tenant: str | None, settings: Mapping[str, str],
             proof_key: bytes | None = None, proof_setting: str = "pgtenant.proof"
             ) -> TenantContext:
        """The shared context object for these values: clients of one tenant with the same
        settings share it (less memory per client, and an identity check on the hot path)."""
        items = tuple(sorted(settings.items()))
        key = (setting, tenant, items, proof_key, proof_setting)
        context = _interned.get(key)
        if context is None:
            if len(_interned) >= _INTERN_LIMIT:
                _interned.clear()
            context = _interned[key] = cls(setting, tenant, items, proof_key, proof_setting)
        return context

    def with_settings(self, settings: Mapping[str, str]) -> TenantContext:
        return TenantContext.make(self.setting, self.tenant, settings, self.proof_key,
                                  self.proof_setting)

    def messages(self, backend_pid: int = 0) -> bytes:
        """Parse/Bind/Execute/Sync that apply this context; the reply ends in ReadyForQuery.

        With a proof key, the signed proof for the server connection's ``backend_pid`` is
        set in the same statement (so the messages are built per connection).
        """
        if self.proof_key is None:
            return self._wire
        value = (compute_proof(self.proof_key, self.tenant, backend_pid)
                 if self.tenant is not None else "")
        return self._build((self.proof_setting, value))

    def _build(self, proof: tuple[str, str] | None = None) -> bytes:
        pairs: list[tuple[str, str]] = [(self.setting, self.tenant or "")]
        if proof is not None:
            pairs.append(proof)
        pairs.extend(self.settings)
        calls = ", ".join(
            f"pg_catalog.set_config(${2 * i + 1}, ${2 * i + 2}, false)"
            for i in range(len(pairs)))
        params: list[bytes | None] = []
        for name, value in pairs:
            params.append(name.encode())
            params.append(value.encode())
        # A statement of the proxy's own name, not the unnamed one: a client may rely on
        # its unnamed statement surviving from one batch to the next (asyncpg does, while
        # it introspects types), and the set can run between two of its batches. Closed
        # first and last, so a set that failed halfway leaves nothing that blocks the next.
        return b"".join((
            messages.close(b"S", CONTEXT_STATEMENT),
            messages.parse(CONTEXT_STATEMENT, f"SELECT {calls}", [_TEXT_OID] * len(params)),
            messages.bind("", CONTEXT_STATEMENT, params),
            messages.execute("", 0),
            messages.close(b"S", CONTEXT_STATEMENT),
            messages.sync(),
        ))


_interned: dict[tuple[object, ...], TenantContext] = {}


class ContextMark(enum.Enum):
    """The tenant states that carry no tenant (see :data:`TenantState`)."""

    PRISTINE = "pristine"  # fresh or reset by the pool: the setting holds the role's default
    UNKNOWN = "unknown"    # something may have changed it: set it again, and wait, first


PRISTINE: Final = ContextMark.PRISTINE
UNKNOWN: Final = ContextMark.UNKNOWN


@final
class Stale:
    """A client ran RESET or DISCARD after the proxy set ``tenant``: the tenant setting
    holds that tenant or the role's default (never another tenant), the client's other
    settings must be set again. The set may be pipelined for ``tenant``'s clients."""

    __slots__ = ("tenant",)

    def __init__(self, tenant: str | None) -> None:
        self.tenant = tenant

    def __eq__(self, other: object) -> bool:
        return type(other) is Stale and other.tenant == self.tenant

    def __hash__(self) -> int:
        return hash(self.tenant)

    def __repr__(self) -> str:
        return f"Stale({self.tenant!r})"


# What the proxy knows of the tenant setting on a server connection, as one value:
# PRISTINE; set to exactly a context (the TenantContext itself: no wrapper, so the hot
# path is an identity check against the client's context); Stale(tenant); UNKNOWN.
# Changed only through the named methods of proxy.backend.session_state.SessionState
# (called by the reply routing on SET/RESET/DISCARD and the forged-context warning;
# mark_context_unknown, adopt_context and reset_done) and ServerConnection.apply_context
# (a set, and a failed one), which proxy.pool.lease.Lease alone calls.
TenantState = TenantContext | Stale | ContextMark


class _Nobody:
    """The owner of a server connection no client has used yet."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOBODY"


NOBODY: Final = _Nobody()
