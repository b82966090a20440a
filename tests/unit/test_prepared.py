"""proxy.backend.prepared, byte by byte: what a client's batch becomes on a server, and
what the client gets back (the Amend entry, fed through a ServerConnection whole and one
byte at a time)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from proxy.backend import prepared, statements
from proxy.backend.prepared import needs_rewrite, rewrite
from proxy.backend.server import (
    FORWARD,
    FORWARD_TAGS,
    Receiver,
    ServerConnection,
    ServerState,
)
from proxy.backend.statements import (
    MISSING,
    PREFIX,
    Amend,
    ClientStatement,
    Emit,
    ServerStatements,
    description,
)
from proxy.backend.verification import to_verify, verified, verify_batch
from proxy.config import DatabaseConfig
from proxy.wire import messages
from proxy.wire.framing import BackendScanner, split_frames
from proxy.wire.tags import FrontendTag


def _cstr(text: str) -> bytes:
    """A C string as a Parse carries it."""
    return text.encode() + b"\x00"


SELECT = _cstr("SELECT * FROM t") + b"\x00\x00"  # a Parse key: text, no types
Z_IDLE = messages.ready_for_query(b"I")


def frames(*parts: bytes) -> list[bytes]:
    return split_frames(b"".join(parts))


def tags(data: bytes) -> str:
    return "".join(chr(f[0]) for f in split_frames(data))


def names_in(data: bytes) -> set[str]:
    return {m.decode() for m in re.findall(rb"[\w$]+", data) if m.startswith(b"pgtenant_")}


def backend(tag: bytes, body: bytes = b"") -> bytes:
    return messages.frame(tag[0], body)


def error_body(data: bytes) -> dict[str, str]:
    return messages.decode_error_fields(data[5:])


def row_description(*columns: tuple[str, int, int, int]) -> bytes:
    """RowDescription of (name, table oid, attnum, type oid) columns."""
    body = len(columns).to_bytes(2, "big")
    for name, table, attnum, type_oid in columns:
        body += _cstr(name) + statements._FIELD_TAIL.pack(table, attnum, type_oid, 4,
                                                                 -1, 0)
    return backend(b"T", body)


PARAMS_NONE = backend(b"t", b"\x00\x00")


def test_proxy_names_are_random_per_process_and_in_the_pgtenant_namespace() -> None:
    assert re.fullmatch(r"pgtenant_[0-9a-f]{16}_", PREFIX)
    server = ServerStatements(10)
    assert server.add(SELECT).name.startswith(PREFIX)
    assert MISSING.startswith(PREFIX)


@pytest.mark.parametrize(("tag", "body", "expected"), [
    (b"P", b"s1\x00SELECT 1\x00\x00\x00", True),
    (b"P", b"\x00SELECT 1\x00\x00\x00", False),
    (b"P", b"\x00  DEALLOCATE x\x00\x00\x00", True),
    (b"P", b"\x00/* c */ DEALLOCATE x\x00\x00\x00", True),
    (b"P", b"\x00 ;; DEALLOCATE x\x00\x00\x00", True),
    (b"B", b"\x00s1\x00\x00\x00\x00\x00\x00\x00", True),
    (b"B", b"\x00\x00\x00\x00\x00\x00\x00\x00", False),
    (b"D", b"Ss1\x00", True),
    (b"D", b"Ps1\x00", False),
    (b"C", b"Ss1\x00", True),
    (b"Q", b"SELECT 1\x00", False),
    (b"Q", b"SELECT 1; dEaLlOcAtE x\x00", True),
])
def test_needs_rewrite(tag: bytes, body: bytes, expected: bool) -> None:
    assert needs_rewrite(tag[0], body, 0, len(body)) is expected
    frames = messages.frame(tag[0], body) + messages.sync()  # read in place, as classify does
    assert needs_rewrite(tag[0], frames, 5, 5 + len(body)) is expected


# ---- rewriting ------------------------------------------------------------------------


def test_unknown_statement_fails_on_the_server_under_a_name_no_client_has() -> None:
    client: dict[str, ClientStatement] = {}
    server = ServerStatements(10)
    victim = server.add(SELECT).name
    done = rewrite(frames(messages.bind("", victim, []), messages.execute(),
                          messages.parse("late", "SELECT 2"), messages.sync(),
                          messages.query("SELECT 3")),
                   client, server, FORWARD, batch_start=True)
    # The Bind goes out for MISSING, the rest of the batch is dropped up to Sync.
    assert tags(done.data) == "BSQ"
    assert names_in(done.data) == {MISSING}
    assert "late" not in client
    amend, forward = done.entries
    assert isinstance(amend, Amend) and forward is FORWARD
    server_error = messages.error_response(
        "26000", f'prepared statement "{MISSING}" does not exist')
    swapped = amend.message(server_error[0], server_error, server_error[5:])
    assert error_body(swapped)["M"] == f'prepared statement "{victim}" does not exist'
    assert not done.carry


def test_names_that_are_not_utf8_keep_their_bytes() -> None:
    """Names are bytes in the client's encoding (LATIN9 here): never a decoding error, and
    the client's own name comes back byte for byte (found by the adversity fuzzer)."""
    name = "caf\udce9"  # b"caf\xe9" decoded as the proxy decodes names
    raw = b"caf\xe9"
    parse = messages.frame(FrontendTag.PARSE, raw + b"\x00SELECT 1\x00\x00\x00")
    bind = messages.frame(FrontendTag.BIND, b"p\xff\x00" + raw + b"\x00" + bytes(6))
    client: dict[str, ClientStatement] = {}
    server = ServerStatements(10)
    execute = messages.frame(FrontendTag.EXECUTE, b"p\xff\x00\x00\x00\x00\x00")
    done = rewrite([parse, bind, execute, messages.sync()], client, server, FORWARD,
                   batch_start=True)
    assert name in client
    assert b"p\xff\x00" in done.data  # the portal name went out as sent
    unknown = rewrite([bind.replace(raw, b"na\xefve"), messages.sync()], client, server,
                      FORWARD, batch_start=True)
    amend = unknown.entries[0]
    assert isinstance(amend, Amend) and amend.error is not None
    assert b'"na\xefve"' in amend.error


