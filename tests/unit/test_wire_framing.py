"""Framing of the post-startup streams: whole client messages, header-only server scan.

h11-style: every stream is fed whole, one byte at a time and in random splits, and the
events must not depend on how the bytes were cut.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from itertools import accumulate, pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.wire import authentication, messages
from proxy.wire.errors import ProtocolViolation
from proxy.wire.framing import BackendScanner, FrontendFramer, TagSet, frame_end, split_frames
from proxy.wire.tags import BackendTag as B
from proxy.wire.tags import FrontendTag as F

FAST = settings(max_examples=60, deadline=None)


def chunked(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """Split ``data`` at the given offsets (any order, duplicates and out-of-range ok)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in pairwise(edges)]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def cuts_for(size: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, size), max_size=40)


# ---- FrontendFramer ---------------------------------------------------------------------

CLIENT_MESSAGES: list[tuple[int, bytes]] = [
    (F.QUERY, b"SELECT 1\0"),
    (F.PARSE, b"s1\0SELECT $1\0\0\x01\0\0\0\x19"),
    (F.BIND, b"\0s1\0\0\0\0\x01\0\0\0\x03abc\0\0"),
    (F.EXECUTE, b"\0\0\0\0\0"),
    (F.SYNC, b""),
    (F.COPY_DATA, bytes(range(256)) * 400),  # > 100 KB: crosses the compaction threshold
    (F.FLUSH, b""),
    (F.QUERY, "SELECT 'é'".encode() + b"\0"),
]
CLIENT_STREAM = b"".join(messages.frame(t, b) for t, b in CLIENT_MESSAGES)


def frame_all(
    chunks: Sequence[bytes], framer: FrontendFramer | None = None
) -> list[tuple[int, bytes]]:
    framer = framer or FrontendFramer()
    out = []
    for chunk in chunks:
        framer.feed(chunk)
        while (msg := framer.next_message()) is not None:
            out.append(msg)
    return out


def test_frontend_framer_whole_stream() -> None:
    assert frame_all([CLIENT_STREAM]) == CLIENT_MESSAGES


def test_frontend_framer_one_byte_at_a_time() -> None:
    # The 100 KB message byte by byte would be slow to frame; the small ones cover it.
    small = b"".join(messages.frame(t, b) for t, b in CLIENT_MESSAGES if len(b) < 1000)
    expected = [m for m in CLIENT_MESSAGES if len(m[1]) < 1000]
    assert frame_all(bytewise(small)) == expected


@FAST
@given(cuts=cuts_for(len(CLIENT_STREAM)))
def test_frontend_framer_random_splits(cuts: list[int]) -> None:
    assert frame_all(chunked(CLIENT_STREAM, cuts)) == CLIENT_MESSAGES


@pytest.mark.parametrize("cut", [1, 4, 5, 9])
def test_frontend_framer_keeps_trailing_partial_message(cut: int) -> None:
    framer = FrontendFramer()
    q = messages.query("SELECT 2")
    assert frame_all([CLIENT_STREAM + q[:cut]], framer) == CLIENT_MESSAGES
    assert framer.next_message() is None
    assert framer.buffered() == cut
    framer.feed(q[cut:])
    assert framer.next_message() == (F.QUERY, b"SELECT 2\0")
    assert framer.buffered() == 0


def test_frontend_framer_completes_message_split_after_other_messages() -> None:
    framer = FrontendFramer()
    q = messages.query("SELECT 2")
    framer.feed(messages.sync() + q[:7])
    assert framer.next_message() == (F.SYNC, b"")
    assert framer.next_message() is None
    framer.feed(q[7:])
    assert framer.next_message() == (F.QUERY, b"SELECT 2\0")
    assert framer.buffered() == 0


def test_frontend_framer_many_messages_in_one_big_read() -> None:
    # Exercises the offset path and compaction past 64 KiB without losing a byte.
    msgs = [(F.QUERY, f"SELECT {i}".encode() + b"\0") for i in range(20000)]
    data = b"".join(messages.frame(t, b) for t, b in msgs)
    assert frame_all(chunked(data, range(0, len(data), 70001))) == msgs


