"""The admin console's connection: SCRAM-SHA-256 login, then simple-Query commands.

A :class:`~proxy.frontend.client.ClientConnection` whose startup packet names database
``pgtenant`` hands its transport over (:func:`open_admin_session`); from then on this
protocol reads the socket. The ClientConnection stays registered with the app, so the
admin shows in SHOW CLIENTS, KILL_CLIENT and shutdown reach it, and its login timeout
still runs. Tenant JWTs never open the console: the only credential is an
``[admin.users.NAME]`` SCRAM verifier.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from typing import TYPE_CHECKING

from proxy.admin.console import AdminConsole
from proxy.auth.scram_server import MECHANISM, ScramExchange, ScramFailed, mock_secret
from proxy.config.scram_verifier import parse_scram_verifier
from proxy.frontend.client import ClientState
from proxy.wire import authentication, messages
from proxy.wire.errors import ProtocolViolation
from proxy.wire.framing import FrontendFramer
from proxy.wire.tags import FrontendTag

if TYPE_CHECKING:
    from proxy.app import ProxyApp
    from proxy.frontend.client import ClientConnection

log = logging.getLogger("pgtenant.admin")

# Messages queued behind a running command (a PAUSE may wait) before reading stops.
_INBOX_HIGH_WATER = 64

_EXTENDED = frozenset({FrontendTag.PARSE, FrontendTag.BIND, FrontendTag.DESCRIBE,
                       FrontendTag.EXECUTE, FrontendTag.CLOSE, FrontendTag.FLUSH})

# What psql and drivers expect to hear at login; the console speaks UTF-8 text only.
_PARAMETERS = {
    "server_version": "16.0 (pgtenant admin console)",
    "server_encoding": "UTF8",
    "client_encoding": "UTF8",
    "DateStyle": "ISO, MDY",
    "integer_datetimes": "on",
    "standard_conforming_strings": "on",
    "application_name": "",
}


class _Stage(enum.Enum):
    SASL_INITIAL = "sasl_initial"
    SASL_RESPONSE = "sasl_response"
    READY = "ready"


def open_admin_session(app: ProxyApp, client: ClientConnection, user: str, pending: bytes
                       ) -> None:
    """Take over ``client``'s transport for the admin console (database ``pgtenant``)."""
    AdminSession(app, client, user).start(pending)


