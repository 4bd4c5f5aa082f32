"""Shared helpers: configs written to tmp dirs, an in-process simulated plant on real ptys."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from drivers.config import FieldConfig

# The zone of the simulated meters' clocks; the controller side is told it, as on site.
SITE_TZ = ZoneInfo("Asia/Shanghai")

GROUPS = """
[poll_groups.instant]
period_s = {instant}
items = ["0201FF00", "0202FF00", "02030000", "02060000"]

[poll_groups.energy]
period_s = {energy}
items = ["00010000", "00900200"]

[poll_groups.status]
period_s = {status}
items = ["04000503"]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dlt645_config(
    tmp: Path,
    *,
    meters: int = 4,
    port: str | None = None,
    instant: float = 1.0,
    energy: float = 2.0,
    status: float = 1.5,
    fast: bool = True,
    response_timeout_s: float = 0.15,
    quarantine_s: float = 3.0,
    extra_bus: str = "",
    extra: str = "",
    baud: int | None = None,
) -> FieldConfig:
    import tomllib

    port = port or str(tmp / "tty" / "bus1")
    baud = baud or (115200 if fast else 2400)
    text = (
        GROUPS.format(instant=instant, energy=energy, status=status)
        + f"""
[[buses]]
name = "bus1"
protocol = "dlt645"
port = "{port}"
# fast mode: the farm answers at once, so plan with a fast link and no delay
baud = {baud}
response_delay_s = 0.0
response_timeout_s = {response_timeout_s}
byte_timeout_s = 0.05
send_interval_s = 0.0
quarantine = {{ initial_s = {quarantine_s}, max_s = {quarantine_s * 4}, factor = 2 }}
meter_block = {{ first_address = "000000000001", count = {meters}, groups = ["instant", "energy", "status"] }}
{extra_bus}
[sim]
enabled = true
fast = {"true" if fast else "false"}
control_socket = "{tmp / "sim.sock"}"
response_delay_s = 0.02
{extra}
"""
    )
    (tmp / "field.toml").write_text(text)
    return FieldConfig.model_validate(tomllib.loads(text))


# The terminal's standard tag map: both outputs, total and per-output power.
LCT_TAGS = """[
  { name = "out1", table = "coil", address = 0, type = "bool", writable = true },
  { name = "out2", table = "coil", address = 1, type = "bool", writable = true },
  { name = "power_total", table = "input", address = 0, type = "u32", scale = 0.001, unit = "kW" },
  { name = "power_1", table = "input", address = 2, type = "u16", scale = 0.1, unit = "kW" },
  { name = "power_2", table = "input", address = 3, type = "u16", scale = 0.1, unit = "kW" },
]"""


def lct_config(tmp: Path, port: int, tags: str = LCT_TAGS) -> FieldConfig:
    """One simulated load-control terminal (pymodbus: input registers 0..3, coils 0..1)
    on a Modbus TCP bus, polled every 0.2 s; ``tags`` is the TOML list of its tags."""
    import tomllib

    text = f"""
[[buses]]
name = "lct"
protocol = "modbus_tcp"
port = "tcp://127.0.0.1:{port}"
response_timeout_s = 0.5
reconnect_initial_s = 0.2
[[buses.devices]]
name = "t1"
unit_id = 1
period_s = 0.2
tags = {tags}
[sim]
control_socket = "{tmp / "sim.sock"}"
[sim.modbus_devices.t1]
outputs = 2
power_kw = 10.0
"""
    return FieldConfig.model_validate(tomllib.loads(text))


async def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        await asyncio.sleep(step)
    return predicate()


@pytest.fixture
async def running() -> Any:
    """Start a SimulatedPlant and a FieldPlant for a config; stop both afterwards."""
    from controller.process_image import ProcessImage
    from drivers.plant import FieldPlant
    from drivers.sim.plant import SimulatedPlant

    started: list[Any] = []

    async def start(
        config: FieldConfig, wall: Callable[[], float] = time.time
    ) -> tuple[SimulatedPlant, FieldPlant, ProcessImage]:
        sim = SimulatedPlant(config, wall=wall)
        await sim.start()
        started.append(sim)
        image = ProcessImage()
        # the simulated meters keep Beijing time (SimMeterConfig.timezone default)
        plant = FieldPlant(config, image, wall=wall, site_tz=SITE_TZ)
        await plant.start()
        started.append(plant)
        return sim, plant, image

    yield start
    for thing in reversed(started):
        await thing.stop()
