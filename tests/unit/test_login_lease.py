"""A login whose server dies the moment it is lent leases another.

Nothing of the client's reached that server (only the proxy's context set), so the
login goes on with another one, up to three in all, instead of failing: the race of a
network cut or a PostgreSQL restart with a client logging in (the pool has not yet
read the news from an idle connection's socket). Errors the server answers with (a
context set refused) still fail the login. Fakes for the pool, the lease and the
client: the rule is tested alone, with no event loop beyond asyncio.run.
"""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.backend.server import ServerError, ServerState
from proxy.frontend import first_server
from proxy.frontend.interfaces import ClientState


class FakeServer:
    def __init__(self, n: int, state: ServerState = ServerState.ACTIVE) -> None:
        self.id = n
        self.state = state


class FakeLease:
    def __init__(self, n: int, outcome: str) -> None:
        # outcome: "dead" (CLOSED when lent), "lost" (dies during the set), "refused"
        # (the set fails with an error reply), "ok"
        self.server = FakeServer(n, ServerState.CLOSED if outcome == "dead" else
                                 ServerState.ACTIVE)
        self.outcome = outcome
        self.released = False

    def set_context(self, context: object, counted: bool) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.outcome == "lost":
            fut.set_exception(ServerError("upstream closed the connection"))
        else:
            fut.set_result({"C": "42501", "M": "nope"} if self.outcome == "refused" else None)
        return fut

    def release(self) -> None:
        self.released = True


class FakePool:
    def __init__(self, outcomes: list[str]) -> None:
        self.leases = [FakeLease(i, o) for i, o in enumerate(outcomes, 1)]
        self.given = 0

    async def acquire(self, tenant: str | None) -> FakeLease:
        lease = self.leases[self.given]
        self.given += 1
        return lease


class FakeClient:
    def __init__(self, outcomes: list[str]) -> None:
        self.pool = FakePool(outcomes)
        self.context = type("Context", (), {"tenant": "acme"})()
        self.state = ClientState.LOGIN
        self.id = 7
        self.linked: list[FakeLease] = []
        self.fatals: list[tuple[str, str]] = []

    def link(self, lease: FakeLease) -> None:
        self.linked.append(lease)

    def fatal(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        self.fatals.append((sqlstate, message))
        self.state = ClientState.CLOSED


def run(outcomes: list[str]) -> tuple[FakeClient, Any]:
    client = FakeClient(outcomes)
    got = asyncio.run(first_server._lease_with_context(client))  # type: ignore[arg-type]
    return client, got


def test_a_server_dead_when_lent_or_lost_during_the_set_is_replaced() -> None:
    client, got = run(["dead", "lost", "ok"])
    dead, lost, ok = client.pool.leases
    assert got is ok and client.fatals == []
    assert dead.released and lost.released and not ok.released
    assert client.linked == [lost, ok]  # a dead one is never linked


def test_three_lost_servers_fail_the_login_with_08006() -> None:
    client, got = run(["lost", "dead", "lost"])
    assert got is None and client.pool.given == 3
    assert client.fatals == [("08006", "server connection lost: upstream closed the connection")]
    assert all(lease.released for lease in client.pool.leases)


def test_a_refused_context_set_fails_the_login_at_once() -> None:
    client, got = run(["refused", "ok"])
    assert got is None and client.pool.given == 1
    assert client.fatals == [("42501", "could not set the session context: nope")]
