"""A server connection lent to one client: where the tenant is set, where it goes back.

The pool makes a :class:`Lease` when it hands a server connection to a client
(``ServerPool.acquire``, ``try_acquire``, ``wait_for_server``); the client holds it until
the server goes back. The lease is the only code that

- decides whether the client's tenant context can be pipelined in front of its
  messages or must be waited for, and sends it (``ServerConnection.apply_context``, which
  runs the scrub first when the backend last served another tenant): :meth:`Lease.begin`,
  :meth:`Lease.context_ready`, :meth:`Lease.set_context`;
- returns the server to the pool: :meth:`Lease.release` (with or without the session
  reset), :meth:`Lease.keep` (transaction mode: linked to the client between its
  transactions while nobody else needs a server) and :meth:`Lease.begin` (resuming a
  kept server).

A kept server counts as idle: the pool may take it back for another client (or PAUSE,
maintenance, its death); the client is told (``server_reclaimed``) and drops the lease.

What the proxy knows of the tenant setting is ``ServerConnection.tenant_state`` (one
value: pristine, set to a context, stale after RESET/DISCARD, unknown); who used the
backend since its last scrub is ``ServerConnection.owner``, a separate fact.
"""

from __future__ import annotations

import asyncio
import logging

from proxy.backend.context import TenantContext
from proxy.backend.server import NOBODY, PRISTINE, ServerConnection, ServerState, Stale
from proxy.build import mypyc_attr
from proxy.pool.counters import PoolStats

ContextFuture = asyncio.Future[dict[str, str] | None]

log = logging.getLogger("pgtenant.pool")


@mypyc_attr(allow_interpreted_subclasses=True)
class Lender:
    """What a lease needs of the pool that lent the server (the base of ``PoolServers``;
    stand-ins in tests subclass it). A base class, not a Protocol: compiled, a call
    through a native class is a vtable call, through a Protocol a Python method call."""

    __slots__ = ()

    stats: PoolStats  # the pool's counters (a lease counts its context sets)

    def keep(self, server: ServerConnection) -> bool:
        raise NotImplementedError

    def resume_kept(self, server: ServerConnection, now: float) -> bool:
        raise NotImplementedError

    def take_back(self, server: ServerConnection, *, reset: bool) -> None:
        raise NotImplementedError


class Lease:
    """One server connection lent to one client, from the pool's hand-off until release."""

    __slots__ = ("pool", "released", "server")

    def __init__(self, pool: Lender, server: ServerConnection) -> None:
        self.pool = pool
        self.server = server
        self.released = False

    def __repr__(self) -> str:
        return f"<Lease of {self.server!r}>"

    # ---- the tenant context -------------------------------------------------------------

    def begin(self, context: TenantContext, now: float) -> bool | None:
        """The client's next messages are about to go at ``now``: resume the server if it
        was kept, then :meth:`context_ready`. None: a kept server the pool would not
        lease as it is (unused too long, past server_lifetime): release it, lease anew."""
        server = self.server
        if server.state is ServerState.KEPT and not self.pool.resume_kept(server, now):
            return None
        if server.tenant_state is context:  # the hot path: nothing to check
            return True
        return self.context_ready(context)

    def context_ready(self, context: TenantContext) -> bool:
        """True when the client's messages may go to the server now.

        Checked only between transactions (the server idle). A set that may be
        pipelined (a failed one cannot leave another tenant in place, and no other
        tenant's session needs scrubbing) is sent here, corked: it goes out in the same
        write as the client's messages. False: :meth:`set_context` and wait.
        """
        server = self.server
        state = server.tenant_state
        if state is context or not server.is_clean:
            return True
        if state == context:  # set by another client of the same tenant
            server.adopt_context(context)
            return True
        if self.must_wait(context):
            return False
        self.pool.stats.leases_with_context_set += 1
        fut = server.apply_context(context, corked=True)
        # The client linked to the server hears how it went (``Receiver``; a bound method
        # made here, for a set, not at every lease).
        receiver = server.receiver
        if receiver is not None:
            fut.add_done_callback(receiver.pipelined_context_done)
        return True

    def must_wait(self, context: TenantContext) -> bool:
        """True when the client must wait for the set of ``context``: another tenant's
        session is scrubbed first, or a failed set could leave another tenant (or a
        setting nobody vouches for) in place."""
        server = self.server
        owner = server.owner
        if owner != context.tenant and owner is not NOBODY:
            return True
        state = server.tenant_state
        if state is PRISTINE:
            return False
        if isinstance(state, (TenantContext, Stale)):
            return state.tenant != context.tenant
        return True  # UNKNOWN

    def set_context(self, context: TenantContext, *, counted: bool = True
                    ) -> ContextFuture | None:
        """Send ``context`` for the client to wait on (None on success or the error
        fields); None instead of a future when the server carries it already.
        ``counted``: a transaction's set (PoolStats.leases_with_context_set), not login's."""
        server = self.server
        if server.tenant_state == context:
            server.adopt_context(context)
            return None
        if counted:
            self.pool.stats.leases_with_context_set += 1
        return server.apply_context(context)

    def context_changed(self, context: TenantContext) -> None:
        """The client's context changed to ``context`` through this server (settings the
        server reported, as it spells them): the server carries it already."""
        self.server.adopt_context(context)

    def context_touched(self) -> None:
        """Messages just sent may change the tenant setting (the guard let through a
        settings write): set the context again, and wait, before the next transaction."""
        self.server.mark_context_unknown()

    # ---- back to the pool ---------------------------------------------------------------

    def keep(self) -> bool:
        """The server answered everything (transaction mode, nothing queued). True: the
        lease goes on — the server is still inside the client's transaction, or its
        transaction is over and the pool keeps it linked while nobody else needs one.
        False: the client must :meth:`release` it now."""
        server = self.server
        # not server.is_clean, spelled out: this runs once per transaction.
        if (server.pending or server.tx_status != b"I" or server.unsynced
                or server.state is ServerState.CLOSED):
            return True
        return self.pool.keep(server)

    def release(self, *, reset: bool = False) -> None:
        """Give the server back; the lease is over. Fail-closed in the pool: a server
        with anything outstanding is closed, never reused. ``reset``: run the
        server_reset_query first (session mode, the client left). Once: a second call
        does nothing (the server may already serve another client)."""
        if self.released:
            log.warning("%r released twice; the second release was ignored", self)
            return
        self.released = True
        self.pool.take_back(self.server, reset=reset)
