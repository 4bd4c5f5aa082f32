"""A meter that refuses block DIs (ERR=02) is read by single DIs, remembered in the journal.

Real parts: the simulated farm on a pty, the bus owner, a SQLite journal file
closed and opened again between the two runs.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from controller.journal import Journal
from controller.process_image import ProcessImage, Quality
from drivers.config import Dlt645BusConfig, FieldConfig
from drivers.dlt645_bus import Dlt645Bus
from drivers.plant import FieldPlant
from drivers.sim.plant import SimulatedPlant
from tests.drivers.conftest import wait_for

REFUSER = "000000000001"
NORMAL = "000000000002"

CONFIG = """
[poll_groups.instant]
period_s = 0.3
items = ["0201FF00", "0202FF00", "02030000"]

[poll_groups.energy]
period_s = 0.3
items = ["0001FF00"]

[[buses]]
name = "bus1"
protocol = "dlt645"
port = "{port}"
baud = 115200
response_delay_s = 0.0
response_timeout_s = 0.15
byte_timeout_s = 0.05
send_interval_s = 0.0
meter_block = {{ first_address = "000000000001", count = 2, groups = ["instant", "energy"] }}

[sim]
enabled = true
fast = true
control_socket = "{sock}"

# no load (currents 0) and a fixed register, so the energies are known exactly
[sim.buses.bus1.meters."000000000001"]
refuse_block_dis = true
peak_kw = 0.0
energy_kwh = 1234.5

