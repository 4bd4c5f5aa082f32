"""A coil load on a simulated Modbus TCP load-control terminal: confirmed by a real re-read,
and watched for outputs moved by something else (a local panel, another master)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient

from controller.alarms import AlarmEngine
from controller.commands import CommandLog, CommandState
from controller.journal import Journal
from controller.loads.config import LoadsConfig
from controller.loads.switching import SwitchingExecutor, actuators_for
from controller.process_image import ProcessImage
from tests.drivers.test_modbus import lct_config

from .conftest import free_port, wait_for

OUT1 = "buses/lct/devices/t1/out1"


def coil_loads(**over: Any) -> LoadsConfig:
    return LoadsConfig.model_validate(
        {
            "loads": [
                {"name": "c1", "type": "coil", "bus": "lct", "device": "t1", "coil": "out1"},
                {"name": "c2", "type": "coil", "bus": "lct", "device": "t1", "coil": "out2"},
            ],
            "confirm": {"timeout_s": 2.0, "reread_interval_s": 0.1, "max_rereads": 3},
            "rate_limit": {"per_feeder_per_s": 50.0},
            **over,
        }
    )


@pytest.fixture
async def terminal(tmp_path: Path) -> AsyncIterator[Any]:
    from drivers.plant import FieldPlant
    from drivers.sim.plant import SimulatedPlant

    port = free_port()
    field = lct_config(tmp_path, port)
    sim = SimulatedPlant(field)
    await sim.start()
    image = ProcessImage()
    plant = FieldPlant(field, image)
    await plant.start()
    journal = Journal(tmp_path / "journal.sqlite")
    journal.open()
    alarms = AlarmEngine(journal)
    cfg = coil_loads(mismatch_grace_s=0.3)
    ex = SwitchingExecutor(
        cfg, CommandLog(journal), actuators_for(cfg, plant, image), alarms=alarms, image=image
    )
    assert await wait_for(lambda: image.value(OUT1) is not None, 10)
    yield ex, sim.modbus["lct"].devices[0], image, alarms, port
    await plant.stop()
    await sim.stop()
    journal.close()


async def test_coil_trip_and_close_confirm_by_read_back(terminal):
    ex, device, image, _alarms, _port = terminal
    cmd = await ex.run("trip", "c1", who="otto", why="t")
    assert cmd.state is CommandState.CONFIRMED, cmd.reason
    assert not device.closed(0) and device.closed(1)
    assert image.value(OUT1) is False
    assert (await ex.actuators["c1"].read()).relay_open is True
    cmd = await ex.run("direct_close", "c1", who="otto", why="t")
    assert cmd.state is CommandState.CONFIRMED and device.closed(0)
    # keep-power does not exist on a coil: a coil never blocks its own trip
    assert ex.actuators["c1"].known().keep_power is False


async def test_coil_moved_by_another_master_raises_relay_mismatch(terminal):
    ex, device, image, alarms, port = terminal
    assert (await ex.run("trip", "c1", who="otto", why="t")).state is CommandState.CONFIRMED
    other = AsyncModbusTcpClient("127.0.0.1", port=port)
    await other.connect()
    try:
        await other.write_coil(0, True, device_id=1)  # closed from a local panel
    finally:
        other.close()
    assert await wait_for(lambda: image.value(OUT1) is True, 5)

    def raised() -> bool:
        ex.watch_relays()
        keys = {a.key for a in alarms if a.active}
        return "relay_mismatch:loads/c1" in keys

    assert await wait_for(raised, 5)
    assert (await ex.run("trip", "c1", who="otto", why="again")).state is CommandState.CONFIRMED
    assert not alarms.get("relay_mismatch:loads/c1").active
    assert not device.closed(0)