def test_duplicate_parse_is_42P05_at_any_point_of_a_batch() -> None:
    client = {"s": ClientStatement(SELECT)}
    server = ServerStatements(10)
    done = rewrite(frames(messages.parse("u", "SELECT 1"), messages.parse("s", "SELECT 2"),
                          messages.bind("", "s", []), messages.sync()),
                   client, server, FORWARD, batch_start=True)
    assert tags(done.data) == "PBS"
    (amend,) = done.entries
    assert isinstance(amend, Amend) and amend.error is not None
    assert error_body(amend.error)["C"] == "42P05"
    assert client["s"].key == SELECT


def _unnamed_then_bind(sql: str, name: str, client: dict[str, ClientStatement],
                       server: ServerStatements) -> prepared.Rewritten:
    """Parse of the unnamed statement, Bind of ``name`` ("" too), Execute, Sync."""
    return rewrite(frames(messages.parse("", sql), messages.bind("", name, []),
                          messages.execute(), messages.sync()),
                   client, server, FORWARD, batch_start=True)


def test_missing_statement_is_prepared_in_line_and_its_parse_complete_dropped() -> None:
    client = {"s": ClientStatement(SELECT)}
    server = ServerStatements(10)
    done = _unnamed_then_bind("SELECT 0", "s", client, server)
    assert tags(done.data) == "PPBES"
    (amend,) = done.entries
    assert isinstance(amend, Amend) and amend.drop_parses == {1}
    reply = [messages.parse_complete(), messages.parse_complete(), backend(b"2"),
             backend(b"C", b"SELECT 1\x00"), Z_IDLE]
    out = b"".join(amend.message(m[0], m, m[5:]) for m in reply)
    assert tags(out) == "12CZ"
    # Next time the server has it: a plain rename, FORWARD.
    done = rewrite(frames(messages.bind("", "s", []), messages.execute(), messages.sync()),
                   client, server, FORWARD, batch_start=True)
    assert tags(done.data) == "BES" and done.entries == [FORWARD]
    assert names_in(done.data) == {server.by_key[SELECT].name}


