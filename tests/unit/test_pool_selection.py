"""Which server a client gets and which waiter a freed server goes to (proxy.pool.selection).

No PostgreSQL, no event loop: servers are plain strings, owners are tenant names (or
NOBODY for a server no client used yet), time is a number the test picks.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.backend.server import NOBODY
from proxy.pool.selection import (
    AFFINITY_LOOKAHEAD,
    QUIET,
    OwnerIndex,
    Selection,
    TenantUse,
    Waiter,
)

NOW = 100.0


def selection(pool_size: int = 20, cap: int = 0, *, held: dict[str, int] | None = None,
              waiting: dict[str, int] | None = None,
              idle: list[tuple[str, object]] | None = None,
              kept: list[tuple[str, object]] | None = None) -> Selection[str]:
    """A selection in a given state; idle/kept servers parked at NOW in list order."""
    sel: Selection[str] = Selection(pool_size, cap)
    for tenant, count in (held or {}).items():
        for _ in range(count):
            sel.leased(tenant)
    for tenant, count in (waiting or {}).items():
        for _ in range(count):
            sel.wait_began(tenant)
    for server, owner in idle or []:
        sel.idle.add(server, owner, NOW)
    for server, owner in kept or []:
        sel.kept.add(server, owner, NOW)
    return sel


# ---- the index ------------------------------------------------------------------------


def test_the_owner_index_keeps_arrival_order_and_finds_a_tenants_server_by_owner() -> None:
    index: OwnerIndex[str] = OwnerIndex()
    index.add("s1", "t1", 1.0)
    index.add("s2", "t2", 2.0)
    index.add("s3", "t1", 3.0)
    assert list(index) == ["s1", "s2", "s3"] and len(index) == 3 and "s2" in index
    assert index.oldest() == "s1"
    assert index.oldest_of("t1") == "s1" and index.oldest_of("t3") is None
    assert index.discard("s1") and not index.discard("s1")
    assert index.oldest_of("t1") == "s3"
    assert index.discard("s3") and "t1" not in index.by_owner  # no empty owner left
    assert index.discard("s2") and not index and list(index) == []


# ---- take: a client wants a server now -------------------------------------------------


def test_a_client_gets_the_newest_idle_server_its_tenant_used() -> None:
    sel = selection(idle=[("a1", "t1"), ("b1", "t2"), ("a2", "t1"), ("b2", "t2")])
    assert sel.take("t1", patient=True, now=NOW) == "a2"  # warmest first (LIFO)
    assert sel.take("t1", patient=True, now=NOW) == "a1"
    assert list(sel.idle) == ["b1", "b2"]


def test_a_kept_server_of_its_tenant_comes_before_another_tenants_idle_one() -> None:
    sel = selection(held={"t1": 1}, idle=[("b1", "t2")], kept=[("a1", "t1")])
    assert sel.take("t1", patient=True, now=NOW) == "a1"
    assert not sel.kept and list(sel.idle) == ["b1"]


def test_a_tenant_that_holds_its_share_waits_for_its_own_server() -> None:
    # 4 servers, 2 tenants: share 2. t1 holds 2 (busy), t2's server sits idle.
    sel = selection(pool_size=4, held={"t1": 2, "t2": 1}, idle=[("b1", "t2")])
    assert sel.share() == 2
    assert sel.take("t1", patient=True, now=NOW) is None
    assert list(sel.idle) == ["b1"]


def test_a_tenant_below_its_share_converts_a_never_used_server_first() -> None:
    sel = selection(pool_size=4, held={"t1": 1, "t2": 1},
                    idle=[("b1", "t2"), ("new", NOBODY)])
    assert sel.take("t1", patient=True, now=NOW) == "new"
    assert sel.take("t3", patient=True, now=NOW) == "b1"  # t3 holds nothing


def test_a_conversion_takes_from_the_tenant_with_most_servers() -> None:
    sel = selection(pool_size=8, held={"t2": 1, "t3": 2},
                    idle=[("b1", "t2"), ("c1", "t3"), ("c2", "t3")])
    assert sel.take("t1", patient=True, now=NOW) == "c1"  # t3 has 4, t2 has 2


def test_an_idle_server_is_converted_before_a_kept_one() -> None:
    # A kept server's client is between transactions and likely back soon.
    sel = selection(pool_size=4, held={"t2": 2, "t3": 1}, idle=[("c1", "t3")],
                    kept=[("b1", "t2")])
    assert sel.take("t1", patient=True, now=NOW) == "c1"
    assert sel.take("t1", patient=True, now=NOW) == "b1"


def test_out_of_patience_a_server_parked_for_a_tenant_within_its_share_stays_parked() -> None:
    # 8 servers, 4 tenants: share 2. t2 has one busy and one parked: its clients come back.
    sel = selection(pool_size=8, held={"t1": 2, "t2": 1, "t3": 2, "t4": 2},
                    idle=[("b1", "t2")])
    assert sel.take("t1", patient=False, now=NOW + QUIET / 2) is None
    assert list(sel.idle) == ["b1"]


def test_out_of_patience_a_parked_server_is_taken_once_its_tenant_left_it_quiet() -> None:
    sel = selection(pool_size=8, held={"t1": 2, "t3": 2, "t4": 2}, idle=[("b1", "t2")])
    assert sel.take("t1", patient=False, now=NOW + QUIET * 2) == "b1"


def test_out_of_patience_a_tenant_beyond_its_share_gives_a_parked_server_up() -> None:
    # 8 servers, 4 tenants: share 2 (rounded up too). t2 holds 2 and has 2 more parked.
    sel = selection(pool_size=8, held={"t1": 2, "t2": 2, "t3": 1},
                    waiting={"t4": 1}, idle=[("b1", "t2"), ("b2", "t2")])
    assert sel.take("t1", patient=True, now=NOW) is None
    assert sel.take("t1", patient=False, now=NOW) == "b1"


def test_out_of_patience_a_kept_server_of_another_tenant_is_taken_once_quiet() -> None:
    sel = selection(pool_size=2, held={"t1": 1, "t2": 1}, kept=[("a1", "t1")])
    assert sel.take("t2", patient=True, now=NOW) is None
    assert sel.take("t2", patient=False, now=NOW) is None  # t1 holds only its share
    assert sel.take("t2", patient=False, now=NOW + QUIET * 2) == "a1"


def test_out_of_patience_a_kept_server_of_a_tenant_beyond_its_share_is_taken() -> None:
    sel = selection(pool_size=4, held={"t1": 3, "t2": 1}, kept=[("a1", "t1")])
    assert sel.take("t2", patient=False, now=NOW) == "a1"


def test_max_tenant_server_conns_holds_for_idle_servers_even_its_own() -> None:
    sel = selection(pool_size=10, cap=2, held={"t1": 2},
                    idle=[("a1", "t1"), ("new", NOBODY)])
    assert sel.take("t1", patient=False, now=NOW) is None
    assert len(sel.idle) == 2


def test_at_max_tenant_server_conns_a_tenant_still_trades_its_kept_server() -> None:
    # Moving a kept server between two clients of t1 does not change what t1 holds.
    sel = selection(pool_size=10, cap=2, held={"t1": 2}, kept=[("a1", "t1")])
    assert sel.take("t1", patient=True, now=NOW) == "a1"


def test_the_share_counts_tenants_holding_waiting_or_with_servers_parked() -> None:
    sel = selection(pool_size=20, held={"t1": 3}, waiting={"t2": 1, "t1": 1},
                    idle=[("c1", "t3"), ("new", NOBODY)])
    assert sel.share() == 6 and sel.share(rounded_up=True) == 7
    sel = selection(pool_size=2, held={f"t{i}": 0 for i in range(5)},
                    waiting={f"t{i}": 1 for i in range(5)})
    assert sel.share() == 1  # more tenants than servers: still one each to count on


_TENANTS = st.sampled_from(["t1", "t2", "t3", "t4"])
_OWNERS = st.one_of(_TENANTS, st.just(NOBODY), st.none())


@settings(max_examples=300, deadline=None)
@given(pool_size=st.integers(1, 30), held=st.dictionaries(_TENANTS, st.integers(0, 3)),
       waiting=st.dictionaries(_TENANTS, st.integers(0, 2)),
       idle_owners=st.lists(_OWNERS, max_size=6), owner=_OWNERS, rounded_up=st.booleans())
def test_the_share_is_pool_size_over_the_union_of_tenants(
        pool_size: int, held: dict[str, int], waiting: dict[str, int],
        idle_owners: list[object], owner: object, rounded_up: bool) -> None:
    # The count the share divides by, spelled as the set union it avoids building.
    sel = selection(pool_size, held=held, waiting=waiting,
                    idle=[(f"s{i}", o) for i, o in enumerate(idle_owners)])
    names = set(sel.held) | set(sel.waiting) | set(sel.idle.by_owner)
    if owner is not None and owner is not NOBODY:
        names.add(owner)
    tenants = max(1, len(names - {NOBODY, None}))
    expected = -(-pool_size // tenants) if rounded_up else pool_size // tenants
    assert sel.share(rounded_up=rounded_up, owner=owner) == max(1, expected)


def _expected_share(sel: Selection[str], owner: object) -> int:
    names = set(sel.held) | set(sel.waiting) | set(sel.idle.by_owner)
    if owner is not None and owner is not NOBODY:
        names.add(owner)
    return max(1, sel.pool_size // max(1, len(names - {NOBODY, None})))


_OPS = st.lists(st.tuples(st.sampled_from(["wait", "served", "park", "unpark", "take",
                                           "lease", "unlease"]),
                          _OWNERS, st.integers(0, 5)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(ops=_OPS, owner=_OWNERS)
def test_the_share_follows_every_change_of_the_tenants(ops: list[tuple[str, object, int]],
                                                       owner: object) -> None:
    """share() keeps its count of tenants between calls: every way a tenant enters or
    leaves held, waiting or the idle servers' owners is seen."""
    sel = selection(pool_size=12)
    waits: list[TenantUse | None] = []
    for op, who, n in ops:
        tenant = who if isinstance(who, str) else None
        server = f"s{n}"
        if op == "wait":
            waits.append(sel.wait_began(tenant))
        elif op == "served" and waits:
            sel.wait_ended(waits.pop(n % len(waits)))
        elif op == "park" and server not in sel.idle:
            sel.idle.add(server, who, NOW)
        elif op == "unpark":
            sel.idle.discard(server)
        elif op == "take":
            sel.take(tenant, patient=n % 2 == 0, now=NOW + n)
        elif op == "lease":  # as PoolServers counts a lease
            sel.leased(tenant)
        elif op == "unlease" and tenant in sel.held:
            sel.unleased(tenant)
        assert sel.share(owner=owner) == _expected_share(sel, owner), (op, who, n)


