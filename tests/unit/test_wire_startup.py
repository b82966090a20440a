"""Startup-phase packets: framing (whole, bytewise, random splits, trailing bytes) and
parsing of SSLRequest, GSSENCRequest, CancelRequest and StartupMessage."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.wire import authentication, messages
from proxy.wire.errors import ProtocolViolation
from proxy.wire.framing import FrontendFramer
from proxy.wire.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupFramer,
    StartupMessage,
    parse_startup_packet,
)
from proxy.wire.tags import FrontendTag

FAST = settings(max_examples=80, deadline=None)
GSSENC = struct.pack("!ii", 8, 80877104)


def chunked(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in pairwise(edges)]


def packet(body: bytes) -> bytes:
    return struct.pack("!i", len(body) + 4) + body


def version(minor: int = 0) -> bytes:
    return struct.pack("!I", 3 << 16 | minor)


PARAMS = {"user": "alice", "database": "app", "application_name": "psql ✓"}
STARTUP = messages.startup_message(PARAMS)
# What a client typically sends: encryption requests refused, then the StartupMessage.
HANDSHAKE = GSSENC + messages.ssl_request() + STARTUP
HANDSHAKE_PACKETS = [
    GSSENCRequest(),
    SSLRequest(),
    StartupMessage(0, PARAMS, {}),
]


def packets(chunks: Sequence[bytes], framer: StartupFramer | None = None) -> list[object]:
    framer = framer or StartupFramer()
    out: list[object] = []
    for chunk in chunks:
        framer.feed(chunk)
        while (body := framer.next_packet()) is not None:
            out.append(parse_startup_packet(body))
    return out


def test_framer_whole() -> None:
    assert packets([HANDSHAKE]) == HANDSHAKE_PACKETS


def test_framer_one_byte_at_a_time() -> None:
    assert packets([HANDSHAKE[i : i + 1] for i in range(len(HANDSHAKE))]) == HANDSHAKE_PACKETS


@FAST
@given(cuts=st.lists(st.integers(0, len(HANDSHAKE)), max_size=20))
def test_framer_random_splits(cuts: list[int]) -> None:
    assert packets(chunked(HANDSHAKE, cuts)) == HANDSHAKE_PACKETS


@FAST
@given(cut=st.integers(0, len(STARTUP)), trailing_cut=st.integers(0, 30))
def test_trailing_bytes_pass_to_the_frontend_framer(cut: int, trailing_cut: int) -> None:
    # A pipelining client may send its password right behind the StartupMessage.
    password = authentication.password_message(b"token\0") + messages.query("SELECT 1")
    stream = STARTUP + password
    split = len(STARTUP) + min(trailing_cut, len(password))
    startup = StartupFramer()
    startup.feed(stream[:cut])
    assert startup.buffered() == cut
    startup.feed(stream[cut:split])
    body = startup.next_packet()
    assert body is not None and parse_startup_packet(body) == StartupMessage(0, PARAMS, {})
    assert startup.buffered() == split - len(STARTUP)
    framer = FrontendFramer()
    framer.feed(startup.remaining())
    assert startup.buffered() == 0 and startup.remaining() == b""
    framer.feed(stream[split:])
    assert framer.next_message() == (FrontendTag.PASSWORD, b"token\0")
    assert framer.next_message() == (FrontendTag.QUERY, b"SELECT 1\0")
    assert framer.next_message() is None


@pytest.mark.parametrize("length", [-1, 0, 4, 7, 10001, 2**31 - 1])
def test_framer_rejects_bad_length_before_body_arrives(length: int) -> None:
    framer = StartupFramer()
    framer.feed(struct.pack("!i", length))
    with pytest.raises(ProtocolViolation, match=f"invalid length {length} of startup packet"):
        framer.next_packet()
    with pytest.raises(ProtocolViolation):
        framer.next_packet()
    with pytest.raises(ProtocolViolation):
        framer.feed(STARTUP)


def test_framer_respects_custom_max_size() -> None:
    framer = StartupFramer(max_size=len(STARTUP) - 1)
    framer.feed(STARTUP)
    with pytest.raises(ProtocolViolation):
        framer.next_packet()
    framer = StartupFramer(max_size=len(STARTUP))
    framer.feed(STARTUP)
    assert framer.next_packet() == STARTUP[4:]


def test_startup_message_keeps_order_and_separates_protocol_options() -> None:
    body = (
        version(2)
        + b"user\0bob\0_pq_.compression\0on\0database\0db\0"
        + b"_pq_.other\0x\0options\0-c geqo=off\0\0"
    )
    msg = parse_startup_packet(body)
    assert msg == StartupMessage(
        2,
        {"user": "bob", "database": "db", "options": "-c geqo=off"},
        {"_pq_.compression": "on", "_pq_.other": "x"},
    )
    assert isinstance(msg, StartupMessage)
    assert list(msg.parameters) == ["user", "database", "options"]


def test_startup_message_without_user_or_parameters_is_allowed() -> None:
    assert parse_startup_packet(version() + b"\0") == StartupMessage(0, {}, {})
    assert parse_startup_packet(version() + b"database\0x\0\0") == StartupMessage(
        0, {"database": "x"}, {}
    )


def test_startup_message_empty_value_is_allowed() -> None:
    assert parse_startup_packet(version() + b"user\0\0\0") == StartupMessage(0, {"user": ""}, {})


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "too short"),
        (b"\0\0", "too short"),
        (version(), "missing terminator"),
        (version() + b"user\0bob\0", "missing terminator"),
        (version() + b"user\0bob", "without a value"),
        (version() + b"user\0", "without a value"),
        (version() + b"user\0bob\0\0extra", "terminator as last byte"),
        (version() + b"\0\0", "terminator as last byte"),
        (version() + b"user\0\xff\xfe\0\0", "UTF-8"),
        (version() + b"us\xc3\0x\0\0", "UTF-8"),
        (version() + b"user\0a\0user\0b\0\0", "repeats"),
        (version() + b"_pq_.x\0a\0_pq_.x\0b\0\0", "repeats"),
        (struct.pack("!I", 2 << 16) + b"user\0a\0\0", "unsupported frontend protocol 2.0"),
        (struct.pack("!I", 4 << 16 | 1) + b"\0", "unsupported frontend protocol 4.1"),
        (struct.pack("!I", 1234 << 16 | 5681) + b"\0", "unsupported frontend protocol 1234"),
        (struct.pack("!ii", 80877103, 0), "encryption request"),
        (struct.pack("!i", 80877104) + b"x", "encryption request"),
        (struct.pack("!iI", 80877102, 7), "cancel request"),
        (struct.pack("!iI", 80877102, 7) + b"abc", "cancel request"),
        (struct.pack("!iI", 80877102, 7) + b"k" * 257, "cancel request"),
    ],
)
def test_malformed_packets_are_protocol_violations(body: bytes, reason: str) -> None:
    with pytest.raises(ProtocolViolation, match=reason):
        parse_startup_packet(body)


@pytest.mark.parametrize("key", [b"\x00\x01\x02\x03", bytes(range(32)), b"k" * 256])
def test_cancel_request_round_trip(key: bytes) -> None:
    wire = messages.cancel_request(123456, key)
    assert struct.unpack_from("!i", wire)[0] == len(wire)
    framer = StartupFramer()
    framer.feed(wire)
    body = framer.next_packet()
    assert body is not None
    assert parse_startup_packet(body) == CancelRequest(123456, key)


def test_cancel_request_hand_written_bytes() -> None:
    assert messages.cancel_request(7, b"\xde\xad\xbe\xef") == (
        b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x00\x07\xde\xad\xbe\xef"
    )


def test_cancel_request_repr_hides_the_key() -> None:
    assert "secret" not in repr(CancelRequest(1, b"secret"))


def test_ssl_request_hand_written_bytes() -> None:
    assert messages.ssl_request() == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
    assert parse_startup_packet(messages.ssl_request()[4:]) == SSLRequest()


def test_startup_message_hand_written_bytes() -> None:
    assert messages.startup_message({"user": "u"}) == (
        b"\x00\x00\x00\x10\x00\x03\x00\x00user\x00u\x00\x00"
    )
    assert messages.startup_message({}, protocol_minor=2)[4:8] == b"\x00\x03\x00\x02"


@pytest.mark.parametrize("params", [{"": "x"}, {"a\0b": "x"}, {"user": "a\0"}])
def test_startup_message_encoder_refuses_ambiguous_parameters(params: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        messages.startup_message(params)


names = st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=12)
values = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=20)


@FAST
@given(params=st.dictionaries(names, values, max_size=6), minor=st.integers(0, 0xFFFF))
def test_startup_message_round_trip(params: dict[str, str], minor: int) -> None:
    framer = StartupFramer(max_size=100_000)
    framer.feed(messages.startup_message(params, protocol_minor=minor))
    body = framer.next_packet()
    assert body is not None
    msg = parse_startup_packet(body)
    assert isinstance(msg, StartupMessage)
    assert msg.protocol_minor == minor
    assert msg.parameters == {k: v for k, v in params.items() if not k.startswith("_pq_.")}
    assert msg.protocol_options == {k: v for k, v in params.items() if k.startswith("_pq_.")}
    assert list(msg.parameters) == [k for k in params if not k.startswith("_pq_.")]


@settings(max_examples=120, deadline=None)
@given(
    body=st.one_of(
        st.binary(max_size=80),
        st.builds(lambda tail: version() + tail, st.binary(max_size=60)),
        st.builds(lambda tail: struct.pack("!i", 80877102) + tail, st.binary(max_size=20)),
    )
)
def test_random_packet_bodies_raise_only_protocol_violation(body: bytes) -> None:
    try:
        parse_startup_packet(body)
    except ProtocolViolation:
        pass


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200), cuts=st.lists(st.integers(0, 200), max_size=10))
def test_random_streams_raise_only_protocol_violation(data: bytes, cuts: list[int]) -> None:
    try:
        packets(chunked(data, cuts), StartupFramer(max_size=100))
    except ProtocolViolation:
        pass
