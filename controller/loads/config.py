"""``[loads]``: loads, demand-limit groups and rounds, prepaid accounts, tariffs, interlocks.

Every table forbids unknown keys; numbers have documented ranges, so a bad
value is an error naming the field and the allowed range (the root loader
formats pydantic errors as ``loads.groups[0].window_min: must be between 1 and
60 (got 90)``). Cross references (a round naming an unknown load, an account
naming an unknown tariff) are checked here too and name the field.

Money is ``Decimal`` throughout: TOML numbers and strings are both accepted
and converted through their decimal text (``0.1`` is exactly 0.1, not a float).
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BeforeValidator, ConfigDict, Field, model_validator

from controller.config_model import ConfigModel

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


def _to_decimal(v: object) -> object:
    if isinstance(v, bool):
        raise ValueError("must be a decimal amount, not true/false")
    if isinstance(v, float | int):
        return Decimal(str(v))
    return v


# strict=False: a decimal amount may be written as text ("0.55"), TOML has no decimal type
Money = Annotated[
    Decimal, BeforeValidator(_to_decimal), Field(strict=False, max_digits=14, decimal_places=4)
]


def parse_hhmm(text: str) -> int:
    """ "HH:MM" → minutes after midnight; ValueError naming the format."""
    m = _HHMM.match(text)
    if not m:
        raise ValueError(f"must be a time of day HH:MM, 00:00..23:59 (got {text!r})")
    return int(m.group(1)) * 60 + int(m.group(2))


def in_window(minute: int, start: int, end: int) -> bool:
    """Is minute-of-day inside [start, end)? A window may wrap midnight (22:00–07:00)."""
    if start == end:
        return True  # the whole day
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end


class _Model(ConfigModel):
    model_config = ConfigDict(frozen=True)


class TimeWindow(_Model):
    """A daily window ``start``–``end`` (HH:MM, local time; may wrap midnight)."""

    start: str
    end: str

    @model_validator(mode="after")
    def _times(self) -> TimeWindow:
        parse_hhmm(self.start)
        parse_hhmm(self.end)
        return self

    def contains(self, when: dt.datetime) -> bool:
        return in_window(when.hour * 60 + when.minute, parse_hhmm(self.start), parse_hhmm(self.end))


class LoadConfig(_Model):
    """One switchable load: a meter relay (DL/T 645 1C) or a coil on a load-control terminal."""

    name: str = Field(pattern=NAME_PATTERN)
    type: Literal["meter", "coil"] = "meter"
    bus: str = Field(min_length=1)
    # meter: the 12-digit address; coil: the Modbus device name and its coil tag
    address: str | None = Field(default=None, pattern=r"^\d{12}$")
    device: str | None = None
    coil: str | None = None
    # the feeder (or any group of relays sharing inrush): the rate limit applies per feeder
    feeder: str = Field(default="default", pattern=NAME_PATTERN)
    description: str = ""
    # What the controller does with this output when it stops: a meter relay
    # latches, so "hold" (do nothing) is the only safe state; a terminal coil
    # may be driven to open or closed.
    safe_state: Literal["hold", "open", "closed"] = "hold"

    @model_validator(mode="after")
    def _target(self) -> LoadConfig:
        if self.type == "meter":
            if self.address is None:
                raise ValueError("address: required for a meter load (12 digits)")
            if self.safe_state != "hold":
                raise ValueError("safe_state: a meter relay latches; only 'hold' is allowed")
        elif not self.device or not self.coil:
            raise ValueError("device and coil: required for a coil load")
        return self


class ConfirmConfig(_Model):
    """How a command is confirmed by read-back."""

    # whole confirmation budget after the command went out
    timeout_s: float = Field(default=10.0, ge=0.5, le=600.0)
    # pause between re-reads of the relay state
    reread_interval_s: float = Field(default=1.0, ge=0.0, le=60.0)
    # re-reads after the first read-back (bounded)
    max_rereads: int = Field(default=5, ge=0, le=100)
    # validity time put into the 1C frame (the meter refuses it afterwards)
    valid_for_s: float = Field(default=600.0, ge=10.0, le=86_400.0)
    # how long an armed (selected) command waits for execute
    arm_timeout_s: float = Field(default=30.0, ge=1.0, le=600.0)


class RateLimitConfig(_Model):
    """Mass switching: no more than ``per_feeder_per_s`` relays per second on one feeder."""

    per_feeder_per_s: float = Field(default=2.0, ge=0.1, le=100.0)
    burst: int = Field(default=1, ge=1, le=100)
    # a command that cannot get a slot within this is failed rather than queued forever
    max_wait_s: float = Field(default=120.0, ge=1.0, le=3600.0)


class RoundConfig(_Model):
    """One demand-limit round: loads tripped together."""

    name: str = Field(pattern=NAME_PATTERN)
    loads: list[str] = Field(min_length=1)
    enabled: bool = True
    # how long the group must stay over the limit (alarm raised) before this round trips
    alarm_s: float = Field(default=300.0, ge=0.0, le=3600.0)


class LimitPeriod(TimeWindow):
    """A time-of-day limit overriding the group's default."""

    limit_kw: float = Field(gt=0.0, le=1e7)


