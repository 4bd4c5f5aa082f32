"""Prepaid cost control for one customer account (pure; ``Decimal`` money).

balance = recharges − Σ energy × price(time of use). Thresholds:

- balance ≤ ``alarm1`` → ``prepaid_low_balance`` alarm;
- balance ≤ ``alarm2`` → pre-trip warning: ``prepaid_pre_trip`` alarm and the
  meter's pre-trip alarm (1C ``alarm_on``);
- balance ≤ −``overdraft_limit`` → trip, unless a no-trip window (night,
  holiday, weekend) or a protected customer defers it; the deferral is
  journaled once per episode and the trip follows when the window ends;
- after a recharge, once balance > ``close_allowed_amount``: close
  (``close_allowed`` by default, the customer presses the button;
  ``direct_close`` optionally) and the pre-trip alarm off.

With ``billing = "tariff_registers"`` the energy comes from the meter's own
tariff registers (T1..T4 of ``0001FF00``): each register's increment is billed
at that register's price, so energy used while the meter could not be read
(a 12 h outage over a tariff boundary) is billed at the tariff it was used in,
not at the one in force when reading resumes. ``reading_time`` (meters without
tariff registers) prices the total's increment at the reading's time of day.

Energy readings that go backwards or imply more than ``max_kw`` since the
previous reading are flagged (ledger kind ``flag``), not billed; the baseline
moves to the new reading so one bad reading is not billed later either.

Every balance change is a :class:`LedgerEntry`; the runtime writes it and the
account row in one journal unit, so balance and baseline are always consistent.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

from controller.loads.config import TARIFF_REGISTERS, AccountConfig, NoTripConfig, TariffConfig
from controller.loads.intents import AlarmNote, Intent, StepResult

LOW = "prepaid_low_balance"
PRE_TRIP = "prepaid_pre_trip"
FLAGGED = "prepaid_reading_flagged"
MAX_RECHARGE = Decimal(1_000_000)
# tolerance on the plausibility check (rounding of the 2-decimal register)
JUMP_MARGIN_KWH = Decimal("0.05")
# after a command failed, wait this long before asking again
RETRY_S = 60.0


class PrepaidError(ValueError):
    """A bad recharge or reading; the message names the field."""


def to_kwh(value: float | Decimal | str) -> Decimal:
    """A register reading (XXXXXX.XX kWh) as an exact decimal."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(f"{value:.2f}")
    return Decimal(value)


@dataclass(slots=True, frozen=True)
class LedgerEntry:
    account: str
    at: float
    kind: str  # recharge, usage, flag
    amount: Decimal  # signed change of the balance (0 for flags)
    balance_after: Decimal
    energy_kwh: Decimal | None = None
    reading_kwh: Decimal | None = None
    price: Decimal | None = None
    ref: str | None = None
    who: str = "system"
    why: str = ""


