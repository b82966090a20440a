"""proxy.backend.prepared.bound, the one-pass rewrite of a batch that runs a prepared
statement: wherever it answers, it answers what ``to_verify`` and ``rewrite`` answer
together, and it leaves the client's and the server's statements as they leave them."""

from __future__ import annotations

import random

from proxy.backend import statements
from proxy.backend.prepared import bound, rewrite
from proxy.backend.replies import FORWARD
from proxy.backend.statements import Amend, ClientStatement, ServerStatement, ServerStatements
from proxy.backend.verification import to_verify
from proxy.wire import messages
from proxy.wire.framing import split_frames

NAMES = ["s1", "s2", "é3", ""]
KEYS = [b"SELECT 1\x00\x00\x00", b"SELECT $1\x00\x00\x01\x00\x00\x00\x17", b"SELECT 3\x00\x00\x00"]
DESCS = [None, b"desc-a", b"desc-b"]


def _state(seed: float) -> tuple[dict[str, ClientStatement], ServerStatements]:
    """A random client and server statement state; the same seed gives an equal, separate
    one (compiled classes cannot be deep-copied)."""
    rng = random.Random(seed)
    client: dict[str, ClientStatement] = {}
    for name in NAMES[:3]:
        if rng.random() < 0.8:
            stmt = client[name] = ClientStatement(rng.choice(KEYS))
            stmt.desc = rng.choice(DESCS)
            stmt.seen = rng.randrange(5)
    server = ServerStatements(limit=rng.choice([1, 2, 3, 10]))
    for number, key in enumerate(rng.sample(KEYS, rng.randrange(len(KEYS) + 1))):
        stmt = server.by_key[key] = ServerStatement(f"{statements.PREFIX}{number}")
        stmt.desc = rng.choice(DESCS)
        stmt.seen = rng.randrange(5)
    server.recent = rng.choice([None, *KEYS])
    if rng.random() < 0.1:
        server.orphans.append("gone")
    if rng.random() < 0.1:
        server.open = Amend()
    server.skipping = rng.random() < 0.1
    if rng.random() < 0.1:
        server.failed[rng.choice(KEYS)] = b"E..."
    if rng.random() < 0.1:
        server.schema -= 1  # DDL ran since its statements were prepared
    return client, server


def _batch(rng: random.Random) -> bytes:
    parts = [messages.bind(rng.choice(["", "portal"]), rng.choice([*NAMES, "unknown"]),
                           [b"1"] if rng.random() < 0.5 else [])]
    if rng.random() < 0.1:
        parts.insert(0, messages.execute())
    middle = [messages.execute(), messages.execute("portal", 10), messages.describe(b"P", ""),
              messages.describe(b"S", rng.choice(NAMES)), messages.flush(), messages.sync(),
              messages.close(b"P", "")]
    parts.extend(rng.choice(middle) for _ in range(rng.randrange(3)))
    if rng.random() < 0.9:
        parts.append(messages.sync())
    return b"".join(parts)


def _snapshot(client: dict[str, ClientStatement], server: ServerStatements) -> object:
    def stmt(s: ServerStatement) -> tuple[object, ...]:
        return (s.name, s.desc, s.seen)
    return ({name: (s.key, s.desc, s.seen) for name, s in client.items()},
            [(key, stmt(s)) for key, s in server.by_key.items()], server.recent,
            server.open, server.skipping, dict(server.failed), list(server.orphans),
            list(server.unconfirmed), server.schema)


def test_bound_agrees_with_to_verify_and_rewrite() -> None:
    rng = random.Random(20261203)
    answered = 0
    for _ in range(10_000):
        seed = rng.random()
        client, server = _state(seed)
        general = _state(seed)
        block = _batch(rng)
        data = bound(block, client, server)
        if data is None:
            continue
        answered += 1
        frames = split_frames(block)
        assert to_verify(frames, *general) == []
        done = rewrite(frames, *general, FORWARD, batch_start=True)
        assert data == done.data
        assert done.entries == [FORWARD] and not done.carry
        assert general[1].take_evictions(done.used) == []
        assert _snapshot(client, server) == _snapshot(*general)
    assert answered > 200  # the batch it is for came up often enough to be tested


def test_bound_renames_the_statement_only() -> None:
    server = ServerStatements(limit=10)
    target = server.add(KEYS[0])
    client = {"s1": ClientStatement(KEYS[0])}
    batch = (messages.bind("p", "s1", [b"42", None], [1], [0]) + messages.describe(b"P", "p")
             + messages.execute("p") + messages.sync())
    data = bound(batch, client, server)
    assert data == (messages.bind("p", target.name, [b"42", None], [1], [0])
                    + messages.describe(b"P", "p") + messages.execute("p") + messages.sync())


def test_bound_leaves_other_batches_to_rewrite() -> None:
    server = ServerStatements(limit=10)
    server.add(KEYS[0])
    client = {"s1": ClientStatement(KEYS[0])}
    run = messages.bind("", "s1", []) + messages.execute()
    assert bound(run, client, server) is None                       # no Sync yet
    assert bound(run + messages.sync() + run + messages.sync(), client, server) is None
    assert bound(messages.bind("", "s1", []) + messages.describe(b"S", "s1") + messages.sync(),
                 client, server) is None                             # describes the statement
    assert bound(messages.bind("", "s2", []) + messages.sync(), client, server) is None
    client["s1"].desc = b"told"                                     # the server's is unknown
    assert bound(run + messages.sync(), client, server) is None
    statements.schema_changed()                                     # DDL: prepared afresh
    client["s1"].desc = None
    assert bound(run + messages.sync(), client, server) is None
    assert server.by_key == {} and len(server.orphans) == 1
