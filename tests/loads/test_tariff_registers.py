"""Prepaid billing by the meter's tariff registers, through the real runtime, bus and pty.

Virtual time: the simulated meter's plant time, the bus's reading times and the
runtime's clock are one virtual clock the test moves in 30 min steps; the meter
runs its load for each step (``SimMeter.integrate``, ``time_scale`` 0 so reads
add no time of their own) and its own TOU table puts the energy into T1..T4.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from controller.alarms import AlarmEngine
from controller.commands import CommandLog
from controller.journal import Journal
from controller.loads.config import AccountConfig, LoadsConfig, NoTripConfig, TariffConfig
from controller.loads.prepaid import PrepaidAccount, PrepaidError
from controller.loads.runtime import LoadsRuntime
from controller.process_image import ProcessImage
from drivers.config import FieldConfig
from drivers.plant import FieldPlant
from drivers.sim.farm import MeterFarm, PtyWire
from drivers.sim.meter import SimMeter, tou_table
from drivers.site_time import host_zone

from .conftest import wait_for

ADDR = "000000000007"
STEP_S = 1800.0
CT = 40.0  # 200/5: the account is billed in primary kWh


class MidRng(random.Random):
    """The simulated meter's noise at the middle of its range: a repeatable load."""

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


BLOCK = ["00010000", "0001FF00"]
# meters that refuse block DIs are read register by register: the same tags
SINGLES = ["00010000", "00010100", "00010200", "00010300", "00010400"]


def field(tmp: Path, items: list[str]) -> FieldConfig:
    return FieldConfig.model_validate(
        {
            "poll_groups": {
                "energy": {"period_s": 0.1, "items": items},
                "status": {"period_s": 0.5, "items": ["04000503"]},
            },
            "buses": [
                {
                    "name": "bus1",
                    "protocol": "dlt645",
                    "port": str(tmp / "tty" / "bus1"),
                    "baud": 115200,
                    "response_delay_s": 0.0,
                    "response_timeout_s": 0.1,
                    "byte_timeout_s": 0.05,
                    "send_interval_s": 0.0,
                    "retries": 0,
                    "quarantine": {"initial_s": 0.2, "max_s": 0.4, "factor": 2},
                    "meters": [
                        {"address": ADDR, "groups": ["energy", "status"], "ct_ratio": "200/5"}
                    ],
                }
            ],
        }
    )


def loads(billing: str) -> LoadsConfig:
    # the utility's tariff, configured on the controller on its own: peak 10-15 h and
    # 18-22 h, valley 22-07 h, flat otherwise; T1 sharp (unused here), T2 peak, T3 flat, T4 valley
    return LoadsConfig.model_validate(
        {
            "loads": [{"name": "c1", "bus": "bus1", "address": ADDR}],
            "tariffs": [
                {
                    "name": "tou",
                    "default_price": "0.60",
                    "periods": [
                        {"start": "10:00", "end": "15:00", "price": "1.00"},
                        {"start": "18:00", "end": "22:00", "price": "1.00"},
                        {"start": "22:00", "end": "07:00", "price": "0.30"},
                    ],
                    "register_prices": {"t1": "1.20", "t2": "1.00", "t3": "0.60", "t4": "0.30"},
                }
            ],
            "accounts": [
                {
                    "id": "acc1",
                    "load": "c1",
                    "tariff": "tou",
                    "billing": billing,
                    "opening_balance": "100000",
                    "max_kw": 500,
                }
            ],
            "no_trip": {"windows": []},
        }
    )


