"""The guard the statement-policy tests (tests/unit/test_statement_policy*.py) ask, and a
client's StreamGuard fed message by message."""

from __future__ import annotations

from proxy.config import TenancyConfig
from proxy.frontend.guarding import ParseVerdicts, StreamGuard
from proxy.guard import Guard
from tests.unit.guard_verdicts import OWN

GUARD = Guard(TenancyConfig())
MODES = [False, True]  # transaction_mode


class Stream:
    """A StreamGuard fed message by message, as the client session feeds it (of a client
    of ``tenant`` on ``guard``, which a proxy's clients share)."""

    def __init__(self, *, transaction_mode: bool = False, guard: Guard = GUARD,
                 tenant: str | None = OWN, verdicts: ParseVerdicts | None = None) -> None:
        self.tenant = tenant
        self.refusals: list[str] = []
        self.changes = 0
        self.guard = StreamGuard(
            guard, {} if verdicts is None else verdicts,
            lambda refusal, tag: self.refusals.append(refusal.kind), tenant=tenant,
            transaction_mode=transaction_mode, on_state_change=self._changed)

    def _changed(self) -> None:
        self.changes += 1

    def send(self, *frames: bytes) -> bytes:
        """Feed ``frames``; return what would be forwarded."""
        return self.guard.filter(b"".join(frames))


def refused_query(out: bytes) -> bool:
    return b"RAISE EXCEPTION" in out
