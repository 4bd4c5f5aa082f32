"""Site time on the wire: 1C expiries, the clock check and time syncs in the meters' zone.

The simulated meters keep Beijing time (Asia/Shanghai, UTC+8, no DST) with
zoneinfo on their own; the host here runs UTC. Every expected value below is
worked out by hand from those two facts.
"""

from __future__ import annotations

import datetime as dt
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from controller import _core_rs as core
from controller.alarms import AlarmEngine
from controller.commands import CommandLog, CommandState
from controller.journal import Journal
from controller.process_image import ProcessImage
from drivers.config import FieldConfig

from .conftest import SITE_TZ, wait_for

ADDR = "000000000002"
IN_STEP = "000000000001"
DRIFT_TAG = f"buses/bus1/meters/{ADDR}/clock_drift_s"


@pytest.fixture(autouse=True)
def host_in_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host runs UTC, as servers usually do: host-zone code would send UTC to the meters."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def epoch(text: str) -> float:
    """Beijing wall-clock text -> epoch seconds (by hand: Beijing = UTC + 8 h)."""
    return (
        (dt.datetime.fromisoformat(text) - dt.timedelta(hours=8)).replace(tzinfo=dt.UTC).timestamp()
    )


class Wall:
    """True time for both sides, set by the test; ``step`` advances it on every call."""

    def __init__(self, start: float, step: float = 0.0) -> None:
        self.t = start
        self.step = step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def clock_config(tmp: Path, meters: str, *, bus: str = "", count: int = 2) -> FieldConfig:
    text = f"""
[poll_groups.clock]
period_s = 3600
kind = "clock"
max_drift_s = 10
sync_attempts = 3
[[buses]]
name = "bus1"
protocol = "dlt645"
port = "{tmp / "tty" / "bus1"}"
baud = 115200
response_delay_s = 0.0
response_timeout_s = 0.2
send_interval_s = 0.0
meter_block = {{ first_address = "000000000001", count = {count}, groups = ["clock"] }}
{bus}
[sim]
fast = true
control_socket = "{tmp / "sim.sock"}"
[sim.buses.bus1.meters."{IN_STEP}"]
clock_drift_s_per_day = 0
[sim.buses.bus1.meters."{ADDR}"]
clock_drift_s_per_day = 0
{meters}
"""
    return FieldConfig.model_validate(tomllib.loads(text))


