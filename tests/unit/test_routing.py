"""A backend session's reply routing, driven by bytes: no sockets, no event loop.

``BackendSession`` (proxy/backend/routing.py, its state in session_state.py) is the
protocol state of one server connection. These tests write requests to it, feed it the
server's reply bytes whole and in every chunking (1, 2, 3, 7 bytes, ...) and check what
reaches the client, what the proxy's own requests learn, and what the session then
believes about the backend (the tenant setting above all), with a fake clock and a
transport that only records.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from proxy.backend.context import PRISTINE, UNKNOWN, Stale, TenantContext
from proxy.backend.replies import Collect, Skip
from proxy.backend.routing import ALL_TAGS, FORWARD_TAGS, HOLD_HIGH_WATER, BackendSession, Receiver
from proxy.backend.session_state import ServerError, ServerState
from proxy.config import DatabaseConfig
from proxy.wire import messages

ACME = TenantContext("app.current_tenant", "acme")
Z_IDLE = messages.ready_for_query(b"I")
Z_TX = messages.ready_for_query(b"T")
CHUNKS = [None, 1, 2, 3, 7, 64]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recorder(Receiver):
    """Transport and receiver in one: what the session writes, and what it tells."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False
        self.reading = True
        self.received = b""
        self.unsolicited_bytes = b""
        self.events: list[tuple[object, ...]] = []

    # transport
    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    # receiver
    def forward_to_client(self, data: bytes) -> None:
        self.received += data

    def unsolicited(self, data: bytes) -> None:
        self.unsolicited_bytes += data

    def server_ready(self, server: BackendSession) -> None:
        self.events.append(("ready", server.tx_status, server.last_used))

    def server_lost(self, server: BackendSession, reason: str) -> None:
        self.events.append(("lost", reason))

    def server_paused_writing(self, paused: bool) -> None:
        self.events.append(("paused", paused))

    def parameter_changed(self, name: str, value: str) -> None:
        self.events.append(("parameter", name, value))

    def statements_cleared(self) -> None:
        self.events.append(("statements_cleared",))

    def server_reclaimed(self, server: BackendSession) -> None:
        self.events.append(("reclaimed",))

    def server_error(self, body: bytes) -> None:
        self.events.append(("error", messages.decode_error_fields(body)["C"]))

    def forged_context(self) -> None:
        self.events.append(("forged",))

    def query_timed_out(self, server: BackendSession) -> None:
        self.events.append(("timed_out",))


class Outcome:
    """An asyncio future's part the session uses."""

    def __init__(self) -> None:
        self.result: object = None
        self.exception: BaseException | None = None
        self.resolved = False

    def done(self) -> bool:
        return self.resolved

    def set_result(self, result: object, /) -> None:
        self.result, self.resolved = result, True

    def set_exception(self, exception: BaseException, /) -> None:
        self.exception, self.resolved = exception, True


def session(**db: object) -> tuple[BackendSession, Recorder, Clock]:
    clock = Clock()
    server = BackendSession(DatabaseConfig(name="app", **db), clock)  # type: ignore[arg-type]
    recorder = Recorder()
    server.transport = recorder
    server.receiver = recorder
    server.state = ServerState.ACTIVE
    server.scanner.interesting = FORWARD_TAGS
    return server, recorder, clock


def feed(server: BackendSession, data: bytes, chunk: int | None) -> None:
    step = chunk or len(data)
    for i in range(0, len(data), step):
        server.data_received(data[i:i + step])


def select_reply(value: str = "1") -> bytes:
    return (messages.row_description(["x"]) + messages.data_row([value])
            + messages.command_complete("SELECT 1"))


# The engine's pure modules: bytes in, calls out; no event loop, socket or thread.
PURE_MODULES = ("backend/routing.py", "backend/session_state.py", "backend/context.py",
                "backend/statements.py", "backend/prepared.py", "frontend/requests.py")


# The client's relaying rules call no event-loop function (ClientConnection brings timers,
# tasks and futures): asyncio only for type annotations.
RULES_MODULES = ("frontend/relay.py", "frontend/leasing.py", "frontend/named_statements.py")
_IO = {"asyncio", "socket", "ssl", "selectors", "uvloop", "threading"}