class Day:
    """The meter on a real pty, the field plant, the loads runtime, one virtual clock."""

    def __init__(self, tmp: Path, billing: str, items: list[str]) -> None:
        self.tmp = tmp
        self.billing = billing
        self.items = items
        self.now = dt.datetime(2026, 3, 2, 18, 0).timestamp()
        # 50 kW peak primary load behind the CT; the meter's own TOU table (its clock)
        self.meter = SimMeter(
            # the controller here keeps the host's zone (no site zone given): so does the meter
            tz=host_zone(),
            address=ADDR,
            peak_kw=50.0,
            energy_kwh=100.0,
            tariff_kwh=[0.0, 40.0, 30.0, 30.0],
            ct_ratio=CT,
            time_scale=0.0,
            clock_drift_s_per_day=0.0,
            tou=tou_table({"00:00": 4, "07:00": 3, "10:00": 2, "15:00": 3, "18:00": 2, "22:00": 4}),
            rng=MidRng(),
        )
        self.things: list[Any] = []

    def wall(self) -> float:
        return self.now

    async def start(self) -> None:
        config = field(self.tmp, self.items)
        farm = MeterFarm(
            "bus1",
            [self.meter],
            char_time_s=0.0001,
            response_delay_s=0.0,
            fast=True,
            wall=self.wall,
        )
        self.wire = PtyWire(farm, Path(config.buses[0].port))
        await self.wire.start()
        self.farm_task = asyncio.create_task(farm.run())
        self.image = ProcessImage()
        self.plant = FieldPlant(config, self.image, wall=self.wall)
        await self.plant.start()
        self.journal = Journal(self.tmp / "journal.sqlite")
        self.journal.open()
        self.rt = LoadsRuntime(
            loads(self.billing),
            CommandLog(self.journal),
            self.image,
            alarms=AlarmEngine(self.journal),
            plant=self.plant,
            clock=self.wall,
        )
        await self.rt.start()

    async def stop(self) -> None:
        await self.rt.stop()
        await self.plant.stop()
        self.farm_task.cancel()
        await self.wire.stop()
        self.journal.close()

    def seen(self) -> bool:
        """The controller has read the meter at the current virtual time, as it is now."""
        tag = f"buses/bus1/meters/{ADDR}/energy_fwd_active_t2"
        cur = self.image.get(tag)
        return (
            cur.source_time == self.now
            and cur.value == round(round(self.meter.tariff_kwh[1], 2) * CT, 6)
            and self.image.value(f"buses/bus1/meters/{ADDR}/energy_fwd_active_t4")
            == round(round(self.meter.tariff_kwh[3], 2) * CT, 6)
        )

    async def step(self, *, reading: bool) -> None:
        self.now += STEP_S
        self.meter.integrate(STEP_S, self.now)
        if reading:
            assert await wait_for(self.seen, 10)
        await self.rt.control()

    def registers(self) -> list[float]:
        return [round(t, 2) for t in self.meter.tariff_kwh]

    def billed(self) -> Decimal:
        return Decimal(100000) - self.rt.accounts["acc1"].balance


async def run_day(
    tmp: Path, billing: str, items: list[str] = BLOCK
) -> tuple[Decimal, list[float], list[float]]:
    """18:00 baseline, read every 30 min until 20:00, no reading 20:00-08:00, then 08:30."""
    day = Day(tmp, billing, items)
    await day.start()
    try:
        assert await wait_for(day.seen, 10)
        await day.rt.control()  # the baseline
        baseline = day.registers()
        for _ in range(4):  # 18:30 .. 20:00
            await day.step(reading=True)
        day.meter.faults.add("dead")  # the line is cut after the 20:00 reading
        for _ in range(23):  # 20:30 .. 07:30: nothing read
            await day.step(reading=False)
        day.meter.faults.discard("dead")
        await day.step(reading=True)  # 08:00: reading resumes
        await day.step(reading=True)  # 08:30
        return day.billed(), baseline, day.registers()
    finally:
        await day.stop()


# The meter's registers (secondary kWh, 2 decimals; the sim's own TOU table and load):
#          18:00   20:00   08:00   08:30
#   T2     40.00   42.35   44.24   44.24   peak 18-22 h (evening peak of the 50 kW load)
#   T3     30.00   30.00   30.84   31.27   flat 07-10 h
#   T4     30.00   30.00   33.60   33.60   valley 22-07 h (night trough)
#   total 100.00  102.35  108.68  109.11
# The line is cut after the 20:00 reading and is back at 08:00. Primary = secondary × CT 40.