@pytest.fixture
async def field(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Simulator and field plant on one pty, both on the test's ``Wall``."""
    from drivers.plant import FieldPlant
    from drivers.sim.plant import SimulatedPlant

    started: list[Any] = []
    journals: list[Journal] = []

    async def start(
        config: FieldConfig,
        wall: Callable[[], float],
        *,
        sim_wall: Callable[[], float] | None = None,
        journal: bool = False,
    ) -> tuple[Any, Any, ProcessImage, CommandLog | None]:
        commands = None
        if journal:
            j = Journal(tmp_path / "journal.sqlite")
            j.open()
            journals.append(j)
            commands = CommandLog(j)
        sim = SimulatedPlant(config, wall=sim_wall or wall)
        await sim.start()
        started.append(sim)
        image = ProcessImage()
        plant = FieldPlant(config, image, wall=wall, site_tz=SITE_TZ, commands=commands)
        await plant.start()
        started.append(plant)
        return sim, plant, image, commands

    yield start
    for thing in reversed(started):
        await thing.stop()
    for j in journals:
        j.close()


async def test_trip_expiry_is_ten_minutes_ahead_on_a_beijing_meter(tmp_path, running) -> None:
    from .conftest import dlt645_config

    sim, plant, _image = await running(dlt645_config(tmp_path, meters=2))
    bus = plant.bus("bus1")
    meter = sim.farms["bus1"].meters[ADDR]
    seen: list[tuple[dt.datetime, dt.datetime]] = []
    handle = meter._control

    def recording(frame: core.Dlt645Frame, now: float, wall: float) -> list[bytes]:
        # the expiry as the meter reads it off the wire (ss mm hh DD MM YY, BCD)
        ss, mm, hh, dd, mo, yy = (int(f"{b:02x}") for b in frame.data[10:16])
        seen.append((dt.datetime(2000 + yy, mo, dd, hh, mm, ss), meter.local_clock(wall)))
        return handle(frame, now, wall)

    meter._control = recording  # type: ignore[method-assign]
    # the host is at, say, 02:00 UTC; the meter shows 10:00 Beijing time. The
    # expiry (now + 600 s) must say 10:10, not 02:10 (7 h 50 min in the past
    # for the meter: refused as expired, which is what a UTC host sent before)
    result = await bus.control(ADDR, core.N1_TRIP, valid_for_s=600.0)
    assert result.acknowledged and result.status is not None and result.status.relay_open
    assert meter.relay_open is True
    ((expiry, meter_clock),) = seen
    ahead = (expiry - meter_clock).total_seconds()
    # 600 s, less the second the BCD expiry drops and the time on the wire
    assert 598.0 <= ahead <= 600.0, ahead
    with pytest.raises(ValueError, match="valid_until/when: must be an aware datetime"):
        await bus.control(ADDR, core.N1_TRIP, valid_until=dt.datetime(2030, 1, 1))


async def test_clock_check_straddling_midnight_gives_the_true_offset(tmp_path, field) -> None:
    # The meter is in step with true time. Each request it answers is 1 s after
    # the last, starting 1.5 s before Beijing midnight: the first reply is made
    # at 23:59:59.5, the second at 00:00:00.5 the next day. Read as two items
    # (04000101 date, then 04000102 time) that was 2026-12-01 + 00:00:00, an
    # instant a whole day before the truth: drift -86 400.5 s. One read of
    # 0400010C answered at 23:59:59.5 shows 23:59:59 (whole seconds), and the
    # bus takes its "now" at the time of that reply (23:59:59.5): drift -0.5 s.
    midnight = epoch("2026-12-02T00:00:00")
    answered = [midnight - 2.5]

    def meter_wall() -> float:
        answered[0] += 1.0
        return answered[0]

    def bus_wall() -> float:
        return answered[0]

    # one meter (000000000001), so its two reads are the only requests answered
    config = clock_config(tmp_path, "", count=1)
    _sim, plant, image, _ = await field(config, bus_wall, sim_wall=meter_wall)
    tag = f"buses/bus1/meters/{IN_STEP}/clock_drift_s"
    assert await wait_for(lambda: image.value(tag) is not None, 10)
    assert image.value(tag) == -0.5
    bus = plant.bus("bus1")
    assert bus.time_syncs == 0


async def test_meter_ignoring_syncs_ends_in_clock_sync_failed(tmp_path, field) -> None:
    # 120 s ahead (within a broadcast's 5 min), and it ignores every time sync.
    config = clock_config(tmp_path, 'clock_offset_s = 120\nfaults = ["ignore_time_sync"]')
    wall = Wall(epoch("2026-12-01T10:00:00"))
    sim, plant, image, _ = await field(config, wall)
    bus = plant.bus("bus1")
    farm = sim.farms["bus1"]
    alarms = AlarmEngine()

    def raise_alarms() -> None:
        # what the service's control task does each second
        for bus_name, address, fault in plant.clock_faults():
            alarms.check_clock(bus_name, address, fault)

    # day 1: the periodic check at start sends the day's broadcast and reads back 120 s
    assert await wait_for(lambda: bus.clocks[ADDR].failed_syncs == 1, 10)
    assert bus.time_syncs == 1 and image.value(DRIFT_TAG) == 120.0
    wall.t = epoch("2026-12-01T15:00:00")  # same day: no second broadcast
    assert await bus.check_clock(ADDR) == 120.0
    assert bus.time_syncs == 1
    wall.t = epoch("2026-12-01T23:57:00")  # never within 5 min of midnight
    await bus.check_clock(ADDR)
    wall.t = epoch("2026-12-02T00:03:00")
    await bus.check_clock(ADDR)
    assert bus.time_syncs == 1
    raise_alarms()
    assert "clock_sync_failed:bus/bus1/meter/000000000002" not in {a.key for a in alarms}
    for day, syncs in (("2026-12-02", 2), ("2026-12-03", 3)):
        wall.t = epoch(f"{day}T10:00:00")
        await bus.check_clock(ADDR)
        assert bus.time_syncs == syncs
    assert bus.clocks[ADDR].failed_syncs == 3
    raise_alarms()
    alarm = alarms.get(f"clock_sync_failed:bus/bus1/meter/{ADDR}")
    assert alarm.active and "after 3 broadcast time syncs" in alarm.message
    # alarmed: no more broadcasts for it, not one at every check
    wall.t = epoch("2026-12-04T10:00:00")
    await bus.check_clock(ADDR)
    assert bus.time_syncs == 3
    broadcasts = [r for r in bus.wire_log if r.function == core.FN_BROADCAST_TIME]
    assert len(broadcasts) == 3
    # the meter in step took each of the three: one a day, none refused
    assert farm.meters[IN_STEP].time_syncs_applied == 3
    assert farm.meters[IN_STEP].time_syncs_refused == 0
    assert farm.meters[ADDR].clock_offset_s == 120.0


async def test_sim_meter_refuses_a_second_sync_the_same_day_and_a_big_jump(tmp_path, field) -> None:
    config = clock_config(tmp_path, "clock_offset_s = 20")
    wall = Wall(epoch("2026-12-01T09:00:00"))
    sim, plant, _image, _ = await field(config, wall)
    bus = plant.bus("bus1")
    meter = sim.farms["bus1"].meters[ADDR]
    # the start-up check: 20 s ahead > 10 s -> the day's broadcast, which it takes
    assert await wait_for(lambda: meter.time_syncs_applied == 1, 10)
    assert meter.clock_offset_s == 0.0
    meter.clock_offset_s = 30.0
    # an operator's second broadcast on the same (Beijing) day: refused
    await bus.broadcast_time_sync()
    assert await wait_for(lambda: meter.time_syncs_refused == 1, 10)
    assert meter.clock_offset_s == 30.0
    # next day, a sync that would move it 400 s (> 300 s): refused as well
    wall.t = epoch("2026-12-02T09:00:00")
    meter.clock_offset_s = 400.0
    await bus.broadcast_time_sync()
    assert await wait_for(lambda: meter.time_syncs_refused == 2, 10)
    assert meter.clock_offset_s == 400.0


async def test_far_off_clock_is_written_at_level_04_when_enabled(tmp_path, field) -> None:
    # 600 s ahead: beyond a broadcast (300 s). The meter block allows a clock write.
    config = clock_config(
        tmp_path,
        "clock_offset_s = 600",
        bus="clock_write = true",
    )
    wall = Wall(epoch("2026-12-01T10:00:00"))
    sim, plant, image, commands = await field(config, wall, journal=True)
    bus = plant.bus("bus1")
    assert commands is not None
    assert await wait_for(lambda: image.value(DRIFT_TAG) == 0.0, 10)
    meter = sim.farms["bus1"].meters[ADDR]
    # written with the true time, 10:00:00 Beijing: offset 0 (whole seconds)
    assert meter.clock_offset_s == 0.0
    assert bus.time_syncs == 0  # no broadcast: the meter would refuse a 600 s jump
    (cmd,) = [c for c in commands.recent() if c.kind == "set_clock"]
    assert cmd.state is CommandState.CONFIRMED
    assert cmd.target == f"buses/bus1/meters/{ADDR}"
    assert cmd.args["drift_s"] == 600.0 and cmd.args["password_level"] == 4
    assert [t.state.value for t in cmd.history] == ["queued", "sent", "confirmed"]
    writes = [r for r in bus.wire_log if r.function == core.FN_WRITE]
    assert [r.device for r in writes] == [ADDR]
    assert bus.clock_fault(ADDR) == ""


async def test_far_off_clock_alarms_when_writes_are_off(tmp_path, field) -> None:
    config = clock_config(tmp_path, "clock_offset_s = 600")
    wall = Wall(epoch("2026-12-01T10:00:00"))
    sim, plant, image, _ = await field(config, wall)
    bus = plant.bus("bus1")
    assert await wait_for(lambda: bus.clock_fault(ADDR) != "", 10)
    assert image.value(DRIFT_TAG) == 600.0
    assert "+600 s off" in bus.clock_fault(ADDR) and "clock_write is off" in bus.clock_fault(ADDR)
    alarms = AlarmEngine()
    for bus_name, address, fault in plant.clock_faults():
        alarms.check_clock(bus_name, address, fault)
    assert alarms.get(f"clock_sync_failed:bus/bus1/meter/{ADDR}").active
    assert not any(r.function in (core.FN_WRITE, core.FN_BROADCAST_TIME) for r in bus.wire_log)
    assert sim.farms["bus1"].meters[ADDR].clock_offset_s == 600.0


def test_sim_meter_zone_must_be_an_iana_name() -> None:
    from pydantic import ValidationError

    from drivers.config import SimMeterConfig

    assert SimMeterConfig().timezone == "Asia/Shanghai"
    with pytest.raises(ValidationError, match="timezone must be an IANA time zone name"):
        SimMeterConfig(timezone="CST")
