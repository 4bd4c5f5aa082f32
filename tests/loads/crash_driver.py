"""Test-only: a trip through the real executor against the simulator process, to be SIGKILLed.

    python crash_driver.py FIELD_TOML JOURNAL MODE

Reconciles whatever a killed run left pending (read-back through the bus,
never a re-send) and prints ``RECONCILED {json}``. MODE:

- ``before``: journal a trip, stop right after ``sent`` is on disk (before
  the 1C goes out), print ``SENT <id>`` and wait to be killed;
- ``after``: the 1C goes out and the meter acts, then print ``APPLIED <id>``
  and wait to be killed before the read-back confirms it;
- ``reconcile``: only reconcile, then exit.
"""

import asyncio
import json
import sys
import tomllib
from pathlib import Path
from zoneinfo import ZoneInfo

from controller.commands import CommandLog
from controller.journal import Journal
from controller.loads.config import LoadsConfig
from controller.loads.switching import SwitchingExecutor, actuators_for
from controller.process_image import ProcessImage
from drivers.config import FieldConfig
from drivers.plant import FieldPlant

# the simulated meters keep Beijing time; the controller is told so, as on site
SITE_TZ = ZoneInfo("Asia/Shanghai")

LOADS = {
    "loads": [{"name": "l1", "bus": "bus1", "address": "000000000001"}],
    "confirm": {"timeout_s": 2.0, "reread_interval_s": 0.2, "max_rereads": 3},
}


async def main() -> None:
    field_path, journal_path, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    field = FieldConfig.model_validate(tomllib.loads(field_path.read_text()))
    image = ProcessImage()
    plant = FieldPlant(field, image, site_tz=SITE_TZ)
    await plant.start()
    journal = Journal(journal_path)
    journal.open()
    commands = CommandLog(journal)
    commands.load()
    cfg = LoadsConfig.model_validate(LOADS)
    acts = actuators_for(cfg, plant, image)
    ex = SwitchingExecutor(cfg, commands, acts, image=image)
    report = await commands.reconcile(ex.reread)
    print("RECONCILED", json.dumps({"examined": report.examined, **report.outcomes}), flush=True)
    if mode == "reconcile":
        await plant.stop()
        journal.close()
        return
    relay = acts["l1"]
    real_send = relay.send

    async def send(kind: str, valid_until: float) -> None:
        if mode == "before":
            print(f"SENT {cmd_id}", flush=True)
            await asyncio.Event().wait()  # killed here: journaled sent, nothing on the wire
        await real_send(kind, valid_until)
        print(f"APPLIED {cmd_id}", flush=True)
        await asyncio.Event().wait()  # killed here: applied, not yet confirmed

    relay.send = send  # type: ignore[method-assign]
    cmd_id = f"crash-{mode}"
    await ex.submit("trip", "l1", who="crash-test", why="sigkill", command_id=cmd_id)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
