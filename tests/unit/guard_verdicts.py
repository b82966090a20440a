"""The guard the SQL-guard tests (tests/unit/test_guard_*.py) ask, and how they check a
refusal.

Own tenant is "acme"; the attacker wants "globex". A refusal is checked for its kind,
because metrics count by kind.
"""

from __future__ import annotations

from proxy.config import TenancyConfig
from proxy.guard import REFUSAL_KINDS, Guard, Refusal

OWN = "acme"
GUARD = Guard(TenancyConfig(), allowed_roles=frozenset({"reporting"}))


def refused(sql: str, tenant: str | None = OWN) -> Refusal:
    verdict = GUARD.check_query(sql, tenant)
    assert isinstance(verdict, Refusal), f"not refused: {sql!r}"
    assert verdict.sqlstate == "42501"
    assert verdict.kind in REFUSAL_KINDS
    return verdict