@pytest.mark.parametrize("length", [-1, -3, 0, 3, 2**31 - 1, 1025])
def test_frontend_framer_rejects_bad_length_from_header_alone(length: int) -> None:
    framer = FrontendFramer(max_message_size=1024)
    framer.feed(b"Q" + struct.pack("!i", length))  # no body: the header is enough
    with pytest.raises(ProtocolViolation, match="invalid message length") as exc:
        framer.next_message()
    assert str(length) in str(exc.value) and "'Q'" in str(exc.value)
    assert exc.value.sqlstate == "08P01"
    # After a violation the framer refuses further work.
    with pytest.raises(ProtocolViolation):
        framer.next_message()
    with pytest.raises(ProtocolViolation):
        framer.feed(messages.sync())


def test_frontend_framer_accepts_message_of_exactly_max_size() -> None:
    framer = FrontendFramer(max_message_size=100)
    framer.feed(messages.frame(F.COPY_DATA, b"x" * 96))
    assert framer.next_message() == (F.COPY_DATA, b"x" * 96)


def test_frontend_framer_names_unprintable_tag() -> None:
    framer = FrontendFramer()
    framer.feed(b"\x01\0\0\0\0")
    with pytest.raises(ProtocolViolation, match="0x01"):
        framer.next_message()


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=300), cuts=cuts_for(300))
def test_frontend_framer_random_bytes_raise_only_protocol_violation(
    data: bytes, cuts: list[int]
) -> None:
    try:
        frame_all(chunked(data, cuts), FrontendFramer(max_message_size=200))
    except ProtocolViolation:
        pass


# ---- BackendScanner ---------------------------------------------------------------------

FORWARD_TAGS = frozenset(
    {
        B.READY_FOR_QUERY,
        B.ERROR_RESPONSE,
        B.PARAMETER_STATUS,
        B.BACKEND_KEY_DATA,
        B.AUTHENTICATION,
        B.COMMAND_COMPLETE,
        B.NEGOTIATE_PROTOCOL_VERSION,
    }
)


def _server_messages() -> list[bytes]:
    out = [
        authentication.authentication_ok(),
        messages.parameter_status("server_version", "17.2"),
        messages.parameter_status("client_encoding", "UTF8"),
        messages.backend_key_data(4242, b"\x01\x02\x03\x04"),
        messages.ready_for_query(b"I"),
        messages.row_description(["id", "name"]),
    ]
    out += [messages.data_row([str(i), "x" * (i % 90)]) for i in range(300)]
    out.append(messages.data_row(["big", "y" * 150_000]))  # > 100 KB, spans many chunks
    out += [messages.data_row([str(i), None]) for i in range(50)]
    out += [
        messages.command_complete("SELECT 351"),
        messages.ready_for_query(b"T"),
        messages.empty_query_response(),  # zero-length body
        messages.notice_response("01000", "just so you know"),
        messages.error_response("42P01", 'relation "nope" does not exist', hint="typo?"),
        messages.parameter_status("TimeZone", "UTC"),
        messages.ready_for_query(b"E"),
    ]
    return out


SERVER_MESSAGES = _server_messages()
SERVER_STREAM = b"".join(SERVER_MESSAGES)


def expected_events(interesting: frozenset[int]) -> list[tuple[int, int, bytes]]:
    """(tag, absolute end offset, body) of each interesting message, by plain slicing."""
    out = []
    pos = 0
    for msg in SERVER_MESSAGES:
        end = pos + len(msg)
        if msg[0] in interesting:
            out.append((msg[0], end, msg[5:]))
        pos = end
    return out


def scan(chunks: Sequence[bytes], scanner: BackendScanner) -> list[tuple[int, int, bytes]]:
    """Feed chunks; return events with ``end`` turned into an absolute stream offset."""
    events = []
    base = 0
    for chunk in chunks:
        for tag, end, body in scanner.feed(chunk):
            assert 0 <= end <= len(chunk)
            assert type(body) is bytes
            events.append((tag, base + end, body))
        base += len(chunk)
    return events


