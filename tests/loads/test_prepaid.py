"""Prepaid cost control in virtual time, exact decimal money."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from controller.loads.config import AccountConfig, NoTripConfig, TariffConfig
from controller.loads.prepaid import PrepaidAccount, PrepaidError

DAY = dt.datetime(2026, 3, 2, 9, 0, 0)  # a Monday


def account(**over) -> PrepaidAccount:
    cfg = {
        "id": "acc1",
        "load": "l1",
        "tariff": "tou",
        "alarm1": 50,
        "alarm2": 20,
        "overdraft_limit": 0,
        "close_allowed_amount": 10,
        "max_kw": 20.0,
    }
    cfg.update(over)
    tariff = TariffConfig.model_validate(
        {
            "name": "tou",
            "default_price": "0.5",
            "periods": [{"start": "08:00", "end": "22:00", "price": "1.0"}],
        }
    )
    return PrepaidAccount(
        AccountConfig.model_validate(cfg), tariff, NoTripConfig(), balance=Decimal("60")
    )


class Feed:
    """Readings every ``step_s``; the account's intents applied to a pretend relay."""

    def __init__(self, acc: PrepaidAccount, start: dt.datetime, kwh_per_step: str) -> None:
        self.acc = acc
        self.t = start.timestamp()
        self.reading = Decimal("1000.00")
        self.step_kwh = Decimal(kwh_per_step)
        self.relay_open = False
        self.intents: list[tuple[str, str]] = []
        self.alarms: list[tuple[str, bool]] = []
        self.notes: list[str] = []
        acc.reading(self.reading, self.t, start)

    def advance(self, steps: int, step_s: float = 600.0) -> None:
        for _ in range(steps):
            self.t += step_s
            local = dt.datetime.fromtimestamp(self.t)
            if not self.relay_open:
                self.reading += self.step_kwh
            self.acc.reading(self.reading, self.t, local)
            self.tick()

    def tick(self) -> None:
        local = dt.datetime.fromtimestamp(self.t)
        res = self.acc.step(self.t, local, self.relay_open)
        self.alarms += [(a.condition, a.active) for a in res.alarms]
        self.notes += res.notes
        for i in res.intents:
            self.intents.append((local.strftime("%H:%M"), i.kind))
            if i.kind == "trip":
                self.relay_open = True
            elif i.kind in ("close_allowed", "direct_close"):
                self.relay_open = False
            self.acc.result(i, True, self.t)


def test_alarm1_alarm2_trip_then_recharge_closes():
    acc = account()
    f = Feed(acc, DAY, "2.00")  # 2 kWh per 10 min at 1.0/kWh in the day
    f.advance(6)  # 60 → 48: alarm-1
    assert acc.balance == Decimal("48.00")
    assert f.alarms == [("prepaid_low_balance", True)]
    assert f.intents == []
    f.advance(14)  # → 20: pre-trip warning and the meter's alarm on
    assert acc.balance == Decimal("20.00")
    assert ("prepaid_pre_trip", True) in f.alarms
    assert [k for _, k in f.intents] == ["alarm_on"]
    f.advance(10)  # → 0: trip
    assert acc.balance == Decimal("0.00")
    assert [k for _, k in f.intents] == ["alarm_on", "trip"]
    assert f.relay_open
    f.advance(3)  # open: no energy, no more money taken
    assert acc.balance == Decimal("0.00")
    entry = acc.recharge("5", ref="pay-1", who="cashier", why="counter", at=f.t)
    assert entry.balance_after == Decimal("5")
    f.tick()
    assert f.relay_open  # 5 is not > the close-allowed amount 10
    acc.recharge("100.10", ref="pay-2", who="cashier", why="counter", at=f.t)
    f.tick()
    f.tick()
    assert [k for _, k in f.intents][-2:] == ["close_allowed", "alarm_off"]
    assert not f.relay_open
    assert acc.balance == Decimal("105.10")
    assert ("prepaid_low_balance", False) in f.alarms
    assert ("prepaid_pre_trip", False) in f.alarms


