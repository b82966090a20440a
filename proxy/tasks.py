"""A set of fire-and-forget tasks owned by one object (a client, a pool, the app).

asyncio keeps only weak references to tasks, so an owner must hold its tasks until they
finish; it also cancels them when it closes. A task that dies of an unexpected exception
is logged with its traceback and reported to ``on_error`` (a client ends its session with
an error instead of waiting forever for a task that is gone).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("pgtenant")


_EMPTY: set[asyncio.Task[None]] = set()  # shared, never added to


class TaskSet:
    __slots__ = ("_on_error", "_tasks")

    def __init__(self, on_error: Callable[[BaseException], None] | None = None) -> None:
        self._tasks: set[asyncio.Task[None]] = _EMPTY  # a set of its own on first spawn
        self._on_error = on_error

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        if self._tasks is _EMPTY:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._tasks = _EMPTY  # an idle client keeps no empty set around
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        log.error("internal error in %s", task.get_coro(), exc_info=exc)
        if self._on_error is not None:
            self._on_error(exc)

    def cancel_all(self) -> None:
        """Cancel every task but the one running this call."""
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()

    async def wait(self, grace: float) -> None:
        """Wait (up to ``grace`` seconds) for the tasks to finish, e.g. after cancel_all."""
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)

    def __len__(self) -> int:
        return len(self._tasks)
