"""The Lease's decisions, without sockets: when the tenant context is pipelined, when the
client waits for it, and how a server goes back to the pool.

The lease is driven against a stub pool and a ServerConnection that has no socket: its
transport only records what is written (a stub in place of the server would not do: in
the compiled build a Lease accepts only a real ServerConnection). A pipelined set is
corked (held for the client's next write), a waited one written at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest

from proxy.backend.context import TenantContext, _Nobody
from proxy.backend.routing import ContextSetDone
from proxy.backend.server import (
    FORWARD,
    NOBODY,
    PRISTINE,
    UNKNOWN,
    Receiver,
    ServerConnection,
    ServerState,
    Skip,
    Stale,
    TenantState,
)
from proxy.config import DatabaseConfig
from proxy.pool.lease import Lease, Lender
from proxy.pool.pool import PoolStats
from tests.support import RecordingTransport

SETTING = "app.current_tenant"
ACME = TenantContext(SETTING, "acme")
GLOBEX = TenantContext(SETTING, "globex")



class StubPool(Lender):
    """What a lease asks of its pool (``Lender``), answering as told and recording it."""

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


def idle_server(state: TenantState = PRISTINE, owner: str | _Nobody | None = NOBODY
                ) -> tuple[ServerConnection, RecordingTransport]:
    """A leased, idle server connection believed to be in ``state``, used by ``owner``."""
    server = ServerConnection(DatabaseConfig(name="app"))
    transport = RecordingTransport()
    server.transport = cast(asyncio.Transport, transport)
    server.state = ServerState.ACTIVE
    server.tenant_state = state
    server.owner = owner
    return server, transport


def lent(server: ServerConnection, pool: StubPool | None = None) -> tuple[Lease, StubPool]:
    pool = pool or StubPool()
    return Lease(pool, server), pool


def sets(server: ServerConnection) -> int:
    """Context sets (and scrubs) sent: the proxy's own requests awaiting their reply."""
    return sum(1 for entry in server.pending if isinstance(entry, Skip))


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())  # apply_context needs a running loop for its futures


# ---- pipelined or waited ------------------------------------------------------------------


def test_a_server_set_for_the_clients_context_needs_no_set() -> None:
    server, transport = idle_server(ACME, owner="acme")
    lease, pool = lent(server)
    assert lease.begin(ACME, 1.0) is True
    assert sets(server) == 0 and transport.written == []
    assert pool.stats.leases_with_context_set == 0


class _Told(Receiver):
    """The linked client, as far as a pipelined set is concerned: records how it went."""

    def __init__(self, told: list[object]) -> None:
        self.told = told

    def pipelined_context_done(self, fut: ContextSetDone) -> None:
        self.told.append(fut)


def test_a_pristine_server_gets_the_context_pipelined_in_front_of_the_messages() -> None:
    async def scenario() -> None:
        server, transport = idle_server()
        lease, pool = lent(server)
        told: list[object] = []
        server.receiver = _Told(told)
        assert lease.context_ready(ACME) is True
        assert sets(server) == 1 and transport.written == []  # corked: with the messages
        assert server.tenant_state is ACME and server.owner == "acme"
        assert pool.stats.leases_with_context_set == 1
        entry = server.pending[0]
        assert isinstance(entry, Skip) and entry.future is not None
        entry.future.set_result({"M": "failed"})
        await asyncio.sleep(0)
        assert told == [entry.future]  # the client hears how the pipelined set went
        assert server.tenant_state is UNKNOWN

    run(scenario)


@pytest.mark.parametrize("state", [PRISTINE, Stale("acme"), TenantContext(SETTING, "acme",
                                                                          (("a", "b"),))])
def test_the_same_tenants_server_is_set_pipelined(state: TenantState) -> None:
    # Stale: the client's RESET left acme or the default; a context of acme with other
    # settings: only the settings differ. A failed set cannot leave another tenant.
    async def scenario() -> None:
        server, transport = idle_server(state, owner="acme")
        lease, _ = lent(server)
        assert lease.must_wait(ACME) is False
        assert lease.context_ready(ACME) is True
        assert sets(server) == 1 and transport.written == []

    run(scenario)


