"""A Modbus device answering with exceptions: the block goes Bad with the reason, the rest
of the device and the bus carry on, and a write the device refuses fails to its caller.

The simulated load-control terminal (pymodbus) has input registers 0..3 and coils
0..1; the config here also asks for registers and a coil it does not have, as a
wrong register map on site would.
"""

from __future__ import annotations

import pytest

from controller.process_image import Quality
from drivers.config import FieldConfig
from drivers.errors import ModbusDeviceError
from tests.drivers.conftest import free_port, lct_config, running, wait_for  # noqa: F401 (fixture)

# the terminal has coils 0..1 and input registers 0..3: coil 40 and register 500 do not exist
TAGS = """[
  { name = "out1", table = "coil", address = 0, type = "bool", writable = true },
  { name = "ghost_out", table = "coil", address = 40, type = "bool", writable = true },
  { name = "power_total", table = "input", address = 0, type = "u32", scale = 0.001, unit = "kW" },
  { name = "ghost_power", table = "input", address = 500, type = "u16", scale = 0.1, unit = "kW" },
]"""


def config(tmp, port: int) -> FieldConfig:
    return lct_config(tmp, port, TAGS)


async def test_exception_replies_fail_their_block_only(tmp_path, running) -> None:  # noqa: F811
    sim, plant, image = await running(config(tmp_path, free_port()))
    bus = plant.bus("lct")
    prefix = "buses/lct/devices/t1/"
    assert await wait_for(lambda: image.value(prefix + "power_total") is not None, 10)
    assert await wait_for(lambda: bus.transactions["exception"] >= 4, 10)
    # the missing blocks are Bad and say why; the real ones are Good
    for ghost in ("ghost_power", "ghost_out"):
        tag = image.get(prefix + ghost)
        assert tag.quality is Quality.BAD and "exception" in tag.reason, (ghost, tag)
    assert image.get(prefix + "power_total").quality is Quality.GOOD
    assert image.get(prefix + "out1").quality is Quality.GOOD
    # an exception is an answer: the device is online, the link up, nothing reconnects
    assert image.value(prefix + "online") is True
    assert bus.connected and bus.transactions["io_error"] == 0
    assert not bus.quarantined("t1")

    # a write the device refuses: a clear error to the caller, the image unchanged
    before = image.get(prefix + "ghost_out")
    with pytest.raises(ModbusDeviceError, match="exception"):
        await bus.write_coil("t1", "ghost_out", False)
    assert image.get(prefix + "ghost_out").value == before.value
    # and the good output still switches
    await bus.write_coil("t1", "out1", False)
    assert image.value(prefix + "out1") is False
    assert not sim.modbus["lct"].devices[0].closed(0)
