"""Cyclic tasks in the IEC 61131-3 sense, on absolute deadlines.

A task wakes at ``t_k = t0 + k·T`` (never ``last wake + T``, so it does not
drift), runs its programs, and goes back to sleep. Waiting is done the known
way for a few microseconds of wake-up latency on asyncio/uvloop: a coarse
``sleep`` until ``spin`` seconds before the deadline (the loop's timers have
millisecond resolution and may fire up to 1 ms early or a few ms late), then a
yield-spin (``sleep(0)`` until the clock passes the deadline) which still lets
the loop's other work (bus I/O, scrapes) run in between, and for the last
``hold`` seconds a busy-wait that does not yield. The loop is cooperative: a
callback that starts during the yield-spin delays the wake-up by however far
it runs past the deadline. With a hold of H, only callbacks longer than H can
do that, and only by their length minus H; the price is H/period of a core
(300 µs per 10 ms = 3 %).

Overrun policy ("skip"): when a cycle ends after the next deadline, the task
resumes at the first deadline still in the future; the event is counted in
``overruns`` and the cycles that did not run in ``skipped``.

Measured per cycle, without allocating containers in the fast path (fixed
``array`` buffers):

- wake-up latency: actual wake time − deadline;
- periodic jitter: |(wake_k − wake_j) − (k − j)·T| between consecutive runs;
- execution time: programs' run time.

Each goes into a fixed-bucket histogram (cumulative, exported to Prometheus)
and a ring buffer of the last ``window`` samples (exact recent percentiles,
computed on demand, never in the cycle).

The clock and the sleeper are injected so tests run in virtual time.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from array import array
from bisect import bisect_left
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from controller.task_stop import stop_task

log = logging.getLogger("gridctl.cycle")

Program = Callable[[float], object]  # called with the deadline; may return an awaitable
Clock = Callable[[], float]
Sleeper = Callable[[float], Awaitable[object]]
BusyWait = Callable[[float], None]  # returns once the clock reaches the given time

# Histogram bucket upper bounds in seconds: 1 µs .. 1 s, 1-2-5 steps (+Inf implicit).
BUCKETS: tuple[float, ...] = (
    *(float(f"{m}e{e}") for e in range(-6, 0) for m in (1, 2, 5)),
    1.0,
)


@dataclass(slots=True, frozen=True)
class Summary:
    """min/p50/p99/p99.9/max over the recent window, plus cumulative histogram data."""

    count: int  # samples since start
    total: float  # sum since start (seconds)
    min: float
    p50: float
    p99: float
    p999: float
    max: float
    window: int  # samples the percentiles are computed over
    buckets: tuple[tuple[float, int], ...]  # (upper bound, cumulative count), +Inf last


class Series:
    """One measured quantity: fixed-bucket histogram + ring buffer; no allocation per sample."""

    __slots__ = ("_bounds", "_counts", "_n", "_ring", "_size", "count", "max", "min", "total")

    def __init__(self, window: int, bounds: tuple[float, ...] = BUCKETS) -> None:
        self._bounds = bounds
        self._counts = array("q", [0] * (len(bounds) + 1))
        self._ring = array("d", [0.0] * window)
        self._size = window
        self._n = 0
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, x: float) -> None:
        self._counts[bisect_left(self._bounds, x)] += 1
        self._ring[self._n % self._size] = x
        self._n += 1
        self.count += 1
        self.total += x
        if x < self.min:
            self.min = x
        if x > self.max:
            self.max = x

    def recent(self, last: int | None = None) -> list[float]:
        """The last ``last`` samples (default: the whole window), unordered."""
        n = min(self._n, self._size)
        if last is None or last >= n:
            return list(self._ring[:n])
        end = self._n % self._size
        if end >= last:
            return list(self._ring[end - last : end])
        return list(self._ring[self._size - (last - end) :]) + list(self._ring[:end])

    def summary(self, last: int | None = None) -> Summary:
        """Percentiles over the last ``last`` samples (default: the window); sorting costs O(n log n)."""
        data = sorted(self.recent(last))
        cum = 0
        buckets = []
        for bound, c in zip((*self._bounds, math.inf), self._counts, strict=True):
            cum += c
            buckets.append((bound, cum))
        if not data:
            return Summary(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, tuple(buckets))
        return Summary(
            self.count,
            self.total,
            self.min,
            percentile(data, 0.50),
            percentile(data, 0.99),
            percentile(data, 0.999),
            self.max,
            len(data),
            tuple(buckets),
        )


def percentile(sorted_data: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted data."""
    if not sorted_data:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_data)))
    return sorted_data[rank - 1]


@dataclass(slots=True)
class ProgramScan:
    """One attached program's scan time, accumulated since the task started."""

    scans: int = 0
    total_s: float = 0.0
    max_s: float = 0.0


@dataclass(slots=True, frozen=True)
class TaskSnapshot:
    name: str
    period_s: float
    spin_s: float
    hold_s: float
    running: bool
    cycles: int
    overruns: int
    skipped: int
    errors: int
    latency: Summary
    jitter: Summary
    execution: Summary
    # per attached program: (name, scans, total seconds, longest scan in seconds)
    programs: tuple[tuple[str, int, float, float], ...] = ()