class AdminSession(asyncio.Protocol):
    """SCRAM-SHA-256 login, then simple-Query console commands on one connection."""

    def __init__(self, app: ProxyApp, client: ClientConnection, user: str) -> None:
        self.app = app
        self.client = client
        self.user = user
        self.console = AdminConsole(app, client.id)
        self.framer = FrontendFramer(app.config.server.max_message_size)
        self.stage = _Stage.SASL_INITIAL
        self.exchange: ScramExchange | None = None
        self.known_user = False
        self._skipping = False  # an extended-protocol batch is refused up to its Sync
        # Commands run one at a time, in order, in one task (a PAUSE waits for transactions).
        self._inbox: deque[tuple[int, bytes]] = deque()
        self._running: asyncio.Task[None] | None = None

    def start(self, pending: bytes) -> None:
        client = self.client
        assert client.transport is not None
        client.state = ClientState.AUTH  # the client's login timeout keeps running
        client.transport.set_protocol(self)
        client.transport.write(authentication.authentication_sasl([MECHANISM]))
        if pending:
            self.data_received(pending)

    # ---- asyncio.Protocol (the transport now calls us, not the ClientConnection) -------

    def data_received(self, data: bytes) -> None:
        if self._closed():
            return
        try:
            self.framer.feed(data)
            while not self._closed():
                msg = self.framer.next_message()
                if msg is None:
                    return
                self._message(msg[0], bytes(msg[1]))
        except ProtocolViolation as exc:
            self.client.fatal("08P01", str(exc))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._running is not None:
            self._running.cancel()  # a waiting PAUSE is undone when its admin goes away
        self.client.connection_lost(exc)

    def pause_writing(self) -> None:
        pass  # console answers are small; nothing to stop reading from

    def resume_writing(self) -> None:
        pass

    # ---- messages -----------------------------------------------------------------------

    def _message(self, tag: int, body: bytes) -> None:
        if self.stage is _Stage.READY:
            self._inbox.append((tag, body))
            if self._running is None:
                self._running = asyncio.get_running_loop().create_task(self._run_inbox())
            elif len(self._inbox) == _INBOX_HIGH_WATER and self.client.transport is not None:
                self.client.transport.pause_reading()
        elif tag != FrontendTag.PASSWORD:
            self.client.fatal("08P01", f"expected a SASL response, got type {chr(tag)!r}")
        elif self.stage is _Stage.SASL_INITIAL:
            self._sasl_initial(body)
        else:
            self._sasl_response(body)

    def _sasl_initial(self, body: bytes) -> None:
        mechanism, data = authentication.decode_sasl_initial_response(body)
        if mechanism != MECHANISM:
            self.client.fatal("28000", f"SASL mechanism {mechanism[:40]!r} is not supported",
                              f"the admin console accepts {MECHANISM}")
            return
        user = self.app.config.admin.users.get(self.user)
        self.known_user = user is not None
        secret = (parse_scram_verifier(user.scram_verifier) if user is not None
                  else mock_secret(self.user))
        self.exchange = ScramExchange(secret)
        try:
            server_first = self.exchange.client_first(data.decode("utf-8"))
        except (ScramFailed, UnicodeDecodeError) as exc:
            self._auth_failed(str(exc))
            return
        self.stage = _Stage.SASL_RESPONSE
        self._write(authentication.authentication_sasl_continue(server_first.encode()))

    def _sasl_response(self, body: bytes) -> None:
        assert self.exchange is not None
        try:
            server_final = self.exchange.client_final(body.decode("utf-8"))
        except (ScramFailed, UnicodeDecodeError) as exc:
            self._auth_failed(str(exc))
            return
        if not self.known_user:  # unreachable with a mock secret; fail closed anyway
            self._auth_failed("unknown user")
            return
        self._logged_in(server_final)

    def _auth_failed(self, reason: str) -> None:
        reason = reason if self.known_user else "no such admin user"
        log.info("client #%s (%s): admin console login refused for %r: %s", self.client.id,
                 self.client.peer, self.user[:64], reason)
        app = self.app
        app.auth_failures["admin_console"] = app.auth_failures.get("admin_console", 0) + 1
        # Same message for a wrong password and an unknown user: names are not revealed.
        self.client.fatal("28P01", f"password authentication failed for user "
                                   f"\"{self.user[:64]}\"",
                          "the admin console (database pgtenant) needs an [admin.users] "
                          "password, not a tenant token")

    def _logged_in(self, server_final: str) -> None:
        client = self.client
        client.cancel_pid, client.cancel_secret = self.app.register_cancel_key(client)
        out = [authentication.authentication_sasl_final(server_final.encode()),
               authentication.authentication_ok()]
        out.extend(messages.parameter_status(k, v) for k, v in _PARAMETERS.items())
        out.append(messages.backend_key_data(client.cancel_pid, client.cancel_secret))
        out.append(messages.ready_for_query(b"I"))
        self._write(b"".join(out))
        self.stage = _Stage.READY
        client.state = ClientState.READY  # ends the login timeout
        log.info("client #%s (%s): admin console login as %r", client.id, client.peer,
                 self.user)

    async def _run_inbox(self) -> None:
        try:
            while self._inbox and not self._closed():
                tag, body = self._inbox.popleft()
                if len(self._inbox) == _INBOX_HIGH_WATER - 1 and self.client.transport:
                    self.client.transport.resume_reading()
                await self._command(tag, body)
        except Exception:
            log.exception("client #%s: admin command failed", self.client.id)
            self.client.fatal("XX000", "internal error in the admin console")
        finally:
            self._running = None

    async def _command(self, tag: int, body: bytes) -> None:
        if tag == FrontendTag.QUERY:
            sql = messages.decode_query(body)
            log.info("client #%s: admin command %r", self.client.id, sql[:200])
            self._write(await self.console.execute(sql) + messages.ready_for_query(b"I"))
        elif tag == FrontendTag.SYNC:
            self._skipping = False
            self._write(messages.ready_for_query(b"I"))
        elif tag in _EXTENDED:
            if not self._skipping:
                self._skipping = True
                self._write(messages.error_response(
                    "0A000", "the admin console supports only the simple query protocol",
                    hint="send commands as plain queries (psql, or a driver's simple-query "
                         "mode)"))
        elif tag == FrontendTag.FUNCTION_CALL:
            self._write(messages.error_response(
                "0A000", "the admin console does not support function calls")
                + messages.ready_for_query(b"I"))
        elif tag == FrontendTag.TERMINATE:
            self._close()
        else:
            self.client.fatal("08P01", f"unexpected message type {chr(tag)!r} on the admin "
                                       "console")

    # ---- helpers ----------------------------------------------------------------------

    def _closed(self) -> bool:
        return self.client.state is ClientState.CLOSED

    def _write(self, data: bytes) -> None:
        transport = self.client.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _close(self) -> None:
        transport = self.client.transport
        if transport is not None and not transport.is_closing():
            transport.close()