def test_scanner_whole_stream() -> None:
    scanner = BackendScanner(FORWARD_TAGS)
    assert scan([SERVER_STREAM], scanner) == expected_events(FORWARD_TAGS)
    assert scanner.at_boundary()


def test_scanner_one_byte_at_a_time_with_every_tag_interesting() -> None:
    # Without the 150 KB row (random splits cover it): 200k one-byte feeds are slow.
    every = frozenset(range(256))
    small = [msg for msg in SERVER_MESSAGES if len(msg) < 1000]
    scanner = BackendScanner(every)
    events = scan(bytewise(b"".join(small)), scanner)
    assert [(tag, body) for tag, _end, body in events] == [(m[0], m[5:]) for m in small]
    assert [end for _tag, end, _body in events] == list(accumulate(map(len, small)))
    assert scanner.at_boundary()


@FAST
@given(
    cuts=cuts_for(len(SERVER_STREAM)),
    interesting=st.sampled_from(
        [
            FORWARD_TAGS,
            frozenset(),
            frozenset({B.DATA_ROW}),
            frozenset({B.EMPTY_QUERY_RESPONSE, B.READY_FOR_QUERY}),
        ]
    ),
)
def test_scanner_random_splits(cuts: list[int], interesting: frozenset[int]) -> None:
    chunks = chunked(SERVER_STREAM, cuts)
    assert b"".join(chunks) == SERVER_STREAM  # the caller forwards chunks unchanged
    scanner = BackendScanner(interesting)
    assert scan(chunks, scanner) == expected_events(interesting)
    assert scanner.at_boundary()


@FAST
@given(cuts=cuts_for(len(SERVER_STREAM)))
def test_scanner_end_offsets_split_the_stream_into_whole_messages(cuts: list[int]) -> None:
    # Forwarding chunk[:end] pieces reproduces the stream up to each interesting message.
    scanner = BackendScanner(FORWARD_TAGS)
    sent = bytearray()
    for chunk in chunked(SERVER_STREAM, cuts):
        start = 0
        for tag, end, body in scanner.feed(chunk):
            sent += chunk[start:end]
            start = end
            assert sent.endswith(messages.frame(tag, body))
        sent += chunk[start:]
    assert sent == SERVER_STREAM


def _header_chunks(chunks: list[bytes]) -> list[tuple[int, int, bytes]]:
    """For each message: the index of the chunk holding its header's last byte, its
    absolute end offset, and the message."""
    chunk_ends = list(accumulate(len(c) for c in chunks))
    out = []
    pos = 0
    for msg in SERVER_MESSAGES:
        out.append((bisect_right(chunk_ends, pos + 4), pos + len(msg), msg))
        pos += len(msg)
    return out


@FAST
@given(cuts=cuts_for(len(SERVER_STREAM)), flips=st.lists(st.booleans(), min_size=41))
def test_scanner_interesting_set_can_change_between_feeds(
    cuts: list[int], flips: list[bool]
) -> None:
    # The decision to collect a message is taken with the set in force when its header
    # completes; the event comes in the chunk holding its last byte.
    chunks = chunked(SERVER_STREAM, cuts)
    sets = [
        FORWARD_TAGS if flips[i % len(flips)] else frozenset({B.DATA_ROW})
        for i in range(len(chunks))
    ]
    expected = [
        (msg[0], end, msg[5:]) for hdr, end, msg in _header_chunks(chunks) if msg[0] in sets[hdr]
    ]
    scanner = BackendScanner(FORWARD_TAGS)
    events = []
    base = 0
    for chunk, interesting in zip(chunks, sets, strict=True):
        scanner.interesting = TagSet(interesting)
        events += [(t, base + e, b) for t, e, b in scanner.feed(chunk)]
        base += len(chunk)
    assert events == expected


