"""A login whose server dies the moment it is lent leases another.

Nothing of the client's reached that server (only the proxy's context set), so the
login goes on with another one, up to three in all, instead of failing: the race of a
network cut or a PostgreSQL restart with a client logging in (the pool has not yet
read the news from an idle connection's socket). Errors the server answers with (a
context set refused) still fail the login. The real pool, leases and server connections
(in memory, writing to a RecordingTransport; the test plays PostgreSQL's replies); the
client is a stand-in with what the login reads of it.
"""

from __future__ import annotations

import asyncio

from proxy.backend.context import TenantContext
from proxy.backend.server import ServerConnection, ServerState
from proxy.config import DatabaseConfig
from proxy.frontend import first_server
from proxy.frontend.interfaces import ClientState
from proxy.pool.lease import Lease
from proxy.pool.pool import ServerPool
from proxy.wire import messages
from tests.support import RecordingTransport

DB = DatabaseConfig(name="app", pool_size=3, query_wait_timeout=0)
CONTEXT = TenantContext.make("app.current_tenant", "acme", {})


class Client:
    """What ``_lease_with_context`` reads and calls of a logging-in client."""

    def __init__(self, pool: ServerPool) -> None:
        self.pool = pool
        self.context = CONTEXT
        self.state = ClientState.LOGIN
        self.id = 7
        self.linked: list[Lease] = []
        self.fatals: list[tuple[str, str]] = []

    def link(self, lease: Lease) -> None:
        self.linked.append(lease)

    def fatal(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        self.fatals.append((sqlstate, message))
        self.state = ClientState.CLOSED


def server() -> ServerConnection:
    conn = ServerConnection(DB)
    conn.transport = RecordingTransport()  # type: ignore[assignment]
    return conn


def pool_of(*servers: ServerConnection) -> ServerPool:
    pool = ServerPool(DB, password=None)
    for conn in servers:
        pool._offer(conn)
    return pool


async def login(client: Client) -> asyncio.Task[Lease | None]:
    task = asyncio.ensure_future(first_server._lease_with_context(client))  # type: ignore[arg-type]
    await asyncio.sleep(0)  # it runs up to its first wait
    return task


def set_answered(conn: ServerConnection, error: bool = False) -> None:
    """PostgreSQL answers the context set (what it sends before is skipped)."""
    refusal = messages.error_response("42501", "nope") if error else b""
    conn.data_received(refusal + messages.ready_for_query(b"I"))


def test_a_server_that_dies_while_it_is_lent_is_replaced() -> None:
    async def scenario() -> None:
        first, second = server(), server()
        pool = pool_of(first)
        held = pool.try_acquire("globex")
        assert held is not None
        client = Client(pool)
        task = await login(client)  # waits: the one server is globex's
        held.release()  # lent to the login, which has not run yet ...
        first._fail("upstream closed the connection")  # ... and it dies
        pool._offer(second)
        await asyncio.sleep(0)
        assert [lease.server for lease in client.linked] == [second]  # never the dead one
        set_answered(second)
        got = await task
        assert got is not None and got.server is second and client.fatals == []
        assert second.state is ServerState.ACTIVE and first not in pool.active

    asyncio.run(scenario())


def test_a_server_lost_during_the_context_set_is_replaced() -> None:
    async def scenario() -> None:
        first, second = server(), server()
        pool = pool_of(first, second)
        client = Client(pool)
        task = await login(client)
        lost = client.linked[0].server
        lost._fail("upstream closed the connection")
        await asyncio.sleep(0)
        assert len(client.linked) == 2
        other = client.linked[1].server
        assert other is not lost
        set_answered(other)
        got = await task
        assert got is not None and got.server is other and client.fatals == []

    asyncio.run(scenario())


def test_three_lost_servers_fail_the_login_with_08006() -> None:
    async def scenario() -> None:
        servers = [server() for _ in range(3)]
        client = Client(pool_of(*servers))
        task = await login(client)
        for n in range(3):
            assert len(client.linked) == n + 1
            client.linked[n].server._fail("upstream closed the connection")
            await asyncio.sleep(0)
        assert await task is None
        assert client.fatals == [("08006",
                                  "server connection lost: upstream closed the connection")]

    asyncio.run(scenario())


def test_a_refused_context_set_fails_the_login_at_once() -> None:
    async def scenario() -> None:
        first, second = server(), server()
        client = Client(pool_of(first, second))
        task = await login(client)
        set_answered(client.linked[0].server, error=True)
        assert await task is None and len(client.linked) == 1
        assert client.fatals == [("42501", "could not set the session context: nope")]

    asyncio.run(scenario())
