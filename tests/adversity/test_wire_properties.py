"""Codec property missing from the unit tests: FrontendFramer.next_batch over random splits."""

from __future__ import annotations

import itertools
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.wire import messages
from proxy.wire.framing import FrontendFramer, split_frames
from proxy.wire.startup import StartupFramer

STREAM = b"".join([
    messages.query("SELECT 1"),
    messages.parse("s1", "SELECT $1::int", [23]),
    messages.bind("", "s1", [b"7"]),
    messages.describe(b"P", ""),
    messages.execute(),
    messages.sync(),
    messages.query("x" * 300),
    messages.flush(),
    messages.terminate(),
])
HANDSHAKE = messages.ssl_request() + messages.startup_message({"user": "u", "database": "app"})


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _whole_messages(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("!i", data, pos + 1)
        out.append(data[pos:pos + 1 + length])
        pos += 1 + length
    return out


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, 10_000), max_size=30))
def test_next_batch_over_random_splits_gives_the_same_messages(cuts: list[int]) -> None:
    framer = FrontendFramer()
    got: list[bytes] = []
    for piece in _pieces(STREAM, cuts):
        framer.feed(piece)
        while (block := framer.next_batch()) is not None:
            got.extend(split_frames(block))
    assert got == _whole_messages(STREAM)
    assert framer.buffered() == 0


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, 10_000), max_size=30))
def test_startup_then_frontend_framing_over_random_splits(cuts: list[int]) -> None:
    data = HANDSHAKE + STREAM
    startup, frontend = StartupFramer(), FrontendFramer()
    packets: list[bytes] = []
    got: list[bytes] = []
    in_startup = True
    for piece in _pieces(data, cuts):
        if in_startup:
            startup.feed(piece)
            while len(packets) < 2 and (packet := startup.next_packet()) is not None:
                packets.append(packet)
            if len(packets) < 2:
                continue
            in_startup = False
            piece = startup.remaining()
        frontend.feed(piece)
        while (message := frontend.next_message()) is not None:
            tag, body = message
            got.append(bytes([tag]) + struct.pack("!i", len(body) + 4) + body)
    assert [len(p) for p in packets] == [4, len(HANDSHAKE) - 8 - 4]
    assert got == _whole_messages(STREAM)
