"""The public relay API of the buses: 1C + status word 3 read-back, coil write + read-back."""

from __future__ import annotations

import asyncio

import pytest

from controller import _core_rs as core
from drivers.dlt645_bus import ControlResult, RelayStatus
from drivers.errors import MeterException

from .conftest import dlt645_config, wait_for
from .test_modbus import lct_config

ADDR = "000000000002"


async def test_control_reads_status_word_3_back_in_the_same_slot(tmp_path, running) -> None:
    config = dlt645_config(tmp_path, meters=4, instant=0.3, energy=0.3, status=0.3)
    sim, plant, image = await running(config)
    bus = plant.bus("bus1")
    assert await wait_for(lambda: bus.relay_status(ADDR) is not None, 10)
    assert bus.relay_status(ADDR).relay_open is False
    loop = asyncio.get_running_loop()
    submitted = loop.time()
    result = await bus.control(ADDR, core.N1_TRIP)
    assert isinstance(result, ControlResult)
    assert result.acknowledged and result.read_error == ""
    assert isinstance(result.status, RelayStatus)
    assert result.status.relay_open and result.status.commanded_open
    # the 1C and its read-back are adjacent on the wire: no poll slipped in between
    after = [r for r in bus.wire_log if r.sent >= submitted]
    assert [(r.function, r.device) for r in after[:2]] == [
        (core.FN_CONTROL, ADDR),
        (core.FN_READ, ADDR),
    ]
    # the read-back is in the image, like a polled status word
    assert image.value(bus.relay_tag(ADDR, "relay_open")) is True
    assert bus.relay_status(ADDR).relay_open is True
    assert sim.farms["bus1"].meters[ADDR].relay_open is True

    status = await bus.read_relay_status(ADDR)
    assert status.relay_open and not status.keep_power
    result = await bus.control(ADDR, core.N1_DIRECT_CLOSE, read_back=False)
    assert result.status is None and result.acknowledged
    assert (await bus.read_relay_status(ADDR)).relay_open is False


async def test_control_refused_by_the_meter_raises(tmp_path, running) -> None:
    extra = f'[sim.buses.bus1.meters."{ADDR}"]\nkeep_power = true\n'
    config = dlt645_config(tmp_path, meters=2, extra=extra)
    _sim, plant, _image = await running(config)
    bus = plant.bus("bus1")
    with pytest.raises(MeterException):
        await bus.control(ADDR, core.N1_TRIP)
    status = await bus.read_relay_status(ADDR)
    assert status.keep_power and not status.relay_open
    with pytest.raises(KeyError, match="no meter"):
        await bus.control("000000000099", core.N1_TRIP)
    with pytest.raises(KeyError, match="flag"):
        bus.relay_tag(ADDR, "nonsense")


async def test_coil_write_returns_the_read_back_and_read_coil_reads_now(tmp_path, running) -> None:
    from tests.drivers.conftest import free_port

    config = lct_config(tmp_path, free_port())
    sim, plant, image = await running(config)
    bus = plant.bus("lct")
    tag = bus.coil_tag("t1", "out1")
    assert tag == "buses/lct/devices/t1/out1"
    assert await wait_for(lambda: image.value(tag) is not None, 10)
    assert await bus.write_coil("t1", "out1", False) is False
    assert image.value(tag) is False
    terminal = sim.modbus["lct"].devices[0]
    assert not terminal.closed(0)
    assert await bus.read_coil("t1", "out1") is False
    assert await bus.write_coil("t1", "out1", True) is True
    assert await bus.read_coil("t1", "out1") is True
    with pytest.raises(ValueError, match="not a coil"):
        await bus.read_coil("t1", "power_1")
    with pytest.raises(KeyError, match="no tag"):
        bus.coil_tag("t1", "out9")
