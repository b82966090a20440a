"""The console's control channel between processes (``[server] workers`` > 1).

One JSON line each way over a Unix socket in the supervisor's private runtime directory
(mode 0700, like the cancel and metrics sockets): the asker sends
``{"statement": "SHOW POOLS"}``, the server answers ``{"answer": {...}}`` (an
:class:`~proxy.admin.commands.Answer`) or ``{"error": {"sqlstate", "message", "hint"}}``
and closes. Used twice: a worker's console asks the supervisor's ``control.sock``; the
supervisor asks each worker's ``control-i.sock``.

An asker that closes its end before the answer (its admin went away) cancels the command
on the other side: a waiting PAUSE is undone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable

from proxy.admin.commands import Answer, ConsoleError

log = logging.getLogger("pgtenant.admin")

MAX_LINE = 64 * 1024 * 1024   # bytes: a SHOW CLIENTS of many clients fits
REQUEST_TIMEOUT = 5.0         # seconds an asker has to send its statement
ANSWER_TIMEOUT = 10.0         # seconds a SHOW, RESUME, RELOAD or KILL_CLIENT may take

Runner = Callable[[str], Awaitable[Answer]]


async def ask(path: str, statement: str) -> Answer:
    """Run ``statement`` on the console serving ``path``; waits as long as it takes (PAUSE
    bounds itself with pause_timeout; see :func:`ask_briefly` for everything else).

    Raises ConsoleError when it refuses the command; OSError, EOFError or ValueError when
    there is no (well-formed) answer.
    """
    reader, writer = await asyncio.open_unix_connection(path, limit=MAX_LINE)
    try:
        writer.write(json.dumps({"statement": statement}).encode() + b"\n")
        line = await reader.readline()
    finally:
        writer.close()
    if not line.endswith(b"\n"):
        raise EOFError("the control connection closed without an answer")
    reply = json.loads(line)
    if "error" in reply:
        error = reply["error"]
        raise ConsoleError(str(error["sqlstate"]), str(error["message"]), error.get("hint"))
    return Answer.from_json(reply["answer"])


async def ask_briefly(path: str, statement: str) -> Answer:
    """:func:`ask` for a command that does not wait: TimeoutError after ANSWER_TIMEOUT."""
    async with asyncio.timeout(ANSWER_TIMEOUT):
        return await ask(path, statement)


async def serve(path: str, run: Runner) -> asyncio.AbstractServer:
    """Answer statements on Unix socket ``path`` with ``run``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                line = await reader.readline()
            statement = json.loads(line)["statement"]
            if not isinstance(statement, str):
                raise ValueError("statement is not a string")
            reply = await _run_unless_abandoned(reader, run(statement))
            if reply is not None:
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            log.debug("control connection on %s: the asker went away", path)
        except (OSError, ValueError, KeyError, TimeoutError) as exc:
            log.warning("control connection on %s: %r", path, exc)
        except Exception:
            log.exception("control command failed on %s", path)
        finally:
            writer.close()

    return await asyncio.start_unix_server(handle, path, limit=MAX_LINE)


async def _run_unless_abandoned(reader: asyncio.StreamReader, work: Awaitable[Answer]
                                ) -> dict[str, object] | None:
    """The reply to ``work``; None (and ``work`` cancelled) if the asker hangs up first."""
    task = asyncio.ensure_future(work)
    hangup = asyncio.ensure_future(reader.read(1))
    try:
        await asyncio.wait({task, hangup}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        hangup.cancel()
    if task.cancelled():
        return None
    exc = task.exception()
    if isinstance(exc, ConsoleError):
        return {"error": {"sqlstate": exc.sqlstate, "message": str(exc), "hint": exc.hint}}
    if exc is not None:
        raise exc
    return {"answer": task.result().to_json()}
