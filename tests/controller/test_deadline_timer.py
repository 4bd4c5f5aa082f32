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
    # never early (uvloop's own timers round to the millisecond and fire up to 1 ms early);
    # how close to the deadline it wakes is measured in bench/deadline_timer.py
    early = [e for e in errors if e < 0]
    assert early == []


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
    assert took >= 0.002  # not early


def test_a_cycle_task_runs_on_the_timer():
    async def main() -> CycleTask:
        timer = DeadlineTimer()
        task = CycleTask("fast", 0.005, spin_s=0.0003, hold_s=0.0002, sleep=timer.sleep)
        task.attach("stop", lambda _d: task.cycles >= 99 and task.request_stop())
        task.start()
        await task.join()
        timer.close()
        return task

    task = uvloop.run(main())
    # its latency against the loop's timers is measured in bench/deadline_timer.py
    assert task.cycles == 100
