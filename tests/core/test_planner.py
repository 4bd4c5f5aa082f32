"""Capacity planner through the binding."""

from __future__ import annotations

import math

import pytest

from controller._core_rs import PlanJob, SchedulerError, plan_bus, transaction_time

CHAR_2400_8E1 = 11 / 2400  # 4.583 ms


def dlt645_read_request(preamble: int) -> int:
    # FE×n 68 A0..A5 68 C L DI0..DI3 CS 16
    return preamble + 1 + 6 + 1 + 1 + 1 + 4 + 1 + 1


def dlt645_read_reply(preamble: int, value_bytes: int) -> int:
    return preamble + 12 + 4 + value_bytes


def test_character_time() -> None:
    assert transaction_time(2400, 11, 1, 0, 0.0) == pytest.approx(4.583e-3, abs=1e-6)


def test_formula() -> None:
    t = transaction_time(9600, 11, 8, 25, 0.01, 0.004)
    assert t == pytest.approx(33 * 11 / 9600 + 0.01 + 0.004)


def test_dlt645_one_item_read_matches_design() -> None:
    # energy 00010000 reply carries 4 value bytes; meters answer after ≥ 20 ms
    assert dlt645_read_request(0) == 16
    bare = transaction_time(2400, 11, dlt645_read_request(0), dlt645_read_reply(0, 4), 0.020)
    with_fe = transaction_time(2400, 11, dlt645_read_request(4), dlt645_read_reply(4, 4), 0.020)
    # DESIGN §5: a one-item read is ≈ 185–222 ms on the wire
    assert bare == pytest.approx(0.185, abs=0.001)
    assert with_fe == pytest.approx(0.222, abs=0.001)


def test_dlt645_bus_limit_is_5_4_reads_per_second() -> None:
    meters = 32
    job = PlanJob(
        "energy", dlt645_read_request(0), dlt645_read_reply(0, 4), 15.0, 0.020, count=meters
    )
    plan = plan_bus(2400, 11, [job])
    # DESIGN §5: one bus does ≤ 5.4 reads/s
    assert plan.max_transactions_per_s == pytest.approx(5.4, abs=0.01)
    assert plan.max_transactions_per_s <= 5.41
    # 32 meters every 15 s is ~40 % of the wire
    assert plan.utilisation == pytest.approx(meters * 0.185 / 15.0, rel=0.01)
    assert plan.feasible
    assert plan.worst_case_cycle_s == pytest.approx(meters * plan.jobs[0].transaction_s)


def test_mixed_plan_and_infeasible() -> None:
    req = dlt645_read_request(4)
    jobs = [
        PlanJob("instant", req, dlt645_read_reply(4, 9), 15.0, 0.05, count=64),
        PlanJob("energy", req, dlt645_read_reply(4, 4), 900.0, 0.05, count=64),
        PlanJob("status", req, dlt645_read_reply(4, 2), 60.0, 0.05, count=64),
    ]
    plan = plan_bus(2400, 11, jobs)
    per_job = {r.name: r for r in plan.jobs}
    assert list(per_job) == ["instant", "energy", "status"]
    for job in jobs:
        r = per_job[job.name]
        assert r.transaction_s == pytest.approx(
            transaction_time(2400, 11, job.request_bytes, job.response_bytes, 0.05)
        )
        assert r.utilisation == pytest.approx(job.count * r.transaction_s / job.period_s)
    assert plan.utilisation == pytest.approx(sum(r.utilisation for r in plan.jobs))
    assert plan.worst_case_cycle_s == pytest.approx(sum(64 * r.transaction_s for r in plan.jobs))
    # 64 meters' instant values every 15 s do not fit one 2400-baud bus
    assert plan.utilisation > 1
    assert not plan.feasible
    rate = sum(j.count / j.period_s for j in jobs)
    assert plan.max_transactions_per_s == pytest.approx(rate / plan.utilisation)
    # the same plan over two buses of 32 meters does
    half = [PlanJob(j.name, j.request_bytes, j.response_bytes, j.period_s, 0.05, 32) for j in jobs]
    assert plan_bus(2400, 11, half).feasible


def test_modbus_plan_at_9600() -> None:
    # fc03 read of 10 registers: 8-byte request, 25-byte reply, 3.5-char gap
    gap = 3.5 * 11 / 9600
    plan = plan_bus(9600, 11, [PlanJob("regs", 8, 25, 1.0, 0.005, count=20, gap_s=gap)])
    tx = 33 * 11 / 9600 + 0.005 + gap
    assert plan.jobs[0].transaction_s == pytest.approx(tx)
    assert plan.utilisation == pytest.approx(20 * tx)
    assert plan.max_transactions_per_s == pytest.approx(1 / tx)


def test_empty_plan() -> None:
    plan = plan_bus(9600, 11, [])
    assert (plan.utilisation, plan.worst_case_cycle_s, plan.max_transactions_per_s) == (0, 0, 0)
    assert plan.feasible
    assert plan.jobs == []


def test_plan_job_fields() -> None:
    job = PlanJob("x", 16, 20, 15.0, 0.02)
    assert (job.name, job.request_bytes, job.response_bytes, job.count, job.gap_s) == (
        "x",
        16,
        20,
        1,
        0.0,
    )
    assert (job.period_s, job.response_delay_s) == (15.0, 0.02)
    assert "PlanJob" in repr(job)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((0, 11, 1, 1, 0.0), "baud"),
        ((2400, 6, 1, 1, 0.0), "bits_per_char"),
        ((2400, 13, 1, 1, 0.0), "bits_per_char"),
        ((2400, 11, -1, 1, 0.0), "request_bytes"),
        ((2400, 11, 1, 70000, 0.0), "response_bytes"),
        ((2400, 11, 1, 1, math.nan), "response_delay_s"),
        ((2400, 11, 1, 1, -0.1), "response_delay_s"),
    ],
)
def test_transaction_time_bad_args(args: tuple[int, int, int, int, float], field: str) -> None:
    with pytest.raises(SchedulerError, match=field):
        transaction_time(*args)
    with pytest.raises(SchedulerError, match="gap_s"):
        transaction_time(2400, 11, 1, 1, 0.0, math.inf)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"period_s": 0.0}, r"period_s must be .* > 0"),
        ({"period_s": math.nan}, "period_s"),
        ({"count": -1}, r"count must be 0\.\.1000000"),
        ({"request_bytes": -3}, "request_bytes"),
        ({"gap_s": -1.0}, "gap_s"),
    ],
)
def test_plan_job_bad_args(kwargs: dict[str, float], field: str) -> None:
    base: dict[str, object] = {
        "name": "x",
        "request_bytes": 16,
        "response_bytes": 20,
        "period_s": 15.0,
        "response_delay_s": 0.02,
    }
    with pytest.raises(SchedulerError, match=field):
        PlanJob(**(base | kwargs))  # type: ignore[arg-type]


def test_plan_bus_bad_link() -> None:
    with pytest.raises(SchedulerError, match="baud"):
        plan_bus(-1, 11, [])
