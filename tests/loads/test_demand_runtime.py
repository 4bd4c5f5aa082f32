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
from typing import Any

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
        # meters present on the wire but not loads (incoming / outgoing feeders)
        self.extra: dict[str, float | None] = {}

    def write(self) -> None:
        for name, relay in self.relays.items():
            self.image.write(relay.power, 0.0 if relay.open else self.kw.get(name, 0.0))
        for tag, value in self.extra.items():
            if value is None:
                self.image.invalidate(tag, "no answer")
            else:
                self.image.write(tag, value)

    def total(self) -> float:
        return sum(self.kw.get(n, 0.0) for n, r in self.relays.items() if not r.open)


def operations(relays: dict[str, FakeRelay]) -> list[str]:
    return [f"{k} {n}" for n, r in relays.items() for k in r.sent if k in SWITCHING]


async def run(rt: LoadsRuntime, plant: Plant, now: list[float], seconds: int) -> None:
    for _ in range(seconds):
        plant.write()
        await rt.control()
        if rt._dispatches:
            # the relays confirm at once (read-back right after the send)
            await asyncio.wait_for(asyncio.gather(*list(rt._dispatches)), 10)
        now[0] += 1


async def start(tmp_path, groups, kw, n=4):
    now = [T0]
    journal, image, relays, rt = await make(tmp_path, site(groups, n), clock=lambda: now[0])
    plant = Plant(image, relays, kw)
    return journal, image, relays, rt, plant, now


async def test_steady_130_kw_against_100_kw_with_defaults_trips_twice_then_holds(tmp_path):
    # Defaults only: window 5 min, alarm time 300 s, restore delay 600 s, hysteresis 0.
    group = {
        "name": "g",
        "members": ["l0", "l1", "l2"],
        "rounds": [{"name": "r1", "loads": ["l1"]}, {"name": "r2", "loads": ["l2"]}],
        "limit_kw": 100.0,
    }
    # l0 is the part nobody sheds: 90 + 20 + 20 = 130 kW
    journal, image, relays, rt, plant, now = await start(
        tmp_path, [group], {"l0": 90.0, "l1": 20.0, "l2": 20.0}
    )
    await run(rt, plant, now, 4 * 3600)
    # By hand: 130 > 100 from t = 0; r1 trips at t = 300 (110 kW); at t = 600 the
    # 5-min average is 110 > 100 → r2 trips (90 kW). Restoring r2 would give
    # 90 + 20 = 110 > 100 − 0, restoring r1 likewise: both stay open for 4 h.
    assert operations(relays) == ["trip l1", "trip l2"]
    assert plant.total() == 90.0
    assert image.value("demand/groups/g/rounds_shed") == 2
    journal.close()
