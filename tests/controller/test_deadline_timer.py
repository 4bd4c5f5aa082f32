import asyncio
import time

import pytest
import uvloop

from controller import deadline_timer
from controller.cycle import CycleTask
from controller.deadline_timer import DeadlineTimer

pytestmark = pytest.mark.skipif(not deadline_timer.available(), reason="timerfd: Linux only")


def test_wakes_at_the_time_asked_not_a_loop_tick_early():
    async def main() -> list[float]:
        timer = DeadlineTimer()
        errors = []
        try:
            for i in range(50):
                delay = 0.0013 + i * 0.0001  # between the loop's millisecond ticks
                t = time.monotonic() + delay
                await timer.sleep(delay)
                errors.append(time.monotonic() - t)
        finally:
            timer.close()
        return errors

    errors = uvloop.run(main())
    # never early (uvloop's own timers round to the millisecond and fire up to 1 ms early)
    assert min(errors) >= 0
    assert sorted(errors)[len(errors) // 2] < 0.0005


def test_a_cancelled_sleep_leaves_the_timer_usable():
    async def main() -> float:
        timer = DeadlineTimer()
        try:
            task = asyncio.create_task(timer.sleep(0.05))
            await asyncio.sleep(0.005)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            t = time.monotonic()
            await timer.sleep(0.002)  # the old expiry (at 50 ms) is replaced
            return time.monotonic() - t
        finally:
            timer.close()

    took = uvloop.run(main())
    assert 0.002 <= took < 0.03


def test_a_cycle_task_on_the_timer_keeps_a_short_spin_on_time():
    async def main() -> CycleTask:
        timer = DeadlineTimer()
        task = CycleTask("fast", 0.005, spin_s=0.0003, hold_s=0.0002, sleep=timer.sleep)
        task.attach("stop", lambda _d: task.cycles >= 99 and task.request_stop())
        task.start()
        await task.join()
        timer.close()
        return task

    task = uvloop.run(main())
    snap = task.snapshot()
    assert task.cycles == 100
    # with the loop's timers a 300 µs spin is too short: the coarse sleep ends up to 1 ms late
    assert snap.latency.p50 < 0.0001
