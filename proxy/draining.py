"""Ending clients without cutting a transaction short: at shutdown, and when placement
moves a tenant to another cluster.

:func:`end_after_transaction` ends a client with FATAL 57P01 now when it has no
transaction running, else right after its transaction ends: a :class:`_DrainingReceiver`
then stands between its server and the client until the server's last ReadyForQuery.
"""

from __future__ import annotations

from typing import Any, Final

from proxy.backend.routing import ContextSetDone
from proxy.backend.server import BackendSession, Receiver
from proxy.frontend.client import ClientConnection

ADMIN_SHUTDOWN: Final = "terminating connection due to administrator command"


def _in_transaction(client: ClientConnection) -> bool:
    """True while the client's server works for it or holds its open transaction."""
    server = client.server
    return server is not None and not server.is_clean


def end_after_transaction(client: ClientConnection) -> None:
    """FATAL 57P01 now when the client has no transaction running, else right after."""
    if _in_transaction(client):
        _DrainingReceiver.install(client)
    else:
        client.fatal("57P01", ADMIN_SHUTDOWN)


class _DrainingReceiver(Receiver):
    """Stands between a server and its client until the client's transaction is over.

    Forwards everything; when the server has answered everything and the transaction is
    over, ends the client with 57P01 right after the ReadyForQuery, before it can start
    another transaction (a session-mode client keeps its server between transactions).
    """

    def __init__(self, client: ClientConnection) -> None:
        self._client = client

    @classmethod
    def install(cls, client: ClientConnection) -> None:
        server = client.server
        if server is not None and server.receiver is client:
            server.receiver = cls(client)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)  # what else is read of a client (its id)

    def server_ready(self, server: BackendSession) -> None:
        client = self._client
        client.server_ready(server)
        if server.is_clean:
            client.fatal("57P01", ADMIN_SHUTDOWN)

    # The rest of Receiver, as the client does it.
    def forward_to_client(self, data: bytes) -> None:
        self._client.forward_to_client(data)

    def unsolicited(self, data: bytes) -> None:
        self._client.unsolicited(data)

    def server_lost(self, server: BackendSession, reason: str) -> None:
        self._client.server_lost(server, reason)

    def server_paused_writing(self, paused: bool) -> None:
        self._client.server_paused_writing(paused)

    def parameter_changed(self, name: str, value: str) -> None:
        self._client.parameter_changed(name, value)

    def statements_cleared(self) -> None:
        self._client.statements_cleared()

    def server_reclaimed(self, server: BackendSession) -> None:
        self._client.server_reclaimed(server)

    def server_error(self, body: bytes) -> None:
        self._client.server_error(body)

    def forged_context(self) -> None:
        self._client.forged_context()

    def query_timed_out(self, server: BackendSession) -> None:
        self._client.query_timed_out(server)

    def pipelined_context_done(self, fut: ContextSetDone) -> None:
        self._client.pipelined_context_done(fut)