def _imports(module: str, *, typing_too: bool) -> set[str]:
    tree = ast.parse((Path(__file__).resolve().parents[2] / "proxy" / module)
                     .read_text(encoding="utf-8"))
    skipped: set[int] = set()
    if not typing_too:
        for node in ast.walk(tree):
            if (isinstance(node, ast.If) and isinstance(node.test, ast.Name)
                    and node.test.id == "TYPE_CHECKING"):
                skipped |= {id(child) for child in ast.walk(node)}
    imported: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    return imported


@pytest.mark.parametrize("module", PURE_MODULES)
def test_the_engine_core_imports_no_io(module: str) -> None:
    assert not _imports(module, typing_too=True) & _IO


@pytest.mark.parametrize("module", RULES_MODULES)
def test_the_relay_rules_use_no_event_loop(module: str) -> None:
    assert not _imports(module, typing_too=False) & _IO
    assert "asyncio" in _imports(module, typing_too=True)  # the check sees TYPE_CHECKING


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_client_reply_reaches_the_client_byte_for_byte(chunk: int | None) -> None:
    server, rec, clock = session()
    request = messages.query("SELECT 1")
    server.send(request, 1)
    assert rec.written == [request]
    assert not server.is_clean and server.runs_client_request
    clock.now = 101.5
    reply = select_reply() + Z_IDLE
    feed(server, reply, chunk)
    assert rec.received == reply
    assert rec.events == [("ready", b"I", 101.5)]  # once, at the last byte
    assert server.is_clean and server.last_used == 101.5


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_pipeline_is_ready_once_after_its_last_reply(chunk: int | None) -> None:
    server, rec, _ = session()
    server.send(messages.query("BEGIN") + messages.query("SELECT 1"), 2)
    reply = messages.command_complete("BEGIN") + Z_TX + select_reply() + Z_TX
    feed(server, reply, chunk)
    assert rec.received == reply
    assert rec.events == [("ready", b"T", 100.0)]
    assert not server.is_clean  # inside a transaction: it stays with its client


@pytest.mark.parametrize("chunk", CHUNKS)
def test_the_proxys_own_request_goes_first_in_one_write_and_its_reply_is_dropped(
        chunk: int | None) -> None:
    server, rec, _ = session()
    own = Outcome()
    server.send_internal(messages.query("SET x = 1"), Skip(own), corked=True)
    assert rec.written == []  # corked: waits for the client's bytes
    client = messages.query("SELECT 1")
    server.send(client, 1)
    assert rec.written == [messages.query("SET x = 1") + client]
    reply = messages.command_complete("SET") + Z_IDLE + select_reply() + Z_IDLE
    feed(server, reply, chunk)
    assert own.done() and own.result is None
    assert rec.received == select_reply() + Z_IDLE
    assert server.tenant_state is PRISTINE  # the proxy's own SET changes nothing it knows