def test_a_parse_postgresql_refuses_leaves_the_name_free() -> None:
    client: dict[str, ClientStatement] = {}
    server = ServerStatements(10)
    done = rewrite(frames(messages.parse("ok", "SELECT 1"), messages.parse("bad", "SELEC 1"),
                          messages.parse("after", "SELECT 2"), messages.sync()),
                   client, server, FORWARD, batch_start=True)
    (amend,) = done.entries
    assert isinstance(amend, Amend)
    syntax = messages.error_response("42601", 'syntax error at or near "SELEC"')
    out = _reply(amend, messages.parse_complete(), syntax, Z_IDLE)
    assert out == messages.parse_complete() + syntax + Z_IDLE
    assert list(client) == ["ok"]


@pytest.mark.parametrize(("error", "lost"), [
    (messages.error_response("0A000", "cached plan must not change result type"), True),
    (messages.error_response("26000", f'prepared statement "{PREFIX}3" does not exist'), True),
    (messages.error_response("26000", f'prepared statement "{MISSING}" does not exist'), False),
    (messages.error_response("42601", "syntax error"), False),
])
def test_statements_lost(error: bytes, lost: bool) -> None:
    assert statements.statements_lost(error[5:]) is lost


def test_parse_of_a_shared_statement_is_answered_by_the_proxy_unless_described() -> None:
    server = ServerStatements(10)
    shared = server.add(SELECT).name
    client: dict[str, ClientStatement] = {}
    done = rewrite(frames(messages.parse("a", "SELECT * FROM t"), messages.sync()),
                   client, server, FORWARD, batch_start=True)
    assert tags(done.data) == "S"
    assert isinstance(done.entries[0], Emit) and done.entries[1] is FORWARD
    # A client that describes what it prepares gets a fresh server statement.
    done = rewrite(frames(messages.parse("b", "SELECT * FROM t"), messages.describe(b"S", "b"),
                          messages.flush()),
                   client, server, FORWARD, batch_start=True)
    assert tags(done.data) == "PDH"
    assert server.by_key[SELECT].name != shared and shared in server.orphans
    assert done.carry and isinstance(done.entries[0], Amend)


def test_parse_of_a_shared_statement_in_an_aborted_transaction_is_refused() -> None:
    server = ServerStatements(10)
    server.add(SELECT)
    client: dict[str, ClientStatement] = {}
    done = rewrite(frames(messages.parse("a", "SELECT * FROM t"), messages.sync()),
                   client, server, FORWARD, batch_start=True, aborted=True)
    assert names_in(done.data) == {MISSING} and client == {}
    (amend,) = done.entries
    assert isinstance(amend, Amend) and amend.error is not None
    assert error_body(amend.error)["C"] == "25P02"


def test_a_batch_left_open_keeps_one_entry_across_rewrites() -> None:
    # asyncpg: Parse + Describe + Flush, then (after the reply) Bind + Execute + Sync.
    client: dict[str, ClientStatement] = {}
    server = ServerStatements(10)
    first = rewrite(frames(messages.parse("s", "SELECT * FROM t"),
                           messages.describe(b"S", "s"), messages.flush()),
                    client, server, FORWARD, batch_start=True)
    (amend,) = first.entries
    assert isinstance(amend, Amend) and server.open is amend and first.carry
    rows = row_description(("a", 1234, 1, 23))
    for m in (messages.parse_complete(), PARAMS_NONE, rows):
        assert amend.message(m[0], m, m[5:]) == m
    assert client["s"].desc == description(PARAMS_NONE + rows)
    assert server.by_key[SELECT].desc == client["s"].desc
    second = rewrite(frames(messages.bind("", "s", []), messages.execute(), messages.sync()),
                     client, server, FORWARD, batch_start=False)
    assert second.entries == [] and server.open is None and not second.carry