@pytest.mark.parametrize("items", [BLOCK, SINGLES], ids=["block", "singles"])
async def test_outage_over_tariff_boundaries_is_billed_per_tariff_register(tmp_path, items):
    billed, start, end = await run_day(tmp_path, "tariff_registers", items)
    # each register's increment at its own price:
    #   T2: (44.24 − 40.00) × 40 = 169.6 kWh × 1.00 = 169.60
    #   T3: (31.27 − 30.00) × 40 =  50.8 kWh × 0.60 =  30.48
    #   T4: (33.60 − 30.00) × 40 = 144.0 kWh × 0.30 =  43.20
    #                                          total 243.28 yuan
    # (the outage alone: 1.89 × 40 × 1.00 + 0.84 × 40 × 0.60 + 3.60 × 40 × 0.30
    #  = 75.60 + 20.16 + 43.20 = 138.96 yuan)
    assert start == [0.0, 40.0, 30.0, 30.0]
    assert end == [0.0, 44.24, 31.27, 33.6]
    assert billed == Decimal("243.28")


async def test_reading_time_billing_prices_an_outage_at_the_resume_tariff(tmp_path):
    """What billing by reading time does (and did for every meter): for meters
    without tariff registers only, where nothing better is known."""
    billed, _start, _end = await run_day(tmp_path, "reading_time")
    # 18:00-20:00, read at 18:30..20:00 (peak): 2.35 × 40 =  94.0 kWh × 1.00 =  94.00
    # 20:00-08:00, read at 08:00 (flat):        6.33 × 40 = 253.2 kWh × 0.60 = 151.92
    # 08:00-08:30 (flat):                       0.43 × 40 =  17.2 kWh × 0.60 =  10.32
    #                                                                 total 256.24 yuan
    # the outage's 138.96 yuan billed as 151.92: +9.3 %; the whole bill +5.3 %
    assert billed == Decimal("256.24")


# -- the pieces on their own ----------------------------------------------------------------


def test_register_billing_config_errors_name_the_field():
    from controller.config import ConfigError, validate_config

    load = {"name": "l1", "bus": "bus1", "address": "000000000001"}
    cases = [
        (
            {
                "tariffs": [{"name": "t", "default_price": "0.5"}],
                "accounts": [
                    {"id": "a", "load": "l1", "tariff": "t", "billing": "tariff_registers"}
                ],
            },
            "accounts[0].billing: 'tariff_registers' needs register_prices (t1..t4 per kWh) "
            "in tariff 't'",
        ),
        (
            {
                "tariffs": [
                    {
                        "name": "t",
                        "default_price": "0.5",
                        "register_prices": {"t1": 1, "t2": 1, "t3": 1},
                    }
                ]
            },
            "register_prices: must price every tariff register t1, t2, t3, t4 (missing: t4)",
        ),
        (
            {
                "tariffs": [
                    {
                        "name": "t",
                        "default_price": "0.5",
                        "register_prices": {"t1": 1, "t2": 1, "t3": 1, "t4": 1, "t5": 1},
                    }
                ]
            },
            "loads.tariffs[0].register_prices.t5",
        ),
        (
            {
                "tariffs": [{"name": "t", "default_price": "0.5"}],
                "accounts": [{"id": "a", "load": "l1", "tariff": "t", "billing": "monthly"}],
            },
            "loads.accounts[0].billing",
        ),
    ]
    for loads_table, expected in cases:
        with pytest.raises(ConfigError) as info:
            validate_config({"loads": {"loads": [load], **loads_table}}, "site.toml")
        assert expected in str(info.value), str(info.value)


def register_account(max_kw: float = 10.0) -> PrepaidAccount:
    tariff = TariffConfig.model_validate(
        {
            "name": "tou",
            "default_price": "0.5",
            "register_prices": {"t1": "1.2", "t2": "1.0", "t3": "0.6", "t4": "0.3"},
        }
    )
    cfg = AccountConfig.model_validate(
        {
            "id": "acc1",
            "load": "l1",
            "tariff": "tou",
            "billing": "tariff_registers",
            "max_kw": max_kw,
        }
    )
    return PrepaidAccount(cfg, tariff, NoTripConfig(), balance=Decimal("60"))


