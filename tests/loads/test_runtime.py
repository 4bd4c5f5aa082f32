"""The runtime with the journal: durable exact balances, recharge idempotency, dry run, restart."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal

import pytest

from controller.alarms import AlarmEngine
from controller.commands import CommandLog, CommandState
from controller.journal import Journal
from controller.loads.config import LoadsConfig
from controller.loads.prepaid import PrepaidError
from controller.loads.runtime import LoadsRuntime
from controller.loads.switching import KINDS, RelayState
from controller.process_image import ProcessImage


class FakeRelay:
    kinds = KINDS

    def __init__(self, image: ProcessImage, name: str) -> None:
        self.open = False
        self.keep_power = False
        self.alarm = False
        self.sent: list[str] = []
        self.image = image
        self.power = f"buses/b/meters/{name}/power_active_total"
        self.energy = f"buses/b/meters/{name}/energy_fwd_active_total"
        image.define(self.power, "kW")
        image.define(self.energy, "kWh")

    async def send(self, kind: str, valid_until: float) -> None:
        self.sent.append(kind)
        if kind == "trip":
            self.open = True
        elif kind in ("direct_close", "close_allowed"):
            self.open = False
        elif kind in ("alarm_on", "alarm_off"):
            self.alarm = kind == "alarm_on"

    async def read(self) -> RelayState:
        return self.known()

    def known(self) -> RelayState:
        return RelayState(self.open, self.open, self.alarm, self.keep_power)


def cfg(**over) -> LoadsConfig:
    base = {
        "loads": [
            {"name": "a", "bus": "b", "address": "000000000001"},
            {"name": "b", "bus": "b", "address": "000000000002"},
        ],
        "tariffs": [{"name": "flat", "default_price": "0.6"}],
        "accounts": [{"id": "acc1", "load": "a", "tariff": "flat", "opening_balance": "10.00"}],
        "no_trip": {"windows": []},
        "confirm": {"reread_interval_s": 0.0, "max_rereads": 0},
        "rate_limit": {"per_feeder_per_s": 100.0},
    }
    base.update(over)
    return LoadsConfig.model_validate(base)


async def make(tmp_path, config: LoadsConfig, clock=None):
    journal = Journal(tmp_path / "j.sqlite")
    journal.open()
    image = ProcessImage()
    relays = {x.name: FakeRelay(image, x.address) for x in config.loads}
    commands = CommandLog(journal)
    rt = LoadsRuntime(
        config,
        commands,
        image,
        alarms=AlarmEngine(journal),
        actuators=relays,
        **({"clock": clock} if clock else {}),
    )
    await rt.start()
    return journal, image, relays, rt


async def settle(rt: LoadsRuntime) -> None:
    for _ in range(50):
        if not rt._dispatches:
            return
        await asyncio.sleep(0.01)


async def test_balances_are_exact_durable_and_recharges_idempotent(tmp_path):
    journal, image, relays, rt = await make(tmp_path, cfg())
    bal = await rt.recharge("acc1", "0.10", ref="pay-1", who="cashier", why="counter")
    bal = await rt.recharge("acc1", "0.20", ref="pay-2", who="cashier", why="counter")
    assert bal == Decimal("10.30")
    again = await rt.recharge("acc1", "0.20", ref="pay-2", who="cashier", why="retry")
    assert again == Decimal("10.30")
    with pytest.raises(PrepaidError, match="ref"):
        await rt.recharge("acc1", "5", ref="pay-2", who="cashier", why="other")
    with pytest.raises(PrepaidError, match="account"):
        await rt.recharge("nobody", "5", ref="pay-3", who="cashier", why="x")
    t = 1_700_000_000.0
    image.write(relays["a"].energy, 100.0, source_time=t)
    await rt.control()
    image.write(relays["a"].energy, 101.5, source_time=t + 600)
    await rt.control()
    assert rt.accounts["acc1"].balance == Decimal("10.30") - Decimal("1.50") * Decimal("0.6")
    await journal.flush()
    journal.close()
    journal2, _, _, rt2 = await make(tmp_path, cfg())
    assert rt2.accounts["acc1"].balance == Decimal("9.400")
    assert rt2.accounts["acc1"].last_reading == Decimal("101.50")
    rows = journal2.query("SELECT kind, amount FROM ld_ledger ORDER BY seq")
    assert [(r["kind"], r["amount"]) for r in rows] == [
        ("recharge", "0.10"),
        ("recharge", "0.20"),
        ("usage", "-0.900"),
    ]
    journal2.close()


async def test_overdrawn_account_trips_through_the_executor_and_recharge_closes(tmp_path):
    journal, image, relays, rt = await make(tmp_path, cfg())
    t = 1_700_000_000.0
    image.write(relays["a"].energy, 100.0, source_time=t)
    await rt.control()
    image.write(relays["a"].energy, 120.0, source_time=t + 3600)  # 12.00 yuan: overdrawn
    await rt.control()
    await settle(rt)
    await rt.control()
    await settle(rt)
    assert relays["a"].sent == ["alarm_on", "trip"]  # 10.00 starts below alarm-2
    assert rt.accounts["acc1"].tripped
    cmds = {c.kind: c for c in rt.commands.recent()}
    assert cmds["trip"].state is CommandState.CONFIRMED and cmds["trip"].who == "prepaid/acc1"
    await rt.recharge("acc1", "100", ref="p1", who="cashier", why="counter")
    for _ in range(2):
        await rt.control()
        await settle(rt)
    assert relays["a"].sent[-2:] == ["close_allowed", "alarm_off"]
    assert image.value("prepaid/accounts/acc1/level") == "normal"
    journal.close()


async def test_demand_dry_run_journals_and_switches_nothing(tmp_path):
    group = {
        "name": "g",
        "members": ["a", "b"],
        "rounds": [{"name": "r1", "loads": ["b"], "alarm_s": 60}],
        "limit_kw": 10.0,
        "window_min": 1,
        "dry_run": True,
    }
    now = [dt.datetime(2026, 3, 2, 12).timestamp()]
    journal, image, relays, rt = await make(
        tmp_path, cfg(accounts=[], groups=[group]), clock=lambda: now[0]
    )
    image.write(relays["a"].power, 8.0)
    image.write(relays["b"].power, 8.0)
    # 16 kW > 10 kW from the first cycle; r1 would trip after its 60 s alarm time
    for _ in range(62):
        await rt.control()
        now[0] += 1
    await journal.flush()
    events = [r["message"] for r in journal.query("SELECT message FROM events WHERE kind='loads'")]
    assert any(m.startswith("dry run: would trip b") for m in events)
    assert relays["b"].sent == []
    assert rt.alarms is not None and rt.alarms.get("demand_over_limit:demand/g").active
    assert image.value("demand/groups/g/state") == "over_limit"
    journal.close()


async def test_lock_out_survives_restart(tmp_path):
    journal, _, _, rt = await make(tmp_path, cfg())
    await rt.lock_out("b", who="emma", why="meter swap")
    journal.close()
    journal2, image, _, rt2 = await make(tmp_path, cfg())
    assert "b" in rt2.executor.lockouts
    assert image.value("loads/b/locked_out") is True
    cmd = await rt2.executor.run("direct_close", "b", who="otto", why="t")
    assert cmd.state is CommandState.REFUSED
    journal2.close()
