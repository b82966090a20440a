"""Authentication failures, each carrying what the client and the metrics need."""

from __future__ import annotations

from typing import Literal

AuthSqlState = Literal["28P01", "28000"]
AuthReason = Literal[
    "expired",
    "bad_signature",
    "malformed",
    "algorithm",
    "missing_tenant",
    "bad_tenant",
    "not_yet_valid",
    "issuer",
    "audience",
    "missing_exp",
    "no_key",
    "service_account",
]
UpstreamAuthReason = Literal[
    "password_missing", "unsupported_method", "server_signature", "no_scram", "protocol"
]


class AuthError(Exception):
    """A client failed to authenticate or is not authorised.

    ``sqlstate`` is what the ErrorResponse carries: "28P01" (invalid_password: the
    credential is wrong, expired or malformed) or "28000"
    (invalid_authorization_specification: a valid credential that names no acceptable
    tenant). ``reason`` is a short label for metrics. The message is meant for a
    person and never contains the token, a key or a secret.
    """

    def __init__(self, message: str, *, sqlstate: AuthSqlState, reason: AuthReason) -> None:
        super().__init__(message)
        self.sqlstate: AuthSqlState = sqlstate
        self.reason: AuthReason = reason

    def __str__(self) -> str:
        return str(self.args[0])


class UpstreamAuthError(Exception):
    """The proxy could not authenticate its own connection to PostgreSQL.

    This is a server-side (configuration or upstream) failure, not the client's: the
    session layer reports it to the client without details and logs the message,
    which never contains the password. ``reason`` is a short label for metrics.
    """

    def __init__(self, message: str, *, reason: UpstreamAuthReason) -> None:
        super().__init__(message)
        self.reason: UpstreamAuthReason = reason