def test_scanner_at_boundary_tracks_partial_messages() -> None:
    scanner = BackendScanner(FORWARD_TAGS)
    rfq = messages.ready_for_query(b"I")
    assert scanner.at_boundary()
    assert scanner.feed(rfq[:2]) == []
    assert not scanner.at_boundary()  # partial header
    assert scanner.feed(rfq[2:5]) == []
    assert not scanner.at_boundary()  # header done, body byte missing
    assert scanner.feed(rfq[5:]) == [(B.READY_FOR_QUERY, 1, b"I")]
    assert scanner.at_boundary()
    row = messages.data_row(["z" * 1000])
    assert scanner.feed(row[:500]) == []
    assert not scanner.at_boundary()
    assert scanner.feed(row[500:] + rfq) == [(B.READY_FOR_QUERY, len(row) - 500 + 6, b"I")]
    assert scanner.at_boundary()


def test_scanner_empty_chunk_is_harmless() -> None:
    scanner = BackendScanner(FORWARD_TAGS)
    assert scanner.feed(b"") == []
    assert scanner.feed(messages.command_complete("SELECT 1")[:3]) == []
    assert scanner.feed(b"") == []
    assert scanner.feed(messages.command_complete("SELECT 1")[3:]) == [
        (B.COMMAND_COMPLETE, 11, b"SELECT 1\0")
    ]


@pytest.mark.parametrize("interesting", [FORWARD_TAGS, frozenset()])
@pytest.mark.parametrize("length", [-1, -(2**31), 0, 3])
@pytest.mark.parametrize("split", [None, 2])
def test_scanner_rejects_length_below_four(
    interesting: frozenset[int], length: int, split: int | None
) -> None:
    scanner = BackendScanner(interesting)
    bad = messages.ready_for_query(b"I") + b"Z" + struct.pack("!i", length) + b"junk"
    chunks = [bad] if split is None else [bad[: 6 + split], bad[6 + split :]]
    with pytest.raises(ProtocolViolation, match=f"invalid message length {length} .*'Z'"):
        for chunk in chunks:
            scanner.feed(chunk)
    with pytest.raises(ProtocolViolation):
        scanner.feed(messages.ready_for_query(b"I"))


@pytest.mark.parametrize("split", [None, 3, 7, 100])
def test_scanner_rejects_oversized_interesting_message(split: int | None) -> None:
    scanner = BackendScanner(FORWARD_TAGS, max_interesting_size=64)
    ok = messages.error_response("XX000", "m" * 40)
    assert len(ok) - 5 <= 64
    assert len(scanner.feed(ok)) == 1
    big = messages.error_response("XX000", "m" * 60)
    chunks = [big] if split is None else [big[:split], big[split:]]
    with pytest.raises(ProtocolViolation, match="over the 64-byte limit"):
        for chunk in chunks:
            scanner.feed(chunk)


def test_scanner_skips_huge_uninteresting_message_by_arithmetic() -> None:
    scanner = BackendScanner(FORWARD_TAGS, max_interesting_size=64)
    header = b"D" + struct.pack("!i", 2**31 - 1)
    assert scanner.feed(header + b"x" * 100) == []
    assert not scanner.at_boundary()


@settings(max_examples=100, deadline=None)
@given(
    data=st.binary(max_size=300),
    cuts=cuts_for(300),
    interesting=st.frozensets(st.sampled_from(b"ZECDSR\0\xff"), max_size=4),
)
def test_scanner_random_bytes_raise_only_protocol_violation(
    data: bytes, cuts: list[int], interesting: frozenset[int]
) -> None:
    scanner = BackendScanner(interesting, max_interesting_size=100)
    try:
        for chunk in chunked(data, cuts):
            for _tag, end, _body in scanner.feed(chunk):
                assert 0 <= end <= len(chunk)
    except ProtocolViolation:
        pass


def test_next_batch_hands_out_whole_messages_as_received() -> None:
    wire = messages.query("SELECT 1") + messages.parse("s", "SELECT 2") + messages.sync()
    for cut in range(len(wire) + 1):
        framer = FrontendFramer()
        got: list[tuple[int, bytes]] = []
        for part in (wire[:cut], wire[cut:]):
            framer.feed(part)
            while (block := framer.next_batch()) is not None:
                got += [(frame[0], frame) for frame in split_frames(block)]
        assert got == [(F.QUERY, messages.query("SELECT 1")),
                       (F.PARSE, messages.parse("s", "SELECT 2")), (F.SYNC, messages.sync())]
        assert framer.buffered() == 0