def test_waiting_counts_drop_to_nothing() -> None:
    sel = selection()
    first, second = sel.wait_began("t1"), sel.wait_began("t1")
    assert sel.wait_began(None) is None  # a bypass identity is not counted
    assert sel.waiting == {"t1": 2} and first is second
    sel.leased("t1")
    sel.wait_ended(first)
    sel.wait_ended(second)
    sel.wait_ended(None)
    assert sel.waiting == {} and sel.held == {"t1": 1}
    sel.unleased("t1")
    assert sel.tenants == {}  # no tenant left with nothing


# ---- waiter_for: a server came back while clients wait ---------------------------------


def pick(sel: Selection[str], owner: object, tenants: list[str | None], *,
         overdue: bool) -> int:
    """The index in ``tenants`` (a wait queue, oldest first) of the waiter waiter_for
    chooses, or -1 (parked). The oldest eligible waiter is overdue when ``overdue``."""
    waits = [Waiter(tenant, since=0.0) for tenant in tenants]
    chosen = sel.waiter_for(owner, waits, overdue_since=0.0 if overdue else -1.0)
    return next((i for i, wait in enumerate(waits) if wait is chosen), -1)


def test_a_freed_server_goes_to_a_waiter_of_its_tenant() -> None:
    sel = selection(pool_size=4, held={"t1": 1, "t2": 2}, waiting={"t1": 1, "t2": 1})
    assert pick(sel, "t1", ["t2", "t1"], overdue=False) == 1


