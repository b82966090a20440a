"""Which server connection a client gets, and which waiting client a freed one goes to.

Pure bookkeeping and decisions: no asyncio, no I/O, no clock. ``ServerPool`` owns one
:class:`Selection`, tells it what moves (servers parked idle or kept, leases made and
ended, clients starting and ending a wait) and asks it two questions: :meth:`Selection.take`
(a client of a tenant wants a server now) and :meth:`Selection.waiter_for` (a server came
back while clients wait). The pool checks what it is given (closed, expired, due for a
check) and does the hand-off.

Why tenants stay on their servers: a backend that changes tenant costs a scrub and a
context set the client waits for. So a client gets a server its tenant already used
whenever there is one; another tenant's only when its tenant holds less than its fair
share of the pool (``pool_size`` split among the tenants holding or waiting), or when the
pool's patience ran out (``patient=False``); and a server whose tenant's clients are still
at work is parked for them rather than given to a tenant that already holds its share.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from typing import Final, Generic, TypeVar

from proxy.backend.server import NOBODY


class Waiter:
    """A client waiting for a server, as the rules see it: its tenant, and when it began
    waiting on the fairness clock. ``proxy.pool.waits.Wait`` is one. (A class, not a
    protocol: compiled, :meth:`Selection.waiter_for` reads both as struct fields.)
    ``use``: its tenant's :class:`TenantUse` (what :meth:`Selection.wait_began` gave),
    when known: read in place of a lookup by name."""

    __slots__ = ("since", "tenant", "use")

    def __init__(self, tenant: str | None, since: float) -> None:
        self.tenant = tenant
        self.since = since
        self.use: TenantUse | None = None


class TenantUse:
    """What one tenant has of the pool: the servers its clients hold (kept ones too) and
    its clients in the wait queue. One object per tenant while either is above zero
    (``Selection.tenants``): a lease, a release and a wait each change a field of it, where
    a count in a dict cost a lookup and a store (compiled, ~350 instructions each)."""

    __slots__ = ("held", "name", "waiting")

    def __init__(self, name: str) -> None:
        self.name = name
        self.held = 0
        self.waiting = 0

    def __repr__(self) -> str:
        return f"TenantUse({self.name!r}, held={self.held}, waiting={self.waiting})"


S = TypeVar("S", bound=Hashable)

_ABSENT: Final = object()

# Seconds after which a server parked for its tenant's clients is another tenant's to
# take even when its tenant holds no more than its share: they stopped coming back.
QUIET: Final = 0.05
# How far down the wait queue a released connection looks for a waiter of its tenant
# (counting only waiters whose tenant is below max_tenant_server_conns).
AFFINITY_LOOKAHEAD: Final = 32


class OwnerIndex(Generic[S]):
    """Server connections in one pool state (idle or kept), oldest first, indexed by
    owner (the tenant whose session the backend carries, or NOBODY): finding one of a
    tenant's is a dict lookup. Iterates, counts and tests membership like a list."""

    __slots__ = ("by_owner", "owner_of", "owners")

    def __init__(self) -> None:
        self.owner_of: dict[S, object] = {}
        self.by_owner: dict[object, dict[S, float]] = {}  # owner → server → since
        # Bumped whenever an owner enters or leaves by_owner (Selection.share counts them).
        self.owners = 0

    def __len__(self) -> int:
        return len(self.owner_of)

    def __bool__(self) -> bool:
        return bool(self.owner_of)

    def __iter__(self) -> Iterator[S]:
        return iter(self.owner_of)

    def __contains__(self, server: object) -> bool:
        return server in self.owner_of

    def __repr__(self) -> str:
        return f"OwnerIndex({list(self.owner_of)!r})"

    def add(self, server: S, owner: object, since: float) -> None:
        """``server`` enters this state at ``since`` (the newest); ``owner`` as it is
        now (it does not change while the server is not leased)."""
        self.owner_of[server] = owner
        same = self.by_owner.get(owner)
        if same is None:
            self.by_owner[owner] = {server: since}
            self.owners += 1
        else:
            same[server] = since

    def discard(self, server: S) -> bool:
        """Take ``server`` out; False when it was not here."""
        owner_of = self.owner_of
        owner = owner_of.get(server, _ABSENT)  # (compiled, pop with a default is a
        if owner is _ABSENT:                    # generic method call; get and del are not)
            return False
        del owner_of[server]
        same = self.by_owner[owner]
        del same[server]
        if not same:
            del self.by_owner[owner]
            self.owners += 1
        return True

    def oldest(self) -> S:
        """The server here longest (the index must not be empty)."""
        return next(iter(self.owner_of))

    def oldest_of(self, owner: object) -> S | None:
        same = self.by_owner.get(owner)
        if same is not None:
            # (The first key by a for loop: compiled, it reads the dict in place, where
            # next(iter(...)) makes an iterator object.)
            for server in same:
                return server
        return None


