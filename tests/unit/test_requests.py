"""The client's requests and the server's replies as paired machines, driven by bytes.

The client side is the framer and :func:`proxy.frontend.requests.classify`; the server
side a :class:`proxy.backend.routing.BackendSession`; between them, a scripted
PostgreSQL that answers what the session wrote. Both directions are fed whole and in
every chunking, with no socket and no event loop: what the client receives must be
exactly what PostgreSQL sent, and the session must be clean exactly when PostgreSQL is
idle.
"""

from __future__ import annotations

import pytest

from proxy.backend import routing
from proxy.backend.routing import FORWARD_TAGS, BackendSession
from proxy.backend.session_state import ServerState
from proxy.config import DatabaseConfig
from proxy.frontend.requests import NO_STOP, classify, drop_first_request
from proxy.wire import messages
from proxy.wire.framing import FrontendFramer, split_frames
from proxy.wire.tags import FrontendTag
from tests.support import RecordingTransport

CHUNKS = [None, 1, 2, 5, 13]


class Receiver(routing.Receiver):
    def __init__(self) -> None:
        self.received = b""
        self.ready = 0

    def forward_to_client(self, data: bytes) -> None:
        self.received += data

    def server_ready(self, server: BackendSession) -> None:
        self.ready += 1

    def server_error(self, body: bytes) -> None:
        pass

    def parameter_changed(self, name: str, value: str) -> None:
        pass


class ScriptedPostgres(RecordingTransport):
    """Answers each message the session writes as PostgreSQL would, for these tests.

    A Query "SELECT n" gets one row n; Parse, Bind, Describe and Execute their usual
    answers; Sync and Query end in ReadyForQuery 'I'.
    """

    def answers(self) -> bytes:
        out = []
        for frame in split_frames(b"".join(self.written)):
            tag, body = frame[0], frame[5:]
            if tag == FrontendTag.QUERY:
                value = body.rstrip(b"\x00").split()[-1].decode()
                out += [messages.row_description(["n"]), messages.data_row([value]),
                        messages.command_complete("SELECT 1"), messages.ready_for_query(b"I")]
            elif tag == FrontendTag.PARSE:
                out.append(messages.parse_complete())
            elif tag == FrontendTag.BIND:
                out.append(messages.frame(ord("2"), b""))
            elif tag == FrontendTag.DESCRIBE:
                out.append(messages.row_description(["n"]))
            elif tag == FrontendTag.EXECUTE:
                out += [messages.data_row(["7"]), messages.command_complete("SELECT 1")]
            elif tag == FrontendTag.SYNC:
                out.append(messages.ready_for_query(b"I"))
        self.written.clear()
        return b"".join(out)


class Pair:
    """A client stream framed and classified into a session, and PostgreSQL behind it."""

    def __init__(self, rewrites: bool = False) -> None:
        self.framer = FrontendFramer()
        self.session = BackendSession(DatabaseConfig(name="app"))
        self.postgres = ScriptedPostgres()
        self.receiver = Receiver()
        self.session.transport = self.postgres  # type: ignore[assignment]
        self.session.receiver = self.receiver  # type: ignore[assignment]
        self.session.state = ServerState.ACTIVE
        self.session.scanner.interesting = FORWARD_TAGS
        self.rewrites = rewrites
        self.unsynced = False
        self.named = False
        self.stops: list[int] = []
        self.batches: list[tuple[int, bool, bool]] = []

    def client_sends(self, data: bytes, chunk: int | None) -> None:
        step = chunk or len(data)
        for i in range(0, len(data), step):
            block = self.framer.next_batch(data[i:i + step])
            if block is None:
                continue
            block, replies, self.unsynced, self.named, stop = classify(
                block, self.unsynced, self.named, self.rewrites)
            self.batches.append((replies, self.unsynced, self.named))
            if block:
                self.session.send(block, replies, self.unsynced)
            if stop != NO_STOP:
                self.stops.append(stop)
                return

    def postgres_answers(self, chunk: int | None) -> bytes:
        reply = self.postgres.answers()
        step = chunk or len(reply) or 1
        for i in range(0, len(reply), step):
            self.session.data_received(reply[i:i + step])
        return reply