def test_stale_description_gets_0A000_and_a_newer_one_a_fresh_statement() -> None:
    old = description(PARAMS_NONE + row_description(("secret", 1, 1, 23),
                                                     ("public", 1, 2, 23)))
    new = description(PARAMS_NONE + row_description(("public", 1, 2, 23),
                                                     ("extra", 1, 3, 23)))
    client = {"s": ClientStatement(SELECT)}
    client["s"].desc, client["s"].seen = old, 1
    server = ServerStatements(10)
    # Missing on this server: prepare and describe it first (the client waits).
    batch = frames(messages.bind("", "s", []), messages.execute(), messages.sync())
    keys = to_verify(batch, client, server)
    assert keys == [SELECT]
    data, made = verify_batch(server, keys, set())
    assert tags(data) == "PDS"
    verified(server, keys, made, [(ord("1"), b""), (ord("t"), PARAMS_NONE[5:]),
                    (ord("T"), row_description(("public", 1, 2, 23),
                                               ("extra", 1, 3, 23))[5:]),
                    (ord("Z"), b"I")])
    assert made[0].desc == new and to_verify(batch, client, server) == []
    done = rewrite(batch, client, server, FORWARD, batch_start=True)
    assert names_in(done.data) == {MISSING}
    (amend,) = done.entries
    assert isinstance(amend, Amend) and amend.error is not None
    assert error_body(amend.error) == {
        "S": "ERROR", "V": "ERROR", "C": "0A000",
        "M": "cached plan must not change result type", "F": "plancache.c",
        "R": "RevalidateCachedQuery"}
    # A client whose description is newer than the server statement's: prepare afresh.
    client["s"].desc, client["s"].seen = new, made[0].seen + 1
    made[0].desc = old
    assert to_verify(batch, client, server) == [SELECT]


def test_a_statement_that_no_longer_prepares_gets_postgresqls_error() -> None:
    client = {"s": ClientStatement(SELECT)}
    client["s"].desc, client["s"].seen = b"described", 1
    server = ServerStatements(10)
    batch = frames(messages.bind("", "s", []), messages.execute(), messages.sync())
    keys = to_verify(batch, client, server)
    _, made = verify_batch(server, keys, set())
    gone = messages.error_response("42P01", 'relation "t" does not exist')
    verified(server, keys, made, [(ord("E"), gone[5:]), (ord("Z"), b"I")])
    done = rewrite(batch, client, server, FORWARD, batch_start=True)
    assert names_in(done.data) == {MISSING}
    (amend,) = done.entries
    assert isinstance(amend, Amend) and amend.error == gone
    assert server.failed == {} and server.by_key == {}  # answered this batch only


def test_description_ignores_table_and_column_numbers() -> None:
    a = PARAMS_NONE + row_description(("x", 1, 1, 23))
    b = PARAMS_NONE + row_description(("x", 99, 7, 23))
    c = PARAMS_NONE + row_description(("x", 1, 1, 25))
    assert description(a) == description(b) != description(c)
    no_data = PARAMS_NONE + backend(b"n")
    assert description(no_data) == no_data


# ---- DEALLOCATE ----------------------------------------------------------------------------


def _deallocate(sql: str, client: dict[str, ClientStatement]) -> tuple[bytes, Amend]:
    done = rewrite(frames(messages.query(sql)), client, ServerStatements(10), FORWARD,
                   batch_start=True)
    (amend,) = done.entries
    assert isinstance(amend, Amend)
    return done.data, amend


