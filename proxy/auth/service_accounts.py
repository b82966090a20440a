"""Service accounts (``[users.NAME]``): static clients that log in with SCRAM-SHA-256.

For migrations, analytics jobs and other clients that cannot send a JWT. The proxy
chooses the method from the startup packet's user name alone: a configured name always
gets AuthenticationSASL, any other name the cleartext password that carries a JWT. A
client cannot pick (or downgrade to) the JWT path for a service account's name, because
its password message is read as SCRAM, never as a token.

Sans-I/O: :class:`ServiceAccountLogin` takes the client's SASL messages (PasswordMessage
bodies) and returns the bytes to send back, then the proven :class:`Identity`.
"""

from __future__ import annotations

from proxy.auth.errors import AuthError
from proxy.auth.identity import Identity
from proxy.auth.scram_server import MECHANISM, ScramExchange, ScramFailed
from proxy.config import ServiceAccountConfig
from proxy.config.scram_verifier import parse_scram_verifier
from proxy.wire import authentication


def service_account_identity(account: ServiceAccountConfig) -> Identity:
    """What a service account proves: its tenant, or bypass with its own upstream role."""
    return Identity(tenant=account.tenant, subject=account.name,
                    bypass_tenancy=account.bypass_tenancy,
                    upstream_user=account.upstream_user)


class ServiceAccountLogin:
    """One SCRAM-SHA-256 login of ``account`` to ``database``.

    Call :meth:`start` for the AuthenticationSASL request, then :meth:`step` with each
    PasswordMessage body: SASLInitialResponse gives ``(SASLContinue, None)``,
    SASLResponse ``(SASLFinal, identity)``. Failures raise :class:`AuthError` (28P01 for
    a wrong password or a broken exchange, 28000 for a database the account may not use).
    """

    def __init__(self, account: ServiceAccountConfig, database: str) -> None:
        self.account = account
        self.database = database
        self._exchange: ScramExchange | None = None
        self._done = False

    @staticmethod
    def start() -> bytes:
        return authentication.authentication_sasl([MECHANISM])

    def step(self, body: bytes) -> tuple[bytes, Identity | None]:
        if self._done:
            raise self._failed()
        try:
            if self._exchange is None:
                mechanism, data = authentication.decode_sasl_initial_response(body)
                if mechanism != MECHANISM:
                    raise ScramFailed(f"SASL mechanism {mechanism[:40]!r} is not supported")
                self._exchange = ScramExchange(parse_scram_verifier(self.account.scram_verifier))
                server_first = self._exchange.client_first(data.decode("utf-8"))
                return authentication.authentication_sasl_continue(server_first.encode()), None
            server_final = self._exchange.client_final(body.decode("utf-8"))
        except (ScramFailed, UnicodeDecodeError, ValueError):
            # Same answer for every cause, as PostgreSQL: the client learns only "failed".
            raise self._failed() from None
        self._done = True
        allowed = self.account.databases
        if allowed and self.database not in allowed:
            raise AuthError(f"service account \"{self.account.name[:64]}\" may not connect "
                            f"to database \"{self.database[:64]}\"",
                            sqlstate="28000", reason="service_account")
        reply = authentication.authentication_sasl_final(server_final.encode())
        return reply, service_account_identity(self.account)

    def _failed(self) -> AuthError:
        self._done = True
        return AuthError(f"password authentication failed for user "
                         f"\"{self.account.name[:64]}\"", sqlstate="28P01",
                         reason="service_account")
