"""What the analysis of one SQL text finds: :class:`Analysis`, and the findings gathered
while the text is walked.

:class:`Analysis` is the immutable, tenant-independent result the guard caches by text
and judges per client (:mod:`proxy.guard.guard`); :class:`Findings` is the mutable
collector the analyzer (:mod:`proxy.guard.analysis`) fills while it walks statements,
strings and bodies, and turns into an :class:`Analysis` at the end. They are apart from
the analyzer so that the guard's per-message code depends on the result type only, not
on pglast and the parse-tree walk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from proxy.guard.verdict import Refusal, SettingWrite, StatementOp


@dataclass(frozen=True, slots=True)
class Analysis:
    """What one SQL text does, independent of who sends it.

    ``refusal``: refused for everyone. ``writes``: protected writes whose verdict needs
    the tenant or bound values. ``dynamic``: the text runs SQL computed at run time that
    the guard cannot see; refused for tenant identities (see :class:`~proxy.guard.Guard`).
    ``session_refusal`` / ``transaction_refusal``: the statement policy's verdict for
    tenant clients in each pool mode. ``changes_settings``: the text may change session
    settings (SET, RESET, DISCARD, set_config). ``ops``: its top-level SQL PREPARE and
    EXECUTE statements, in order.
    """

    refusal: Refusal | None = None
    writes: tuple[SettingWrite, ...] = ()
    dynamic: Refusal | None = None
    session_refusal: Refusal | None = None
    transaction_refusal: Refusal | None = None
    changes_settings: bool = False
    ops: tuple[StatementOp, ...] = ()


#: The analysis of a text with nothing to refuse or check (shared instance).
CLEAN: Final = Analysis()

_DYNAMIC = Refusal(
    kind="dynamic_sql",
    message="dynamic SQL built at run time cannot be inspected by pgtenant and is not "
    "allowed for tenant connections",
    hint="use static SQL, or a constant string for EXECUTE",
)


@dataclass(slots=True)
class Findings:
    """What the walk of one text has found so far (see :class:`Analysis` for the fields)."""

    writes: list[SettingWrite] = field(default_factory=list)
    dynamic: bool = False
    session_refusal: Refusal | None = None
    transaction_refusal: Refusal | None = None
    changes_settings: bool = False
    ops: list[StatementOp] = field(default_factory=list)

    def refuse(self, session: Refusal | None, transaction: Refusal | None) -> None:
        """Keep the first statement-policy refusal of each pool mode."""
        if self.session_refusal is None:
            self.session_refusal = session
        if self.transaction_refusal is None:
            self.transaction_refusal = transaction

    def analysis(self) -> Analysis:
        """The result; the shared :data:`CLEAN` when nothing was found."""
        if not (self.writes or self.dynamic or self.session_refusal
                or self.transaction_refusal or self.changes_settings or self.ops):
            return CLEAN
        return Analysis(
            writes=tuple(self.writes), dynamic=_DYNAMIC if self.dynamic else None,
            session_refusal=self.session_refusal,
            transaction_refusal=self.transaction_refusal,
            changes_settings=self.changes_settings, ops=tuple(self.ops))
