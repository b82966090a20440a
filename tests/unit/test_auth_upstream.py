"""The proxy authenticating to PostgreSQL: fed Authentication requests, checked byte for byte."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct

import pytest
import scramp

from proxy.auth.errors import UpstreamAuthError
from proxy.auth.upstream import UpstreamAuthenticator, md5_password
from proxy.config.scram_verifier import make_scram_verifier, parse_scram_verifier

USER = "app_user"
PASSWORD = "pa55 wörd"


def split_password_message(message: bytes) -> bytes:
    """Check the 'p' framing and return the body."""
    assert message[:1] == b"p"
    (length,) = struct.unpack("!i", message[1:5])
    assert length == len(message) - 1
    return message[5:]


def split_sasl_initial_response(message: bytes) -> tuple[str, str]:
    body = split_password_message(message)
    mechanism, _, rest = body.partition(b"\0")
    (length,) = struct.unpack("!i", rest[:4])
    data = rest[4:]
    assert length == len(data)
    return mechanism.decode(), data.decode()


# --------------------------------------------------------------------- trust, cleartext, md5


def test_trust_needs_no_reply() -> None:
    auth = UpstreamAuthenticator(USER, None)
    assert auth.respond(0, b"") is None
    assert auth.authenticated


def test_cleartext_password_message() -> None:
    auth = UpstreamAuthenticator(USER, PASSWORD)
    message = auth.respond(3, b"")
    assert message == b"p" + struct.pack("!i", 4 + len(PASSWORD.encode()) + 1) + (
        PASSWORD.encode() + b"\0"
    )
    assert auth.respond(0, b"") is None and auth.authenticated


def test_md5_password_matches_an_independent_computation() -> None:
    # md5("postgres" + "postgres") is the well-known pg_authid entry for postgres/postgres.
    assert hashlib.md5(b"postgrespostgres").hexdigest() == "3175bce1d3201d16594cebf9d7eb3f9d"
    salt = bytes([0x01, 0x02, 0x03, 0x04])
    expected = "md5" + hashlib.md5(b"3175bce1d3201d16594cebf9d7eb3f9d" + salt).hexdigest()
    assert md5_password("postgres", "postgres", salt) == expected

    auth = UpstreamAuthenticator("postgres", "postgres")
    body = split_password_message(auth.respond(5, salt) or b"")
    assert body == expected.encode() + b"\0"
    assert len(body) == 3 + 32 + 1


def test_md5_with_a_malformed_salt_is_a_protocol_error() -> None:
    with pytest.raises(UpstreamAuthError) as info:
        UpstreamAuthenticator(USER, PASSWORD).respond(5, b"\1\2\3")
    assert info.value.reason == "protocol"


@pytest.mark.parametrize(("code", "payload"), [(3, b""), (5, b"salt"), (10, b"SCRAM-SHA-256\0\0")])
def test_password_required_but_not_configured(code: int, payload: bytes) -> None:
    with pytest.raises(UpstreamAuthError, match="no password is configured") as info:
        UpstreamAuthenticator(USER, None).respond(code, payload)
    assert info.value.reason == "password_missing"


@pytest.mark.parametrize(("code", "name"), [(2, "Kerberos"), (7, "GSSAPI"), (9, "SSPI")])
def test_unsupported_method_is_refused(code: int, name: str) -> None:
    with pytest.raises(UpstreamAuthError, match=name) as info:
        UpstreamAuthenticator(USER, PASSWORD).respond(code, b"")
    assert info.value.reason == "unsupported_method"


def test_unknown_method_is_refused() -> None:
    with pytest.raises(UpstreamAuthError) as info:
        UpstreamAuthenticator(USER, PASSWORD).respond(99, b"")
    assert info.value.reason == "unsupported_method"


def test_password_never_shows_in_repr_or_errors() -> None:
    auth = UpstreamAuthenticator(USER, PASSWORD)
    assert PASSWORD not in repr(auth)
    with pytest.raises(UpstreamAuthError) as info:
        auth.respond(7, b"")
    assert PASSWORD not in str(info.value)


# --------------------------------------------------------------------- SCRAM-SHA-256


def scram_server(password: str = PASSWORD) -> scramp.ScramServer:
    secret = parse_scram_verifier(make_scram_verifier(password))
    return scramp.ScramMechanism("SCRAM-SHA-256").make_server(lambda _username: secret)


def scram_until_final(
    auth: UpstreamAuthenticator, server: scramp.ScramServer
) -> str:
    """Run SASL start and continue; return the server-final-message."""
    mechanism, client_first = split_sasl_initial_response(
        auth.respond(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0") or b""
    )
    # Channel binding is not supported, so never -PLUS, and the gs2 flag says "n".
    assert mechanism == "SCRAM-SHA-256"
    assert client_first.startswith("n,,")
    server.set_client_first(client_first)
    client_final = split_password_message(
        auth.respond(11, server.get_server_first().encode()) or b""
    )
    server.set_client_final(client_final.decode())
    return str(server.get_server_final())


def test_scram_round_trip_against_a_scramp_server() -> None:
    auth = UpstreamAuthenticator(USER, PASSWORD)
    server_final = scram_until_final(auth, scram_server())
    assert auth.respond(12, server_final.encode()) is None
    assert not auth.authenticated
    assert auth.respond(0, b"") is None
    assert auth.authenticated


def test_scram_with_the_wrong_password_fails_at_the_server() -> None:
    auth = UpstreamAuthenticator(USER, "not the password")
    with pytest.raises(scramp.ScramException):
        scram_until_final(auth, scram_server())


def test_scram_server_signature_mismatch_is_refused() -> None:
    auth = UpstreamAuthenticator(USER, PASSWORD)
    server_final = scram_until_final(auth, scram_server())
    forged = "v=" + base64.b64encode(b"\0" * 32).decode()
    assert forged != server_final
    with pytest.raises(UpstreamAuthError, match="signature") as info:
        auth.respond(12, forged.encode())
    assert info.value.reason == "server_signature"
    # After an error the authenticator refuses further work, even an AuthenticationOk.
    with pytest.raises(UpstreamAuthError) as info:
        auth.respond(0, b"")
    assert info.value.reason == "protocol"
    assert not auth.authenticated


def test_authentication_ok_before_scram_final_is_refused() -> None:
    # A server that skips SASLFinal never proves it knows the password.
    auth = UpstreamAuthenticator(USER, PASSWORD)
    auth.respond(10, b"SCRAM-SHA-256\0\0")
    with pytest.raises(UpstreamAuthError, match="before completing SCRAM") as info:
        auth.respond(0, b"")
    assert info.value.reason == "protocol"


def test_server_without_scram_sha_256_is_refused() -> None:
    with pytest.raises(UpstreamAuthError, match="SCRAM-SHA-256-PLUS") as info:
        UpstreamAuthenticator(USER, PASSWORD).respond(10, b"SCRAM-SHA-256-PLUS\0\0")
    assert info.value.reason == "no_scram"


@pytest.mark.parametrize(
    "steps",
    [
        [(11, b"r=abc,s=c2FsdA==,i=4096")],  # continue before start
        [(12, b"v=abc")],  # final before start
        [(10, b"SCRAM-SHA-256\0\0"), (12, b"v=abc")],  # final before continue
        [(10, b"SCRAM-SHA-256\0\0"), (10, b"SCRAM-SHA-256\0\0")],  # start twice
        [(10, b"SCRAM-SHA-256\0\0"), (11, b"r=not-our-nonce,s=c2FsdA==,i=4096")],
        [(10, b"SCRAM-SHA-256\0\0"), (11, b"\xff\xfe")],
    ],
)
def test_out_of_order_or_malformed_sasl_is_a_protocol_error(
    steps: list[tuple[int, bytes]]
) -> None:
    auth = UpstreamAuthenticator(USER, PASSWORD)
    *ok, (code, payload) = steps
    for step in ok:
        auth.respond(*step)
    with pytest.raises(UpstreamAuthError) as info:
        auth.respond(code, payload)
    assert info.value.reason == "protocol"


# --------------------------------------------------------------------- SCRAM secrets


def test_scram_verifier_matches_an_independent_computation() -> None:
    salt = bytes(range(16))
    salted = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), salt, 4096)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    expected = (
        f"SCRAM-SHA-256$4096:{b64(salt).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )
    assert make_scram_verifier(PASSWORD, salt=salt) == expected
    assert parse_scram_verifier(expected) == (salt, stored_key, server_key, 4096)


def test_scram_verifier_has_postgresql_format_and_random_salt() -> None:
    first, second = make_scram_verifier(PASSWORD, 8192), make_scram_verifier(PASSWORD, 8192)
    pattern = r"SCRAM-SHA-256\$8192:[A-Za-z0-9+/=]{24}\$[A-Za-z0-9+/=]{44}:[A-Za-z0-9+/=]{44}"
    assert re.fullmatch(pattern, first)
    assert first != second


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "md5abcdef",
        "SCRAM-SHA-256$",
        "SCRAM-SHA-256$4096:c2FsdA==",
        "SCRAM-SHA-256$x:c2FsdA==$" + "A" * 44 + ":" + "A" * 44,
        "SCRAM-SHA-256$0:c2FsdA==$" + "A" * 44 + ":" + "A" * 44,
        "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 40 + ":" + "A" * 44,
        "SCRAM-SHA-256$4096:$" + "A" * 44 + ":" + "A" * 44,
        "SCRAM-SHA-256$4096:c2F!dA==$" + "A" * 44 + ":" + "A" * 44,
    ],
)
def test_malformed_scram_verifier_is_refused_without_echo(secret: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_scram_verifier(secret)
    if secret:
        assert secret not in str(info.value)


@pytest.mark.parametrize(("password", "iterations"), [("pw", 1000), ("bad\u0007char", 4096)])
def test_make_scram_verifier_refuses_weak_or_unpreparable_input(
    password: str, iterations: int
) -> None:
    with pytest.raises(ValueError):
        make_scram_verifier(password, iterations)
