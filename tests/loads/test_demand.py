"""Demand-limit control in virtual time: shed round by round, stop, restore staggered."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from controller.loads.config import GroupConfig
from controller.loads.demand import DemandGroup, LoadView

T0 = dt.datetime(2026, 3, 2, 10, 0, 0).timestamp()


def group(**over) -> GroupConfig:
    base = {
        "name": "g1",
        "members": ["base", "l1", "l2", "l3", "l4"],
        "rounds": [
            {"name": "r1", "loads": ["l1"], "alarm_s": 60},
            {"name": "r2", "loads": ["l2"], "alarm_s": 60},
            {"name": "r3", "loads": ["l3"], "alarm_s": 60},
            {"name": "r4", "loads": ["l4"], "alarm_s": 60},
        ],
        "limit_kw": 100.0,
        "security_kw": 40.0,
        "window_min": 1,
        "hysteresis_kw": 5.0,
        "restore_delay_s": 300.0,
        "restore_stagger_s": 30.0,
        "min_off_s": 60.0,
        "min_on_s": 60.0,
    }
    base.update(over)
    return GroupConfig.model_validate(base)


class Plant:
    """Loads with fixed power; the group total follows their relays."""

    def __init__(self) -> None:
        self.kw = {"base": 60.0, "l1": 20.0, "l2": 20.0, "l3": 15.0, "l4": 15.0}
        self.closed = dict.fromkeys(self.kw, True)
        self.keep_power: dict[str, bool] = dict.fromkeys(self.kw, False)
        self.log: list[tuple[float, str, str]] = []

    def total(self) -> float:
        return sum(p for n, p in self.kw.items() if self.closed[n])

    def views(self) -> dict[str, LoadView]:
        return {
            n: LoadView(self.closed[n], self.keep_power[n], self.kw[n] if self.closed[n] else 0.0)
            for n in self.kw
        }


def run(
    g: DemandGroup,
    plant: Plant,
    seconds: int,
    start: int = 0,
    switch: bool = True,
    customer_closes: bool = True,
):
    alarms = []
    notes = []
    for s in range(start, start + seconds):
        now = T0 + s
        res = g.step(now, dt.datetime.fromtimestamp(now), plant.total(), plant.views())
        alarms += [(s, a.active) for a in res.alarms]
        notes += res.notes
        for intent in res.intents:
            plant.log.append((s, intent.kind, intent.load))
            if intent.kind == "close_allowed" and not customer_closes:
                pass  # allowed to close; the customer has not pressed the button yet
            elif switch and not intent.dry_run:
                plant.closed[intent.load] = intent.kind != "trip"
            g.result(intent, True, now)
    return alarms, notes


def test_overload_130_percent_sheds_round_by_round_then_restores_round_by_round():
    plant = Plant()
    assert plant.total() == 130.0
    g = DemandGroup(group())
    alarms, _ = run(g, plant, 300)
    trips = [(s, load) for s, k, load in plant.log if k == "trip"]
    # alarm at once; r1 after its alarm time; r2 after its own; then below the limit: no r3
    assert alarms[0] == (0, True)
    assert trips[0] == (60, "l1")
    assert trips[1][1] == "l2" and trips[1][0] == 120
    assert len(trips) == 2
    assert plant.total() == 90.0
    assert (alarms[-1][1]) is False  # cleared once the average is within the limit
    # 90 kW + r2's 20 kW = 110 > 100 − 5: nothing may come back yet
    assert g.status() == "shed"
    assert g.shed_power() == 40.0
    # demand falls (base 60 → 20 kW at s = 300, 50 kW in all): restore, last round first
    plant.kw["base"] = 20.0
    run(g, plant, 900, start=300)
    closes = [(s, load) for s, k, load in plant.log if k == "close_allowed"]
    # By hand: r2 needs average + 20 <= 95, average <= 75. The 60-s window at
    # s = 300 + k holds k + 1 samples of 50 and 59 − k of 90:
    # (50(k+1) + 90(59−k))/60 <= 75 ⇔ k >= 21.5 → from s = 322, + 300 s delay → 622.
    # r2 is back once its last load's 30-s stagger has run (652); r1 then needs
    # 70 + 20 <= 95 held for its own 300 s from the next cycle: 653 + 300 = 953.
    assert closes == [(622, "l2"), (953, "l1")]
    assert all(plant.closed.values())
    assert g.status() == "normal"


def test_no_restore_while_demand_plus_shed_power_is_over_limit_minus_hysteresis():
    plant = Plant()
    g = DemandGroup(group(restore_mode="direct_close"))
    run(g, plant, 300)
    assert plant.total() == 90.0 and g.shed_power() == 40.0
    # an hour at 90 kW: 90 + 20 (r2) = 110 > 100 − 5 = 95 the whole time
    run(g, plant, 3600, start=300)
    assert [k for _, k, _ in plant.log] == ["trip", "trip"]
    # base 60 → 45 kW: 75 + 20 = 95 <= 95, r2 comes back (once), r1 does not (95 + 20 > 95)
    plant.kw["base"] = 45.0
    run(g, plant, 3600, start=3900)
    assert [(k, load) for _, k, load in plant.log] == [
        ("trip", "l1"),
        ("trip", "l2"),
        ("direct_close", "l2"),
    ]
    assert g.shed == [0] and g.shed_power() == 20.0


def test_a_close_allowed_load_not_yet_closed_counts_for_the_next_restore():
    plant = Plant()
    g = DemandGroup(group())
    run(g, plant, 300)
    assert plant.total() == 90.0 and g.shed == [0, 1]
    # base 60 → 35 kW: 65 kW; r2: 65 + 20 = 85 <= 95 → close-allowed l2, but its
    # customer does not close for an hour. r1: 65 + 20 (l2 may come back any moment)
    # + 20 = 105 > 95: r1 stays shed (without l2 counted, 85 <= 95 would restore it).
    plant.kw["base"] = 35.0
    run(g, plant, 3600, start=300, customer_closes=False)
    assert [(k, load) for _, k, load in plant.log] == [
        ("trip", "l1"),
        ("trip", "l2"),
        ("close_allowed", "l2"),
    ]
    assert g.allowed == {"l2": 20.0}
    # the customer closes: 85 kW in the demand now, 85 + 20 > 95: r1 still waits
    plant.closed["l2"] = True
    run(g, plant, 3600, start=3900)
    assert len(plant.log) == 3 and g.allowed == {} and g.shed == [0]


def test_dry_run_switches_nothing_and_reports_every_round():
    plant = Plant()
    g = DemandGroup(group(dry_run=True))
    run(g, plant, 400)
    trips = [x for x in plant.log if x[1] == "trip"]
    assert [load for _, _, load in trips] == ["l1", "l2", "l3", "l4"]
    assert all(plant.closed.values())
    assert plant.total() == 130.0


def test_keep_power_blocks_the_trip_and_the_next_round_goes():
    plant = Plant()
    plant.keep_power["l1"] = True
    g = DemandGroup(group())
    _, notes = run(g, plant, 200)
    trips = [load for _, k, load in plant.log if k == "trip"]
    assert "l1" not in trips
    assert trips[:1] == ["l2"]
    assert any("keep-power" in n for n in notes)
    assert plant.closed["l1"]


def test_shedding_stops_at_the_security_value():
    plant = Plant()
    plant.kw = {"base": 30.0, "l1": 10.0, "l2": 5.0, "l3": 0.0, "l4": 0.0}
    g = DemandGroup(group(limit_kw=40.0, security_kw=40.0, hysteresis_kw=1.0))
    _, notes = run(g, plant, 400)
    # 45 kW > 40 kW, but r1 would leave 45 − 10 = 35 kW < 40 kW (security): nothing trips
    assert plant.log == []
    assert g.status() == "over_limit"
    assert notes == [
        "demand limit g1: round r1 not tripped, shedding stops at the security value 40 kW "
        "(45.0 kW would fall to 35.0 kW)"
    ]
    plant2 = Plant()
    plant2.kw = {"base": 35.0, "l1": 10.0, "l2": 5.0, "l3": 0.0, "l4": 0.0}
    g2 = DemandGroup(group(limit_kw=40.0, security_kw=40.0, hysteresis_kw=1.0))
    run(g2, plant2, 400)
    # 50 kW: r1 leaves 50 − 10 = 40 kW (not below 40): trips; then 40 kW is within the limit
    assert [(k, load) for _, k, load in plant2.log] == [("trip", "l1")]


def test_a_limit_below_the_security_value_is_rejected():
    with pytest.raises(
        ValidationError, match=r"schedule\[0\]\.limit_kw: must be at least security_kw 50"
    ):
        group(security_kw=50.0, schedule=[{"start": "09:00", "end": "12:00", "limit_kw": 30.0}])
    g = DemandGroup(group(security_kw=50.0))
    with pytest.raises(ValueError, match=r"limit_kw: must be >= 50 kW \(group g1's security_kw"):
        g.check_override(30.0)
    assert g.override_kw is None


def test_minimum_on_time_delays_a_trip():
    plant = Plant()
    g = DemandGroup(group(min_on_s=600.0))
    g.last_change["l1"] = T0  # l1 just closed
    run(g, plant, 300)
    trips = [(s, load) for s, k, load in plant.log if k == "trip"]
    assert trips == []
    run(g, plant, 400, start=300)
    assert next((s, load) for s, k, load in plant.log if k == "trip") == (600, "l1")


def test_unknown_power_holds():
    plant = Plant()
    g = DemandGroup(group())
    for s in range(200):
        res = g.step(T0 + s, dt.datetime.fromtimestamp(T0 + s), None, plant.views())
        assert not res.intents
    assert g.average_kw is None
