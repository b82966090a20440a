"""The supervisor's side of the console: one command, run on every worker.

A worker's console sends what concerns all workers to the supervisor's control socket
(:mod:`proxy.admin.control`); :class:`ClusterConsole` runs it on each worker's control
socket and merges the answers:

- ``SHOW POOLS|CLIENTS|SERVERS|TENANTS|STATS``: every worker's rows, with a ``worker``
  column first; a worker that does not answer is named in a notice.
- ``PAUSE [db]``: on every worker at once; it completes when every worker has drained.
  If one fails (pause_timeout, RESUME, no answer) or the admin goes away, what the others
  paused is resumed: a failed PAUSE leaves nothing paused behind.
- ``RESUME [db]``, ``RELOAD``: on every worker; an error names the workers it came from.
- ``KILL_CLIENT id``: on the worker the id belongs to (client ids carry the worker index).
- ``SHUTDOWN``: the supervisor's own graceful shutdown (every worker drains, then exits).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from proxy.admin import control
from proxy.admin.commands import Answer, ConsoleError, parse
from proxy.config import MAX_WORKERS
from proxy.tasks import TaskSet

log = logging.getLogger("pgtenant.admin")

Reply = Answer | BaseException


class ClusterConsole:
    """Runs console statements on the workers ``workers()`` lists as ``(index, socket)``."""

    def __init__(self, workers: Callable[[], list[tuple[int, str]]], count: int,
                 shutdown: Callable[[], None]) -> None:
        self.workers = workers
        self.count = count
        self.shutdown = shutdown
        self._tasks = TaskSet()

    async def run(self, statement: str) -> Answer:
        command = parse(statement)
        workers = self.workers()
        if command.verb == "SHUTDOWN":
            log.info("console SHUTDOWN: shutting down every worker")
            asyncio.get_running_loop().call_soon(self.shutdown)
            return Answer("SHUTDOWN")
        if command.verb == "KILL_CLIENT" and command.arg is not None:
            owner = int(command.arg) % MAX_WORKERS
            workers = [(i, path) for i, path in workers if i == owner]
            if not workers:
                raise ConsoleError("42704", f"no client with id {int(command.arg)}",
                                   "see SHOW CLIENTS")
        if not workers:
            raise ConsoleError("58000", "no worker is running", "see the supervisor's log")
        if command.verb == "PAUSE":
            return await self._pause(statement, workers)
        replies = await self._ask_all(workers, statement)
        if command.verb == "SHOW":
            return self._merge_rows(workers, replies)
        self._raise_failures(command.verb, workers, replies)
        return Answer(command.verb)

    async def _ask_all(self, workers: Sequence[tuple[int, str]], statement: str
                       ) -> list[Reply]:
        return list(await asyncio.gather(
            *(control.ask_briefly(path, statement) for _, path in workers),
            return_exceptions=True))

    def _merge_rows(self, workers: Sequence[tuple[int, str]], replies: list[Reply]
                    ) -> Answer:
        merged = Answer("SHOW 0")
        for (index, _), reply in zip(workers, replies, strict=True):
            if isinstance(reply, ConsoleError):
                raise reply
            if isinstance(reply, BaseException):
                merged.notices.append(f"worker {index} did not answer ({reply!r}); its rows "
                                      "are missing")
                continue
            if merged.columns is None and reply.columns is not None:
                merged.columns = ["worker", *reply.columns]
            merged.rows.extend([str(index), *row] for row in reply.rows)
        missing = self.count - len(workers)
        if missing:
            merged.notices.append(f"{missing} of {self.count} workers are not running; "
                                  "their rows are missing")
        merged.columns = merged.columns or ["worker"]
        merged.tag = f"SHOW {len(merged.rows)}"
        return merged

    @staticmethod
    def _raise_failures(verb: str, workers: Sequence[tuple[int, str]],
                        replies: list[Reply], note: str = "") -> None:
        failed = [(index, reply) for (index, _), reply in zip(workers, replies, strict=True)
                  if isinstance(reply, BaseException)]
        if not failed:
            return
        first = failed[0][1]
        sqlstate = first.sqlstate if isinstance(first, ConsoleError) else "58000"
        hint = first.hint if isinstance(first, ConsoleError) else None
        by_reason: dict[str, list[str]] = {}  # workers that failed alike are named together
        for index, reply in failed:
            reason = str(reply) if isinstance(reply, ConsoleError) else f"no answer ({reply!r})"
            by_reason.setdefault(reason, []).append(str(index))
        reasons = "; ".join(f"worker{'s' if len(who) > 1 else ''} {', '.join(who)}: {reason}"
                            for reason, who in by_reason.items())
        raise ConsoleError(sqlstate, f"{verb} failed on {len(failed)} of {len(replies)} "
                                     f"workers: {reasons}{note}", hint)

    async def _pause(self, statement: str, workers: Sequence[tuple[int, str]]) -> Answer:
        asks = [asyncio.ensure_future(control.ask(path, statement))
                for _, path in workers]
        try:
            replies: list[Reply] = list(await asyncio.gather(*asks, return_exceptions=True))
        except asyncio.CancelledError:
            # The admin went away: cancelled asks hang up (their worker undoes its pause);
            # workers that had already drained are resumed here.
            for task in asks:
                task.cancel()
            done = [t.result() if t.done() and not t.cancelled() and t.exception() is None
                    else None for t in asks]
            self._tasks.spawn(self._undo(workers, done))
            raise
        if not any(isinstance(r, BaseException) for r in replies):
            return Answer("PAUSE")
        await self._undo(workers, [None if isinstance(r, BaseException) else r
                                   for r in replies])
        self._raise_failures("PAUSE", workers, replies,
                             "; what the other workers paused was resumed")
        raise AssertionError("unreachable")

    async def _undo(self, workers: Sequence[tuple[int, str]],
                    replies: Sequence[Answer | None]) -> None:
        """Resume, on each worker, the databases its completed PAUSE newly paused."""
        asks = [control.ask_briefly(path, f"RESUME {database}")
                for (_, path), reply in zip(workers, replies, strict=True)
                if reply is not None for database in reply.paused]
        for outcome in await asyncio.gather(*asks, return_exceptions=True):
            if isinstance(outcome, BaseException):
                log.error("could not undo a failed PAUSE: %r", outcome)