def test_frame_end_walks_a_block_message_by_message() -> None:
    frames = [messages.query("SELECT 1"), messages.frame(F.COPY_DATA, b"x" * 70_000),
              messages.parse("", "SELECT 2"), messages.sync()]
    block = b"".join(frames)
    ends = []
    pos = 0
    while pos < len(block):
        pos = frame_end(block, pos)
        ends.append(pos)
    assert ends == list(accumulate(map(len, frames)))


def test_next_batch_of_received_bytes_frames_them_in_place() -> None:
    """next_batch(data): what a socket delivered, framed without going through the buffer
    when nothing is buffered; any split (at every pair of cuts) gives the same messages."""
    wire = messages.query("SELECT 1") + messages.parse("s", "SELECT 2") + messages.sync()
    framer = FrontendFramer()
    assert framer.next_batch(wire) is wire  # whole messages only: no copy at all
    assert framer.buffered() == 0
    expected = [messages.query("SELECT 1"), messages.parse("s", "SELECT 2"), messages.sync()]
    for first in range(len(wire) + 1):
        for second in range(first, len(wire) + 1):
            framer = FrontendFramer()
            got: list[bytes] = []
            for part in (wire[:first], wire[first:second], wire[second:]):
                block = framer.next_batch(part)
                if block is not None:
                    got += split_frames(block)
            assert got == expected, (first, second)
            assert framer.buffered() == 0


def test_next_batch_of_received_bytes_after_login_messages() -> None:
    """Messages read one by one at login (next_message) leave the buffer part consumed;
    the first next_batch(data) after them hands out the rest and the new bytes."""
    framer = FrontendFramer()
    framer.feed(messages.sync() + messages.query("SELECT 1")[:7])
    assert framer.next_message() == (F.SYNC, b"")
    block = framer.next_batch(messages.query("SELECT 1")[7:] + messages.sync())
    assert block == messages.query("SELECT 1") + messages.sync()
    assert framer.buffered() == 0


def test_next_batch_waits_for_a_long_message_without_handing_out_parts() -> None:
    body = b"x" * 200_000
    wire = messages.frame(F.COPY_DATA, body) + messages.sync()
    framer = FrontendFramer()
    for i in range(0, len(wire) - 6, 4096):
        assert framer.next_batch(wire[i:min(i + 4096, len(wire) - 6)]) is None
    assert framer.next_batch(wire[len(wire) - 6:]) == wire


def test_next_batch_of_received_bytes_stops_at_a_bad_length() -> None:
    framer = FrontendFramer()
    block = framer.next_batch(messages.sync() + b"Q" + struct.pack("!i", -1))
    assert block == messages.sync()
    with pytest.raises(ProtocolViolation, match="invalid message length -1"):
        framer.next_batch(b"more")
    with pytest.raises(ProtocolViolation):
        framer.next_batch(messages.sync())  # refused from then on


def test_next_batch_gives_the_good_messages_before_a_bad_length() -> None:
    framer = FrontendFramer()
    framer.feed(messages.sync() + b"Q" + struct.pack("!i", -1))
    assert framer.next_batch() == messages.sync()
    with pytest.raises(ProtocolViolation):
        framer.next_batch()


@FAST
@given(tags=st.frozensets(st.integers(0, 255)), more=st.frozensets(st.integers(0, 255)))
def test_tag_set_is_the_set_of_its_tags(tags: frozenset[int], more: frozenset[int]) -> None:
    table = TagSet(tags)
    assert set(table) == tags
    assert [tag in table for tag in range(-2, 260)] == [tag in tags for tag in range(-2, 260)]
    assert "Z" not in table and None not in table
    assert set(table | more) == tags | more


def test_tag_set_refuses_a_tag_outside_a_byte() -> None:
    for tag in (256, -1):
        with pytest.raises(ValueError, match="not a byte"):
            TagSet({tag})