class CycleTask:
    """A cyclic task: ``attach`` programs, ``start`` it on the running loop, ``stop`` it."""

    def __init__(
        self,
        name: str,
        period_s: float,
        *,
        spin_s: float = 0.002,
        hold_s: float = 0.0,
        window: int = 4096,
        clock: Clock = time.monotonic,
        sleep: Sleeper = asyncio.sleep,
        busy_wait: BusyWait | None = None,
    ) -> None:
        if not period_s > 0:
            raise ValueError(f"{name}: period must be > 0 s (got {period_s})")
        if not 0 <= spin_s < period_s:
            raise ValueError(f"{name}: spin must be in [0, period) (got {spin_s} s)")
        if not 0 <= hold_s <= spin_s:
            raise ValueError(
                f"{name}: hold must be in [0, spin] = [0, {spin_s}] s (got {hold_s} s)"
            )
        self.name = name
        self.period = period_s
        self.spin = spin_s
        self.hold = hold_s
        self._clock = clock
        self._sleep = sleep
        self._busy_wait = busy_wait if busy_wait is not None else _busy_wait_on(clock)
        self._programs: list[tuple[str, Program, bool]] = []
        self._scans: list[ProgramScan] = []  # parallel to _programs
        self._task: asyncio.Task[None] | None = None
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._stopping = False
        self.t0 = 0.0
        self.k = 0  # index of the next deadline
        self.cycles = 0
        self.overruns = 0
        self.skipped = 0
        self.errors = 0
        self.latency = Series(window)
        self.jitter = Series(window)
        self.execution = Series(window)

    # -- programs -------------------------------------------------------------------------
    def attach(self, name: str, program: Program) -> None:
        """Run ``program(deadline)`` every cycle, in attach order. Coroutine functions are awaited."""
        self._scans.append(ProgramScan())
        self._programs.append((name, program, inspect.iscoroutinefunction(program)))

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, t0: float | None = None) -> asyncio.Task[None]:
        """Start on the running loop; the first deadline is ``t0`` (default: now + one period)."""
        if self._task is not None:
            raise RuntimeError(f"task {self.name} already started")
        self.t0 = self._clock() + self.period if t0 is None else t0
        self.k = 0
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self.run(), name=f"cycle:{self.name}")
        return self._task

    def request_stop(self) -> None:
        """Stop after the current cycle (safe to call from a program)."""
        self._stopping = True

    async def stop(self) -> None:
        """Stop now: a waiting task is cancelled; an async program is interrupted at its await."""
        self._stopping = True
        self._wake_idle_waiters()
        task, self._task = self._task, None
        if task is None or task.done():
            return
        await stop_task(task)

    async def join(self) -> None:
        """Wait until the task ends by itself (after ``request_stop``)."""
        if self._task is not None:
            await self._task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def deadline(self, k: int) -> float:
        return self.t0 + k * self.period

    # -- the cycle ------------------------------------------------------------------------
    async def run(self) -> None:
        clock = self._clock
        sleep = self._sleep
        period = self.period
        spin = self.spin
        hold = self.hold
        busy_wait = self._busy_wait
        programs = self._programs
        scans = self._scans
        last_wake = 0.0
        last_k = -1
        while not self._stopping:
            k = self.k
            deadline = self.t0 + k * period
            # coarse sleep, yield-spin, then hold (no yield) up to the deadline
            coarse = deadline - spin - clock()
            if coarse > 0:
                await sleep(coarse)
            # with no hold, the yield-spin itself runs up to the deadline
            hold_from = deadline - hold
            while clock() < hold_from:
                await sleep(0)
            if hold:
                busy_wait(deadline)
            wake = clock()
            self.latency.add(wake - deadline)
            if last_k >= 0:
                self.jitter.add(abs((wake - last_wake) - (k - last_k) * period))
            last_wake, last_k = wake, k
            t = wake
            for i, (name, program, is_coro) in enumerate(programs):
                try:
                    if is_coro:
                        await program(deadline)  # type: ignore[misc]
                    else:
                        program(deadline)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.errors += 1
                    if self.errors <= 10 or self.errors % 1000 == 0:
                        log.exception(
                            "task %s: program %s failed (errors=%d)", self.name, name, self.errors
                        )
                now = clock()
                scan = scans[i]
                scan.scans += 1
                scan.total_s += now - t
                if now - t > scan.max_s:
                    scan.max_s = now - t
                t = now
            end = t if programs else clock()
            self.execution.add(end - wake)
            if self._idle_waiters:
                self._wake_idle_waiters()
            self.cycles += 1
            k += 1
            if end >= self.t0 + k * period:
                # overrun: resume at the first deadline still in the future
                nxt = math.floor((end - self.t0) / period) + 1
                self.overruns += 1
                self.skipped += nxt - k
                k = nxt
            self.k = k

    def after_cycle(self) -> asyncio.Future[None]:
        """Resolves right after the next cycle ends: the start of the task's idle time.

        Long loop steps (a metrics scrape) started here have the most room
        before the next deadline. Resolves at once when the task is not running.
        """
        fut = asyncio.get_running_loop().create_future()
        if self.running:
            self._idle_waiters.append(fut)
        else:
            fut.set_result(None)
        return fut

    def _wake_idle_waiters(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # -- publishing -----------------------------------------------------------------------
    def snapshot(self, last: int | None = None) -> TaskSnapshot:
        """Counters and summaries; percentiles over the last ``last`` samples (default: window)."""
        return TaskSnapshot(
            self.name,
            self.period,
            self.spin,
            self.hold,
            self.running,
            self.cycles,
            self.overruns,
            self.skipped,
            self.errors,
            self.latency.summary(last),
            self.jitter.summary(last),
            self.execution.summary(last),
            tuple(
                (name, s.scans, s.total_s, s.max_s)
                for (name, _p, _c), s in zip(self._programs, self._scans, strict=True)
            ),
        )


def _busy_wait_on(clock: Clock) -> BusyWait:
    def busy_wait(until: float) -> None:
        while clock() < until:
            pass

    return busy_wait