@pytest.mark.parametrize("chunk", CHUNKS)
def test_an_error_in_the_proxys_request_goes_to_its_outcome_not_the_client(
        chunk: int | None) -> None:
    server, rec, _ = session()
    own = Outcome()
    server.send_internal(messages.query("SET x = 1"), Skip(own))
    feed(server, messages.error_response("42501", "no") + Z_IDLE, chunk)
    assert own.result == {"S": "ERROR", "V": "ERROR", "C": "42501", "M": "no"}
    assert rec.received == b""
    assert ("error", "42501") not in rec.events


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_collected_reply_is_read_whole_then_the_scanner_skims_again(
        chunk: int | None) -> None:
    server, rec, _ = session()
    own = Outcome()
    server.send_internal(messages.query("SELECT 1"), Collect(own))
    assert server.scanner.interesting is ALL_TAGS
    feed(server, select_reply("42") + Z_IDLE, chunk)
    tags = [chr(tag) for tag, _ in own.result]  # type: ignore[attr-defined]
    assert tags == ["T", "D", "C", "Z"]
    assert server.scanner.interesting is FORWARD_TAGS  # at once, not a loop turn later
    assert rec.received == b""


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize(("command", "state"), [
    ("SET", UNKNOWN),              # the tenant setting could now hold anything
    ("RESET", Stale("acme")),      # the default or acme, never another tenant
    ("DISCARD ALL", Stale("acme")),
])
def test_a_clients_settings_change_is_what_the_session_believes(
        chunk: int | None, command: str, state: object) -> None:
    server, rec, _ = session()
    server.tenant_state = ACME
    server.send(messages.query(command), 1)
    feed(server, messages.command_complete(command) + Z_IDLE, chunk)
    assert server.tenant_state == state
    assert server.session_dirty  # the pool resets it before another client
    assert (("statements_cleared",) in rec.events) == (command == "DISCARD ALL")
    server.reset_done()
    assert server.tenant_state is PRISTINE and not server.session_dirty


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_forged_context_warning_makes_the_setting_unknown_once_per_request(
        chunk: int | None) -> None:
    server, rec, _ = session()
    server.tenant_state = ACME
    warning = messages.notice_response("PT401", "forged", severity="WARNING")
    server.send(messages.query("SELECT * FROM a, b"), 1)
    feed(server, warning + warning + select_reply() + Z_IDLE, chunk)
    assert server.tenant_state is UNKNOWN
    assert rec.events.count(("forged",)) == 1
    assert rec.received.startswith(warning + warning)  # the client sees what it would


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_parameter_status_reaches_client_and_session(chunk: int | None) -> None:
    server, rec, _ = session()
    server.send(messages.query("SET TimeZone = 'UTC'"), 1)
    reply = (messages.command_complete("SET") + messages.parameter_status("TimeZone", "UTC")
             + Z_IDLE)
    feed(server, reply, chunk)
    assert ("parameter", "TimeZone", "UTC") in rec.events
    assert server.params["TimeZone"] == "UTC"


def test_bytes_with_nothing_asked_are_unsolicited() -> None:
    server, rec, _ = session()
    notify = messages.frame(ord("A"), b"\x00\x00\x00\x07chan\x00hi\x00")
    server.data_received(notify)
    assert rec.unsolicited_bytes == notify and rec.received == b""


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_fatal_between_transactions_ends_the_session_at_once(chunk: int | None) -> None:
    server, rec, _ = session()
    server.receiver = None  # idle in the pool
    feed(server, messages.error_response("57P01", "bye", severity="FATAL"), chunk)
    assert server.state is ServerState.CLOSED and rec.closed


def test_a_fatal_in_a_clients_request_reaches_it_and_the_session_is_never_reused() -> None:
    server, rec, _ = session()
    server.send(messages.query("SELECT 1"), 1)
    fatal = messages.error_response("57P01", "bye", severity="FATAL")
    server.data_received(fatal)
    assert rec.received == fatal
    assert server.ending and server.state is ServerState.ACTIVE  # the pool closes it


def test_a_kept_session_that_fails_is_reclaimed_not_lost() -> None:
    server, rec, _ = session()
    server.state = ServerState.KEPT
    server.receiver = rec
    server.data_received(messages.error_response("57P01", "bye", severity="FATAL"))
    assert rec.events == [("reclaimed",)] and server.receiver is None


def test_a_failure_fails_what_waits_and_tells_the_client() -> None:
    server, rec, _ = session()
    own = Outcome()
    server.send_internal(messages.query("SET x = 1"), Skip(own))
    server.data_received(b"Z\x00\x00\x00\x02")  # a length shorter than the header
    assert isinstance(own.exception, ServerError)
    assert rec.events[-1][0] == "lost" and "protocol violation" in str(rec.events[-1][1])
    assert server.state is ServerState.CLOSED and not server.pending


def test_query_timeout_clock_runs_while_anything_is_outstanding() -> None:
    server, _, clock = session(query_timeout=5.0)
    server.send(messages.query("SELECT 1") + messages.query("SELECT 2"), 2)
    assert server.waiting_since == 100.0
    clock.now = 103.0
    server.data_received(select_reply() + Z_IDLE)
    assert server.waiting_since == 103.0  # the next request's clock starts now
    clock.now = 104.0
    server.data_received(select_reply() + Z_IDLE)
    assert server.waiting_since == 0.0


def test_writes_during_a_cancel_are_held_with_backpressure() -> None:
    server, rec, _ = session()
    server.cancels = 1
    big = b"x" * (HOLD_HIGH_WATER + 1)
    server.send(big, 0)
    assert rec.written == [] and rec.events == [("paused", True)]