def test_direct_close_option():
    acc = account(close_mode="direct_close")
    f = Feed(acc, DAY, "3.00")
    f.advance(21)
    assert f.relay_open
    acc.recharge(200, ref="p", who="c", why="w", at=f.t)
    f.tick()
    assert "direct_close" in [k for _, k in f.intents]


def test_trip_due_at_night_is_deferred_to_the_morning():
    acc = account(alarm1=5, alarm2=2)
    acc.balance = Decimal("1.50")
    start = dt.datetime(2026, 3, 2, 21, 50)
    f = Feed(acc, start, "1.00")
    f.advance(6)  # 22:00 … 22:50: the balance runs out at 22:20 (0.5/kWh at night)
    assert acc.balance <= 0
    assert "trip" not in [k for _, k in f.intents]
    assert any("deferred (no-trip window 22:00-07:00)" in n for n in f.notes)
    assert sum("deferred" in n for n in f.notes) == 1  # journaled once per episode
    f.advance(48)  # through the night to 06:50
    assert "trip" not in [k for _, k in f.intents]
    f.advance(2)  # 07:00 and after
    trips = [t for t, k in f.intents if k == "trip"]
    assert trips == ["07:00"]
    assert any("deferral over" in n for n in f.notes)


def test_protected_customer_is_never_tripped():
    acc = account(protected=True)
    f = Feed(acc, DAY, "3.00")
    f.advance(25)
    assert acc.balance < 0
    assert "trip" not in [k for _, k in f.intents]
    assert any("protected customer" in n for n in f.notes)


def test_holiday_defers():
    acc = account()
    acc.no_trip = NoTripConfig(windows=[], holidays=[DAY.date()])
    f = Feed(acc, DAY, "3.00")
    f.advance(25)
    assert acc.balance < 0 and not f.relay_open
    assert any("holiday 2026-03-02" in n for n in f.notes)


def test_time_of_use_billing_is_exact():
    acc = account()
    t0 = dt.datetime(2026, 3, 2, 21, 0)
    acc.reading("100.00", t0.timestamp(), t0)
    day = acc.reading("100.10", t0.timestamp() + 60, t0 + dt.timedelta(minutes=1))
    assert day is not None and day.price == Decimal("1.0") and day.amount == Decimal("-0.100")
    t1 = dt.datetime(2026, 3, 2, 22, 30)
    night = acc.reading("100.30", t1.timestamp(), t1)
    assert night is not None and night.price == Decimal("0.5")
    assert acc.balance == Decimal("60") - Decimal("0.1") - Decimal("0.1")
    assert str(acc.balance) == "59.800"


def test_backwards_and_implausible_readings_are_flagged_not_billed():
    acc = account(max_kw=10.0)
    t = DAY.timestamp()
    acc.reading("500.00", t, DAY)
    back = acc.reading("499.00", t + 600, DAY)
    assert back is not None and back.kind == "flag" and "backwards" in back.why
    assert acc.balance == Decimal("60")
    # 10 kW for 10 min is at most 1.67 kWh; 50 kWh is a jump
    jump = acc.reading("549.00", t + 1200, DAY)
    assert jump is not None and jump.kind == "flag" and "implausible" in jump.why
    assert acc.balance == Decimal("60")
    ok = acc.reading("550.00", t + 1800, DAY)
    assert ok is not None and ok.kind == "usage" and acc.balance == Decimal("59.00")


@pytest.mark.parametrize("amount", ["0", "-5", "abc", "1e9", "0.00001"])
def test_bad_recharges_are_refused(amount):
    acc = account()
    with pytest.raises(PrepaidError, match="amount"):
        acc.recharge(amount, ref="r", who="w", why="y", at=0.0)
    assert acc.balance == Decimal("60")


def test_failed_trip_is_retried_after_a_pause():
    acc = account()
    acc.balance = Decimal("-1")
    t = DAY.timestamp()
    res = acc.step(t, DAY, False)
    trip = next(i for i in res.intents if i.kind == "trip")
    acc.result(trip, False, t)
    assert not [i for i in acc.step(t + 1, DAY, False).intents if i.kind == "trip"]
    later = acc.step(t + 61, DAY, False)
    assert [i.kind for i in later.intents if i.kind == "trip"] == ["trip"]
