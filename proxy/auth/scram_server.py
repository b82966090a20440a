"""Server side of SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL runs it.

Sans-I/O: :class:`ScramExchange` takes the client's messages as text and returns the
server's. Why not scramp's ``ScramServer``: libpq sends an empty SCRAM user name
(``n=,``) because PostgreSQL takes the user from the startup packet, and scramp refuses
an empty one. The keys come from a PostgreSQL-format verifier
(:func:`proxy.config.scram_verifier.parse_scram_verifier`), so the password is never stored.

An unknown user gets a mock exchange (a stable fake salt, a key nothing matches), as
PostgreSQL does, so the answer does not tell which user names exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

MECHANISM = "SCRAM-SHA-256"
_MOCK_KEY = secrets.token_bytes(32)  # per process: mock salts are stable, never guessable


class ScramFailed(Exception):
    """The exchange failed: malformed message, wrong proof or unsupported option."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _attributes(text: str, what: str) -> list[tuple[str, str]]:
    out = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ScramFailed(f"malformed SCRAM {what} message")
        out.append((part[0], part[2:]))
    return out


def mock_secret(user: str) -> tuple[bytes, bytes, bytes, int]:
    """A verifier-shaped secret for a user that does not exist: nothing can match it."""
    salt = hmac.new(_MOCK_KEY, user.encode(), hashlib.sha256).digest()[:16]
    return salt, secrets.token_bytes(32), secrets.token_bytes(32), 4096


class ScramExchange:
    """One SCRAM-SHA-256 authentication: client-first → server-first → client-final."""

    def __init__(self, secret: tuple[bytes, bytes, bytes, int], *, nonce: str | None = None
                 ) -> None:
        self._salt, self._stored_key, self._server_key, self._iterations = secret
        self._server_nonce = nonce or secrets.token_urlsafe(18)
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""

    def client_first(self, message: str) -> str:
        """Read the client-first message; return server-first."""
        cbflag, sep, rest = message.partition(",")
        authzid, sep2, bare = rest.partition(",")
        if not sep or not sep2:
            raise ScramFailed("malformed SCRAM client-first message")
        if cbflag.startswith("p="):
            raise ScramFailed("channel binding was not offered")
        if cbflag not in ("n", "y"):
            raise ScramFailed("malformed SCRAM client-first message")
        if authzid:
            raise ScramFailed("SCRAM authorization identities are not supported")
        attrs = _attributes(bare, "client-first")
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r" or not attrs[1][1]:
            raise ScramFailed("malformed SCRAM client-first message")
        if any(key == "m" for key, _ in attrs[2:]):
            raise ScramFailed("mandatory SCRAM extensions are not supported")
        client_nonce = attrs[1][1]
        if not client_nonce.isprintable() or not client_nonce.isascii():
            raise ScramFailed("malformed SCRAM client nonce")
        self._gs2_header = f"{cbflag},{authzid},"
        self._client_first_bare = bare
        self._nonce = client_nonce + self._server_nonce
        self._server_first = f"r={self._nonce},s={_b64(self._salt)},i={self._iterations}"
        return self._server_first

    def client_final(self, message: str) -> str:
        """Check the client's proof; return server-final (raises :class:`ScramFailed`)."""
        if not self._server_first:
            raise ScramFailed("SCRAM client-final before client-first")
        without_proof, sep, proof_text = message.rpartition(",p=")
        if not sep:
            raise ScramFailed("malformed SCRAM client-final message")
        attrs = _attributes(without_proof, "client-final")
        if len(attrs) < 2 or attrs[0][0] != "c" or attrs[1][0] != "r":
            raise ScramFailed("malformed SCRAM client-final message")
        if attrs[0][1] != _b64(self._gs2_header.encode()):
            raise ScramFailed("SCRAM channel binding does not match")
        if not hmac.compare_digest(attrs[1][1].encode(), self._nonce.encode()):
            raise ScramFailed("SCRAM nonce does not match")
        try:
            proof = base64.b64decode(proof_text, validate=True)
        except ValueError:
            raise ScramFailed("malformed SCRAM proof") from None
        if len(proof) != len(self._stored_key):
            raise ScramFailed("malformed SCRAM proof")
        auth_message = ",".join((self._client_first_bare, self._server_first,
                                 without_proof)).encode()
        signature = hmac.new(self._stored_key, auth_message, hashlib.sha256).digest()
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self._stored_key):
            raise ScramFailed("wrong password")
        server_signature = hmac.new(self._server_key, auth_message, hashlib.sha256).digest()
        return f"v={_b64(server_signature)}"