def test_register_readings_backwards_or_implausible_are_flagged_not_billed():
    acc = register_account(max_kw=10.0)
    t = dt.datetime(2026, 3, 2, 9).timestamp()
    assert acc.registers_reading(["1.00", "2.00", "3.00", "4.00"], t) == []  # the baseline
    back = acc.registers_reading(["1.00", "1.50", "3.00", "4.00"], t + 600)
    assert [(e.kind, e.amount) for e in back] == [("flag", Decimal(0))]
    assert "t2 2.00 → 1.50" in back[0].why
    # 10 kW for 10 min is at most 1.67 kWh (+ 4 × 0.05 rounding); 5 kWh is a jump
    jump = acc.registers_reading(["1.00", "6.50", "3.00", "4.00"], t + 1200)
    assert jump[0].kind == "flag" and "implausible jump of 5.00 kWh" in jump[0].why
    assert acc.balance == Decimal("60")
    # from the moved baseline: T2 +0.50 × 1.0 and T4 +1.00 × 0.3 = 0.50 + 0.30 = 0.80
    ok = acc.registers_reading(["1.00", "7.00", "3.00", "5.00"], t + 1800)
    assert [(e.why, e.energy_kwh, e.price, e.amount) for e in ok] == [
        ("energy T2", Decimal("0.50"), Decimal("1.0"), Decimal("-0.500")),
        ("energy T4", Decimal("1.00"), Decimal("0.3"), Decimal("-0.300")),
    ]
    assert acc.balance == Decimal("59.20")
    with pytest.raises(PrepaidError, match=r"values: need T1\.\.T4"):
        acc.registers_reading(["1.00", "7.00", "3.00"], t + 2400)


async def test_register_baseline_survives_restart_and_an_older_journal(tmp_path):
    from controller.journal import MIGRATIONS

    from .test_runtime import cfg, make

    # a journal written before tariff-register billing: every step up to the last
    # (which adds ld_accounts.last_registers), one account row
    old = Journal(tmp_path / "j.sqlite", migrations=MIGRATIONS[:-1])
    old.open()
    stmts = [
        (
            "INSERT INTO ld_accounts(id, balance, last_reading, last_at, tripped, alarm_sent, "
            "updated) VALUES ('acc1', '10.00', NULL, NULL, 0, 0, 0)",
            (),
        ),
    ]
    await old.commit(stmts)
    old.close()
    config = cfg(
        tariffs=[
            {
                "name": "flat",
                "default_price": "0.6",
                "register_prices": {"t1": "1.2", "t2": "1.0", "t3": "0.6", "t4": "0.3"},
            }
        ],
        accounts=[{"id": "acc1", "load": "a", "tariff": "flat", "billing": "tariff_registers"}],
    )
    journal, image, _relays, rt = await make(tmp_path, config)
    tags = [f"buses/b/meters/000000000001/energy_fwd_active_t{i}" for i in range(1, 5)]
    for tag in tags:
        image.define(tag, "kWh")
    t = 1_700_000_000.0
    for tag, v in zip(tags, [0.0, 100.0, 200.0, 300.0], strict=True):
        image.write(tag, v, source_time=t)
    await rt.control()
    await journal.flush()
    journal.close()
    journal2, image2, _, rt2 = await make(tmp_path, config)
    acc = rt2.accounts["acc1"]
    assert acc.balance == Decimal("10.00")
    assert acc.last_registers == (
        Decimal("0.00"),
        Decimal("100.00"),
        Decimal("200.00"),
        Decimal("300.00"),
    )
    for tag in tags:
        image2.define(tag, "kWh")
    # T3 +1.00 × 0.6 = 0.60 → 10.00 − 0.60 = 9.40, from the baseline read before the restart
    for tag, v in zip(tags, [0.0, 100.0, 201.0, 300.0], strict=True):
        image2.write(tag, v, source_time=t + 600)
    await rt2.control()
    assert acc.balance == Decimal("9.40")
    journal2.close()


@pytest.mark.parametrize(
    ("tou", "message"),
    [
        ({"8:00": 2}, "tou: period start must be HH:MM, got '8:00'"),
        ({"24:00": 2}, "tou: period start must be 00:00..23:59, got '24:00'"),
        ({"08:00": 5}, "tou['08:00'] must be tariff register 1..4, got 5"),
        ({}, "tou must name at least one period start"),
    ],
)
def test_sim_meter_tou_table_is_checked(tou, message):
    from pydantic import ValidationError

    from drivers.config import SimMeterConfig

    with pytest.raises(ValidationError) as info:
        SimMeterConfig.model_validate({"tou": tou})
    assert message in str(info.value)
