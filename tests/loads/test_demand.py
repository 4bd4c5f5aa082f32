"""Demand-limit control in virtual time: shed round by round, stop, restore staggered."""

from __future__ import annotations

import datetime as dt

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
        return {n: LoadView(self.closed[n], self.keep_power[n]) for n in self.kw}


def run(g: DemandGroup, plant: Plant, seconds: int, start: int = 0, switch: bool = True):
    alarms = []
    notes = []
    for s in range(start, start + seconds):
        now = T0 + s
        res = g.step(now, dt.datetime.fromtimestamp(now), plant.total(), plant.views())
        alarms += [(s, a.active) for a in res.alarms]
        notes += res.notes
        for intent in res.intents:
            plant.log.append((s, intent.kind, intent.load))
            if switch and not intent.dry_run:
                plant.closed[intent.load] = intent.kind != "trip"
            g.result(intent, True, now)
    return alarms, notes


def test_overload_130_percent_sheds_round_by_round_then_restores_staggered():
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
    assert g.status() == "restoring"
    # demand falls (base load drops): restore after the delay, last round first, staggered
    plant.kw["base"] = 20.0
    run(g, plant, 900, start=300)
    closes = [(s, load) for s, k, load in plant.log if k == "direct_close"]
    assert [c[1] for c in closes] == ["l2", "l1"]
    below = closes[0][0]
    assert closes[1][0] - below == 30  # staggered
    assert all(plant.closed.values())
    assert g.status() == "normal"


def test_restore_waits_for_the_delay_and_not_while_over():
    plant = Plant()
    g = DemandGroup(group())
    run(g, plant, 300)
    first_close_before = [x for x in plant.log if x[1] == "direct_close"]
    assert first_close_before == []  # 90 kW ≤ 95 but the delay (300 s) has not passed since ~150 s
    # still 90 kW: the restore would put it over again, and it does: the group sheds again
    run(g, plant, 600, start=300)
    kinds = [k for _, k, _ in plant.log]
    assert "direct_close" in kinds


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


def test_below_security_value_never_sheds():
    plant = Plant()
    plant.kw = {"base": 30.0, "l1": 10.0, "l2": 5.0, "l3": 0.0, "l4": 0.0}
    g = DemandGroup(group(limit_kw=40.0, security_kw=40.0, hysteresis_kw=1.0))
    run(g, plant, 200)
    assert [x for x in plant.log if x[1] == "trip"]  # 45 > 40 and > 40: sheds
    plant2 = Plant()
    plant2.kw = {"base": 30.0, "l1": 10.0, "l2": 5.0, "l3": 0.0, "l4": 0.0}
    # a schedule lowers the limit below the security value: hold at the security value
    g2 = DemandGroup(
        group(
            limit_kw=100.0,
            security_kw=50.0,
            schedule=[{"start": "09:00", "end": "12:00", "limit_kw": 30.0}],
        )
    )
    run(g2, plant2, 300)
    assert g2.limit_kw == 30.0
    assert plant2.log == []


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
