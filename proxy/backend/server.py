"""A connection from the proxy to PostgreSQL: the I/O around a :class:`BackendSession`.

``proxy.backend.session_state`` holds the session's protocol state and
``proxy.backend.routing`` its reply routing, without I/O. This module adds what needs the
event loop: connecting (TLS per sslmode, the authentication exchange), the asyncio
protocol callbacks, the query_timeout timer, cancel requests in flight, the proxy's own
queries, and the tenant context set with the scrub before a backend changes tenants
(:meth:`ServerConnection.apply_context`, whose only caller is ``proxy.pool.lease.Lease``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, Final, cast

from proxy.auth.errors import UpstreamAuthError
from proxy.auth.upstream import UpstreamAuthenticator
from proxy.backend.context import (
    NOBODY,
    PRISTINE,
    UNKNOWN,
    ContextMark,
    Stale,
    TenantContext,
    TenantState,
)
from proxy.backend.replies import FORWARD, Collect, Skip
from proxy.backend.routing import FORWARD_TAGS, HOLD_HIGH_WATER, BackendSession, Receiver
from proxy.backend.session_state import ServerError, ServerState
from proxy.wire import authentication, messages
from proxy.wire.errors import ProtocolViolation
from proxy.wire.tags import AuthCode, BackendTag

if TYPE_CHECKING:
    from collections.abc import Callable

    from proxy.config import DatabaseConfig

# Names that live in proxy.backend.routing, session_state and replies, importable from here
# as before.
__all__ = [
    "FORWARD", "FORWARD_TAGS", "NOBODY", "PRISTINE", "SCRUB_SQL", "UNKNOWN",
    "BackendSession", "Collect", "ContextMark", "Receiver",
    "ServerConnection", "ServerError", "ServerState", "Skip", "Stale", "TenantState",
]

log = logging.getLogger("pgtenant.server")

_Z: Final[int] = BackendTag.READY_FOR_QUERY
_E: Final[int] = BackendTag.ERROR_RESPONSE
_S: Final[int] = BackendTag.PARAMETER_STATUS

# The scrub: everything one tenant's clients could have left on a backend, removed before
# another tenant's client runs anything on it. Without statements of the proxy's own on
# the backend, that is DISCARD ALL (one utility statement, the cheapest). With them, it
# is DISCARD ALL less DEALLOCATE ALL: the proxy's statements survive when the last
# statement proves them intact. One Query, so one implicit transaction: it applies whole
# or not at all. Names are schema-qualified: RESET ALL restores the role's search_path,
# which is not ours to trust.
_DISCARD_ALL: Final = messages.query("DISCARD ALL")
SCRUB_SQL: Final = (
    "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; RESET ROLE; UNLISTEN *; "
    "SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD PLANS; DISCARD SEQUENCES; "
    "DISCARD TEMP; SELECT pg_catalog.count(*) FILTER (WHERE from_sql), pg_catalog.count(*) "
    "FROM pg_catalog.pg_prepared_statements")
_SCRUB: Final = messages.query(SCRUB_SQL)
_DEALLOCATE_ALL: Final = messages.query("DEALLOCATE ALL")


def _as_protocol(server: ServerConnection) -> asyncio.Protocol:
    """The event loop calls a ServerConnection as a protocol: it has the callbacks (it
    does not inherit asyncio.Protocol: its base, BackendSession, knows nothing of I/O)."""
    return cast(asyncio.Protocol, server)


class ServerConnection(BackendSession):
    """One PostgreSQL backend connection owned by a pool (an asyncio protocol)."""

    def __init__(self, db: DatabaseConfig) -> None:
        super().__init__(db)
        self.lost: asyncio.Future[None] | None = None  # done when the socket is closed
        self._handshake: asyncio.Future[None] | None = None
        self._auth: UpstreamAuthenticator | None = None
        self._tls_answer: asyncio.Future[bytes] | None = None
        # Set by the pool; called once when the connection is gone for good.
        self.on_closed: Callable[[ServerConnection], None] | None = None
        # Called when the last cancel request in flight is done (the pool leases it again).
        self.after_cancel: Callable[[ServerConnection], None] | None = None
        self._timed_out = 0.0
        self._query_timer: asyncio.TimerHandle | None = None

    # ---- connecting -------------------------------------------------------------------

    @classmethod
    async def connect(cls, db: DatabaseConfig, password: str | None) -> ServerConnection:
        """Open, negotiate TLS per sslmode, authenticate and wait for ReadyForQuery."""
        loop = asyncio.get_running_loop()
        server = cls(db)
        server.handshaking = True  # until authenticated: messages go to _handshake_messages
        try:
            async with asyncio.timeout(db.server_connect_timeout):
                if db.host.startswith("/"):
                    path = f"{db.host}/.s.PGSQL.{db.port}"
                    await loop.create_unix_connection(lambda: _as_protocol(server), path)
                else:
                    await loop.create_connection(lambda: _as_protocol(server), db.host, db.port)
                await server._negotiate_tls(loop)
                await server._authenticate(password)
        except TimeoutError:
            server.close()
            raise ServerError(
                f"could not connect to upstream {db.host}:{db.port} within "
                f"server_connect_timeout ({db.server_connect_timeout:g}s)") from None
        except OSError as os_error:
            server.close()
            raise ServerError(f"could not connect to upstream {db.host}:{db.port}: "
                              f"{os_error.strerror or os_error}") from None
        except (ServerError, UpstreamAuthError, ProtocolViolation, ssl.SSLError) as exc:
            server.close()
            if isinstance(exc, ServerError):
                raise
            raise ServerError(f"upstream {db.host}:{db.port}: {exc}") from None
        except BaseException:  # cancelled (shutdown): leave no socket behind
            server.close()
            raise
        server.handshaking = False
        server.scanner.interesting = FORWARD_TAGS
        server.state = ServerState.IDLE
        return server

    async def _negotiate_tls(self, loop: asyncio.AbstractEventLoop) -> None:
        mode = self.db.sslmode
        if mode == "disable" or self.db.host.startswith("/"):
            return
        assert self.transport is not None
        self._tls_answer = loop.create_future()
        self.transport.write(messages.ssl_request())
        answer = await self._tls_answer
        self._tls_answer = None
        if answer == b"N":
            if mode == "prefer":
                return
            raise ServerError(f"upstream does not support TLS but sslmode={mode}")
        if answer != b"S":
            raise ServerError("upstream sent an invalid answer to SSLRequest")
        ctx = ssl.create_default_context(cafile=self.db.sslrootcert)
        if mode in ("prefer", "require"):
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif mode == "verify-ca":
            ctx.check_hostname = False
        new = await loop.start_tls(cast(asyncio.WriteTransport, self.transport), _as_protocol(self),
                                  ctx, server_hostname=self.db.host)
        if new is None:
            raise ServerError("TLS handshake with upstream failed")
        self.transport = new  # type: ignore[assignment]

    async def _authenticate(self, password: str | None) -> None:
        assert self.transport is not None
        self._auth = UpstreamAuthenticator(self.db.user, password)
        self._handshake = asyncio.get_running_loop().create_future()
        self.transport.write(messages.startup_message(
            {"user": self.db.user, "database": self.db.upstream_dbname}))
        await self._handshake
        self._handshake = None
        self._auth = None

    def _handshake_message(self, tag: int, body: bytes) -> None:
        fut = self._handshake
        assert fut is not None and self._auth is not None and self.transport is not None
        if fut.done():
            return
        if tag == BackendTag.AUTHENTICATION:
            code, payload = authentication.decode_authentication(body)
            try:
                reply = self._auth.respond(code, payload)
            except UpstreamAuthError as exc:
                fut.set_exception(exc)
                return
            if reply:
                self.transport.write(reply)
            elif code == AuthCode.OK:
                pass
        elif tag == BackendTag.PARAMETER_STATUS:
            name, value = messages.decode_parameter_status(body)
            self.params[name] = value
        elif tag == BackendTag.BACKEND_KEY_DATA:
            self.backend_pid, self.backend_key = messages.decode_backend_key_data(body)
        elif tag == _E:
            fields = messages.decode_error_fields(body)
            fut.set_exception(ServerError(
                f"upstream refused the proxy's connection: {fields.get('M', 'unknown error')}",
                fields.get("C")))
        elif tag == _Z:
            self.tx_status = messages.decode_ready_for_query(body)
            fut.set_result(None)

    # ---- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.lost = asyncio.get_running_loop().create_future()

    def _before_startup(self, data: bytes) -> bool:
        tls_answer = self._tls_answer
        if tls_answer is None or tls_answer.done():
            return False
        # The one-byte answer to SSLRequest; nothing else may follow it in plaintext.
        if len(data) != 1:
            tls_answer.set_exception(ServerError("unexpected data after SSLRequest"))
        else:
            tls_answer.set_result(data)
        return True

    def _handshake_messages(self, events: list[tuple[int, int, bytes]]) -> None:
        handshake = self._handshake
        if handshake is None:
            return  # before the startup message the server has nothing to say: ignored
        try:
            for tag, _end, body in events:
                self._handshake_message(tag, body)
        except ProtocolViolation as exc:
            if not handshake.done():
                handshake.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"upstream connection lost: {exc}" if exc else "upstream closed the connection"
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(ServerError(reason))
        if self._tls_answer is not None and not self._tls_answer.done():
            self._tls_answer.set_exception(ServerError(reason))
        self._fail(reason)

    def pause_writing(self) -> None:
        if self.receiver is not None:
            self.receiver.server_paused_writing(True)

    def resume_writing(self) -> None:
        if self.receiver is not None:
            self.receiver.server_paused_writing(False)

    # ---- cancel requests in flight -----------------------------------------------------

    def cancel_started(self) -> None:
        """A CancelRequest for this backend is on its way: write nothing new until
        :meth:`cancel_finished` (PostgreSQL has closed the cancel connection)."""
        self.cancels += 1

    def cancel_finished(self) -> None:
        """PostgreSQL closed the cancel connection (or it was never sent): what was
        written meanwhile goes out now; the pool may lease the connection again."""
        self.cancels -= 1
        if self.cancels:
            return
        held, self._held = self._held, []
        if held and self.state is not ServerState.CLOSED and self.transport is not None \
                and not self.transport.is_closing():
            self.transport.write(b"".join(held))
        if sum(map(len, held)) > HOLD_HIGH_WATER:
            self.resume_writing()
        callback, self.after_cancel = self.after_cancel, None
        if callback is not None:
            callback(self)

    # ---- query_timeout -----------------------------------------------------------------

    def _start_query_timer(self) -> None:
        super()._start_query_timer()
        if self._query_timer is None:
            self._query_timer = asyncio.get_running_loop().call_later(
                self.db.query_timeout, self._query_timer_fired)

    def _query_timer_fired(self) -> None:
        """One timer per connection, re-armed lazily: cheap when replies come in time."""
        self._query_timer = None
        since = self.waiting_since
        if not since or self.state is ServerState.CLOSED:
            return
        timeout = self.db.query_timeout
        left = since + timeout - self.clock()
        if left <= 0:
            if since != self._timed_out and self.receiver is not None:
                self._timed_out = since  # told once per request
                self.receiver.query_timed_out(self)
            left = timeout
        # Runs while anything is outstanding (a pipeline's next request starts the clock
        # again at each ReadyForQuery).
        self._query_timer = asyncio.get_running_loop().call_later(left, self._query_timer_fired)

    async def query(self, sql: str, params: list[bytes | None] | None = None
                    ) -> list[tuple[int, bytes]]:
        """Run a query of the proxy's own; return its reply messages.

        With ``params``, through the extended protocol: values are bind parameters, never
        spliced into the text.
        """
        fut: asyncio.Future[list[tuple[int, bytes]]] = asyncio.get_running_loop().create_future()
        if params is None:
            request = messages.query(sql)
        else:
            request = b"".join((messages.parse("", sql), messages.bind("", "", params),
                                messages.execute(), messages.sync()))
        self.send_internal(request, Collect(fut))
        return await fut

    def apply_context(self, context: TenantContext, *, corked: bool = False
                      ) -> asyncio.Future[dict[str, str] | None]:
        """Send the tenant context; the future gives None on success or the error fields.

        The one place a backend changes hands between tenants: when it last served
        another tenant, the scrub goes first. Called only by ``proxy.pool.lease.Lease``,
        which decides whether the client's messages may follow before the answer.
        """
        loop = asyncio.get_running_loop()
        if self.owner != context.tenant and self.owner is not NOBODY:
            self.scrubs += 1
            if self.statements.by_key or self.statements.orphans:
                checked: asyncio.Future[list[tuple[int, bytes]]] = loop.create_future()
                self.send_internal(_SCRUB, Collect(checked), corked=corked)
                checked.add_done_callback(self._scrubbed)
            else:
                discarded: asyncio.Future[dict[str, str] | None] = loop.create_future()
                self.send_internal(_DISCARD_ALL, Skip(discarded), corked=corked)
                discarded.add_done_callback(self._discarded)
        fut: asyncio.Future[dict[str, str] | None] = loop.create_future()
        self.send_internal(context.messages(self.backend_pid), Skip(fut), corked=corked)
        self.tenant_state = context
        self.owner = context.tenant
        fut.add_done_callback(self._context_applied)
        return fut

    def _scrubbed(self, fut: asyncio.Future[list[tuple[int, bytes]]]) -> None:
        """Check the scrub's answer (before the context set's answer is acted on: both
        futures resolve in reply order). Fail-closed: a scrub that did not complete
        closes the backend, and the waiting client is told by ``server_lost``."""
        if fut.cancelled() or fut.exception() is not None:
            return
        counts: list[int] = []
        for tag, body in fut.result():
            if tag == _E:
                self._scrub_failed(messages.decode_error_fields(body))
                return
            if tag == _S:
                self._parameter_status(body, False)
            elif tag == BackendTag.DATA_ROW:
                counts = [int(v or b"-1") for v in messages.decode_data_row(body)]
        statements = self.statements
        expected = len(statements.by_key) + len(statements.orphans)
        if counts != [0, expected]:
            # SQL-level PREPARE, or the proxy's statements changed behind its back: none
            # of them can be trusted. DEALLOCATE ALL goes out before the client's messages.
            log.info("server #%s: prepared statements not as the proxy left them %s; "
                     "deallocating all", self.id, counts)
            statements.clear()
            self.send_internal(_DEALLOCATE_ALL, Skip(None))

    def _discarded(self, fut: asyncio.Future[dict[str, str] | None]) -> None:
        """DISCARD ALL as the scrub: fail-closed like :meth:`_scrubbed`."""
        if fut.cancelled() or fut.exception() is not None:
            return
        error = fut.result()
        if error is not None:
            self._scrub_failed(error)

    def _scrub_failed(self, error: dict[str, str]) -> None:
        log.warning("server #%s: the scrub between tenants failed (%s); closing it",
                    self.id, error.get("M", "?"))
        self._fail("the scrub between tenants failed")

    def _context_applied(self, fut: asyncio.Future[dict[str, str] | None]) -> None:
        if fut.cancelled() or fut.exception() is not None or fut.result() is not None:
            # Failed: the setting is whatever it was before; never trust it again.
            self.tenant_state = UNKNOWN

    def _fail(self, reason: str) -> None:
        if self._query_timer is not None:
            self._query_timer.cancel()
            self._query_timer = None
        super()._fail(reason)
        if self.on_closed is not None:
            callback, self.on_closed = self.on_closed, None
            callback(self)
