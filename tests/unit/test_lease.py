"""The Lease's decisions, without sockets: when the tenant context is pipelined, when the
client waits for it, and how a server goes back to the pool.

The lease is driven against a stub server (the fields and methods it reads) and a stub
pool; the tenant-state transitions themselves are ServerConnection's, checked on a real
one whose transport only records what is written.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from proxy.backend.context import TenantContext
from proxy.backend.server import (
    NOBODY,
    PRISTINE,
    UNKNOWN,
    ServerConnection,
    ServerState,
    Stale,
    TenantState,
)
from proxy.config import DatabaseConfig
from proxy.pool.lease import Lease
from proxy.pool.pool import PoolStats

SETTING = "app.current_tenant"
ACME = TenantContext(SETTING, "acme")
GLOBEX = TenantContext(SETTING, "globex")


class StubServer:
    """What a lease reads of a server connection; apply_context records the call."""

    def __init__(self, state: TenantState = PRISTINE, owner: object = NOBODY) -> None:
        self.state = ServerState.ACTIVE
        self.tenant_state = state
        self.owner = owner
        self.pending: list[object] = []
        self.tx_status = b"I"
        self.unsynced = False
        self.sets: list[tuple[TenantContext, bool]] = []
        self.futures: list[asyncio.Future[dict[str, str] | None]] = []

    @property
    def is_clean(self) -> bool:
        return not self.pending and self.tx_status == b"I" and not self.unsynced

    def apply_context(self, context: TenantContext, *, corked: bool = False
                      ) -> asyncio.Future[dict[str, str] | None]:
        self.sets.append((context, corked))
        self.tenant_state = context
        self.owner = context.tenant
        fut: asyncio.Future[dict[str, str] | None] = asyncio.Future(loop=_LOOP)
        self.futures.append(fut)
        return fut

    def adopt_context(self, context: TenantContext) -> None:
        if isinstance(self.tenant_state, TenantContext):
            self.tenant_state = context

    def mark_context_unknown(self) -> None:
        self.tenant_state = UNKNOWN


class StubPool:
    def __init__(self, *, keeps: bool = True, resumes: bool = True) -> None:
        self.stats = PoolStats()
        self.keeps = keeps
        self.resumes = resumes
        self.calls: list[tuple[str, Any]] = []

    def keep(self, server: ServerConnection) -> bool:
        self.calls.append(("keep", server))
        if self.keeps:
            server.state = ServerState.KEPT
        return self.keeps

    def resume_kept(self, server: ServerConnection, now: float) -> bool:
        self.calls.append(("resume_kept", now))
        if self.resumes:
            server.state = ServerState.ACTIVE
        return self.resumes

    def take_back(self, server: ServerConnection, *, reset: bool) -> None:
        self.calls.append(("take_back", reset))


_LOOP = asyncio.new_event_loop()


def teardown_module() -> None:
    _LOOP.close()


def lent(server: StubServer, pool: StubPool | None = None) -> tuple[Lease, StubPool]:
    pool = pool or StubPool()
    return Lease(pool, cast(ServerConnection, server)), pool


# ---- pipelined or waited ------------------------------------------------------------------


def test_a_server_set_for_the_clients_context_needs_no_set() -> None:
    server = StubServer(ACME, owner="acme")
    lease, pool = lent(server)
    assert lease.begin(ACME, 1.0) is True
    assert server.sets == [] and pool.stats.leases_with_context_set == 0


def test_a_pristine_server_gets_the_context_pipelined_in_front_of_the_messages() -> None:
    server = StubServer()
    lease, pool = lent(server)
    told: list[object] = []
    lease.on_pipelined_set = told.append
    assert lease.context_ready(ACME) is True
    assert server.sets == [(ACME, True)]  # corked: same write as the client's messages
    assert server.tenant_state is ACME and server.owner == "acme"
    assert pool.stats.leases_with_context_set == 1
    server.futures[0].set_result({"M": "failed"})
    _LOOP.run_until_complete(asyncio.sleep(0))
    assert told == [server.futures[0]]  # the client hears how the pipelined set went


@pytest.mark.parametrize("state", [PRISTINE, Stale("acme"), TenantContext(SETTING, "acme",
                                                                          (("a", "b"),))])
def test_the_same_tenants_server_is_set_pipelined(state: TenantState) -> None:
    # Stale: the client's RESET left acme or the default; a context of acme with other
    # settings: only the settings differ. A failed set cannot leave another tenant.
    lease, _ = lent(StubServer(state, owner="acme"))
    assert lease.must_wait(ACME) is False
    assert lease.context_ready(ACME) is True


@pytest.mark.parametrize(("state", "owner"), [
    (GLOBEX, "globex"),          # another tenant's: the scrub first
    (PRISTINE, "globex"),        # reset, but another tenant's session ran on it
    (UNKNOWN, "acme"),           # a statement may have changed the setting
    (Stale("globex"), "acme"),   # the setting may still hold another tenant
    (TenantContext(SETTING, None), NOBODY),  # set for a bypass identity
])
def test_the_client_waits_for_the_set_when_a_failure_could_leave_another_tenant(
        state: TenantState, owner: object) -> None:
    server = StubServer(state, owner=owner)
    lease, pool = lent(server)
    assert lease.must_wait(ACME) is True
    assert lease.begin(ACME, 1.0) is False
    assert server.sets == []  # nothing pipelined
    fut = lease.set_context(ACME)
    assert fut is server.futures[0] and server.sets == [(ACME, False)]
    assert pool.stats.leases_with_context_set == 1


def test_an_equal_context_from_another_client_is_adopted_without_a_set() -> None:
    other_clients = TenantContext(SETTING, "acme")
    assert other_clients == ACME and other_clients is not ACME
    server = StubServer(other_clients, owner="acme")
    lease, _ = lent(server)
    assert lease.context_ready(ACME) is True
    assert server.tenant_state is ACME and server.sets == []  # next time: identity


def test_inside_a_transaction_nothing_is_checked_or_set() -> None:
    server = StubServer(UNKNOWN, owner="globex")
    server.tx_status = b"T"
    lease, _ = lent(server)
    assert lease.context_ready(ACME) is True and server.sets == []


def test_login_waits_for_its_set_uncounted_and_skips_an_equal_one() -> None:
    server = StubServer()
    lease, pool = lent(server)
    assert lease.set_context(ACME, counted=False) is not None
    assert pool.stats.leases_with_context_set == 0
    assert lease.set_context(TenantContext(SETTING, "acme"), counted=False) is None
    assert len(server.sets) == 1


def test_guard_touched_messages_make_the_next_set_a_waited_one() -> None:
    server = StubServer(ACME, owner="acme")
    lease, _ = lent(server)
    lease.context_touched()
    assert server.tenant_state is UNKNOWN
    assert lease.begin(ACME, 1.0) is False


# ---- back to the pool ---------------------------------------------------------------------


def test_a_kept_server_is_resumed_before_its_context_is_checked() -> None:
    server = StubServer(ACME, owner="acme")
    server.state = ServerState.KEPT
    lease, pool = lent(server)
    assert lease.begin(ACME, 5.0) is True
    assert pool.calls == [("resume_kept", 5.0)] and server.state is ServerState.ACTIVE


def test_a_kept_server_the_pool_would_not_lease_as_it_is_is_given_up() -> None:
    server = StubServer()
    server.state = ServerState.KEPT
    lease, _ = lent(server, StubPool(resumes=False))
    assert lease.begin(ACME, 5.0) is None
    assert server.sets == []  # no context set on a server about to go back


def test_a_server_inside_the_transaction_stays_without_asking_the_pool() -> None:
    server = StubServer(ACME, owner="acme")
    server.pending.append(object())
    lease, pool = lent(server)
    assert lease.keep() is True and pool.calls == []


@pytest.mark.parametrize("keeps", [True, False])
def test_at_the_end_of_a_transaction_the_pool_decides_whether_it_is_kept(keeps: bool) -> None:
    server = StubServer(ACME, owner="acme")
    lease, pool = lent(server, StubPool(keeps=keeps))
    assert lease.keep() is keeps
    assert pool.calls == [("keep", server)]
    assert server.state is (ServerState.KEPT if keeps else ServerState.ACTIVE)


@pytest.mark.parametrize("reset", [True, False])
def test_release_gives_the_server_back_with_or_without_the_reset(reset: bool) -> None:
    lease, pool = lent(StubServer())
    lease.release(reset=reset)
    assert pool.calls == [("take_back", reset)]


# ---- the tenant state on a real ServerConnection ------------------------------------------


class RecordingTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False


def real_server() -> tuple[ServerConnection, RecordingTransport]:
    server = ServerConnection(DatabaseConfig(name="app"))
    transport = RecordingTransport()
    server.transport = cast(asyncio.Transport, transport)
    server.state = ServerState.ACTIVE
    return server, transport


def test_tenant_state_transitions() -> None:
    async def scenario() -> None:
        server, transport = real_server()
        assert server.tenant_state is PRISTINE and server.owner is NOBODY
        fut = server.apply_context(ACME)
        assert server.tenant_state is ACME and server.owner == "acme"
        assert b"DISCARD ALL" not in b"".join(transport.written)  # nobody to scrub after
        fut.set_result(None)
        await asyncio.sleep(0)
        assert server.tenant_state is ACME

        server._session_changed(False)  # the client's RESET ALL / DISCARD
        assert server.tenant_state == Stale("acme") and server.session_dirty
        server.adopt_context(ACME)  # only a context is replaced
        assert server.tenant_state == Stale("acme")
        server._session_changed(True)  # the client's SET
        assert server.tenant_state is UNKNOWN
        server.adopt_context(ACME)  # a reported setting does not vouch for the tenant
        assert server.tenant_state is UNKNOWN
        server.reset_done()  # the pool's RESET ALL
        assert server.tenant_state is PRISTINE and not server.session_dirty
        assert server.owner == "acme"  # who used it since the scrub: a separate fact

        transport.written.clear()
        failed = server.apply_context(GLOBEX)  # another tenant: the scrub goes first
        assert b"DISCARD ALL" in b"".join(transport.written)
        assert server.tenant_state is GLOBEX and server.owner == "globex"
        failed.set_result({"M": "permission denied"})
        await asyncio.sleep(0)
        assert server.tenant_state is UNKNOWN  # a failed set is never trusted

    asyncio.run(scenario())
