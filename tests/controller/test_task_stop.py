"""stop_task: the task is cancelled and has finished on return; the caller's own
cancellation is never swallowed; a task that had failed says so."""

from __future__ import annotations

import asyncio

import pytest

from controller.task_stop import stop_task


async def test_returns_after_the_task_has_cleaned_up():
    cleaned: list[str] = []

    async def worker() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.01)  # e.g. closing a port
            cleaned.append("port closed")

    task = asyncio.create_task(worker())
    await asyncio.sleep(0)
    await stop_task(task)
    assert task.cancelled() and cleaned == ["port closed"]
    await stop_task(task)  # again, and with nothing to stop: no error
    await stop_task(None)


async def test_a_cancelled_caller_stays_cancelled():
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await release.wait()

    task = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    after_stop: list[str] = []

    async def caller() -> None:
        await stop_task(task)
        after_stop.append("went on as if stopped")

    stopping = asyncio.create_task(caller())
    await asyncio.sleep(0.01)
    stopping.cancel()  # a shutdown giving up on this stop
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert after_stop == []


async def test_a_task_that_had_failed_raises_its_error():
    async def broken() -> None:
        raise OSError("port vanished")

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)
    with pytest.raises(OSError, match="port vanished"):
        await stop_task(task)