@dataclass
class PrepaidAccount:
    cfg: AccountConfig
    tariff: TariffConfig
    no_trip: NoTripConfig
    balance: Decimal = Decimal(0)
    last_reading: Decimal | None = None
    last_at: float | None = None
    # T1..T4 at the last billed reading (tariff_registers billing)
    last_registers: tuple[Decimal, ...] | None = None
    tripped: bool = False  # this account tripped the load and has not closed it yet
    alarm_sent: bool = False  # the meter's pre-trip alarm is on (by us)
    level: str = "normal"
    deferred: str = ""  # why the due trip is deferred ('' when not)
    pending: set[str] = field(default_factory=set)  # kinds in flight
    retry_at: dict[str, float] = field(default_factory=dict)  # kind -> not before

    @property
    def source(self) -> str:
        return f"prepaid/{self.cfg.id}"

    # -- money in ----------------------------------------------------------------------------
    def recharge(
        self, amount: Decimal | str | int, *, ref: str, who: str, why: str, at: float
    ) -> LedgerEntry:
        try:
            value = Decimal(str(amount))
        except ArithmeticError:
            raise PrepaidError(f"amount: not a decimal amount (got {amount!r})") from None
        if not value.is_finite() or not Decimal(0) < value <= MAX_RECHARGE:
            raise PrepaidError(f"amount: must be > 0 and ≤ {MAX_RECHARGE} (got {amount})")
        if value.as_tuple().exponent < -4:  # type: ignore[operator]
            raise PrepaidError(f"amount: at most 4 decimal places (got {amount})")
        if not ref or not who or not why:
            raise PrepaidError("ref, who and why: required (recharges are audited)")
        self.balance += value
        return LedgerEntry(
            self.cfg.id, at, "recharge", value, self.balance, ref=ref, who=who, why=why
        )

    # -- energy ------------------------------------------------------------------------------
    def reading(
        self, value: float | Decimal | str, at: float, local: dt.datetime
    ) -> LedgerEntry | None:
        """Bill an energy register reading; None when nothing changed."""
        kwh = to_kwh(value)
        prev, prev_at = self.last_reading, self.last_at
        self.last_reading, self.last_at = kwh, at
        if prev is None or prev_at is None:
            return None  # first reading: the baseline
        delta = kwh - prev
        if delta == 0:
            return None
        if delta < 0:
            return self._flag(at, delta, kwh, f"energy went backwards ({prev} → {kwh} kWh)")
        hours = Decimal(str(max(at - prev_at, 0.0))) / Decimal(3600)
        most = Decimal(str(self.cfg.max_kw)) * hours + JUMP_MARGIN_KWH
        if delta > most:
            return self._flag(
                at,
                delta,
                kwh,
                f"implausible jump of {delta} kWh in {float(hours) * 3600:.0f} s "
                f"(more than {self.cfg.max_kw:g} kW)",
            )
        price = self.tariff.price_at(local)
        cost = delta * price
        self.balance -= cost
        return LedgerEntry(
            self.cfg.id, at, "usage", -cost, self.balance, delta, kwh, price, why="energy"
        )

    def registers_reading(
        self, values: list[float | Decimal | str], at: float
    ) -> list[LedgerEntry]:
        """Bill a reading of the tariff registers T1..T4: one usage entry per
        register that moved, at that register's price. A register going
        backwards, or a sum implying more than ``max_kw``, is flagged and not
        billed; the baseline moves on either way."""
        if len(values) != len(TARIFF_REGISTERS):
            raise PrepaidError(f"values: need T1..T4 (4 registers), got {len(values)}")
        regs = tuple(to_kwh(v) for v in values)
        total = sum(regs, Decimal(0))
        prev, prev_at = self.last_registers, self.last_at
        self.last_registers, self.last_at, self.last_reading = regs, at, total
        if prev is None or prev_at is None:
            return []  # first reading: the baseline
        deltas = [now - before for now, before in zip(regs, prev, strict=True)]
        if not any(deltas):
            return []
        back = [
            f"{t} {b} → {n}"
            for t, b, n, d in zip(TARIFF_REGISTERS, prev, regs, deltas, strict=True)
            if d < 0
        ]
        used = sum(deltas, Decimal(0))
        if back:
            return [
                self._flag(
                    at, used, total, f"tariff register went backwards ({', '.join(back)} kWh)"
                )
            ]
        hours = Decimal(str(max(at - prev_at, 0.0))) / Decimal(3600)
        # each register may round on its own: one margin per register
        most = Decimal(str(self.cfg.max_kw)) * hours + JUMP_MARGIN_KWH * len(regs)
        if used > most:
            return [
                self._flag(
                    at,
                    used,
                    total,
                    f"implausible jump of {used} kWh in {float(hours) * 3600:.0f} s "
                    f"(more than {self.cfg.max_kw:g} kW)",
                )
            ]
        out: list[LedgerEntry] = []
        for register, delta, reading in zip(TARIFF_REGISTERS, deltas, regs, strict=True):
            if delta == 0:
                continue
            price = self.tariff.register_prices[register]
            cost = delta * price
            self.balance -= cost
            out.append(
                LedgerEntry(
                    self.cfg.id,
                    at,
                    "usage",
                    -cost,
                    self.balance,
                    delta,
                    reading,
                    price,
                    why=f"energy {register.upper()}",
                )
            )
        return out

    def _flag(self, at: float, delta: Decimal, kwh: Decimal, why: str) -> LedgerEntry:
        return LedgerEntry(
            self.cfg.id, at, "flag", Decimal(0), self.balance, delta, kwh, None, why=why
        )

    # -- the step ----------------------------------------------------------------------------
    def level_of(self, balance: Decimal) -> str:
        c = self.cfg
        if balance <= -c.overdraft_limit:
            return "trip"
        if balance <= c.alarm2:
            return "alarm2"
        if balance <= c.alarm1:
            return "alarm1"
        return "normal"

    def step(self, now: float, local: dt.datetime, relay_open: bool | None) -> StepResult:
        out = StepResult()
        c = self.cfg
        level = self.level_of(self.balance)
        if level != self.level:
            low = level != "normal"
            pre = level in ("alarm2", "trip")
            was_low = self.level != "normal"
            was_pre = self.level in ("alarm2", "trip")
            if low != was_low:
                out.alarms.append(
                    AlarmNote(LOW, self.source, low, f"balance {self.balance:.2f} ≤ {c.alarm1}")
                )
            if pre != was_pre:
                out.alarms.append(
                    AlarmNote(
                        PRE_TRIP,
                        self.source,
                        pre,
                        f"balance {self.balance:.2f} ≤ {c.alarm2}: pre-trip warning",
                    )
                )
            out.notes.append(f"account {c.id}: {self.level} → {level} at balance {self.balance}")
            self.level = level
        why_base = f"prepaid {c.id}: balance {self.balance:.2f}"
        trip_due = level == "trip" and not self.tripped and relay_open is not True
        if trip_due:
            reason = "protected customer" if c.protected else self.no_trip.active(local)
            if reason and self.deferred != reason:
                out.notes.append(f"account {c.id}: trip due, deferred ({reason})")
            elif not reason and self.deferred:
                out.notes.append(f"account {c.id}: deferral over ({self.deferred}), tripping")
            self.deferred = reason
            trip_due = not reason
        elif level != "trip":
            self.deferred = ""
        if self.pending:
            return out  # one command at a time per account (and per load)
        # one intent per step, most important first
        kind: str
        if self.tripped and self.balance > c.close_allowed_amount:
            kind, why = c.close_mode, f"> close-allowed amount {c.close_allowed_amount}"
        elif trip_due:
            kind, why = "trip", f"≤ −overdraft {c.overdraft_limit}"
        elif level in ("alarm2", "trip") and not self.alarm_sent:
            kind, why = "alarm_on", f"≤ alarm-2 {c.alarm2}"
        elif self.alarm_sent and level not in ("alarm2", "trip") and not self.tripped:
            kind, why = "alarm_off", "above alarm-2"
        else:
            return out
        if now < self.retry_at.get(kind, 0.0):
            return out  # failed recently: wait before asking again
        self.pending.add(kind)
        out.intents.append(Intent(kind, c.load, f"{why_base} {why}", self.source))
        return out

    def result(self, intent: Intent, ok: bool, now: float) -> None:
        """Feedback from the executor."""
        self.pending.discard(intent.kind)
        if not ok:
            self.retry_at[intent.kind] = now + RETRY_S
            return
        if intent.kind == "trip":
            self.tripped = True
        elif intent.kind in ("close_allowed", "direct_close"):
            self.tripped = False
        elif intent.kind == "alarm_on":
            self.alarm_sent = True
        elif intent.kind == "alarm_off":
            self.alarm_sent = False
