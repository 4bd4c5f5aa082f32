"""Clock group: a drifted meter triggers a broadcast time sync, after which it reads back in step."""

from __future__ import annotations

import time
import tomllib

from drivers.config import FieldConfig

from .conftest import wait_for


async def test_drift_beyond_limit_triggers_broadcast_sync(tmp_path, running) -> None:
    text = f"""
[poll_groups.clock]
period_s = 1.0
kind = "clock"
max_drift_s = 10
[[buses]]
name = "bus1"
protocol = "dlt645"
port = "{tmp_path / "tty" / "bus1"}"
baud = 115200
response_delay_s = 0.0
response_timeout_s = 0.2
meter_block = {{ first_address = "000000000001", count = 2, groups = ["clock"] }}
[sim]
fast = true
control_socket = "{tmp_path / "sim.sock"}"
[sim.buses.bus1.meters."000000000002"]
clock_offset_s = 120
clock_drift_s_per_day = 0
"""
    config = FieldConfig.model_validate(tomllib.loads(text))
    # mid-morning in Beijing (2026-12-01T02:00:00Z = 10:00 UTC+8), true time running
    # on from there: never within the 5 min around midnight when no sync is sent
    start = time.time()

    def wall() -> float:
        return 1_796_090_400.0 + time.time() - start

    sim, plant, image = await running(config, wall)
    bus = plant.bus("bus1")
    tag = "buses/bus1/meters/000000000002/clock_drift_s"
    assert await wait_for(lambda: bus.time_syncs >= 1, 10)
    meter = sim.farms["bus1"].meters["000000000002"]
    assert abs(meter.clock_offset_s) < 2.0
    # the next check reads the meter back in step (within the 1 s resolution of the clock)
    assert await wait_for(lambda: image.value(tag) is not None and abs(image.value(tag)) <= 2.0, 10)
    assert image.tag(tag).unit == "s"
