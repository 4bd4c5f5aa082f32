import asyncio
import math
import random

import pytest
import uvloop

from controller.cycle import BUCKETS, CycleTask, Series, percentile

from .virtual_cycle_time import VirtualTime

T = 0.010


def make(vt, **kw):
    kw.setdefault("spin_s", 0.0)
    return CycleTask("fast", T, clock=vt.clock, sleep=vt.sleep, busy_wait=vt.busy_wait, **kw)


async def run_cycles(task, n, program=None):
    wakes = []

    def body(deadline):
        wakes.append((task.k, deadline, task._clock()))
        if program is not None:
            program(task.k)
        if task.cycles + 1 >= n:
            task.request_stop()

    task.attach("body", body)
    task.start(t0=task._clock() + T)
    await task.join()
    return wakes


async def test_deadlines_do_not_drift_when_timers_fire_late():
    vt = VirtualTime(oversleep=0.0007)
    task = make(vt)
    t0 = vt.now + T
    wakes = await run_cycles(task, 10_000)
    assert task.cycles == 10_000
    assert task.overruns == 0
    for k, deadline, wake in wakes:
        assert deadline == pytest.approx(t0 + k * T, abs=1e-9)
        assert wake - deadline == pytest.approx(0.0007, abs=1e-9)
    # a naive "sleep(T) after each cycle" loop would be 10 000 × 0.7 ms = 7 s late by now
    assert wakes[-1][2] - (t0 + 9_999 * T) == pytest.approx(0.0007, abs=1e-9)
    snap = task.snapshot()
    assert snap.latency.p99 == pytest.approx(0.0007, abs=1e-9)
    assert snap.jitter.max == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("hold_s", [0.0, 0.0003])
async def test_hold_keeps_callbacks_shorter_than_it_from_making_the_task_late(hold_s):
    vt = VirtualTime(spin_step=1e-6)
    task = make(vt, spin_s=0.002, hold_s=hold_s)
    busy = True

    lengths = random.Random(1)

    async def other_work():  # the loop's other callbacks: 50..250 µs each, back to back
        while busy:
            vt.advance(lengths.uniform(50e-6, 250e-6))
            await asyncio.sleep(0)

    other = asyncio.create_task(other_work())
    await run_cycles(task, 200)
    busy = False
    await other
    late = task.snapshot().latency
    if hold_s:
        assert vt.holds == 200
        assert late.max < 2e-6  # woke at the deadline every time
    else:
        assert vt.holds == 0
        assert late.max > 100e-6  # a callback that began in the spin ran past the deadline


def test_hold_must_fit_in_the_spin():
    with pytest.raises(ValueError, match=r"hold must be in \[0, spin\]"):
        CycleTask("x", 0.01, spin_s=0.0002, hold_s=0.0003)


async def test_yield_spin_absorbs_coarse_timer_error():
    vt = VirtualTime(oversleep=-0.0009, spin_step=2e-6)  # timer fires 0.9 ms early
    task = make(vt, spin_s=0.002)
    await run_cycles(task, 200)
    snap = task.snapshot()
    assert snap.latency.min >= 0  # never woken before the deadline
    assert snap.latency.max <= 2.01e-6
    # the coarse sleep did the bulk of the waiting; spin steps stayed within the budget
    assert vt.sleeps == 200
    assert vt.spins <= 200 * (0.0029 / 2e-6 + 1)


async def test_without_spin_an_early_timer_is_corrected_by_spinning_anyway():
    vt = VirtualTime(oversleep=-0.0005, spin_step=1e-5)
    task = make(vt, spin_s=0.0)
    await run_cycles(task, 100)
    assert task.snapshot().latency.min >= 0  # never runs before its deadline


async def test_overrun_skips_to_next_future_deadline_and_counts():
    vt = VirtualTime()
    task = make(vt)
    t0 = vt.now + T

    def program(k):
        if k == 5:
            vt.advance(0.025)  # runs 25 ms: deadlines 6 and 7 are missed

    wakes = await run_cycles(task, 20, program)
    ks = [k for k, _, _ in wakes]
    assert ks[:7] == [0, 1, 2, 3, 4, 5, 8]
    assert task.overruns == 1
    assert task.skipped == 2
    assert task.cycles == 20
    for k, deadline, wake in wakes:
        assert deadline == pytest.approx(t0 + k * T, abs=1e-9)  # still on the grid
        assert wake == pytest.approx(deadline, abs=1e-9)
    assert task.snapshot().execution.max == pytest.approx(0.025, abs=1e-9)


async def test_overrun_ending_exactly_on_next_deadline_is_an_overrun():
    vt = VirtualTime()
    task = make(vt)

    def program(k):
        if k == 3:
            vt.advance(T + 1e-9)

    wakes = await run_cycles(task, 10, program)
    assert [k for k, _, _ in wakes][:5] == [0, 1, 2, 3, 5]
    assert (task.overruns, task.skipped) == (1, 1)


