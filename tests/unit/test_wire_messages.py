"""Encoders produce the documented bytes; decoders invert them and reject anything else
with ProtocolViolation (never another exception)."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.wire import authentication as auth
from proxy.wire import messages as m
from proxy.wire import tags
from proxy.wire.errors import ProtocolViolation
from proxy.wire.framing import FrontendFramer
from proxy.wire.tags import AuthCode, BackendTag, FrontendTag, TxStatus

FAST = settings(max_examples=60, deadline=None)
text = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=30)


def split(wire: bytes) -> tuple[int, bytes]:
    """Check the header of an encoded message and return (tag, body)."""
    (length,) = struct.unpack_from("!i", wire, 1)
    assert length == len(wire) - 1
    return wire[0], wire[5:]


# ---- hand-written bytes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (m.ready_for_query(b"I"), b"Z\x00\x00\x00\x05I"),
        (m.ready_for_query(b"E"), b"Z\x00\x00\x00\x05E"),
        (auth.authentication_ok(), b"R\x00\x00\x00\x08\x00\x00\x00\x00"),
        (auth.authentication_cleartext_password(), b"R\x00\x00\x00\x08\x00\x00\x00\x03"),
        (
            auth.authentication_sasl(["SCRAM-SHA-256"]),
            b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00",
        ),
        (m.parameter_status("a", "b"), b"S\x00\x00\x00\x08a\x00b\x00"),
        (
            m.backend_key_data(1, b"\x00\x00\x00\x02"),
            b"K\x00\x00\x00\x0c\x00\x00\x00\x01\x00\x00\x00\x02",
        ),
        (m.command_complete("SELECT 1"), b"C\x00\x00\x00\x0dSELECT 1\x00"),
        (m.empty_query_response(), b"I\x00\x00\x00\x04"),
        (m.parse_complete(), b"1\x00\x00\x00\x04"),
        (m.close_complete(), b"3\x00\x00\x00\x04"),
        (
            m.error_response("28P01", "no"),
            b"E\x00\x00\x00\x1eSERROR\x00VERROR\x00C28P01\x00Mno\x00\x00",
        ),
        (
            m.negotiate_protocol_version(0, ["_pq_.x"]),
            b"v\x00\x00\x00\x13\x00\x03\x00\x00\x00\x00\x00\x01_pq_.x\x00",
        ),
        (m.data_row(["ab", None]), b"D\x00\x00\x00\x10\x00\x02\x00\x00\x00\x02ab\xff\xff\xff\xff"),
        (
            m.row_description(["id"]),
            b"T\x00\x00\x00\x1b\x00\x01id\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x19"
            b"\xff\xff\xff\xff\xff\xff\x00\x00",
        ),
        (m.query("SELECT 1"), b"Q\x00\x00\x00\x0dSELECT 1\x00"),
        (m.sync(), b"S\x00\x00\x00\x04"),
        (m.flush(), b"H\x00\x00\x00\x04"),
        (m.terminate(), b"X\x00\x00\x00\x04"),
        (m.execute(), b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"),
        (m.execute("p", 10), b"E\x00\x00\x00\x0ap\x00\x00\x00\x00\x0a"),
        (m.describe(b"S", "s1"), b"D\x00\x00\x00\x08Ss1\x00"),
        (m.close(b"P", ""), b"C\x00\x00\x00\x06P\x00"),
        (
            m.parse("", "SELECT $1", [25]),
            b"P\x00\x00\x00\x15\x00SELECT $1\x00\x00\x01\x00\x00\x00\x19",
        ),
        (
            m.bind("", "s", [b"ab", None], [0], [1, 1]),
            b"B\x00\x00\x00\x1d\x00s\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x02ab"
            b"\xff\xff\xff\xff\x00\x02\x00\x01\x00\x01",
        ),
        (auth.password_message(b"pw\0"), b"p\x00\x00\x00\x07pw\x00"),
        (auth.sasl_initial_response("M", b"xy"), b"p\x00\x00\x00\x0cM\x00\x00\x00\x00\x02xy"),
        (auth.sasl_response(b"c=biws"), b"p\x00\x00\x00\x0ac=biws"),
        (m.frame(FrontendTag.QUERY, b";\0"), b"Q\x00\x00\x00\x06;\x00"),
    ],
)
def test_encoder_bytes(wire: bytes, expected: bytes) -> None:
    assert wire == expected
    split(wire)


def test_error_response_with_every_field() -> None:
    tag, body = split(
        m.error_response("42501", "forbidden", severity="FATAL", detail="why", hint="what to do")
    )
    assert tag == BackendTag.ERROR_RESPONSE
    assert m.decode_error_fields(body) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "42501",
        "M": "forbidden",
        "D": "why",
        "H": "what to do",
    }


def test_notice_response_defaults_to_notice_severity() -> None:
    tag, body = split(m.notice_response("01000", "hello"))
    assert tag == BackendTag.NOTICE_RESPONSE
    assert m.decode_error_fields(body)["V"] == "NOTICE"


def test_error_response_never_fails_on_nul_in_text() -> None:
    _, body = split(m.error_response("28P01", "bad \0 token", detail="\0"))
    assert m.decode_error_fields(body)["M"] == "bad \ufffd token"


@pytest.mark.parametrize(
    "encode",
    [
        lambda: m.query("SELECT 1\0; DROP TABLE t"),
        lambda: m.parse("s\0", "SELECT 1"),
        lambda: m.bind("", "x\0", []),
        lambda: m.parameter_status("a", "b\0"),
        lambda: m.command_complete("\0"),
        lambda: m.describe(b"X", "s"),
        lambda: m.close(b"", "s"),
        lambda: m.ready_for_query(b"X"),
        lambda: m.backend_key_data(1, b"abc"),
        lambda: m.cancel_request(1, b"k" * 257),
        lambda: m.error_response("285", "short sqlstate"),
        lambda: auth.authentication_sasl(["A\0B"]),
        lambda: m.negotiate_protocol_version(0x10000, []),
        lambda: m.startup_message({}, protocol_minor=-1),
    ],
)
def test_encoders_refuse_values_that_would_corrupt_framing(encode: Callable[[], bytes]) -> None:
    with pytest.raises(ValueError):
        encode()


def test_tx_status_values_are_ready_for_query_bytes() -> None:
    _, body = split(m.ready_for_query(b"T"))
    assert TxStatus(m.decode_ready_for_query(body)) is TxStatus.IN_TRANSACTION
    assert {s.value for s in TxStatus} == {b"I", b"T", b"E"}


def test_tags_have_the_documented_bytes() -> None:
    assert FrontendTag.DESCRIBE == ord("D") and BackendTag.DATA_ROW == ord("D")
    assert FrontendTag.PASSWORD == ord("p") and BackendTag.READY_FOR_QUERY == ord("Z")
    assert int(AuthCode.SASL_FINAL) == 12


@pytest.mark.parametrize(("enum", "prefix"), [(FrontendTag, "F_"), (BackendTag, "B_")])
def test_each_tag_is_also_a_plain_int_constant_named_for_its_direction(
        enum: type[FrontendTag] | type[BackendTag], prefix: str) -> None:
    constants = {name[2:]: value for name, value in vars(tags).items()
                 if name.startswith(prefix) and name.isupper()}
    assert constants == {tag.name: tag.value for tag in enum}
    assert all(type(value) is int for value in constants.values())  # not enum members


def test_framer_reads_what_encoders_write() -> None:
    wires = [
        m.query("SELECT 1"),
        m.parse("", "SELECT 1"),
        m.bind("", "", []),
        m.execute(),
        m.sync(),
    ]
    framer = FrontendFramer()
    framer.feed(b"".join(wires))
    assert [framer.next_message() for _ in wires] == [split(w) for w in wires]


# ---- round trips ----------------------------------------------------------------------


@FAST
@given(sql=text)
def test_query_round_trip(sql: str) -> None:
    tag, body = split(m.query(sql))
    assert tag == FrontendTag.QUERY and m.decode_query(body) == sql


@FAST
@given(name=text, sql=text, oids=st.lists(st.integers(0, 2**32 - 1), max_size=5))
def test_parse_round_trip(name: str, sql: str, oids: list[int]) -> None:
    tag, body = split(m.parse(name, sql, oids))
    assert tag == FrontendTag.PARSE and m.decode_parse(body) == (name, sql, oids)


@FAST
@given(
    portal=text,
    statement=text,
    params=st.lists(st.one_of(st.none(), st.binary(max_size=10)), max_size=4),
)
def test_bind_header_round_trip(portal: str, statement: str, params: list[bytes | None]) -> None:
    tag, body = split(m.bind(portal, statement, params))
    assert tag == FrontendTag.BIND and m.decode_bind_header(body) == (portal, statement)


@FAST
@given(kind=st.sampled_from([b"S", b"P"]), name=text)
def test_close_and_describe_round_trip(kind: bytes, name: str) -> None:
    for encode, want in ((m.close, FrontendTag.CLOSE), (m.describe, FrontendTag.DESCRIBE)):
        tag, body = split(encode(kind, name))
        assert tag == want and m.decode_close_or_describe(body) == (kind, name)


@FAST
@given(name=text, value=text)
def test_parameter_status_round_trip(name: str, value: str) -> None:
    _, body = split(m.parameter_status(name, value))
    assert m.decode_parameter_status(body) == (name, value)


@FAST
@given(values=st.lists(st.none() | text, max_size=8))
def test_data_row_round_trip(values: list[str | None]) -> None:
    _, body = split(m.data_row(values))
    assert m.decode_data_row(body) == [None if v is None else v.encode() for v in values]


@pytest.mark.parametrize("body", [
    b"",                                     # no column count
    b"\x00\x01\x00\x00",                     # count 1, length cut
    b"\x00\x01\x00\x00\x00\x05ab",             # column shorter than its length
    b"\x00\x01\xff\xff\xff\xfe",               # negative length other than -1
    b"\x00\x00\x00",                         # bytes after the last column
])
def test_data_row_rejects_malformed_bodies(body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        m.decode_data_row(body)


@FAST
@given(tag_text=text)
def test_command_complete_round_trip(tag_text: str) -> None:
    _, body = split(m.command_complete(tag_text))
    assert m.decode_command_complete(body) == tag_text


@FAST
@given(
    sqlstate=st.text("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=5, max_size=5),
    message=text,
    detail=st.none() | text,
    hint=st.none() | text,
)
def test_error_fields_round_trip(
    sqlstate: str, message: str, detail: str | None, hint: str | None
) -> None:
    _, body = split(m.error_response(sqlstate, message, detail=detail, hint=hint))
    fields = m.decode_error_fields(body)
    assert (fields["C"], fields["M"], fields.get("D"), fields.get("H")) == (
        sqlstate,
        message,
        detail,
        hint,
    )


@FAST
@given(pid=st.integers(0, 2**32 - 1), key=st.binary(min_size=4, max_size=256))
def test_backend_key_data_round_trip(pid: int, key: bytes) -> None:
    _, body = split(m.backend_key_data(pid, key))
    assert m.decode_backend_key_data(body) == (pid, key)


@FAST
@given(mechs=st.lists(text.filter(bool), max_size=3), data=st.binary(max_size=40))
def test_authentication_round_trips(mechs: list[str], data: bytes) -> None:
    code, payload = auth.decode_authentication(split(auth.authentication_sasl(mechs))[1])
    assert code == AuthCode.SASL and auth.decode_sasl_mechanisms(payload) == mechs
    assert auth.decode_authentication(split(auth.authentication_sasl_continue(data))[1]) == (
        AuthCode.SASL_CONTINUE,
        data,
    )
    assert auth.decode_authentication(split(auth.authentication_sasl_final(data))[1]) == (
        AuthCode.SASL_FINAL,
        data,
    )
    assert auth.decode_authentication(split(auth.authentication_ok())[1]) == (AuthCode.OK, b"")


@FAST
@given(mechanism=text, data=st.binary(max_size=40))
def test_sasl_initial_response_round_trip(mechanism: str, data: bytes) -> None:
    _, body = split(auth.sasl_initial_response(mechanism, data))
    assert auth.decode_sasl_initial_response(body) == (mechanism, data)


def test_sasl_initial_response_without_data() -> None:
    assert auth.decode_sasl_initial_response(b"M\0\xff\xff\xff\xff") == ("M", b"")


@FAST
@given(password=st.binary(max_size=40).filter(lambda b: b"\0" not in b))
def test_password_round_trip(password: bytes) -> None:
    _, body = split(auth.password_message(password + b"\0"))
    assert auth.decode_password(body) == password


@FAST
@given(minor=st.integers(0, 0xFFFF), options=st.lists(text, max_size=4))
def test_negotiate_protocol_version_round_trip(minor: int, options: list[str]) -> None:
    _, body = split(m.negotiate_protocol_version(minor, options))
    assert m.decode_negotiate_protocol_version(body) == (minor, options)


@pytest.mark.parametrize("status", [b"I", b"T", b"E"])
def test_ready_for_query_round_trip(status: bytes) -> None:
    assert m.decode_ready_for_query(split(m.ready_for_query(status))[1]) == status


# ---- malformed input ----------------------------------------------------------------

MALFORMED: list[tuple[Callable[[bytes], object], bytes]] = [
    (m.decode_query, b""),
    (m.decode_query, b"SELECT 1"),  # missing NUL
    (m.decode_query, b"SELECT 1\0; DROP TABLE t\0"),  # text smuggled after the NUL
    (m.decode_query, b"\xff\xfe\0"),  # bad UTF-8
    (m.decode_command_complete, b"SELECT 1"),
    (m.decode_parse, b"s\0SELECT 1\0"),  # no parameter count
    (m.decode_parse, b"s\0SELECT 1\0\0\x02\0\0\0\x19"),  # count says 2, one oid
    (m.decode_parse, b"s\0SELECT 1\0\0\0junk"),
    (m.decode_parse, b"s\0SELECT 1"),
    (m.decode_parameter_status, b"a\0"),
    (m.decode_parameter_status, b"a\0b\0c"),
    (m.decode_backend_key_data, b"\0\0\0\x01abc"),  # key too short
    (m.decode_backend_key_data, b"\0\0\0\x01" + b"k" * 257),
    (auth.decode_authentication, b"\0\0\0"),
    (auth.decode_sasl_mechanisms, b"SCRAM-SHA-256\0"),  # missing list terminator
    (auth.decode_sasl_mechanisms, b"A\0\0B\0"),
    (auth.decode_password, b""),
    (auth.decode_password, b"pw"),
    (auth.decode_password, b"p\0w\0"),
    (auth.decode_sasl_initial_response, b"M\0\0\0"),
    (auth.decode_sasl_initial_response, b"M\0\0\0\0\x05abc"),
    (auth.decode_sasl_initial_response, b"M\0\xff\xff\xff\xfeab"),
    (auth.decode_sasl_initial_response, b"M\0\xff\xff\xff\xffab"),
    (m.decode_ready_for_query, b""),
    (m.decode_ready_for_query, b"X"),
    (m.decode_ready_for_query, b"II"),
    (m.decode_negotiate_protocol_version, b"\0\x03\0\0\0\0"),
    (m.decode_negotiate_protocol_version, b"\0\x04\0\0\0\0\0\0"),  # major 4
    (m.decode_negotiate_protocol_version, b"\0\x03\0\0\0\0\0\x02a\0"),
    (m.decode_negotiate_protocol_version, b"\0\x03\0\0\x7f\xff\xff\xffa\0"),
    (m.decode_negotiate_protocol_version, b"\0\x03\0\0\0\0\0\0junk"),
    (m.decode_error_fields, b""),
    (m.decode_error_fields, b"SERROR\0"),
    (m.decode_error_fields, b"SERROR"),
    (m.decode_error_fields, b"SERROR\0\0junk"),
    (m.decode_bind_header, b"portal"),
    (m.decode_bind_header, b"\0stmt"),
    (m.decode_close_or_describe, b""),
    (m.decode_close_or_describe, b"X\0"),
    (m.decode_close_or_describe, b"Sname"),
    (m.decode_close_or_describe, b"Sname\0junk"),
]


@pytest.mark.parametrize(("decode", "body"), MALFORMED)
def test_malformed_bodies_are_protocol_violations(
    decode: Callable[[bytes], object], body: bytes
) -> None:
    with pytest.raises(ProtocolViolation):
        decode(body)


def test_error_fields_tolerate_non_utf8_text() -> None:
    # The server writes messages in the client's encoding; the SQLSTATE must survive.
    fields = m.decode_error_fields(b"C22021\0Mcaf\xe9\0\0")
    assert fields["C"] == "22021" and fields["M"] == "caf\ufffd"


DECODERS: list[Callable[[bytes], object]] = [
    m.decode_error_fields,
    m.decode_parameter_status,
    m.decode_backend_key_data,
    auth.decode_authentication,
    auth.decode_sasl_mechanisms,
    auth.decode_password,
    auth.decode_sasl_initial_response,
    m.decode_query,
    m.decode_parse,
    m.decode_command_complete,
    m.decode_ready_for_query,
    m.decode_negotiate_protocol_version,
    m.decode_bind_header,
    m.decode_close_or_describe,
]


@settings(max_examples=200, deadline=None)
@given(
    body=st.one_of(
        st.binary(max_size=40),
        # Mostly-structured junk reaches deeper branches than uniform random bytes.
        st.lists(
            st.sampled_from(
                [
                    b"\0",
                    b"\xff",
                    b"S",
                    b"a",
                    b"\0\x03\0\0",
                    b"\0\0\0\x01",
                    b"\xff\xff\xff\xff",
                    b"\xc3",
                ]
            ),
            max_size=12,
        ).map(b"".join),
    )
)
def test_random_bodies_raise_only_protocol_violation(body: bytes) -> None:
    for decode in DECODERS:
        try:
            decode(body)
        except ProtocolViolation:
            pass


def test_decode_bind_gives_formats_and_values() -> None:
    body = m.bind("p", "s", [b"acme", None, b""], [0, 1, 0])[5:]
    assert m.decode_bind(body) == ("p", "s", [0, 1, 0], [b"acme", None, b""])


@pytest.mark.parametrize("cut", [3, 6, 9, 14])
def test_decode_bind_refuses_truncated(cut: int) -> None:
    body = m.bind("", "s", [b"acme"], [0])[5:]
    with pytest.raises(ProtocolViolation):
        m.decode_bind(body[:cut])


def test_frame_is_tag_then_int32_length_then_body() -> None:
    assert m.frame(ord("Q"), b"SELECT 1\0") == b"Q\x00\x00\x00\x0dSELECT 1\0"
    assert m.frame(0, b"") == b"\x00\x00\x00\x00\x04"
    for tag in (-1, 256):
        with pytest.raises(ValueError):
            m.frame(tag, b"")
