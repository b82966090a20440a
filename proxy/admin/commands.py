"""The admin console's language: statements parsed into commands, answers, refusals.

No proxy state and no I/O here: :func:`parse` turns one statement into a
:class:`Command`, an :class:`Answer` encodes to protocol messages and travels as JSON
between processes (:mod:`proxy.admin.control`), and :class:`ConsoleError` is a refusal
with its SQLSTATE. :mod:`proxy.admin.console` runs the commands against the proxy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from proxy.wire import messages

COMMANDS = ("SHOW POOLS", "SHOW CLIENTS", "SHOW SERVERS", "SHOW TENANTS", "SHOW STATS",
            "SHOW CONFIG", "SHOW HELP", "PAUSE [db]", "RESUME [db]", "RELOAD",
            "KILL_CLIENT id", "SHUTDOWN")
_HINT = "commands: " + ", ".join(COMMANDS)
SHOW_SUBJECTS = ("POOLS", "CLIENTS", "SERVERS", "TENANTS", "STATS", "CONFIG", "HELP")
# Answered by the worker an admin is connected to, never gathered from all workers.
LOCAL_ONLY = frozenset({("SHOW", "CONFIG"), ("SHOW", "HELP"), ("SET", None)})

Row = list[str | None]


class ConsoleError(Exception):
    """A command the console refuses; becomes an ErrorResponse (the session goes on)."""

    def __init__(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.hint = hint


@dataclass(slots=True)
class Answer:
    """What one command answers: a result set (``columns`` and ``rows``) or just a tag.

    ``notices`` go out as NoticeResponses first. ``paused`` names the databases a PAUSE
    newly paused (a coordinator resumes them if the PAUSE failed on another worker).
    """

    tag: str
    columns: list[str] | None = None
    rows: list[Row] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    paused: list[str] = field(default_factory=list)

    def encode(self) -> bytes:
        out = [messages.notice_response("01000", n) for n in self.notices]
        if self.columns is not None:
            out.append(messages.row_description(self.columns))
            out.extend(messages.data_row(row) for row in self.rows)
        out.append(messages.command_complete(self.tag))
        return b"".join(out)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Answer:
        return cls(**data)


class Command(NamedTuple):
    """A parsed console statement: ``verb`` upper-cased, at most one argument."""

    verb: str
    arg: str | None
    text: str


def parse(statement: str) -> Command:
    """The command in ``statement`` (one, without its ``;``), or ConsoleError 42601."""
    words = statement.split()
    verb = words[0].upper() if words else ""
    args = words[1:]
    if verb == "SHOW" and len(args) == 1 and args[0].upper() in SHOW_SUBJECTS:
        return Command(verb, args[0].upper(), statement)
    if verb in ("PAUSE", "RESUME") and len(args) <= 1:
        return Command(verb, args[0] if args else None, statement)
    if verb == "KILL_CLIENT" and len(args) == 1:
        if not args[0].isascii() or not args[0].isdigit():
            raise ConsoleError("42601", f"KILL_CLIENT expects a client id, got {args[0][:40]!r}",
                               "the id column of SHOW CLIENTS")
        return Command(verb, args[0], statement)
    if verb in ("RELOAD", "SHUTDOWN") and not args:
        return Command(verb, None, statement)
    if verb == "SET":  # drivers and psql scripts set client options; nothing to do
        return Command(verb, None, statement)
    raise ConsoleError("42601", f"unknown admin console command: {statement[:80]!r}", _HINT)