def test_a_waiter_of_a_tenant_below_its_share_goes_before_the_servers_own_tenant() -> None:
    # 9 servers, 3 tenants: share 3. t3 holds 1: it is short, t1 (3 left) is not.
    sel = selection(pool_size=9, held={"t1": 3, "t2": 3, "t3": 1})
    assert pick(sel, "t1", ["t1", "t3"], overdue=False) == 1


def test_a_freed_server_is_parked_when_no_waiter_is_of_its_tenant_or_short() -> None:
    # Every waiting tenant holds its share: they wait for their own; t1's clients are
    # between transactions and take it back without a scrub.
    sel = selection(pool_size=6, held={"t1": 1, "t2": 2, "t3": 2})
    assert pick(sel, "t1", ["t2", "t3"], overdue=False) == -1


def test_a_never_used_server_goes_to_the_oldest_waiter() -> None:
    sel = selection(pool_size=6, held={"t2": 3, "t3": 3})
    assert pick(sel, NOBODY, ["t2", "t3"], overdue=False) == 0


def test_an_overdue_oldest_waiter_short_of_its_share_is_served_first() -> None:
    sel = selection(pool_size=2, held={"t1": 0})
    assert pick(sel, "t1", ["t2", "t3", "t1"], overdue=False) == 2
    assert pick(sel, "t1", ["t2", "t3", "t1"], overdue=True) == 0