class Selection(Generic[S]):
    """The pool's idle and kept servers by owner, the servers each tenant's clients hold
    and the clients each tenant has waiting; and the choices made from them."""

    __slots__ = ("_idle_owners", "_tenants", "cap", "idle", "kept", "pool_size", "tenants")

    def __init__(self, pool_size: int, cap: int) -> None:
        self.pool_size = pool_size
        self.cap = cap  # max_tenant_server_conns (0: none)
        self.idle: OwnerIndex[S] = OwnerIndex()
        self.kept: OwnerIndex[S] = OwnerIndex()
        # The tenants whose clients hold servers or wait for one (bypass identities, with
        # no tenant, are not counted).
        self.tenants: dict[str, TenantUse] = {}
        # share()'s count of the tenants in ``tenants`` and idle.by_owner, made when
        # idle.owners was _idle_owners; -1: a tenant entered or left ``tenants`` since.
        self._tenants = -1
        self._idle_owners = 0

    @property
    def held(self) -> dict[str, int]:
        """Tenant → servers its clients hold (a copy: for tests and introspection)."""
        return {name: use.held for name, use in self.tenants.items() if use.held}

    @property
    def waiting(self) -> dict[str, int]:
        """Tenant → its clients in the wait queue (a copy)."""
        return {name: use.waiting for name, use in self.tenants.items() if use.waiting}

    def held_by(self, tenant: object) -> int:
        """Servers ``tenant``'s clients hold (0 for anything not a tenant's name)."""
        use = self.tenants.get(tenant) if isinstance(tenant, str) else None
        return use.held if use is not None else 0

    # ---- what moves ---------------------------------------------------------------------

    def _use(self, tenant: str) -> TenantUse:
        use = self.tenants.get(tenant)
        if use is None:
            use = self.tenants[tenant] = TenantUse(tenant)
            self._tenants = -1
        return use

    def _unused(self, use: TenantUse) -> None:
        if use.held <= 0 and use.waiting <= 0:
            del self.tenants[use.name]
            self._tenants = -1

    def leased(self, tenant: str | None, use: TenantUse | None = None) -> None:
        """A server was lent to a client of ``tenant`` (``use``: its tenant's, when at
        hand: a waiter's, alive while it waits)."""
        if use is not None:
            use.held += 1
        elif tenant is not None:
            self._use(tenant).held += 1

    def unleased(self, tenant: str | None) -> None:
        """A server lent to a client of ``tenant`` came back (or died)."""
        if tenant is not None:
            use = self.tenants.get(tenant)
            if use is not None:
                use.held -= 1
                self._unused(use)

    def wait_began(self, tenant: str | None) -> TenantUse | None:
        """A client of ``tenant`` queued; what to give :meth:`wait_ended` when it leaves."""
        if tenant is None:
            return None
        use = self._use(tenant)
        use.waiting += 1
        return use

    def wait_ended(self, use: TenantUse | None) -> None:
        """A client left the queue (``use``: what :meth:`wait_began` gave; alive while
        the client waited, since its tenant had a client waiting)."""
        if use is not None:
            use.waiting -= 1
            self._unused(use)

    # ---- the choices --------------------------------------------------------------------

    def share(self, *, rounded_up: bool = False, owner: object = None) -> int:
        """Servers each tenant may count on: pool_size split among the tenants whose
        clients hold one, wait for one or have one parked for them (``owner``: the
        tenant of the server being placed; at least one)."""
        parked = self.idle.by_owner
        tenants = self._tenants
        if tenants < 0 or self._idle_owners != self.idle.owners:
            tenants = self._count_tenants()
        if (owner is not None and owner is not NOBODY and owner not in self.tenants
                and owner not in parked):
            tenants += 1
        tenants = max(1, tenants)
        share = -(-self.pool_size // tenants) if rounded_up else self.pool_size // tenants
        return max(1, share)

    def _count_tenants(self) -> int:
        """The tenants in ``tenants`` and idle.by_owner, counted without building their
        union (compiled, a union of key views cost ~3,000 instructions with 8 tenants,
        this loop ~300), and kept for share() until one enters or leaves them.
        ``tenants`` holds tenant names only; idle owners also NOBODY and None (a bypass
        identity's servers), neither counted."""
        using = self.tenants
        tenants = len(using)
        parked = self.idle.by_owner
        for parked_owner in parked:
            if (parked_owner is not NOBODY and parked_owner is not None
                    and parked_owner not in using):
                tenants += 1
        self._tenants = tenants
        self._idle_owners = self.idle.owners
        return tenants

    def take(self, tenant: str | None, *, patient: bool, now: float) -> S | None:
        """The server a client of ``tenant`` gets now, taken out of idle or kept (the
        caller leases it, or unlinks a kept one first); None: the client waits.

        In order: the newest idle one its tenant used; the longest kept one (its
        tenant's clients trade it among themselves); then — unless ``patient`` and the
        tenant holds its share already, so one of its own comes back soon — one never
        used, else one of the tenant with most servers beyond its share (idle before
        kept: a kept server's client is likely to come back). Out of patience, a server
        idle or kept for a tenant that has no more than its share stays there for its
        clients (at work, they come back) unless they left it QUIET seconds ago.
        Never a server more than max_tenant_server_conns.
        """
        use = self.tenants.get(tenant) if tenant is not None else None
        held = use.held if use is not None else 0
        cap = self.cap
        idle = self.idle
        same = idle.by_owner.get(tenant)
        if same and not (cap and held >= cap):  # the hot path: no scrub, no count change
            newest = next(reversed(same))  # (OwnerIndex.discard inline)
            del same[newest], idle.owner_of[newest]
            if not same:
                del idle.by_owner[tenant]
                idle.owners += 1
            return newest
        kept = self.kept
        server = kept.oldest_of(tenant)
        if server is None:
            if (cap and held >= cap) or (patient and held >= self.share()):
                return None
            floor = -1 if patient else self.share(rounded_up=True)
            server = self._convertible(idle, floor, now - QUIET)
            if server is not None:
                idle.discard(server)
                return server
            server = self._convertible(kept, floor, now - QUIET)
            if server is None:
                return None
        kept.discard(server)
        return server

    def _convertible(self, index: OwnerIndex[S], floor: int, quiet: float) -> S | None:
        """The server in ``index`` whose change of tenant costs least: one never used;
        else one of the tenant that has most (held and parked idle together) if more
        than ``floor``, or whose oldest there was parked before ``quiet``."""
        if not index:
            return None
        best: object = _ABSENT
        most = floor
        parked = index is self.idle  # kept servers are counted in held already
        for owner, servers in index.by_owner.items():
            if owner is NOBODY:
                best = owner
                break
            if not isinstance(owner, str):  # a bypass identity's: nobody waits for it
                surplus = self.pool_size + 1
            else:
                surplus = self.held_by(owner) + (len(servers) if parked else 0)
                if surplus <= floor and next(iter(servers.values())) < quiet:
                    surplus = floor + 1  # its clients left it long ago
            if surplus > most:
                best, most = owner, surplus
        return index.oldest_of(best)

    def capped(self, tenant: str | None) -> bool:
        """Whether ``tenant``'s clients hold max_tenant_server_conns servers already."""
        return bool(self.cap) and self.held_by(tenant) >= self.cap

    def waiter_for(self, owner: object, waits: Iterable[Waiter],
                   overdue_since: float) -> Waiter | None:
        """A server last used by ``owner`` came back while ``waits`` wait (FIFO order):
        the one that gets it, or None to park it idle for ``owner``'s clients (their next
        transaction takes it without a scrub). Only the first AFFINITY_LOOKAHEAD waits
        whose tenant is below max_tenant_server_conns are considered (a capped tenant's
        many waiters must not hide the others'); the first of them is overdue when it
        began waiting at ``overdue_since`` or before.

        In order: the oldest waiter, when overdue (it waited long) and its tenant
        holds less than its share; a waiter of ``owner`` whose tenant holds less than
        its share; any waiter whose tenant does (FIFO: no tenant starves); the oldest
        waiter when overdue and its tenant holds no more than ``owner`` would keep
        (servers rotate, slowly, between tenants the pool cannot split evenly); a
        waiter of ``owner``; the oldest waiter when the server was never used (or by a
        bypass identity). Else None. Never beyond max_tenant_server_conns.

        Walks the queue itself and stops as soon as the answer is known: most often at
        its first waiter.
        """
        share = self.share(owner=owner)
        using = self.tenants
        # Once a deprived waiter is found, only a waiter of ``owner`` holding less than
        # its share comes first: when ``owner``'s clients hold their share, stop there.
        owner_short = self.held_by(owner) < share
        deprived: Waiter | None = None
        same: Waiter | None = None
        first: Waiter | None = None
        rotate: Waiter | None = None
        seen = 0
        for wait in waits:
            tenant = wait.tenant
            if self.capped(tenant):
                continue
            use = wait.use
            if use is None and tenant is not None:
                use = using.get(tenant)
            count = use.held if use is not None else 0
            short = count < share
            if first is None:
                first = wait
                if wait.since <= overdue_since:
                    if short:
                        return wait
                    if count < self._owned(owner):
                        rotate = wait
            if tenant == owner:
                if short:
                    return wait
                if same is None:
                    same = wait
            elif short and deprived is None:
                deprived = wait
                if not owner_short:
                    break
            seen += 1
            if seen == AFFINITY_LOOKAHEAD:
                break
        if deprived is not None:
            return deprived
        if rotate is not None:
            return rotate
        if same is not None:
            return same
        if owner is NOBODY or not isinstance(owner, str):
            return first
        return None


    def _owned(self, owner: object) -> int:
        """Servers ``owner``'s clients hold or have parked, and the one just freed."""
        if not isinstance(owner, str):
            return 0
        return self.held_by(owner) + len(self.idle.by_owner.get(owner, ())) + 1

