"""The simulator's own process helpers (it no longer borrows the controller's):
pinning a spawned child to CPUs, and stopping a background task."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from drivers.sim.launch import pin_process
from drivers.sim.tasks import stop_task

CPUS = frozenset(os.sched_getaffinity(0))


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs to see a move")
def test_pin_process_moves_every_thread_of_the_child() -> None:
    # a child with a second thread already running when it is pinned
    code = "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); "
    code += "print('up', flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "up\n"
        target = frozenset({min(CPUS)})
        pin_process(child.pid, target)
        tids = [int(t) for t in os.listdir(f"/proc/{child.pid}/task")]
        assert len(tids) == 2
        assert [os.sched_getaffinity(tid) for tid in tids] == [target, target]
    finally:
        child.kill()
        child.wait()


async def test_stop_task_waits_for_the_task_and_keeps_the_callers_cancellation() -> None:
    cleaned: list[str] = []
    release = asyncio.Event()

    async def farm() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await release.wait()  # e.g. a last write before the wire closes
            cleaned.append("done")

    task = asyncio.create_task(farm())
    await asyncio.sleep(0)
    stopping = asyncio.create_task(stop_task(task))
    await asyncio.sleep(0)
    assert not stopping.done()  # still waiting for the task's clean-up
    release.set()
    await stopping
    assert task.cancelled() and cleaned == ["done"]

    # a caller that is itself cancelled while waiting stays cancelled
    release.clear()
    task = asyncio.create_task(farm())
    await asyncio.sleep(0)
    stopping = asyncio.create_task(stop_task(task))
    await asyncio.sleep(0)
    stopping.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await stopping


async def test_stop_task_raises_what_the_task_failed_with() -> None:
    async def broken() -> None:
        raise OSError("pty vanished")

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)
    with pytest.raises(OSError, match="pty vanished"):
        await stop_task(task)