[sim.buses.bus1.meters."000000000002"]
peak_kw = 0.0
energy_kwh = 1234.5
"""

VOLTS = ("voltage_a", "voltage_b", "voltage_c")
AMPS = ("current_a", "current_b", "current_c")
ENERGY = tuple(f"energy_fwd_active_{t}" for t in ("total", "t1", "t2", "t3", "t4"))


def config(tmp: Path) -> FieldConfig:
    text = CONFIG.format(port=tmp / "tty" / "bus1", sock=tmp / "sim.sock")
    return FieldConfig.model_validate(tomllib.loads(text))


def prefix(meter: str) -> str:
    return f"buses/bus1/meters/{meter}/"


def all_good(image: ProcessImage, meter: str) -> bool:
    return all(image.get(prefix(meter) + n).quality is Quality.GOOD for n in VOLTS + AMPS + ENERGY)


def check_values(image: ProcessImage, meter: str) -> None:
    p = prefix(meter)
    for n in VOLTS:
        # the simulator draws each phase from 220 V × 0.98..1.03 = 215.6..226.6 V
        assert 215.6 <= image.value(p + n) <= 226.6, n
        assert image.tag(p + n).unit == "V"
    for n in AMPS:
        assert image.value(p + n) == 0.0  # no load
        assert image.tag(p + n).unit == "A"
    # the simulator splits its register 30/40/30 % over tariffs 1-3:
    # 1234.5 × 0.3 = 370.35, 1234.5 × 0.4 = 493.80, tariff 4 empty
    expected = [1234.5, 370.35, 493.8, 370.35, 0.0]
    assert [image.value(p + n) for n in ENERGY] == pytest.approx(expected, abs=1e-9)
    assert {image.tag(p + n).unit for n in ENERGY} == {"kWh"}


async def run_plant(cfg: FieldConfig, journal: Journal) -> tuple[FieldPlant, ProcessImage]:
    image = ProcessImage()
    plant = FieldPlant(cfg, image, journal=journal)
    await plant.start()
    return plant, image


async def test_block_refusal_falls_back_to_single_dis_and_survives_restart(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path)
    sim = SimulatedPlant(cfg)
    await sim.start()
    things: list[Any] = [sim]
    db = tmp_path / "journal.sqlite"
    journal = Journal(db)
    journal.open()
    try:
        plant, image = await run_plant(cfg, journal)
        things.append(plant)
        bus = plant.bus("bus1")
        assert isinstance(bus, Dlt645Bus)
        assert await wait_for(lambda: all_good(image, NORMAL), 10)
        # before the fallback the refuser's V, I and energies stayed Bad (ERR=02) forever
        assert await wait_for(lambda: all_good(image, REFUSER), 10), [
            image.get(prefix(REFUSER) + n) for n in VOLTS + AMPS + ENERGY
        ]
        check_values(image, REFUSER)
        check_values(image, NORMAL)
        # one refusal per block, then never again: the meter is remembered
        assert bus.transactions["exception"] == 3
        seen = image.get(prefix(REFUSER) + "voltage_a").source_time
        assert await wait_for(
            lambda: image.get(prefix(REFUSER) + "voltage_a").source_time > seen + 0.5, 10
        )
        assert bus.transactions["exception"] == 3
        assert bus.refused == {REFUSER: {"0201FF00", "0202FF00", "0001FF00"}}
        # the refuser's jobs were re-estimated when it refused (arithmetic below)
        jobs = {(job.device, job.group): job.expected_s for job in bus._periodic.values()}
        assert jobs[(REFUSER, "instant")] == pytest.approx(0.02578125)
        assert jobs[(NORMAL, "instant")] == pytest.approx(0.01203125)

        await journal.flush()
        rows = journal.query("SELECT bus, meter, di, err FROM meter_block_refusals ORDER BY di")
        assert [tuple(r) for r in rows] == [
            ("bus1", REFUSER, "0001FF00", 2),
            ("bus1", REFUSER, "0201FF00", 2),
            ("bus1", REFUSER, "0202FF00", 2),
        ]
        events = journal.query(
            "SELECT message FROM events WHERE source = ?", (prefix(REFUSER)[:-1],)
        )
        assert len(events) == 3
        assert "reading 02010100, 02010200, 02010300 instead" in " ".join(
            e["message"] for e in events
        )

        await plant.stop()
        things.remove(plant)
    finally:
        journal.close()

    # a restart: the journal file opened again, a new bus starts with the single DIs
    journal = Journal(db)
    journal.open()
    try:
        plant, image = await run_plant(cfg, journal)
        things.append(plant)
        bus = plant.bus("bus1")
        assert isinstance(bus, Dlt645Bus)
        assert bus.refused == {REFUSER: {"0201FF00", "0202FF00", "0001FF00"}}
        # the scheduler's first estimate already counts the single DIs: at 115200 8E1
        # (11 bits) with 4 FE and no delay, a read is 20 request bytes + 16 + value bytes;
        # normal:  3 reads, 60 + (22 + 25 + 19) = 126 bytes × 11 / 115200 = 0.01203125 s
        # refuser: 7 reads, 140 + (3×18 + 3×19 + 19) = 270 bytes × 11 / 115200 = 0.02578125 s
        expected = {(job.device, job.group): job.expected_s for job in bus._periodic.values()}
        assert expected[(NORMAL, "instant")] == pytest.approx(0.01203125)
        assert expected[(REFUSER, "instant")] == pytest.approx(0.02578125)
        assert await wait_for(lambda: all_good(image, REFUSER) and all_good(image, NORMAL), 10)
        check_values(image, REFUSER)
        assert bus.transactions["exception"] == 0
    finally:
        for thing in reversed(things):
            await thing.stop()
        journal.close()


PLAN_CONFIG = """
[poll_groups.fast]
period_s = 10
items = ["0201FF00"]
[[buses]]
name = "b1"
protocol = "dlt645"
port = "/dev/ttyUSB9"
meter_block = { first_address = "000000000001", count = 2, groups = ["fast"] }
"""


async def test_gridctl_plan_reads_the_journal_refusals(tmp_path: Path) -> None:
    from controller.plan import plan_dlt645
    from drivers.block_fallback import read_refusals, record_refusal

    cfg = FieldConfig.model_validate(tomllib.loads(PLAN_CONFIG))
    db = tmp_path / "journal.sqlite"
    journal = Journal(db)
    journal.open()
    try:
        assert record_refusal(journal, "b1", REFUSER, "0201FF00", 0x02, 1.0)
        await journal.flush()
    finally:
        journal.close()
    refused = read_refusals(db)
    assert refused == {"b1": {REFUSER: {"0201FF00"}}}
    bus = cfg.buses[0]
    assert isinstance(bus, Dlt645BusConfig)
    # 2400 baud 8E1 = 11 bits, 4 FE, 100 ms meter delay, 20 ms send interval:
    # block read: (20 + 22) × 11 / 2400 + 0.12 = 0.3125 s; two meters / 10 s = 6.25 %
    assert plan_dlt645(bus, cfg).utilisation == pytest.approx(0.0625)
    # one meter by three single reads: 3 × ((20 + 18) × 11 / 2400 + 0.12) = 0.8825 s;
    # (0.3125 + 0.8825) / 10 s = 11.95 %
    plan = plan_dlt645(bus, cfg, refused=refused["b1"])
    assert plan.utilisation == pytest.approx(0.1195)
    assert sorted(j.name for j in plan.jobs) == [
        "fast:02010100 (single DIs)",
        "fast:02010200 (single DIs)",
        "fast:02010300 (single DIs)",
        "fast:0201FF00",
    ]


def test_gridctl_plan_names_a_bad_journal(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "plan.toml").write_text(PLAN_CONFIG)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller",
            "plan",
            "--config",
            str(tmp_path / "plan.toml"),
            "--journal",
            str(tmp_path / "none.sqlite"),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 2
    assert f"--journal {tmp_path / 'none.sqlite'}: journal: no such file" in done.stderr