@pytest.mark.parametrize("client_chunk", CHUNKS)
@pytest.mark.parametrize("server_chunk", CHUNKS)
def test_a_simple_query_pipeline(client_chunk: int | None, server_chunk: int | None) -> None:
    pair = Pair()
    pair.client_sends(b"".join(messages.query(f"SELECT {n}") for n in range(3)), client_chunk)
    assert sum(replies for replies, _, _ in pair.batches) == 3
    reply = pair.postgres_answers(server_chunk)
    assert pair.receiver.received == reply
    assert pair.receiver.ready == 1 and pair.session.is_clean


@pytest.mark.parametrize("client_chunk", CHUNKS)
@pytest.mark.parametrize("server_chunk", CHUNKS)
def test_an_extended_batch_holds_the_server_until_its_sync(
        client_chunk: int | None, server_chunk: int | None) -> None:
    pair = Pair()
    head = (messages.parse("", "SELECT 7") + messages.bind("", "", [])
            + messages.describe(b"P", "") + messages.execute() + messages.flush())
    pair.client_sends(head, client_chunk)
    assert pair.unsynced
    first = pair.postgres_answers(server_chunk)
    assert pair.receiver.received == first  # answers to Flush go out at once
    assert pair.receiver.ready == 0 and not pair.session.is_clean  # mid-batch: not free
    pair.client_sends(messages.sync(), client_chunk)
    assert not pair.unsynced
    second = pair.postgres_answers(server_chunk)
    assert pair.receiver.received == first + second
    assert pair.receiver.ready == 1 and pair.session.is_clean


@pytest.mark.parametrize("client_chunk", CHUNKS)
def test_terminate_stops_the_batch_and_is_not_forwarded(client_chunk: int | None) -> None:
    pair = Pair()
    pair.client_sends(messages.query("SELECT 1") + messages.terminate()
                      + messages.query("SELECT 2"), client_chunk)
    assert pair.stops == [FrontendTag.TERMINATE]
    assert b"".join(pair.postgres.written) == messages.query("SELECT 1")


@pytest.mark.parametrize("client_chunk", CHUNKS)
def test_a_message_postgres_would_end_the_session_for_is_never_forwarded(
        client_chunk: int | None) -> None:
    pair = Pair()
    pair.client_sends(messages.query("SELECT 1") + messages.frame(ord("Z"), b"I")
                      + messages.query("SELECT 2"), client_chunk)
    assert pair.stops == [ord("Z")]
    assert b"".join(pair.postgres.written) == messages.query("SELECT 1")


def test_copy_messages_outside_copy_pass_and_ask_no_reply() -> None:
    pair = Pair()
    pair.client_sends(messages.frame(FrontendTag.COPY_DATA, b"x")
                      + messages.frame(FrontendTag.COPY_DONE, b""), None)
    assert pair.batches == [(0, False, False)] and pair.stops == []


@pytest.mark.parametrize("rewrites", [False, True])
def test_named_statements_are_flagged_only_when_the_proxy_tracks_them(rewrites: bool) -> None:
    for batch, named in [(messages.parse("s1", "SELECT 1") + messages.sync(), True),
                         (messages.parse("", "SELECT 1") + messages.sync(), False),
                         (messages.query("DEALLOCATE s1"), True),
                         (messages.query("SELECT 1"), False)]:
        pair = Pair(rewrites=rewrites)
        pair.client_sends(batch, None)
        assert pair.named is (named and rewrites)


def test_the_first_request_of_a_queue_ends_at_its_first_query_sync_or_function_call() -> None:
    q1, q2 = messages.query("SELECT 1"), messages.query("SELECT 2")
    batch = (messages.parse("", "SELECT $1", [23]) + messages.bind("", "", [b"1"])
             + messages.execute() + messages.sync())
    call = messages.frame(FrontendTag.FUNCTION_CALL, b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00")
    assert drop_first_request([q1 + q2]) == [q2]
    assert drop_first_request([q1, q2]) == [q2]
    assert drop_first_request([q1]) == []
    assert drop_first_request([batch + q1]) == [q1]
    assert drop_first_request([batch[:-5], messages.sync(), q1]) == [q1]  # split blocks
    assert drop_first_request([call + batch]) == [batch]
    # COPY data and Flush end no request; a batch without its Sync is not complete.
    copy = messages.frame(FrontendTag.COPY_DATA, b"x")
    assert drop_first_request([copy + messages.flush() + q1]) == []
    assert drop_first_request([batch[:-5]]) is None
    assert drop_first_request([]) is None