def _reply(amend: Amend, *reply: bytes) -> bytes:
    return b"".join(amend.message(m[0], m, m[5:]) for m in reply)


@pytest.mark.parametrize(("sql", "name"), [
    ("DEALLOCATE s1", "s1"), ("deallocate PREPARE S1 ;", "s1"),
    ('DEALLOCATE "Mixed ""Q"""', 'Mixed "Q"'),
])
def test_deallocate_of_a_known_name_answers_one_command_complete(sql: str, name: str) -> None:
    client = {name: ClientStatement(SELECT), "other": ClientStatement(SELECT)}
    data, amend = _deallocate(sql, client)
    assert names_in(data) and not names_in(data) & {MISSING}
    out = _reply(amend, messages.command_complete("PREPARE"),
                 messages.command_complete("DEALLOCATE"), messages.ready_for_query(b"T"))
    assert out == messages.command_complete("DEALLOCATE") + messages.ready_for_query(b"T")
    assert list(client) == ["other"]


def test_deallocate_in_an_aborted_transaction_keeps_the_statement() -> None:
    client = {"s1": ClientStatement(SELECT)}
    _, amend = _deallocate("DEALLOCATE s1", client)
    aborted = messages.error_response("25P02", "current transaction is aborted")
    assert _reply(amend, aborted, messages.ready_for_query(b"E")) == (
        aborted + messages.ready_for_query(b"E"))
    assert "s1" in client


def test_deallocate_all_forgets_the_clients_statements_only() -> None:
    client = {"a": ClientStatement(SELECT), "b": ClientStatement(SELECT)}
    data, amend = _deallocate("DEALLOCATE ALL", client)
    assert b"DEALLOCATE ALL" not in data
    out = _reply(amend, messages.command_complete("PREPARE"),
                 messages.command_complete("DEALLOCATE"), Z_IDLE)
    assert out == messages.command_complete("DEALLOCATE ALL") + Z_IDLE
    assert client == {}


def test_deallocate_of_an_unknown_name_is_postgresqls_26000() -> None:
    data, amend = _deallocate(f"DEALLOCATE {PREFIX}1", {})
    assert data == messages.query(f"DEALLOCATE {MISSING}")
    server_error = messages.error_response(
        "26000", f'prepared statement "{MISSING}" does not exist')
    out = _reply(amend, server_error, Z_IDLE)
    assert error_body(out[:-len(Z_IDLE)])["M"] == (
        f'prepared statement "{PREFIX}1" does not exist')


def test_deallocate_inside_a_multi_statement_query_is_refused() -> None:
    data, amend = _deallocate("SELECT 1; DEALLOCATE s1", {"s1": ClientStatement(SELECT)})
    assert data == messages.query(f"DEALLOCATE {MISSING}")
    assert amend.error is not None and error_body(amend.error)["C"] == "0A000"
    done = rewrite(frames(messages.query("SELECT 'deallocate' AS deallocate")), {},
                   ServerStatements(10), FORWARD, batch_start=True)
    assert done.data == messages.query("SELECT 'deallocate' AS deallocate")
    assert done.entries == [FORWARD]


def test_deallocate_through_the_extended_protocol_uses_a_throwaway_statement() -> None:
    client = {"s1": ClientStatement(SELECT)}
    server = ServerStatements(10)
    done = _unnamed_then_bind("DEALLOCATE s1", "", client, server)
    assert tags(done.data) == "PPBES"
    assert len(names_in(done.data)) == 1  # the throwaway
    assert server.orphans == []  # deallocated by the stand-in itself
    (amend,) = done.entries
    assert isinstance(amend, Amend)
    out = _reply(amend, messages.parse_complete(), messages.parse_complete(), backend(b"2"),
                 messages.command_complete("DEALLOCATE"), Z_IDLE)
    assert tags(out) == "12CZ" and client == {}