@pytest.mark.parametrize(("state", "owner"), [
    (GLOBEX, "globex"),          # another tenant's: the scrub first
    (PRISTINE, "globex"),        # reset, but another tenant's session ran on it
    (UNKNOWN, "acme"),           # a statement may have changed the setting
    (Stale("globex"), "acme"),   # the setting may still hold another tenant
    (TenantContext(SETTING, None), None),  # set for a bypass identity
])
def test_the_client_waits_for_the_set_when_a_failure_could_leave_another_tenant(
        state: TenantState, owner: str | None) -> None:
    async def scenario() -> None:
        server, transport = idle_server(state, owner=owner)
        lease, pool = lent(server)
        assert lease.must_wait(ACME) is True
        assert lease.begin(ACME, 1.0) is False
        assert sets(server) == 0  # nothing pipelined
        fut = lease.set_context(ACME)
        assert fut is not None and transport.written  # sent now, for the client to wait on
        scrubbed = owner != "acme"
        assert sets(server) == 1 + scrubbed
        assert (b"DISCARD ALL" in b"".join(transport.written)) == scrubbed
        assert server.tenant_state is ACME and server.owner == "acme"
        assert pool.stats.leases_with_context_set == 1

    run(scenario)


def test_an_equal_context_from_another_client_is_adopted_without_a_set() -> None:
    other_clients = TenantContext(SETTING, "acme")
    assert other_clients == ACME and other_clients is not ACME
    server, _ = idle_server(other_clients, owner="acme")
    lease, _ = lent(server)
    assert lease.context_ready(ACME) is True
    assert server.tenant_state is ACME and sets(server) == 0  # next time: identity


def test_inside_a_transaction_nothing_is_checked_or_set() -> None:
    server, _ = idle_server(UNKNOWN, owner="globex")
    server.tx_status = b"T"
    lease, _ = lent(server)
    assert lease.context_ready(ACME) is True and sets(server) == 0


def test_login_waits_for_its_set_uncounted_and_skips_an_equal_one() -> None:
    async def scenario() -> None:
        server, _ = idle_server()
        lease, pool = lent(server)
        assert lease.set_context(ACME, counted=False) is not None
        assert pool.stats.leases_with_context_set == 0
        assert lease.set_context(TenantContext(SETTING, "acme"), counted=False) is None
        assert sets(server) == 1

    run(scenario)


def test_guard_touched_messages_make_the_next_set_a_waited_one() -> None:
    server, _ = idle_server(ACME, owner="acme")
    lease, _ = lent(server)
    lease.context_touched()
    assert server.tenant_state is UNKNOWN
    assert lease.begin(ACME, 1.0) is False


def test_settings_the_server_reports_never_vouch_for_an_unknown_tenant() -> None:
    server, _ = idle_server(UNKNOWN, owner="acme")
    lease, _ = lent(server)
    lease.context_changed(ACME)  # a ParameterStatus after a guard-flagged statement
    assert server.tenant_state is UNKNOWN
    server.tenant_state = GLOBEX
    lease.context_changed(ACME)
    assert server.tenant_state is ACME


# ---- back to the pool ---------------------------------------------------------------------


def test_a_kept_server_is_resumed_before_its_context_is_checked() -> None:
    server, _ = idle_server(ACME, owner="acme")
    server.state = ServerState.KEPT
    lease, pool = lent(server)
    assert lease.begin(ACME, 5.0) is True
    assert pool.calls == [("resume_kept", 5.0)] and server.state is ServerState.ACTIVE


def test_a_kept_server_the_pool_would_not_lease_as_it_is_is_given_up() -> None:
    server, _ = idle_server()
    server.state = ServerState.KEPT
    lease, _ = lent(server, StubPool(resumes=False))
    assert lease.begin(ACME, 5.0) is None
    assert sets(server) == 0  # no context set on a server about to go back


def test_a_server_inside_the_transaction_stays_without_asking_the_pool() -> None:
    server, _ = idle_server(ACME, owner="acme")
    server.pending.append(FORWARD)
    lease, pool = lent(server)
    assert lease.keep() is True and pool.calls == []


@pytest.mark.parametrize("keeps", [True, False])
def test_at_the_end_of_a_transaction_the_pool_decides_whether_it_is_kept(keeps: bool) -> None:
    server, _ = idle_server(ACME, owner="acme")
    lease, pool = lent(server, StubPool(keeps=keeps))
    assert lease.keep() is keeps
    assert pool.calls == [("keep", server)]
    assert server.state is (ServerState.KEPT if keeps else ServerState.ACTIVE)


@pytest.mark.parametrize("reset", [True, False])
def test_release_gives_the_server_back_with_or_without_the_reset(reset: bool) -> None:
    server, _ = idle_server()
    lease, pool = lent(server)
    lease.release(reset=reset)
    assert pool.calls == [("take_back", reset)]


def test_a_lease_gives_its_server_back_once() -> None:
    server, _ = idle_server()
    lease, pool = lent(server)
    lease.release()
    lease.release(reset=True)  # a bug elsewhere: must not hand the server out twice
    assert pool.calls == [("take_back", False)]


# ---- the tenant state on a real ServerConnection ------------------------------------------


def test_tenant_state_transitions() -> None:
    async def scenario() -> None:
        server, transport = idle_server()
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