def test_an_overdue_waiter_takes_a_server_from_a_tenant_with_more() -> None:
    # 20 servers, 8 tenants: some hold 3, some 2. An overdue waiter of a 2-server tenant
    # gets the third server of another tenant, so the odd servers rotate.
    held = {f"t{i}": 3 if i < 4 else 2 for i in range(8)}
    held["t0"] = 2  # t0 just freed its third server
    sel = selection(pool_size=20, held=held)
    assert pick(sel, "t0", ["t5", "t0"], overdue=False) == 1
    assert pick(sel, "t0", ["t5", "t0"], overdue=True) == 0
    held["t0"] = 1  # t0 had only two: it would end up with fewer than t5
    assert pick(selection(pool_size=20, held=held), "t0", ["t5"], overdue=True) == -1


def test_a_waiter_at_max_tenant_server_conns_is_passed_over() -> None:
    sel = selection(pool_size=10, cap=2, held={"t1": 2, "t2": 0})
    assert pick(sel, NOBODY, ["t1", "t2"], overdue=True) == 1
    assert pick(sel, NOBODY, ["t1"], overdue=False) == -1


def test_the_queue_is_read_only_as_far_as_the_answer_needs() -> None:
    # The first waiter is of the server's tenant and short of its share: nothing after
    # it is looked at (the queue is walked, not copied, on every release).
    sel = selection(pool_size=4, held={"t1": 1})
    read: list[Waiter] = []

    def queue() -> Iterator[Waiter]:
        for tenant in ["t1", "t2", "t1"]:
            wait = Waiter(tenant, since=0.0)
            read.append(wait)
            yield wait

    chosen = sel.waiter_for("t1", queue(), overdue_since=-1.0)
    assert chosen is read[0] and len(read) == 1


def test_a_waiter_of_the_servers_tenant_is_looked_for_only_so_far_down_the_queue() -> None:
    # Every waiting tenant holds its share; t1's waiter comes after AFFINITY_LOOKAHEAD
    # others: the server is parked for t1. Waiters of capped tenants are not counted.
    held = {"t1": 2, "t2": 2, "t3": 2}
    sel = selection(pool_size=6, held=held)
    assert pick(sel, "t1", ["t2"] * (AFFINITY_LOOKAHEAD - 1) + ["t1"], overdue=False) == (
        AFFINITY_LOOKAHEAD - 1)
    assert pick(sel, "t1", ["t2"] * AFFINITY_LOOKAHEAD + ["t1"], overdue=False) == -1
    capped = selection(pool_size=6, cap=2, held=held)
    queue: list[str | None] = ["t2"] * AFFINITY_LOOKAHEAD + ["t1"]
    assert pick(capped, "t1", queue, overdue=False) == -1  # t1 is capped too
    capped = selection(pool_size=8, cap=2, held={"t1": 1, "t2": 2, "t3": 2})
    assert pick(capped, "t1", ["t2"] * 40 + ["t3"] * 5 + ["t1"], overdue=False) == 45


def test_while_a_tenant_with_no_server_waits_freed_servers_go_to_tenants_short_of_one(
        ) -> None:
    # Random releases of busy tenants' servers while a tenant that holds nothing waits:
    # each goes to a waiter short of its share (FIFO among them), never to affinity or
    # rotation, so the tenant with nothing is served within a few releases.
    rng = random.Random(7)
    for _ in range(200):
        tenants = [f"t{i}" for i in range(rng.randint(2, 12))]
        pool_size = rng.randint(1, 24)
        held: dict[str, int] = {}
        for _ in range(pool_size):
            owner = rng.choice(tenants[1:])
            held[owner] = held.get(owner, 0) + 1
        freed = rng.choice(sorted(held))
        held[freed] -= 1
        queue = [rng.choice(tenants[1:]) for _ in range(rng.randint(0, 8))]
        queue.insert(rng.randint(0, len(queue)), tenants[0])
        sel = selection(pool_size=pool_size, held=held)
        chosen = pick(sel, freed, list(queue), overdue=rng.random() < 0.5)
        assert chosen >= 0
        assert held.get(queue[chosen], 0) < sel.share() or queue[chosen] == tenants[0], (
            queue, chosen, held)
