"""Loads test helpers: an in-process simulated plant on real ptys, a journal, the executor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.alarms import AlarmEngine
from controller.commands import CommandLog
from controller.journal import Journal
from controller.loads.config import LoadsConfig
from controller.loads.switching import SwitchingExecutor, actuators_for
from controller.process_image import ProcessImage
from tests.drivers.conftest import SITE_TZ, dlt645_config, free_port, wait_for

__all__ = ["Rig", "dlt645_config", "free_port", "wait_for"]

ADDR1 = "000000000001"
ADDR2 = "000000000002"
STATUS_GOOD = f"buses/bus1/meters/{ADDR1}/keep_power"


@dataclass
class Rig:
    sim: Any
    plant: Any
    image: ProcessImage
    journal: Journal
    commands: CommandLog
    alarms: AlarmEngine
    executor: SwitchingExecutor

    def meter(self, address: str) -> Any:
        return self.sim.farms["bus1"].meters[address]


def loads_config(**over: Any) -> LoadsConfig:
    base: dict[str, Any] = {
        "loads": [
            {"name": "l1", "bus": "bus1", "address": ADDR1, "feeder": "f1"},
            {"name": "l2", "bus": "bus1", "address": ADDR2, "feeder": "f1"},
        ],
        "confirm": {"timeout_s": 3.0, "reread_interval_s": 0.2, "max_rereads": 5},
        "rate_limit": {"per_feeder_per_s": 20.0},
    }
    base.update(over)
    return LoadsConfig.model_validate(base)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Any]:
    """Factory: start sim + field plant + journal + executor; stops everything afterwards."""
    from drivers.plant import FieldPlant
    from drivers.sim.plant import SimulatedPlant

    started: list[Any] = []
    journals: list[Journal] = []

    async def start(extra: str = "", loads: LoadsConfig | None = None, **kw: Any) -> Rig:
        field = dlt645_config(tmp_path, meters=2, extra=extra, **kw)
        sim = SimulatedPlant(field)
        await sim.start()
        started.append(sim)
        image = ProcessImage()
        plant = FieldPlant(field, image, site_tz=SITE_TZ)
        await plant.start()
        started.append(plant)
        journal = Journal(tmp_path / "journal.sqlite")
        journal.open()
        journals.append(journal)
        commands = CommandLog(journal)
        alarms = AlarmEngine(journal)
        cfg = loads or loads_config()
        ex = SwitchingExecutor(
            cfg,
            commands,
            actuators_for(cfg, plant, image),
            alarms=alarms,
            image=image,
        )
        assert await wait_for(lambda: image.value(STATUS_GOOD) is not None, 10)
        return Rig(sim, plant, image, journal, commands, alarms, ex)

    yield start
    for thing in reversed(started):
        await thing.stop()
    for j in journals:
        j.close()
