"""Poll scheduler through the binding, in virtual time."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller import _core_rs as core
from controller._core_rs import (
    LANE_CONTROL,
    LANE_CYCLIC,
    LANE_EVENT,
    LANE_OPERATOR,
    PollScheduler,
    SchedulerError,
)

Runs = dict[int, list[tuple[float, float]]]


def simulate(
    sched: PollScheduler,
    start: float,
    until: float,
    duration: Callable[[int], float],
    ok: Callable[[int], bool] = lambda _id: True,
) -> tuple[float, Runs]:
    """The bus owner's loop in virtual time: take the next job, spend its
    duration on the wire, complete it; when idle, sleep to the next release."""
    now = start
    runs: Runs = defaultdict(list)
    while now < until:
        taken = sched.next_job(now)
        if taken is None:
            wake = sched.next_release()
            if wake is None:
                break
            assert wake > now, "a due job must be returned by next_job"
            now = min(wake, until)
            continue
        job_id, lateness = taken
        runs[job_id].append((now, lateness))
        d = duration(job_id)
        now += d
        sched.complete(job_id, now, d, ok(job_id))
    return now, runs


def test_lanes_are_exported() -> None:
    assert (LANE_CONTROL, LANE_OPERATOR, LANE_EVENT, LANE_CYCLIC) == (0, 1, 2, 3)


def test_light_bus_meets_every_slot() -> None:
    sched = PollScheduler()
    periods = {i: 1.0 + 0.25 * i for i in range(12)}
    tx = 0.02
    for job_id, period in periods.items():
        sched.add_job(job_id, period, LANE_CYCLIC, 0.0, tx)
    _, runs = simulate(sched, 0.0, 300.0, lambda _id: tx)
    for job_id, period in periods.items():
        times = runs[job_id]
        assert len(times) == math.ceil(300.0 / period)
        for k, (t, lateness) in enumerate(times):
            # absolute slots: run k starts at k·period, at most one burst of
            # transactions late (all jobs share t = 0)
            assert lateness <= len(periods) * tx + 1e-9
            assert t - k * period == pytest.approx(lateness, abs=1e-9)
        st = sched.job_stats(job_id)
        assert st.runs == len(times)
        assert st.skipped == 0
        assert st.duration_mean_s == pytest.approx(tx)
        assert st.effective_period_s == st.period_s == period
    bus = sched.bus_stats()
    assert bus.stretch == 1.0
    assert bus.demand == pytest.approx(sum(tx / p for p in periods.values()))
    assert bus.lateness_max_s <= len(periods) * tx + 1e-9


def test_staggered_light_bus_lateness_within_one_transaction() -> None:
    sched = PollScheduler()
    tx = 0.185  # one DL/T 645 read at 2400 baud
    for job_id in range(10):
        # 10 meters polled every 15 s, first releases spread over the period
        sched.add_job(job_id, 15.0, LANE_CYCLIC, job_id * 1.5, tx)
    _, runs = simulate(sched, 0.0, 900.0, lambda _id: tx)
    assert all(len(r) == 60 for r in runs.values())
    assert sched.bus_stats().lateness_max_s <= tx


def test_no_drift_with_late_runs() -> None:
    sched = PollScheduler()
    sched.add_job(1, 0.1, first_release=3.0)
    _now, runs = simulate(sched, 0.0, 1000.0, lambda _id: 0.0037)
    last_start, last_lateness = runs[1][-1]
    slot = last_start - last_lateness
    k = round((slot - 3.0) / 0.1)
    assert slot == pytest.approx(3.0 + k * 0.1, abs=1e-6)
    assert k == len(runs[1]) - 1


def test_late_job_skips_slots_and_counts_them() -> None:
    sched = PollScheduler()
    sched.add_job(5, 1.0)
    assert sched.next_job(0.0) == (5, 0.0)
    sched.complete(5, 4.25, 0.1, False)
    assert sched.next_release() == 5.0
    assert sched.next_job(4.9) is None
    assert sched.next_job(5.0) == (5, 0.0)
    st = sched.job_stats(5)
    assert (st.runs, st.failures, st.skipped) == (1, 1, 4)
    assert sched.bus_stats().skipped == 4


def test_control_job_jumps_the_queue() -> None:
    sched = PollScheduler()
    for job_id in range(200):
        sched.add_job(job_id, 5.0, LANE_CYCLIC, 0.0, 0.2)
    # everything is long overdue
    assert sched.next_job(60.0) is not None
    sched.submit(10_000, LANE_CONTROL, 59.0)
    sched.submit(10_001, LANE_OPERATOR, 1.0)
    sched.submit(10_002, LANE_EVENT, 0.5)
    assert sched.next_job(60.0) == (10_000, 1.0)
    assert sched.next_job(60.0) == (10_001, 59.0)
    assert sched.next_job(60.0) == (10_002, 59.5)
    job_id, _ = sched.next_job(60.0) or (None, None)
    assert job_id in range(200)
    # a one-shot runs once and its id is free again
    sched.complete(10_000, 60.1, 0.1, True)
    assert 10_000 not in sched
    with pytest.raises(SchedulerError, match="unknown job_id 10000"):
        sched.job_stats(10_000)
    sched.submit(10_000, LANE_CONTROL, 61.0)
    assert sched.next_job(61.0) == (10_000, 0.0)


def test_one_shot_in_the_future_waits() -> None:
    sched = PollScheduler()
    sched.submit(1, LANE_OPERATOR, 10.0)
    assert sched.next_job(9.99) is None
    assert sched.next_release() == 10.0
    assert sched.next_job(10.0) == (1, 0.0)
    assert sched.next_release() is None
    sched.complete(1, 10.2, 0.2, True)
    assert len(sched) == 0


def test_equal_deadlines_are_fifo() -> None:
    sched = PollScheduler()
    for job_id in (7, 3, 9):
        sched.submit(job_id, LANE_EVENT, 1.0)
    assert [sched.next_job(2.0)[0] for _ in range(3)] == [7, 3, 9]  # type: ignore[index]


def _overloaded(n: int = 30, period: float = 3.0, tx: float = 0.2) -> PollScheduler:
    sched = PollScheduler(max_utilisation=0.9)
    for job_id in range(n):
        sched.add_job(job_id, period, LANE_CYCLIC, 0.0, tx)
    return sched


def test_overloaded_bus_stretches_and_runs_everyone() -> None:
    # 30 jobs × 0.2 s every 3 s = demand 2.0, limit 0.9
    sched = _overloaded()
    bus = sched.bus_stats()
    assert bus.demand == pytest.approx(2.0)
    assert bus.stretch == pytest.approx(2.0 / 0.9)
    now, runs = simulate(sched, 0.0, 1200.0, lambda _id: 0.2)
    bus = sched.bus_stats()
    assert bus.stretch > 1
    assert bus.busy_s / now <= 0.91
    effective = 3.0 * bus.stretch
    for job_id in range(30):
        st = sched.job_stats(job_id)
        assert st.effective_period_s == pytest.approx(effective)
        assert st.runs == pytest.approx(1200.0 / effective, abs=2)
        starts = [t for t, _ in runs[job_id]]
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        # nobody starves: steady gaps close to the stretched period
        assert max(gaps[1:]) <= effective + 0.2 * 30
    assert bus.lateness_max_s < 6.0


def test_unstretch_when_load_drops() -> None:
    sched = _overloaded()
    now, _ = simulate(sched, 0.0, 300.0, lambda _id: 0.2)
    assert sched.bus_stats().stretch > 2
    for job_id in range(10, 30):
        sched.remove_job(job_id)
    # 10 × 0.2 / 3 = 0.67 fits: periods back to normal at once
    bus = sched.bus_stats()
    assert bus.stretch == 1.0
    assert bus.demand == pytest.approx(2.0 / 3.0)
    before = {i: sched.job_stats(i).runs for i in range(10)}
    _now2, _ = simulate(sched, now, now + 300.0, lambda _id: 0.2)
    for job_id in range(10):
        st = sched.job_stats(job_id)
        assert st.effective_period_s == 3.0
        assert st.runs - before[job_id] >= 99


def test_unstretch_when_replies_get_faster() -> None:
    sched = _overloaded(tx=0.05)  # expected 0.05 s: demand 0.5, no stretch
    assert sched.bus_stats().stretch == 1.0
    # real replies take 0.2 s: the EWMA finds the overload and stretches
    now, _ = simulate(sched, 0.0, 200.0, lambda _id: 0.2)
    assert sched.bus_stats().stretch == pytest.approx(2.0 / 0.9, rel=0.06)
    # the bus speeds up: 0.05 s again, and the stretch goes away
    simulate(sched, now, now + 400.0, lambda _id: 0.05)
    bus = sched.bus_stats()
    assert bus.stretch == 1.0
    assert bus.demand == pytest.approx(0.5, rel=0.01)


def test_control_lane_is_not_stretched() -> None:
    sched = _overloaded()
    sched.add_job(99, 1.0, LANE_CONTROL, 0.0, 0.05)
    assert sched.job_stats(99).effective_period_s == 1.0
    assert sched.bus_stats().stretch == pytest.approx(2.0 / (0.9 - 0.05))
    _, runs = simulate(sched, 0.0, 100.0, lambda i: 0.05 if i == 99 else 0.2)
    assert len(runs[99]) >= 99
    # only waits for the transaction already on the wire
    assert max(lat for _, lat in runs[99]) <= 0.2 + 1e-9


def test_postpone_for_quarantine() -> None:
    sched = PollScheduler()
    sched.add_job(1, 1.0)
    sched.add_job(2, 1.0)
    sched.postpone(1, 60.0)
    assert sched.next_job(0.0) == (2, 0.0)
    assert sched.next_job(0.5) is None
    # while running: the back-off applies at completion
    sched.postpone(2, 30.0)
    sched.complete(2, 0.2, 0.2, False)
    assert sched.next_release() == 30.0
    _, runs = simulate(sched, 0.2, 62.5, lambda _id: 0.1)
    assert [t for t, _ in runs[2]][:3] == pytest.approx([30.0, 31.0, 32.0])
    assert [t for t, _ in runs[1]] == pytest.approx([60.0, 61.0, 62.0])


def test_remove_job() -> None:
    sched = PollScheduler()
    sched.add_job(1, 1.0, expected_duration_s=0.1)
    sched.add_job(2, 2.0, expected_duration_s=0.1)
    assert len(sched) == 2 and 1 in sched and "x" not in sched
    sched.remove_job(1)
    assert len(sched) == 1 and 1 not in sched
    assert sched.bus_stats().demand == pytest.approx(0.05)
    assert sched.next_job(0.0) == (2, 0.0)
    assert sched.next_job(0.0) is None
    # removing a running job: its completion is then an unknown id
    sched.remove_job(2)
    with pytest.raises(SchedulerError, match="unknown job_id 2"):
        sched.complete(2, 0.1, 0.1, True)
    assert sched.next_release() is None
    # the id can be reused
    sched.add_job(1, 5.0)
    assert sched.job_stats(1).runs == 0


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda s: s.add_job(1, 1.0), r"job_id 1 is already scheduled"),
        (lambda s: s.submit(1, LANE_CONTROL, 0.0), r"job_id 1 is already scheduled"),
        (lambda s: s.add_job(2, 0.0), r"period_s must be .* > 0, got 0"),
        (lambda s: s.add_job(2, -5.0), r"period_s must be .* > 0, got -5"),
        (lambda s: s.add_job(2, math.nan), r"period_s .* got NaN"),
        (lambda s: s.add_job(2, math.inf), r"period_s .* got inf"),
        (lambda s: s.add_job(2, 1.0, 4), r"lane must be 0\.\.3 .*got 4"),
        (lambda s: s.add_job(2, 1.0, -1), r"lane must be 0\.\.3 .*got -1"),
        (lambda s: s.add_job(2, 1.0, 2**70), r"lane must be an int in 0\.\.3"),
        (lambda s: s.add_job(2**64, 1.0), r"job_id must be an int"),
        (lambda s: s.add_job(2, 1.0, 3, math.nan), r"first_release .* got NaN"),
        (lambda s: s.add_job(2, 1.0, 3, 0.0, -0.1), r"expected_duration_s .* >= 0"),
        (lambda s: s.submit(2, 9, 0.0), r"lane must be 0\.\.3"),
        (lambda s: s.submit(2, 0, math.nan), r"release .* got NaN"),
        (lambda s: s.next_job(math.nan), r"now must be a finite number"),
        (lambda s: s.complete(1, 0.0, 0.1, True), r"job_id 1 is not running"),
        (lambda s: s.complete(7, 0.0, 0.1, True), r"unknown job_id 7"),
        (lambda s: s.remove_job(7), r"unknown job_id 7"),
        (lambda s: s.postpone(7, 1.0), r"unknown job_id 7"),
        (lambda s: s.postpone(1, math.inf), r"release .* got inf"),
        (lambda s: s.job_stats(7), r"unknown job_id 7"),
    ],
)
def test_bad_arguments_raise_and_change_nothing(
    call: Callable[[PollScheduler], object], pattern: str
) -> None:
    sched = PollScheduler()
    sched.add_job(1, 1.0, LANE_CYCLIC, 0.0, 0.1)
    with pytest.raises(SchedulerError, match=pattern):
        call(sched)
    assert len(sched) == 1
    assert sched.bus_stats().demand == pytest.approx(0.1)
    assert sched.next_job(0.0) == (1, 0.0)


def test_bad_complete_arguments() -> None:
    sched = PollScheduler()
    sched.add_job(1, 1.0)
    assert sched.next_job(0.0) == (1, 0.0)
    with pytest.raises(SchedulerError, match=r"duration_s .* >= 0, got -1"):
        sched.complete(1, 1.0, -1.0, True)
    with pytest.raises(SchedulerError, match="now must be"):
        sched.complete(1, math.nan, 0.1, True)
    sched.complete(1, 0.1, 0.1, True)  # still running after the bad calls


@pytest.mark.parametrize("limit", [0.0, -0.5, 1.01, math.nan])
def test_bad_max_utilisation(limit: float) -> None:
    with pytest.raises(SchedulerError, match=r"max_utilisation must be in \(0, 1\]"):
        PollScheduler(limit)


def test_scheduler_error_is_a_value_error() -> None:
    assert issubclass(SchedulerError, core.CoreError)
    assert issubclass(SchedulerError, ValueError)


def test_one_shot_postpone_rules() -> None:
    sched = PollScheduler()
    sched.submit(1, LANE_EVENT, 0.0)
    sched.postpone(1, 5.0)
    assert sched.next_job(1.0) is None
    assert sched.next_job(5.0) == (1, 0.0)
    with pytest.raises(SchedulerError, match="running one-shot"):
        sched.postpone(1, 9.0)


@settings(max_examples=60, deadline=None)
@given(
    jobs=st.lists(
        st.tuples(
            st.floats(0.5, 30.0),
            st.integers(0, 3),
            st.floats(0.0, 10.0),
            st.floats(0.001, 0.5),
        ),
        min_size=1,
        max_size=25,
    ),
    limit=st.floats(0.5, 1.0),
)
def test_property_every_periodic_job_runs(
    jobs: list[tuple[float, int, float, float]], limit: float
) -> None:
    """Whatever the load, every job runs, and cyclic periods are stretched by
    one common factor that brings the estimated demand within the limit."""
    sched = PollScheduler(limit)
    for job_id, (period, lane, first, tx) in enumerate(jobs):
        sched.add_job(job_id, period, lane, first, tx)
    fixed = sum(tx / p for p, lane, _, tx in jobs if lane != LANE_CYCLIC)
    cyclic = sum(tx / p for p, lane, _, tx in jobs if lane == LANE_CYCLIC)
    horizon = 40.0 * max(p for p, *_ in jobs)
    _, runs = simulate(sched, 0.0, horizon, lambda i: jobs[i][3])
    bus = sched.bus_stats()
    if fixed + cyclic <= limit:
        assert bus.stretch == 1.0
    elif fixed < 0.9 * limit:
        assert fixed + cyclic / bus.stretch == pytest.approx(limit, rel=1e-6)
    if fixed <= limit:
        for job_id in range(len(jobs)):
            assert runs[job_id], f"job {job_id} never ran"