def test_a_throwaway_left_by_an_error_is_closed_later() -> None:
    client = {"s1": ClientStatement(SELECT)}
    server = ServerStatements(10)
    done = rewrite(frames(messages.parse("", "DEALLOCATE s1"), messages.bind("", "", [b"x"]),
                          messages.execute(), messages.sync()),
                   client, server, FORWARD, batch_start=True)
    (throwaway,) = names_in(done.data)
    (amend,) = done.entries
    assert isinstance(amend, Amend)
    bind_error = messages.error_response("08P01", "bind message supplies 1 parameters")
    _reply(amend, messages.parse_complete(), messages.parse_complete(), bind_error, Z_IDLE)
    assert server.orphans == [throwaway] and list(client) == ["s1"]


@pytest.mark.parametrize("sql", ["/* c */ DEALLOCATE s1", ";DEALLOCATE s1"])
def test_deallocate_in_an_unnamed_parse_that_hides_it_is_refused(sql: str) -> None:
    done = _unnamed_then_bind(sql, "", {"s1": ClientStatement(SELECT)}, ServerStatements(10))
    assert names_in(done.data) == {MISSING}
    (amend,) = done.entries
    assert isinstance(amend, Amend) and amend.error is not None
    assert error_body(amend.error)["C"] == "0A000"


# ---- the reply, through a server connection ---------------------------------------------


class _Receiver(Receiver):
    def __init__(self) -> None:
        self.received = b""

    def forward_to_client(self, data: bytes) -> None:
        self.received += data

    def unsolicited(self, data: bytes) -> None:
        raise AssertionError(f"unsolicited {data!r}")

    def server_ready(self, server: Any) -> None:
        pass

    def server_error(self, body: bytes) -> None:
        pass

    def parameter_changed(self, name: str, value: str) -> None:
        pass

    def statements_cleared(self) -> None:
        pass


class _Transport:
    def write(self, data: bytes) -> None:
        pass


def _server() -> tuple[ServerConnection, _Receiver]:
    server = ServerConnection(DatabaseConfig(name="app"))
    # Rows are never read whole, not even in an amended reply: a tiny limit proves it.
    server.scanner = BackendScanner(FORWARD_TAGS, max_interesting_size=100)
    server.state = ServerState.ACTIVE
    server.transport = _Transport()  # type: ignore[assignment]
    receiver = _Receiver()
    server.receiver = receiver
    return server, receiver


@pytest.mark.parametrize("chunk", [None, 1, 3, 7, 64])
def test_amended_reply_whole_and_byte_at_a_time(chunk: int | None) -> None:
    server, receiver = _server()
    client = {"s": ClientStatement(SELECT)}
    # A FORWARD batch in flight, then one preparing "s" in line, then an unknown name.
    server.send(b"", 1)
    done = rewrite(frames(messages.bind("", "s", []), messages.execute(), messages.sync(),
                          messages.bind("", "nope", []), messages.sync()),
                   client, server.statements, FORWARD, batch_start=True)
    server.send_entries(done.data, done.entries, False)  # type: ignore[arg-type]
    big = b"x" * 300
    first = (backend(b"D", b"\x00\x01" + len(big).to_bytes(4, "big") + big)
             + messages.command_complete("SELECT 1"))
    reply = (first + Z_IDLE
             + messages.parse_complete() + backend(b"2") + first + Z_IDLE
             + messages.error_response("26000", f'prepared statement "{MISSING}" does not '
                                       "exist") + Z_IDLE)
    step = chunk or len(reply)
    for i in range(0, len(reply), step):
        server.data_received(reply[i:i + step])
    expected = (first + Z_IDLE + backend(b"2") + first + Z_IDLE
                + messages.error_response("26000", 'prepared statement "nope" does not exist')
                + Z_IDLE)
    assert receiver.received == expected
    assert not server.pending
    assert server.scanner.interesting is FORWARD_TAGS
