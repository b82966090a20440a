"""Cancel requests: the keys the proxy gives its clients, and forwarding a cancel to
the backend that runs the client's request (or to the worker that issued the key).

:class:`CancelForwarding` is the base of ``proxy.app.ProxyApp``. Its rule: a cancel
reaches only the statement it was sent for. From the moment it is forwarded until
PostgreSQL has closed the cancel connection the server runs nothing new and is leased to
no one (``ServerConnection.cancel_started``/``cancel_finished``), and only then is the
client's cancel connection closed. A request that has not reached a server yet is
answered by its client instead (``ClientRelay.cancel_queued``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from typing import TYPE_CHECKING, Protocol

from proxy.backend.server import ServerConnection, ServerState
from proxy.config import MAX_WORKERS
from proxy.tasks import TaskSet
from proxy.wire import messages

if TYPE_CHECKING:
    from proxy.frontend.client import ClientConnection

log = logging.getLogger("pgtenant.app")  # (the app's: its log lines keep their logger)

# How long a CancelRequest may take, until PostgreSQL (or another worker) closes it.
_CANCEL_TIMEOUT = 5.0


class KeyIssuer(Protocol):
    """Where a cancel key comes from and goes to under a supervisor: this worker's place
    among the others (``proxy.supervisor.WorkerRole``)."""

    @property
    def index(self) -> int: ...
    @property
    def count(self) -> int: ...
    def cancel_pid(self, random_part: int) -> int: ...
    def owner_of(self, pid: int) -> int: ...
    def cancel_socket(self, index: int | None = None) -> str: ...


class CancelForwarding:
    """The proxy's cancel keys and the cancels it forwards (see the module docstring)."""

    worker: KeyIssuer | None  # the app's: set when this process is one of [server] workers

    def __init__(self) -> None:
        self._cancel_keys: dict[int, ClientConnection] = {}
        self._cancel_tasks = TaskSet()

    def register_cancel_key(self, client: ClientConnection) -> tuple[int, bytes]:
        """The proxy's own BackendKeyData for a client; never a real backend's."""
        while True:
            if self.worker is None:
                pid = secrets.randbelow(2**31 - 2) + 1
            else:  # the low bits name this worker, for cancels that land on another one
                pid = self.worker.cancel_pid(secrets.randbelow(2**31 // MAX_WORKERS - 1) + 1)
            if pid not in self._cancel_keys:
                break
        self._cancel_keys[pid] = client
        return pid, secrets.token_bytes(4)

    def forget_cancel_key(self, client: ClientConnection) -> None:
        """The client is gone: its key cancels nothing any more."""
        if self._cancel_keys.get(client.cancel_pid) is client:
            del self._cancel_keys[client.cancel_pid]

    def cancel(self, pid: int, secret: bytes) -> asyncio.Future[None] | None:
        """Forward a CancelRequest to the backend running this client's request, if any.

        Under a supervisor, a key issued by another worker is passed on to that worker.
        Returns a future that is done once the cancel has been handled (PostgreSQL closed
        the cancel connection), or None when there is nothing to cancel. Only then may the
        client's cancel connection be closed: libpq and asyncpg take that close to mean
        "processed" and send their next statement.
        """
        worker = self.worker
        if worker is not None and worker.owner_of(pid) != worker.index:
            owner = worker.owner_of(pid)
            if owner < worker.count:
                log.info("cancel request passed on to worker %d", owner,
                         extra={"event": "cancel_passed_on"})
                return self._cancel_tasks.spawn(self._pass_cancel(worker.cancel_socket(owner),
                                                                  pid, secret))
            return None
        client = self._cancel_keys.get(pid)
        if client is None or not hmac.compare_digest(client.cancel_secret, secret):
            log.info("cancel request with an unknown key ignored")
            return None
        if client.server is not None:
            done = self.cancel_server(client.server)
            if done is not None:
                return done
        client.cancel_queued()  # (a request that never reached a server: answered here)
        return None

    def cancel_server(self, server: ServerConnection) -> asyncio.Future[None] | None:
        """Cancel what the server runs, but only while it runs a client's request.

        Never the proxy's own context set (a cancelled set could leave the previous
        context in place), never an idle server that may already serve someone else.
        From now until PostgreSQL has closed the cancel connection the server runs
        nothing new and is leased to no one (PgBouncer does the same), so the cancel
        cannot reach a statement that was not running when it was asked for.
        """
        if not server.runs_client_request or server.state is ServerState.CLOSED:
            return None
        server.cancel_started()
        return self._cancel_tasks.spawn(self._cancel_backend(server))

    async def _cancel_backend(self, server: ServerConnection) -> None:
        """A CancelRequest to PostgreSQL (``host`` starting with "/" is a socket dir)."""
        db = server.db
        path = f"{db.host}/.s.PGSQL.{db.port}" if db.host.startswith("/") else None
        settled = False
        try:
            settled = await self._deliver_cancel(path, (db.host, db.port), server.backend_pid,
                                                 server.backend_key)
        finally:
            if not settled:
                # Sent, but not known to have landed: it could still interrupt whatever
                # runs next, so this backend serves no one again.
                server.close()
            server.cancel_finished()

    async def _pass_cancel(self, path: str, pid: int, key: bytes) -> None:
        """A CancelRequest on to the worker listening on Unix socket ``path``."""
        await self._deliver_cancel(path, None, pid, key)

    @staticmethod
    async def _deliver_cancel(path: str | None, address: tuple[str, int] | None, pid: int,
                              key: bytes) -> bool:
        """Send a CancelRequest and wait for the other side to close the connection.

        True when the request is settled: closed by the other side (it has been acted
        on), or never sent at all.
        """
        writer: asyncio.StreamWriter | None = None
        sent = False
        try:
            async with asyncio.timeout(_CANCEL_TIMEOUT):
                if path is not None:
                    reader, writer = await asyncio.open_unix_connection(path)
                else:
                    assert address is not None
                    reader, writer = await asyncio.open_connection(*address)
                sent = True
                writer.write(messages.cancel_request(pid, key))
                await writer.drain()
                await reader.read()  # the other side closes when done
            return True
        except ConnectionResetError:
            return True  # closed, if abruptly: done with the request
        except (OSError, TimeoutError) as exc:
            log.warning("could not forward cancel request to %s: %s", path or address, exc)
            return not sent
        finally:
            if writer is not None:
                writer.close()
