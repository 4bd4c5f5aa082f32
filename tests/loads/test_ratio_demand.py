"""Demand control sees primary power: a 专变 customer behind a 200/5 CT, over a real pty."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from pathlib import Path

from controller.alarms import AlarmEngine
from controller.commands import CommandLog
from controller.journal import Journal
from controller.loads.config import LoadsConfig
from controller.loads.runtime import LoadsRuntime
from controller.process_image import ProcessImage
from drivers.config import FieldConfig
from drivers.plant import FieldPlant
from drivers.sim.farm import MeterFarm, PtyWire
from drivers.sim.meter import SimMeter
from drivers.site_time import host_zone

from .conftest import wait_for

ADDR = "000000000041"


class MidRng(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


async def test_demand_group_averages_primary_power(tmp_path: Path) -> None:
    config = FieldConfig.model_validate(
        {
            "poll_groups": {
                "instant": {"period_s": 0.1, "items": ["02030000"]},
                "status": {"period_s": 0.5, "items": ["04000503"]},
            },
            "buses": [
                {
                    "name": "bus1",
                    "protocol": "dlt645",
                    "port": str(tmp_path / "tty" / "bus1"),
                    "baud": 115200,
                    "response_delay_s": 0.0,
                    "response_timeout_s": 0.15,
                    "byte_timeout_s": 0.05,
                    "send_interval_s": 0.0,
                    "meters": [
                        {"address": ADDR, "groups": ["instant", "status"], "ct_ratio": "200/5"}
                    ],
                }
            ],
        }
    )
    # 120 kW primary at 19:30 (profile 1.0, noise × 1.00); the meter reads 120 / 40 = 3 kW
    now = [dt.datetime(2026, 3, 2, 19, 30).timestamp()]
    meter = SimMeter(
        tz=host_zone(), address=ADDR, peak_kw=120.0, ct_ratio=40.0, time_scale=0.0, rng=MidRng()
    )
    farm = MeterFarm(
        "bus1", [meter], char_time_s=0.0001, response_delay_s=0.0, fast=True, wall=lambda: now[0]
    )
    wire = PtyWire(farm, Path(config.buses[0].port))
    await wire.start()
    farm_task = asyncio.create_task(farm.run())
    image = ProcessImage()
    plant = FieldPlant(config, image, wall=lambda: now[0])
    await plant.start()
    journal = Journal(tmp_path / "journal.sqlite")
    journal.open()
    loads = LoadsConfig.model_validate(
        {
            "loads": [{"name": "c1", "bus": "bus1", "address": ADDR}],
            "groups": [
                {
                    "name": "g",
                    "members": ["c1"],
                    "rounds": [{"name": "r1", "loads": ["c1"]}],
                    "limit_kw": 100.0,
                    "window_min": 1,
                    "dry_run": True,
                }
            ],
        }
    )
    rt = LoadsRuntime(
        loads,
        CommandLog(journal),
        image,
        alarms=AlarmEngine(journal),
        plant=plant,
        clock=lambda: now[0],
    )
    await rt.start()
    try:
        tag = f"buses/bus1/meters/{ADDR}/power_active_total"
        assert await wait_for(lambda: image.value(tag) is not None, 10)
        for _ in range(3):
            await rt.control()
            now[0] += 1.0
        # before the ratios the group averaged the meter's 3 kW: 40× low, never over 100 kW
        assert image.value("demand/groups/g/average_kw") == 120.0
        assert image.value(tag + "_secondary") == 3.0
    finally:
        await rt.stop()
        await plant.stop()
        farm_task.cancel()
        await wire.stop()
        journal.close()


def test_max_demand_keeps_its_time_when_scaled() -> None:
    from drivers.dlt645_bus import to_primary

    # DI 01010000: (kW, time of the maximum); 0.0300 kW × 4000 = 120 kW, the time as read
    assert to_primary((0.03, "2026-03-02 19:30"), 4000.0) == (120.0, "2026-03-02 19:30")
    assert to_primary(None, 40.0) is None
    assert to_primary("2026-03-02", 40.0) == "2026-03-02"
    assert to_primary([0.5, None], 40.0) == [20.0, None]  # 0.5 × 40, element by element