def _member(v: object) -> object:
    # a bare name is a load's meter counted positive (the original form)
    return {"load": v} if isinstance(v, str) else v


class MemberConfig(_Model):
    """One metering point of a demand group (总加组), counted with a sign.

    ``load``: the meter of a configured load; ``meter``: any meter on a bus,
    ``"bus/address"`` (an incoming feeder, an outgoing one, a generator).
    ``sign = -1`` subtracts it (incoming minus outgoing).
    """

    load: str | None = Field(default=None, pattern=NAME_PATTERN)
    meter: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}/\d{12}$")
    sign: Literal[1, -1] = 1

    @model_validator(mode="after")
    def _one(self) -> MemberConfig:
        if (self.load is None) == (self.meter is None):
            raise ValueError(
                'load, meter: give exactly one: load = "<load name>" or '
                'meter = "<bus>/<12-digit address>"'
            )
        return self

    @property
    def label(self) -> str:
        return f"load {self.load}" if self.load is not None else f"meter {self.meter}"


Member = Annotated[MemberConfig, BeforeValidator(_member)]


class GroupConfig(_Model):
    """A demand-limit group (after Q/GDW 1373 / 1376.1 power control)."""

    name: str = Field(pattern=NAME_PATTERN)
    # metering points whose signed active power makes up the group's total
    members: list[Member] = Field(min_length=1)
    rounds: list[RoundConfig] = Field(min_length=1, max_length=8)
    limit_kw: float = Field(gt=0.0, le=1e7)
    # 保安定值: no limit below it is accepted, and no round is shed that would
    # take the group's power below it
    security_kw: float = Field(default=0.0, ge=0.0, le=1e7)
    window_min: int = Field(default=5, ge=1, le=60)
    hysteresis_kw: float = Field(default=0.0, ge=0.0, le=1e7)
    # a shed round comes back only after "average + the power it shed <= limit −
    # hysteresis" held this long; at least one window, so the average already
    # shows the round restored before it
    restore_delay_s: float = Field(default=600.0, ge=0.0, le=86_400.0)
    # between two loads of one round being restored (inrush)
    restore_stagger_s: float = Field(default=30.0, ge=0.0, le=3600.0)
    min_off_s: float = Field(default=60.0, ge=0.0, le=86_400.0)
    min_on_s: float = Field(default=60.0, ge=0.0, le=86_400.0)
    # how a restored load comes back: the customer closes (close_allowed) or the relay closes
    restore_mode: Literal["close_allowed", "direct_close"] = "close_allowed"
    schedule: list[LimitPeriod] = []
    # journal what would trip, switch nothing
    dry_run: bool = False
    enabled: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> GroupConfig:
        if self.security_kw > self.limit_kw:
            raise ValueError(
                f"security_kw: must be at most limit_kw {self.limit_kw:g} (got {self.security_kw:g})"
            )
        if self.hysteresis_kw >= self.limit_kw:
            raise ValueError(
                f"hysteresis_kw: must be below limit_kw {self.limit_kw:g} (got {self.hysteresis_kw:g})"
            )
        for i, p in enumerate(self.schedule):
            if p.limit_kw < self.security_kw:
                raise ValueError(
                    f"schedule[{i}].limit_kw: must be at least security_kw {self.security_kw:g} "
                    f"(the supply the site always keeps) (got {p.limit_kw:g})"
                )
            if p.limit_kw <= self.hysteresis_kw:
                raise ValueError(
                    f"schedule[{i}].limit_kw: must be above hysteresis_kw "
                    f"{self.hysteresis_kw:g} (got {p.limit_kw:g})"
                )
        # A decision taken before the average has seen a whole window since the
        # last switching acts on power that is no longer there: the next round
        # trips although the last one was enough, a round comes back on an
        # average that does not yet show the one restored before it.
        window_s = self.window_min * 60.0
        for i, r in enumerate(self.rounds):
            if r.alarm_s < window_s:
                raise ValueError(
                    f"rounds[{i}].alarm_s: must be between {window_s:g} (window_min × 60) "
                    f"and 3600 s, or shorten window_min (got {r.alarm_s:g})"
                )
        if self.restore_delay_s < window_s:
            raise ValueError(
                f"restore_delay_s: must be between {window_s:g} (window_min × 60) "
                f"and 86400 s, or shorten window_min (got {self.restore_delay_s:g})"
            )
        names = [r.name for r in self.rounds]
        if len(set(names)) != len(names):
            raise ValueError(f"rounds: names must be unique (got {names})")
        seen: set[str] = set()
        for i, r in enumerate(self.rounds):
            for load in r.loads:
                if load in seen:
                    raise ValueError(f"rounds[{i}].loads: {load!r} is in more than one round")
                seen.add(load)
        points = [(m.load, m.meter) for m in self.members]
        for i, pt in enumerate(points):
            if pt in points[:i]:
                raise ValueError(
                    f"members[{i}]: {self.members[i].label} is already a member (counted twice)"
                )
        return self


