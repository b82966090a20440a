"""TaskSet: owned background tasks, cancelled together, failures reported."""

from __future__ import annotations

import asyncio

import pytest

from proxy.tasks import TaskSet


def test_failed_task_is_reported_and_forgotten(caplog: pytest.LogCaptureFixture) -> None:
    errors: list[BaseException] = []

    async def boom() -> None:
        raise RuntimeError("bug")

    async def main() -> TaskSet:
        tasks = TaskSet(errors.append)
        tasks.spawn(boom())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return tasks

    tasks = asyncio.run(main())
    assert [str(e) for e in errors] == ["bug"]
    assert len(tasks) == 0
    assert "internal error" in caplog.text


def test_cancel_all_spares_the_caller() -> None:
    async def main() -> tuple[bool, bool]:
        tasks = TaskSet()
        sleeper = tasks.spawn(asyncio.sleep(10))

        async def closer() -> None:
            tasks.cancel_all()
            await asyncio.sleep(0)

        me = tasks.spawn(closer())
        await me
        await asyncio.sleep(0)
        return sleeper.cancelled(), me.cancelled()

    assert asyncio.run(main()) == (True, False)