async def test_repeated_overruns_are_each_counted():
    vt = VirtualTime()
    task = make(vt)
    await run_cycles(task, 50, lambda k: vt.advance(0.015))
    assert task.overruns == 50
    assert task.skipped == task.overruns  # every cycle skips exactly one deadline
    assert task.k == 2 * 50


async def test_failing_program_is_counted_and_the_task_goes_on(caplog):
    vt = VirtualTime()
    task = make(vt)

    def bad(_deadline):
        raise RuntimeError("boom")

    task.attach("bad", bad)
    await run_cycles(task, 30)
    assert task.errors == 30
    assert task.cycles == 30
    assert "program bad failed" in caplog.text


async def test_async_program_is_awaited():
    vt = VirtualTime()
    task = make(vt)
    seen = []

    async def prog(deadline):
        await asyncio.sleep(0)
        seen.append(deadline)

    task.attach("async", prog)
    await run_cycles(task, 5)
    assert len(seen) == 5


async def test_stop_cancels_a_waiting_task():
    task = CycleTask("control", 1.0, spin_s=0.0)
    task.start()
    await asyncio.sleep(0.01)
    assert task.running
    await task.stop()
    assert not task.running
    assert task.cycles == 0


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="period must be > 0"):
        CycleTask("x", 0)
    with pytest.raises(ValueError, match=r"spin must be in \[0, period\)"):
        CycleTask("x", 0.01, spin_s=0.01)


def test_series_histogram_and_percentiles():
    s = Series(window=1000)
    for i in range(1, 1001):
        s.add(i * 1e-6)  # 1..1000 µs
    summ = s.summary()
    assert (summ.count, summ.window) == (1000, 1000)
    assert summ.min == pytest.approx(1e-6)
    assert summ.max == pytest.approx(1e-3)
    assert summ.p50 == pytest.approx(500e-6)
    assert summ.p99 == pytest.approx(990e-6)
    assert summ.p999 == pytest.approx(999e-6)
    assert summ.total == pytest.approx(sum(i * 1e-6 for i in range(1, 1001)))
    cum = dict(summ.buckets)
    assert cum[BUCKETS[0]] == 1  # ≤ 1 µs
    assert cum[1e-4] == pytest.approx(100, abs=1)
    assert cum[math.inf] == 1000
    counts = [c for _, c in summ.buckets]
    assert counts == sorted(counts)


def test_series_ring_keeps_only_the_window():
    s = Series(window=10)
    for i in range(100):
        s.add(float(i))
    summ = s.summary()
    assert summ.window == 10
    assert summ.min == 0.0  # min/max are since start
    assert summ.p50 == 94.0  # percentiles over the last 10 (90..99)
    assert summ.count == 100


def test_percentile_nearest_rank():
    assert percentile([], 0.5) == 0.0
    assert percentile([1.0], 0.99) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0


def test_real_loop_wakes_close_to_deadlines():
    """Smoke test on uvloop with real time: absolute deadlines + spin keep latency small."""

    async def main():
        task = CycleTask("fast", 0.005, spin_s=0.002)
        task.attach("stop", lambda _d: task.cycles >= 99 and task.request_stop())
        task.start()
        await asyncio.wait_for(task.join(), 5)
        return task.snapshot()

    snap = uvloop.run(main())
    assert snap.cycles == 100
    assert snap.latency.min >= 0  # never woken before the deadline
    assert snap.latency.p50 < 0.001


def test_series_recent_last_n_wraps_the_ring():
    s = Series(window=8)
    for i in range(13):  # ring holds 5..12, write position at 13 % 8 = 5
        s.add(float(i))
    assert sorted(s.recent(3)) == [10.0, 11.0, 12.0]
    assert sorted(s.recent(7)) == [6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]
    assert sorted(s.recent()) == [float(i) for i in range(5, 13)]
    assert s.summary(last=2).p50 == 11.0


async def test_each_program_scan_time_is_measured_on_its_own():
    vt = VirtualTime()
    task = make(vt)
    # "crane" takes 1 ms every cycle, 3 ms on cycle 2; "conveyor" 0.5 ms; "idle" nothing
    task.attach("crane", lambda _d: vt.advance(0.003 if task.k == 2 else 0.001))
    task.attach("conveyor", lambda _d: vt.advance(0.0005))
    task.attach("idle", lambda _d: None)
    await run_cycles(task, 10)
    scans = {name: (n, total, longest) for name, n, total, longest in task.snapshot().programs}
    # 10 cycles: crane 9 × 1 ms + 3 ms = 12 ms, longest 3 ms; conveyor 10 × 0.5 ms = 5 ms;
    # "idle" and "body" (run_cycles' own program, attached last) take no time
    assert scans["crane"] == pytest.approx((10, 0.012, 0.003), abs=1e-9)
    assert scans["conveyor"] == pytest.approx((10, 0.005, 0.0005), abs=1e-9)
    assert scans["idle"] == (10, 0.0, 0.0)
    assert list(scans) == ["crane", "conveyor", "idle", "body"]