class TariffPeriod(TimeWindow):
    price: Money = Field(ge=0, le=1000)


TariffRegister = Literal["t1", "t2", "t3", "t4"]
TARIFF_REGISTERS: tuple[TariffRegister, ...] = ("t1", "t2", "t3", "t4")


class TariffConfig(_Model):
    """Time-of-use tariff: periods with a price per kWh; ``default_price`` outside them.

    ``register_prices`` prices the meter's own tariff registers (DL/T 645
    ``0001FF00``: T1 sharp, T2 peak, T3 flat, T4 valley, as the meter's TOU
    table assigns them) for accounts billed by ``tariff_registers``."""

    name: str = Field(pattern=NAME_PATTERN)
    default_price: Money = Field(ge=0, le=1000)
    periods: list[TariffPeriod] = []
    register_prices: dict[TariffRegister, Annotated[Money, Field(ge=0, le=1000)]] = {}

    @model_validator(mode="after")
    def _registers(self) -> TariffConfig:
        missing = [t for t in TARIFF_REGISTERS if t not in self.register_prices]
        if self.register_prices and missing:
            raise ValueError(
                f"register_prices: must price every tariff register t1, t2, t3, t4 "
                f"(missing: {', '.join(missing)})"
            )
        return self

    def price_at(self, when: dt.datetime) -> Decimal:
        for p in self.periods:
            if p.contains(when):
                return p.price
        return self.default_price


class AccountConfig(_Model):
    """A prepaid customer account on one load."""

    id: str = Field(pattern=NAME_PATTERN)
    load: str
    tariff: str
    # balance thresholds (yuan): alarm-1 ≥ alarm-2 ≥ -overdraft_limit
    alarm1: Money = Field(default=Decimal(50), ge=-100_000, le=100_000)
    alarm2: Money = Field(default=Decimal(20), ge=-100_000, le=100_000)
    # trip at balance ≤ -overdraft_limit (0: trip when the money runs out)
    overdraft_limit: Money = Field(default=Decimal(0), ge=0, le=100_000)
    # after a recharge, close again only when balance > this
    close_allowed_amount: Money = Field(default=Decimal(0), ge=-100_000, le=100_000)
    close_mode: Literal["close_allowed", "direct_close"] = "close_allowed"
    # protected customers (hospitals, …): a trip is deferred indefinitely and journaled
    protected: bool = False
    # energy readings implying more than this are flagged, not billed
    max_kw: float = Field(default=100.0, gt=0.0, le=1e6)
    # opening balance when the account is first seen (later: the journal's balance)
    opening_balance: Money = Field(default=Decimal(0), ge=-100_000, le=10_000_000)
    # "tariff_registers": bill each increment of the meter's T1..T4 registers
    # (0001FF00) at its register's price, so energy used while the meter was not
    # read is still billed at the tariff it was used in; "reading_time": bill
    # the total's increment at the price in force when it is read (meters
    # without tariff registers). Unset: tariff registers when the account's tariff
    # prices them (register_prices), the reading time otherwise.
    billing: Literal["tariff_registers", "reading_time"] | None = None

    @model_validator(mode="after")
    def _order(self) -> AccountConfig:
        if not self.alarm1 >= self.alarm2 >= -self.overdraft_limit:
            raise ValueError(
                "alarm1, alarm2, overdraft_limit: need alarm1 >= alarm2 >= -overdraft_limit "
                f"(got {self.alarm1}, {self.alarm2}, {self.overdraft_limit})"
            )
        if self.close_allowed_amount < -self.overdraft_limit:
            raise ValueError(
                f"close_allowed_amount: must be >= -overdraft_limit ({-self.overdraft_limit}) "
                f"(got {self.close_allowed_amount})"
            )
        return self


