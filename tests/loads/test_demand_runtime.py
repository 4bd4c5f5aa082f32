"""Demand-limit control through the load runtime, in virtual time, against a plant model.

The plant is the test's own physics: each load draws a fixed power while its
relay is closed and nothing while it is open; every virtual second the test
writes each meter's ``power_active_total`` into the image (the tag the
drivers write), runs one ``control`` cycle and lets the commands it issued be
confirmed by the relays' read-back. Expected counts and times are worked out
by hand in the comments.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from controller.journal import Journal
from controller.loads.config import LoadsConfig
from controller.loads.runtime import LoadsRuntime
from controller.process_image import ProcessImage

from .test_runtime import FakeRelay, make

T0 = dt.datetime(2026, 3, 2, 10, 0, 0).timestamp()
SWITCHING = ("trip", "close_allowed", "direct_close")


def site(groups: list[dict[str, Any]], n: int = 4) -> LoadsConfig:
    return LoadsConfig.model_validate(
        {
            "loads": [
                {"name": f"l{i}", "bus": "b", "address": f"{i:012d}", "feeder": "f1"}
                for i in range(n)
            ],
            "no_trip": {"windows": []},
            "confirm": {"reread_interval_s": 0.0, "max_rereads": 0},
            "rate_limit": {"per_feeder_per_s": 100.0},
            "groups": groups,
        }
    )


class Plant:
    """Fixed power per load while its relay is closed (the meters' own view)."""

    def __init__(self, image: ProcessImage, relays: dict[str, FakeRelay], kw: dict[str, float]):
        self.image = image
        self.relays = relays
        self.kw = kw
        # meters on the wire that are not loads (incoming / outgoing feeders): tag →
        # reading now (None: the meter does not answer)
        self.extra: dict[str, Callable[[], float | None]] = {}

    def write(self) -> None:
        for name, relay in self.relays.items():
            self.image.write(relay.power, 0.0 if relay.open else self.kw.get(name, 0.0))
        for tag, reading in self.extra.items():
            value = reading()
            if value is None:
                self.image.invalidate(tag, "no answer")
            else:
                self.image.write(tag, value)

    def total(self) -> float:
        return sum(self.kw.get(n, 0.0) for n, r in self.relays.items() if not r.open)


def operations(relays: dict[str, FakeRelay]) -> list[str]:
    return [f"{k} {n}" for n, r in relays.items() for k in r.sent if k in SWITCHING]


async def run(
    rt: LoadsRuntime, plant: Plant, now: list[float], seconds: int
) -> list[tuple[int, str]]:
    """``seconds`` control cycles, one a virtual second; the switching done, (t − T0, op)."""
    done: list[tuple[int, str]] = []
    for _ in range(seconds):
        before = {n: len(r.sent) for n, r in plant.relays.items()}
        plant.write()
        await rt.control()
        if rt._dispatches:
            # the relays confirm at once (read-back right after the send)
            await asyncio.wait_for(asyncio.gather(*list(rt._dispatches)), 10)
        for n, r in plant.relays.items():
            done += [(int(now[0] - T0), f"{k} {n}") for k in r.sent[before[n] :] if k in SWITCHING]
        now[0] += 1
    return done


@dataclass
class Site:
    journal: Journal
    image: ProcessImage
    relays: dict[str, FakeRelay]
    rt: LoadsRuntime
    plant: Plant
    now: list[float]

    async def run(self, seconds: int) -> list[tuple[int, str]]:
        return await run(self.rt, self.plant, self.now, seconds)


async def start(tmp_path, groups, kw, n=4) -> Site:
    now = [T0]
    journal, image, relays, rt = await make(tmp_path, site(groups, n), clock=lambda: now[0])
    return Site(journal, image, relays, rt, Plant(image, relays, kw), now)


async def test_steady_130_kw_against_100_kw_with_defaults_trips_twice_then_holds(tmp_path):
    # Defaults only: window 5 min, alarm time 300 s, restore delay 600 s, hysteresis 0.
    group = {
        "name": "g",
        "members": ["l0", "l1", "l2"],
        "rounds": [{"name": "r1", "loads": ["l1"]}, {"name": "r2", "loads": ["l2"]}],
        "limit_kw": 100.0,
    }
    # l0 is the part nobody sheds: 90 + 20 + 20 = 130 kW
    s = await start(tmp_path, [group], {"l0": 90.0, "l1": 20.0, "l2": 20.0})
    await s.run(4 * 3600)
    # By hand: 130 > 100 from t = 0; r1 trips at t = 300 (110 kW); at t = 600 the
    # 5-min average is 110 > 100 → r2 trips (90 kW). Restoring r2 would give
    # 90 + 20 = 110 > 100 − 0, restoring r1 likewise: both stay open for 4 h.
    assert operations(s.relays) == ["trip l1", "trip l2"]
    assert s.plant.total() == 90.0
    assert s.image.value("demand/groups/g/rounds_shed") == 2
    s.journal.close()


FAST = {"window_min": 1, "restore_delay_s": 300.0, "hysteresis_kw": 5.0}


async def test_no_restore_while_demand_plus_shed_power_exceeds_limit_minus_hysteresis(tmp_path):
    group = {
        "name": "g",
        "members": ["l0", "l1", "l2"],
        "rounds": [
            {"name": "r1", "loads": ["l1"], "alarm_s": 60},
            {"name": "r2", "loads": ["l2"], "alarm_s": 60},
        ],
        "limit_kw": 100.0,
        **FAST,
    }
    s = await start(tmp_path, [group], {"l0": 75.0, "l1": 20.0, "l2": 20.0})
    # 75 + 20 + 20 = 115 > 100: r1 trips after 60 s → 95 kW; the 1-min average
    # (115(60−k) + 95k)/60 is <= 100 from k = 45, before r2's alarm time (t = 120)
    assert await s.run(600) == [(60, "trip l1")]
    assert s.image.value("demand/groups/g/shed_kw") == 20.0
    # l0 75 → 70 kW: demand 90 <= 95 = 100 − 5, but 90 + 20 (r1's shed power) = 110 > 95
    s.plant.kw["l0"] = 70.0
    assert await s.run(3600) == []
    assert s.image.value("demand/groups/g/state") == "shed"
    # l0 70 → 50 kW at t = 4200: r1 fits once average + 20 <= 95, average <= 75; the
    # window at 4200 + k holds k + 1 samples of 70 and 59 − k of 90:
    # (70(k+1) + 90(59−k))/60 <= 75 ⇔ k >= 44 → from 4244, + 300 s → close-allowed at 4544
    s.plant.kw["l0"] = 50.0
    assert await s.run(600) == [(4544, "close_allowed l1")]
    assert s.image.value("demand/groups/g/rounds_shed") == 0
    assert s.image.value("demand/groups/g/shed_kw") == 0.0
    s.journal.close()


SECURITY_GROUP = {
    "name": "g",
    "members": ["l0", "l1", "l2"],
    "rounds": [
        {"name": "r1", "loads": ["l1"], "alarm_s": 60},
        {"name": "r2", "loads": ["l2"], "alarm_s": 60},
    ],
    "limit_kw": 100.0,
    "security_kw": 80.0,
    **FAST,
}


async def test_shedding_stops_at_the_security_value(tmp_path):
    s = await start(tmp_path, [SECURITY_GROUP], {"l0": 75.0, "l1": 20.0, "l2": 30.0})
    # 75 + 20 + 30 = 125 kW: r1 trips at t = 60 (125 − 20 = 105 >= 80), 105 > 100 still;
    # r2 would leave 105 − 30 = 75 kW < 80 kW (security): it is not tripped, for an hour
    assert await s.run(3600) == [(60, "trip l1")]
    assert s.plant.total() == 105.0
    assert s.rt.alarms is not None and s.rt.alarms.get("demand_over_limit:demand/g").active
    await s.journal.flush()
    events = [
        r["message"] for r in s.journal.query("SELECT message FROM events WHERE kind='loads'")
    ]
    assert (
        events.count(
            "demand limit g: round r2 not tripped, shedding stops at the security value 80 kW "
            "(105.0 kW would fall to 75.0 kW)"
        )
        == 1
    )
    s.journal.close()


async def test_a_limit_below_the_security_value_is_refused_and_changes_nothing(tmp_path):
    from controller.api import CommandRefused, CommandRequest
    from controller.loads.sink import DemandLimitSink
    from controller.loads.switching import LoadsError

    s = await start(tmp_path, [SECURITY_GROUP], {"l0": 50.0, "l1": 20.0, "l2": 30.0})
    reason = (
        "limit_kw: must be >= 80 kW (group g's security_kw, the supply the site always keeps) "
        "and <= 1e+07 kW (got 79.5)"
    )
    with pytest.raises(LoadsError) as err:
        await s.rt.set_demand_limit("g", 79.5, who="emma", why="tight evening")
    assert str(err.value) == reason
    request = CommandRequest(
        kind="set_demand_limit",
        target="demand/groups/g",
        args={"limit_kw": 79.5},
        user="emma",
        role="engineer",
        reason="tight evening",
        token="tok-1",
        armed_at=0.0,
    )
    with pytest.raises(CommandRefused, match="security_kw"):
        await DemandLimitSink(s.rt).submit(request)
    assert s.rt.groups["g"].override_kw is None
    assert s.journal.query("SELECT COUNT(*) FROM ld_demand_overrides")[0][0] == 0
    assert s.image.value("demand/groups/g/limit_kw") == 100.0
    assert s.image.value("demand/groups/g/limit_source") == "configured"
    # the security value itself is a limit the group can keep
    await s.rt.set_demand_limit("g", 80.0, who="emma", why="tight evening")
    assert s.image.value("demand/groups/g/limit_kw") == 80.0
    s.journal.close()


IN = "buses/b/meters/000000000100/power_active_total"
OUT = "buses/b/meters/000000000101/power_active_total"
SIGNED_GROUP = {
    "name": "g",
    # the site's demand: what comes in on the incomer minus what leaves on an outgoing feeder
    "members": [{"meter": "b/000000000100", "sign": 1}, {"meter": "b/000000000101", "sign": -1}],
    "rounds": [{"name": "r1", "loads": ["l1"], "alarm_s": 60}],
    "limit_kw": 100.0,
    "security_kw": 50.0,
    **FAST,
}


async def signed_site(tmp_path) -> tuple[Site, list[float | None]]:
    s = await start(tmp_path, [SIGNED_GROUP], {"l1": 20.0})
    s.image.define(IN, "kW")
    s.image.define(OUT, "kW")
    out_kw: list[float | None] = [30.0]
    # the incomer carries 130 kW of the rest of the site plus l1 when it is closed
    s.plant.extra[IN] = lambda: 130.0 + s.plant.total()
    s.plant.extra[OUT] = lambda: out_kw[0]
    return s, out_kw


async def test_signed_group_is_incoming_minus_outgoing(tmp_path):
    s, out_kw = await signed_site(tmp_path)
    assert await s.run(1) == []
    # 150 kW in − 30 kW out = 120 kW (not 180, not 150)
    assert s.image.value("demand/groups/g/power_kw") == 120.0
    assert s.image.value("demand/groups/g/average_kw") == 120.0
    assert s.image.value("demand/groups/g/quality") == "good"
    # 120 > 100: l1 (20 kW by its own meter) trips after 60 s → 130 − 30 = 100 kW, held
    assert await s.run(1200) == [(60, "trip l1")]
    assert s.image.value("demand/groups/g/power_kw") == 100.0
    assert s.image.value("demand/groups/g/shed_kw") == 20.0
    # 60 kW leave on the outgoing feeder from t = 1201: 130 − 60 = 70, 70 + 20 <= 95 once
    # the average is <= 75: (70(k+1) + 100(59−k))/60 <= 75 ⇔ k >= 49 → 1250, + 300 s
    out_kw[0] = 60.0
    assert await s.run(600) == [(1550, "close_allowed l1")]
    s.journal.close()


async def test_a_member_without_a_reading_makes_the_group_bad_and_nothing_switches(tmp_path):
    s, out_kw = await signed_site(tmp_path)
    assert s.rt.alarms is not None
    # over the limit (120 kW) from t = 0; the outgoing meter stops answering at t = 30,
    # before r1's alarm time: an hour without switching, the group Bad and alarmed
    assert await s.run(30) == []
    out_kw[0] = None
    assert await s.run(3600) == []
    bad = s.rt.alarms.get("demand_quality_bad:demand/g")
    assert bad.active
    assert "meter b/000000000101: no answer" in bad.message
    assert s.image.value("demand/groups/g/quality") == "bad"
    assert s.image.get("demand/groups/g/average_kw").quality.name == "BAD"
    # it answers again at t = 3630: the alarm clears, and r1's 60 s alarm time
    # counts from there (Good readings only): trip at 3690
    out_kw[0] = 30.0
    assert await s.run(600) == [(3690, "trip l1")]
    assert not s.rt.alarms.get("demand_quality_bad:demand/g").active
    assert s.image.value("demand/groups/g/quality") == "good"
    # shed (100 kW); the outgoing feeder now takes 60 kW: 70 + 20 <= 95 would restore
    # after 300 s, but the meter fails again within them: nothing comes back while Bad
    out_kw[0] = 60.0
    assert await s.run(100) == []
    out_kw[0] = None
    assert await s.run(3600) == []
    assert s.rt.groups["g"].shed == [0]
    s.journal.close()


async def test_start_up_before_the_first_polls_is_bad_without_an_alarm(tmp_path):
    # the outgoing meter is defined but not polled yet (as at start-up): the group is
    # Bad and switches nothing, but raises no alarm within one averaging window
    # (FAST: window_min = 1 → 60 s from the first cycle at t = 0); a meter still never
    # read after that is alarmed
    s, _out_kw = await signed_site(tmp_path)
    assert s.rt.alarms is not None
    del s.plant.extra[OUT]  # never written: its tag keeps "not yet read"
    assert await s.run(60) == []  # t = 0 … 59
    assert s.image.value("demand/groups/g/quality") == "bad"
    assert QUALITY_KEY not in {a.key for a in s.rt.alarms}
    assert await s.run(1) == []  # t = 60: the window has passed
    assert s.rt.alarms.get(QUALITY_KEY).active


async def test_first_polls_arriving_in_time_raise_nothing(tmp_path):
    s, out_kw = await signed_site(tmp_path)
    assert s.rt.alarms is not None
    del s.plant.extra[OUT]
    assert await s.run(20) == []
    s.plant.extra[OUT] = lambda: out_kw[0]  # the first poll answers at t = 20
    assert await s.run(1) == []
    assert s.image.value("demand/groups/g/quality") == "good"
    assert QUALITY_KEY not in {a.key for a in s.rt.alarms}


QUALITY_KEY = "demand_quality_bad:demand/g"
