"""Sans-I/O client side of PostgreSQL authentication, for the proxy's server connections.

The session layer feeds each Authentication ('R') request it reads from PostgreSQL to
:meth:`UpstreamAuthenticator.respond` and writes back whatever bytes it returns. No
sockets, no asyncio: tested by feeding requests.
"""

from __future__ import annotations

import hashlib
import struct
from enum import Enum

import scramp

from proxy.auth.errors import UpstreamAuthError

# Authentication request codes (the Int32 after the 'R' message's length).
AUTH_OK = 0
AUTH_KERBEROS_V5 = 2
AUTH_CLEARTEXT_PASSWORD = 3
AUTH_MD5_PASSWORD = 5
AUTH_GSS = 7
AUTH_GSS_CONTINUE = 8
AUTH_SSPI = 9
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

SCRAM_SHA_256 = "SCRAM-SHA-256"

_UNSUPPORTED = {
    AUTH_KERBEROS_V5: "Kerberos V5",
    AUTH_GSS: "GSSAPI",
    AUTH_GSS_CONTINUE: "GSSAPI",
    AUTH_SSPI: "SSPI",
}


class _State(Enum):
    STARTED = "started"            # nothing exchanged yet
    SASL_SENT_FIRST = "sasl_first"  # SASLInitialResponse sent, waiting for SASLContinue
    SASL_SENT_FINAL = "sasl_final"  # SASLResponse sent, waiting for SASLFinal
    SASL_VERIFIED = "sasl_verified"  # server proved it knows the password
    AUTHENTICATED = "authenticated"
    FAILED = "failed"


def _password_message(body: bytes) -> bytes:
    """A frontend 'p' message (PasswordMessage, SASLInitialResponse or SASLResponse)."""
    return b"p" + struct.pack("!i", len(body) + 4) + body


def md5_password(user: str, password: str, salt: bytes) -> str:
    """PostgreSQL's md5 response: ``"md5" + md5hex(md5hex(password + user) + salt)``."""
    inner = hashlib.md5((password + user).encode("utf-8"), usedforsecurity=False).hexdigest()
    outer = hashlib.md5(inner.encode("ascii") + salt, usedforsecurity=False).hexdigest()
    return "md5" + outer