class NoTripConfig(_Model):
    """When prepaid trips are deferred: nightly windows, holidays (protected accounts always)."""

    windows: list[TimeWindow] = [TimeWindow(start="22:00", end="07:00")]
    holidays: list[dt.date] = []
    weekends: bool = False

    def active(self, when: dt.datetime) -> str:
        """Why a trip at ``when`` is deferred ('' when it is not)."""
        if when.date() in self.holidays:
            return f"holiday {when.date().isoformat()}"
        if self.weekends and when.weekday() >= 5:
            return "weekend"
        for w in self.windows:
            if w.contains(when):
                return f"no-trip window {w.start}-{w.end}"
        return ""


class LoadsConfig(_Model):
    """``[loads]``."""

    enabled: bool = True
    loads: list[LoadConfig] = []
    groups: list[GroupConfig] = []
    tariffs: list[TariffConfig] = []
    accounts: list[AccountConfig] = []
    confirm: ConfirmConfig = ConfirmConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    no_trip: NoTripConfig = NoTripConfig()
    # How long a load's polled relay state (status word 3 bit 4, or the coil)
    # may disagree with the state last commanded before ``relay_mismatch`` is
    # raised. Status words are polled every minute or so, so this must span a
    # few poll periods: one odd reading is not yet a relay that moved by itself.
    mismatch_grace_s: float = Field(default=180.0, ge=0.0, le=86_400.0)

    @model_validator(mode="after")
    def _references(self) -> LoadsConfig:
        names = [x.name for x in self.loads]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"loads: names must be unique (duplicated: {', '.join(dup)})")
        known = set(names)
        targets = [
            (x.bus, x.address) if x.type == "meter" else (x.bus, x.device, x.coil)
            for x in self.loads
        ]
        if len(set(targets)) != len(targets):
            raise ValueError("loads: two loads switch the same relay or coil")
        gnames = [g.name for g in self.groups]
        if len(set(gnames)) != len(gnames):
            raise ValueError(f"groups: names must be unique (got {gnames})")
        for gi, g in enumerate(self.groups):
            for m in g.members:
                if m.load is not None and m.load not in known:
                    raise ValueError(
                        f"groups[{gi}].members: unknown load {m.load!r} (loads: {', '.join(names)})"
                    )
            for ri, r in enumerate(g.rounds):
                for x in r.loads:
                    if x not in known:
                        raise ValueError(f"groups[{gi}].rounds[{ri}].loads: unknown load {x!r}")
        tariffs = {t.name for t in self.tariffs}
        ids: set[str] = set()
        on_load: set[str] = set()
        for ai, a in enumerate(self.accounts):
            if a.id in ids:
                raise ValueError(f"accounts[{ai}].id: duplicate account {a.id!r}")
            ids.add(a.id)
            if a.load not in known:
                raise ValueError(f"accounts[{ai}].load: unknown load {a.load!r}")
            if a.load in on_load:
                raise ValueError(f"accounts[{ai}].load: {a.load!r} already has an account")
            on_load.add(a.load)
            if a.tariff not in tariffs:
                raise ValueError(
                    f"accounts[{ai}].tariff: unknown tariff {a.tariff!r} "
                    f"(tariffs: {', '.join(sorted(tariffs)) or 'none'})"
                )
            if a.billing is None:
                mode = (
                    "tariff_registers" if self.tariff(a.tariff).register_prices else "reading_time"
                )
                object.__setattr__(a, "billing", mode)
            if a.billing == "tariff_registers" and not self.tariff(a.tariff).register_prices:
                raise ValueError(
                    f"accounts[{ai}].billing: 'tariff_registers' needs register_prices "
                    f"(t1..t4 per kWh) in tariff {a.tariff!r}"
                )
        return self

    def load(self, name: str) -> LoadConfig:
        for x in self.loads:
            if x.name == name:
                return x
        raise KeyError(f"load: no load named {name!r}")

    def tariff(self, name: str) -> TariffConfig:
        for t in self.tariffs:
            if t.name == name:
                return t
        raise KeyError(f"tariff: no tariff named {name!r}")
