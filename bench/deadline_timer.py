"""Wake-up error of the timerfd deadline timer vs the event loop's own timers.

Both sleep the same delays (1.3 ms … 6.2 ms, between the loop's millisecond ticks)
on the same uvloop in the same run; the figure is the wake-up error (woke − asked):
median, p99 and the share of early wake-ups. The loop's timers round to the
millisecond and may fire up to 1 ms early; the deadline timer must never be early.
A cycle task on each timer (5 ms period, 300 µs spin, 200 µs hold) gives the
scan's own latency p50/p99 for the same comparison.

Run: `.venv/bin/python bench/deadline_timer.py [--samples N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import uvloop

from controller import deadline_timer
from controller.cycle import CycleTask
from controller.deadline_timer import DeadlineTimer

TARGET_MEDIAN_RATIO = 5.0  # the deadline timer's median error at least 5x smaller


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _errors(sleep: Callable[[float], Awaitable[None]], samples: int) -> list[float]:
    out = []
    for i in range(samples):
        delay = 0.0013 + (i % 50) * 0.0001
        t = time.monotonic() + delay
        await sleep(delay)
        out.append(time.monotonic() - t)
    return out


async def _cycle(sleep: Callable[[float], Awaitable[None]] | None, cycles: int) -> list[float]:
    kwargs = {"sleep": sleep} if sleep is not None else {}
    task = CycleTask("fast", 0.005, spin_s=0.0003, hold_s=0.0002, **kwargs)
    task.attach("stop", lambda _d: task.cycles >= cycles - 1 and task.request_stop())
    task.start()
    await task.join()
    snap = task.snapshot()
    return [snap.latency.p50, snap.latency.p99]


async def main(samples: int, cycles: int) -> int:
    timer = DeadlineTimer()
    try:
        loop_err = await _errors(asyncio.sleep, samples)
        fd_err = await _errors(timer.sleep, samples)
        loop_cyc = await _cycle(None, cycles)
        fd_cyc = await _cycle(timer.sleep, cycles)
    finally:
        timer.close()
    print(f"{samples} sleeps of 1.3-6.2 ms each, uvloop, same run")
    print(f"{'timer':<16}{'median µs':>11}{'p99 µs':>10}{'early %':>9}")
    for name, errs in (("loop (baseline)", loop_err), ("deadline timer", fd_err)):
        early = 100.0 * sum(e < 0 for e in errs) / len(errs)
        print(
            f"{name:<16}{statistics.median(errs) * 1e6:>11.1f}"
            f"{_pct(errs, 0.99) * 1e6:>10.1f}{early:>9.1f}"
        )
    ratio = abs(statistics.median(loop_err)) / max(abs(statistics.median(fd_err)), 1e-9)
    print(f"median error ratio loop/deadline: {ratio:.1f}x (target >= {TARGET_MEDIAN_RATIO:.0f}x)")
    print(f"cycle task 5 ms, {cycles} cycles: latency p50/p99 µs")
    print(f"  loop timers     {loop_cyc[0] * 1e6:8.1f} / {loop_cyc[1] * 1e6:8.1f}")
    print(f"  deadline timer  {fd_cyc[0] * 1e6:8.1f} / {fd_cyc[1] * 1e6:8.1f}")
    early = sum(e < 0 for e in fd_err)
    print("target met" if ratio >= TARGET_MEDIAN_RATIO and early == 0 else "TARGET MISSED")
    return 0


if __name__ == "__main__":
    if not deadline_timer.available():
        sys.exit("bench/deadline_timer.py: timerfd is Linux only")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--cycles", type=int, default=1000)
    a = p.parse_args()
    sys.exit(uvloop.run(main(a.samples, a.cycles)))