class UpstreamAuthenticator:
    """Answers PostgreSQL's authentication requests for one server connection.

    Supports trust, cleartext password, md5 and SCRAM-SHA-256 (without channel binding:
    the proxy never offers SCRAM-SHA-256-PLUS). With SCRAM the server must prove it
    knows the password before AuthenticationOk is accepted. After any error the object
    refuses further work.
    """

    def __init__(self, user: str, password: str | None) -> None:
        self.user = user
        self._password = password
        self._state = _State.STARTED
        self._scram: scramp.ScramClient | None = None

    def __repr__(self) -> str:
        # Never show the password.
        return f"<UpstreamAuthenticator user={self.user!r} state={self._state.value}>"

    @property
    def authenticated(self) -> bool:
        """True once AuthenticationOk was received (and accepted)."""
        return self._state is _State.AUTHENTICATED

    def respond(self, code: int, payload: bytes) -> bytes | None:
        """Answer one Authentication request.

        ``code`` is the request's Int32 code and ``payload`` the bytes after it.
        Returns the complete frontend message to send, or None when nothing is to be
        sent (AuthenticationOk, SASLFinal). Raises :class:`UpstreamAuthError`.
        """
        if self._state in (_State.FAILED, _State.AUTHENTICATED):
            raise UpstreamAuthError(
                f"unexpected authentication request {code} after authentication "
                f"{'failed' if self._state is _State.FAILED else 'completed'}",
                reason="protocol",
            )
        try:
            return self._respond(code, payload)
        except UpstreamAuthError:
            self._state = _State.FAILED
            self._scram = None
            raise

    def _respond(self, code: int, payload: bytes) -> bytes | None:
        state = self._state
        if code == AUTH_OK:
            if state in (_State.SASL_SENT_FIRST, _State.SASL_SENT_FINAL):
                # Without SASLFinal the server never proved it knows the password; an
                # impostor could otherwise accept any client proof.
                raise UpstreamAuthError(
                    "server sent AuthenticationOk before completing SCRAM", reason="protocol"
                )
            self._state = _State.AUTHENTICATED
            return None
        if code in _UNSUPPORTED:
            raise UpstreamAuthError(
                f"server asked for {_UNSUPPORTED[code]} authentication, which pgtenant "
                "does not support; use scram-sha-256 for the proxy's upstream role",
                reason="unsupported_method",
            )
        if state is not _State.STARTED and code in (
            AUTH_CLEARTEXT_PASSWORD, AUTH_MD5_PASSWORD, AUTH_SASL
        ):
            raise UpstreamAuthError(
                f"unexpected authentication request {code} in the middle of authentication",
                reason="protocol",
            )
        if code == AUTH_CLEARTEXT_PASSWORD:
            return _password_message(self._require_password("password").encode() + b"\0")
        if code == AUTH_MD5_PASSWORD:
            if len(payload) != 4:
                raise UpstreamAuthError("malformed AuthenticationMD5Password", reason="protocol")
            response = md5_password(self.user, self._require_password("md5"), payload)
            return _password_message(response.encode("ascii") + b"\0")
        if code == AUTH_SASL:
            return self._sasl_start(payload)
        if code == AUTH_SASL_CONTINUE:
            return self._sasl_continue(payload)
        if code == AUTH_SASL_FINAL:
            self._sasl_final(payload)
            return None
        raise UpstreamAuthError(
            f"server asked for unknown authentication method {code}",
            reason="unsupported_method",
        )

    def _require_password(self, method: str) -> str:
        if self._password is None:
            raise UpstreamAuthError(
                f"server requires {method} authentication for role {self.user!r} but no "
                "password is configured (password_env or password_file)",
                reason="password_missing",
            )
        return self._password

    def _sasl_start(self, payload: bytes) -> bytes:
        # The payload is a list of NUL-terminated mechanism names, ended by an empty one.
        mechanisms = [m.decode("utf-8", "replace") for m in payload.split(b"\0") if m]
        if SCRAM_SHA_256 not in mechanisms:
            raise UpstreamAuthError(
                f"server offers no SCRAM-SHA-256 (offered: {', '.join(mechanisms) or 'none'})",
                reason="no_scram",
            )
        password = self._require_password("SCRAM-SHA-256")
        try:
            # PostgreSQL ignores the SCRAM user name (the startup packet's counts), but
            # scramp needs a non-empty one; send the role.
            self._scram = scramp.ScramClient([SCRAM_SHA_256], self.user, password)
            client_first: str = self._scram.get_client_first()
        except scramp.ScramException:
            raise UpstreamAuthError(
                "cannot start SCRAM-SHA-256 (user name or password not valid for SASLprep)",
                reason="protocol",
            ) from None
        data = client_first.encode("utf-8")
        self._state = _State.SASL_SENT_FIRST
        return _password_message(
            SCRAM_SHA_256.encode() + b"\0" + struct.pack("!i", len(data)) + data
        )

    def _sasl_continue(self, payload: bytes) -> bytes:
        if self._state is not _State.SASL_SENT_FIRST or self._scram is None:
            raise UpstreamAuthError("unexpected AuthenticationSASLContinue", reason="protocol")
        try:
            self._scram.set_server_first(payload.decode("utf-8"))
            client_final: str = self._scram.get_client_final()
        except (scramp.ScramException, UnicodeDecodeError):
            raise UpstreamAuthError(
                "malformed SCRAM server-first-message", reason="protocol"
            ) from None
        self._state = _State.SASL_SENT_FINAL
        return _password_message(client_final.encode("utf-8"))

    def _sasl_final(self, payload: bytes) -> None:
        if self._state is not _State.SASL_SENT_FINAL or self._scram is None:
            raise UpstreamAuthError("unexpected AuthenticationSASLFinal", reason="protocol")
        try:
            self._scram.set_server_final(payload.decode("utf-8"))
        except (scramp.ScramException, UnicodeDecodeError):
            raise UpstreamAuthError(
                "SCRAM server signature does not match: the server does not know the "
                "password (or is not the configured server)",
                reason="server_signature",
            ) from None
        self._scram = None
        self._state = _State.SASL_VERIFIED
