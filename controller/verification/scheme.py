"""Test schemes as data.

Test factors (current, power factor, voltage, pulses, samples…) compose test
cases (one load point, one clock reading series…); test items group cases of
one kind; a scheme is the ordered list of items a batch runs. Schemes are TOML
files under ``config/schemes/``; they carry a name and an integer version,
and a batch records name, version and a content hash so a result can always
be traced to the exact parameters that produced it.

Validation happens twice: on load (the item kinds, ranges of every factor, and
whether the scheme's accuracy class defines a limit at each load point) and
against the meter type of a batch (rated currents, class, the resulting
durations), each error naming the field and the allowed range.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from controller.verification.errors import (
    AccuracyClass,
    Connection,
    PowerFactor,
    creep_time_s,
    error_limit,
    lowest_current,
    starting_current,
    starting_time_s,
    to_fraction,
)


class SchemeError(ValueError):
    """A scheme that cannot run; ``problems`` lists every ``field: message``."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class Scope(StrEnum):
    UNIT = "unit"  # needs the unit's source: runs once for every station of the unit at once
    STATION = "station"  # per-station: runs in parallel, each station at its own pace


class MeterType(BaseModel):
    """Nominal data of one meter type (the nameplate)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    accuracy_class: AccuracyClass
    connection: Connection = Connection.DIRECT
    phases: Literal[1, 3] = 1  # m in the formulas: 1 single-phase, 3 three-phase four-wire
    un: Decimal = Field(gt=0, le=1000, description="reference voltage Un, V")
    ib: Decimal = Field(gt=0, le=100, description="basic current Ib (In for transformer meters), A")
    imax: Decimal = Field(gt=0, le=200, description="maximum current Imax, A")
    constant: int = Field(ge=1, le=1_000_000, description="meter constant C, imp/kWh")

    @field_validator("imax")
    @classmethod
    def _imax_over_ib(cls, v: Decimal, info: Any) -> Decimal:
        ib = info.data.get("ib")
        if ib is not None and v < ib:
            raise ValueError(f"imax must be >= ib ({ib} A), got {v} A")
        return v

    @property
    def imax_over_ib(self) -> Fraction:
        return to_fraction(self.imax) / to_fraction(self.ib)


_CURRENT = re.compile(r"^\s*(\d+(?:\.\d+)?)?\s*(Ib|In|Imax)\s*$")


@dataclass(frozen=True, slots=True)
class Current:
    """A test current as written in a scheme: ``0.05Ib``, ``Ib``, ``0.5Imax``, ``Imax``."""

    multiple: Decimal
    base: Literal["Ib", "Imax"]

    @classmethod
    def parse(cls, text: str) -> Current:
        m = _CURRENT.match(text)
        if m is None:
            raise ValueError(
                f"current {text!r} is not a multiple of Ib, In or Imax (e.g. '0.05Ib', 'Ib', 'Imax')"
            )
        mult = Decimal(m.group(1)) if m.group(1) else Decimal(1)
        if mult <= 0:
            raise ValueError(f"current {text!r} must be > 0")
        return cls(mult, "Imax" if m.group(2) == "Imax" else "Ib")

    def over_ib(self, meter: MeterType) -> Fraction:
        base = meter.imax_over_ib if self.base == "Imax" else Fraction(1)
        return to_fraction(self.multiple) * base

    def amperes(self, meter: MeterType) -> Fraction:
        return self.over_ib(meter) * to_fraction(meter.ib)

    def __str__(self) -> str:
        return self.base if self.multiple == 1 else f"{self.multiple}{self.base}"


def _check_current(v: str) -> str:
    Current.parse(v)
    return v


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    label: str = Field(default="", max_length=64)
    # When a meter fails this item its station skips the rest of the scheme
    # (the meter is already a reject; e.g. after an insulation breakdown it
    # must not be powered again).
    stop_on_fail: bool = False

    scope: ClassVar[Scope] = Scope.UNIT  # a property of the kind, not a factor users set


class AppearanceItem(_Item):
    """Power-on check: the meter is energised at Un and must draw its voltage-circuit burden."""

    kind: Literal["appearance"] = "appearance"
    power_on_s: float = Field(default=5.0, ge=0.5, le=600)
    stop_on_fail: bool = True
    scope: ClassVar[Scope] = Scope.STATION


class WithstandItem(_Item):
    """AC withstand voltage between circuits and earth (JJG 596-2012 §7.3.1)."""

    kind: Literal["withstand"] = "withstand"
    kv: float = Field(default=4.0, ge=0.5, le=6.0)
    seconds: float = Field(default=60.0, ge=1, le=300)
    ramp_s: float = Field(default=5.0, ge=0, le=30)
    leakage_limit_ma: float = Field(default=5.0, gt=0, le=100)
    stop_on_fail: bool = True


class StartingItem(_Item):
    kind: Literal["starting"] = "starting"
    # Multiple of Ib overriding the class's starting current; None = the class's.
    current: float | None = Field(default=None, gt=0, le=0.01)
    settle_s: float = Field(default=2.0, ge=0, le=60)


class CreepItem(_Item):
    kind: Literal["creep"] = "creep"
    voltage_pct: float = Field(default=115.0, ge=80, le=120)
    settle_s: float = Field(default=2.0, ge=0, le=60)


class LoadPoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    i: Annotated[str, Field(description="current, e.g. '0.05Ib', 'Ib', 'Imax'")]
    pf: PowerFactor = PowerFactor.UNITY
    samples: int = Field(default=2, ge=2, le=20)  # JJG 596-2012 §7.2.3: at least 2
    pulses: int = Field(default=2, ge=1, le=10_000, description="meter pulses N per sample")

    @field_validator("i")
    @classmethod
    def _current(cls, v: str) -> str:
        return _check_current(v)

    @property
    def current(self) -> Current:
        return Current.parse(self.i)

    @property
    def name(self) -> str:
        return f"{self.current} PF{self.pf.value}"


class BasicErrorItem(_Item):
    kind: Literal["basic_error"] = "basic_error"
    points: list[LoadPoint] = Field(min_length=1, max_length=64)
    settle_s: float = Field(default=5.0, ge=0, le=120)


class ConstantItem(_Item):
    """Constant / register test: the register advance must match the pulses emitted (N/C)."""

    kind: Literal["constant"] = "constant"
    i: str = "Imax"
    pf: PowerFactor = PowerFactor.UNITY
    energy_kwh: float = Field(default=0.5, ge=0.05, le=20)
    settle_s: float = Field(default=2.0, ge=0, le=60)

    @field_validator("i")
    @classmethod
    def _current(cls, v: str) -> str:
        return _check_current(v)


class ClockItem(_Item):
    kind: Literal["clock"] = "clock"
    readings: int = Field(default=10, ge=2, le=100)
    gate_s: float = Field(default=10.0, ge=1, le=600)
    limit_s_per_day: Decimal = Field(default=Decimal("0.5"), gt=0, le=10)
    scope: ClassVar[Scope] = Scope.STATION


class CommunicationItem(_Item):
    kind: Literal["communication"] = "communication"
    read_address: bool = True
    read_energy: bool = True
    scope: ClassVar[Scope] = Scope.STATION


class CostControlItem(_Item):
    """1C trip then direct close, each confirmed by reading status word 3 bit 4."""

    kind: Literal["cost_control"] = "cost_control"
    relay_settle_s: float = Field(default=1.0, ge=0, le=30)
    expiry_min: int = Field(default=10, ge=1, le=1440)
    scope: ClassVar[Scope] = Scope.STATION


Item = Annotated[
    AppearanceItem
    | WithstandItem
    | StartingItem
    | CreepItem
    | BasicErrorItem
    | ConstantItem
    | ClockItem
    | CommunicationItem
    | CostControlItem,
    Field(discriminator="kind"),
]

ITEM_KINDS: tuple[str, ...] = (
    "appearance",
    "withstand",
    "starting",
    "creep",
    "basic_error",
    "constant",
    "clock",
    "communication",
    "cost_control",
)

_NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


class Scheme(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME)
    version: int = Field(ge=1, le=1_000_000)
    accuracy_class: AccuracyClass
    description: str = ""
    items: list[Item] = Field(min_length=1, max_length=50)

    @property
    def content_hash(self) -> str:
        """sha256 of the canonical JSON: the same name+version must always mean the same content."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    # -- validation against the class (no meter needed) -------------------------
    def _class_problems(self) -> list[str]:
        problems: list[str] = []
        for n, item in enumerate(self.items):
            points: list[tuple[str, str, PowerFactor]] = []
            if isinstance(item, BasicErrorItem):
                points = [
                    (f"items[{n}].points[{k}].i", p.i, p.pf) for k, p in enumerate(item.points)
                ]
            elif isinstance(item, ConstantItem):
                points = [(f"items[{n}].i", item.i, item.pf)]
            for where, text, pf in points:
                cur = Current.parse(text)
                low = lowest_current(self.accuracy_class, pf)
                if cur.base == "Ib" and to_fraction(cur.multiple) < low:
                    problems.append(
                        f"{where}: {text} at PF {pf.value} is below the range of class "
                        f"{self.accuracy_class.value} (limits are defined from {_fmt(low)} Ib to Imax)"
                    )
                if cur.base == "Imax" and cur.multiple > 1:
                    problems.append(f"{where}: {text} is above Imax (allowed up to 1 Imax)")
        return problems

    # -- validation against a meter type -------------------------------------------
    def problems_for(self, meter: MeterType) -> list[str]:
        problems = self._class_problems()
        if meter.accuracy_class is not self.accuracy_class:
            problems.append(
                f"accuracy_class: scheme is for class {self.accuracy_class.value}, meter type "
                f"{meter.name!r} is class {meter.accuracy_class.value}"
            )
            return problems
        for n, item in enumerate(self.items):
            if isinstance(item, BasicErrorItem):
                for k, p in enumerate(item.points):
                    where = f"items[{n}].points[{k}].i"
                    self._point_problem(problems, where, p.current, p.pf, meter)
            elif isinstance(item, ConstantItem):
                self._point_problem(
                    problems, f"items[{n}].i", Current.parse(item.i), item.pf, meter
                )
        return problems

    def _point_problem(
        self, problems: list[str], where: str, cur: Current, pf: PowerFactor, meter: MeterType
    ) -> None:
        ratio = cur.over_ib(meter)
        if error_limit(self.accuracy_class, pf, ratio, meter.imax_over_ib) is None:
            low = lowest_current(self.accuracy_class, pf)
            problems.append(
                f"{where}: {cur} = {_fmt(ratio * to_fraction(meter.ib))} A at PF {pf.value} is "
                f"outside the range of meter type {meter.name!r} (class "
                f"{self.accuracy_class.value}: {_fmt(low * to_fraction(meter.ib))} A .. "
                f"Imax = {meter.imax} A)"
            )

    def validate_for(self, meter: MeterType) -> None:
        problems = self.problems_for(meter)
        if problems:
            raise SchemeError(f"scheme {self.name!r} v{self.version}", problems)

    # -- timing -------------------------------------------------------------------------
    def plan(self, meter: MeterType) -> list[tuple[Scope, float]]:
        """Nominal duration (s) of every item for an exact meter: the lower bound's parts."""
        return [(item.scope, item_duration_s(item, meter)) for item in self.items]

    def lower_bound_s(self, meter: MeterType) -> float:
        """Σ unit-wide items + the per-station chain (all stations run it in parallel)."""
        plan = self.plan(meter)
        return sum(d for s, d in plan if s is Scope.UNIT) + sum(
            d for s, d in plan if s is Scope.STATION
        )


# DL/T 645 timing used for planning the per-station items: one short
# transaction at 2400 baud 8E1 (≈ 30 characters × 4.583 ms) plus a typical
# 60 ms meter response delay.
COMM_TRANSACTION_S = 0.2


def point_power_w(
    meter: MeterType, cur: Current, pf: PowerFactor, voltage_pct: float = 100
) -> Fraction:
    return (
        meter.phases
        * to_fraction(meter.un)
        * Fraction(str(voltage_pct))
        / 100
        * cur.amperes(meter)
        * pf.cos_phi
    )


def item_duration_s(item: Any, meter: MeterType) -> float:
    cls = meter.accuracy_class
    if isinstance(item, AppearanceItem):
        return item.power_on_s
    if isinstance(item, WithstandItem):
        return 2 * item.ramp_s + item.seconds
    if isinstance(item, StartingItem):
        i = _starting_amperes(item, meter)
        return item.settle_s + float(starting_time_s(meter.constant, meter.phases, meter.un, i))
    if isinstance(item, CreepItem):
        return item.settle_s + float(
            creep_time_s(cls, meter.constant, meter.phases, meter.un, meter.imax)
        )
    if isinstance(item, BasicErrorItem):
        total = 0.0
        for p in item.points:
            power = point_power_w(meter, p.current, p.pf)
            pulse_s = Fraction(3_600_000) / (meter.constant * power)
            total += item.settle_s + float(pulse_s * p.pulses * p.samples)
        return total
    if isinstance(item, ConstantItem):
        power = point_power_w(meter, Current.parse(item.i), item.pf)
        return (
            item.settle_s
            + float(Fraction(str(item.energy_kwh)) * 3_600_000 / power)
            + 2 * COMM_TRANSACTION_S
        )
    if isinstance(item, ClockItem):
        return item.readings * item.gate_s
    if isinstance(item, CommunicationItem):
        return COMM_TRANSACTION_S * (int(item.read_address) + int(item.read_energy))
    if isinstance(item, CostControlItem):
        return 2 * (2 * COMM_TRANSACTION_S + item.relay_settle_s)
    raise TypeError(f"unknown item {item!r}")


def _starting_amperes(item: StartingItem, meter: MeterType) -> Fraction:
    if item.current is not None:
        return Fraction(str(item.current)) * to_fraction(meter.ib)
    return starting_current(meter.accuracy_class, meter.connection, meter.ib)


starting_amperes = _starting_amperes


def _fmt(x: Fraction) -> str:
    return f"{float(x):g}"


def _pydantic_problems(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        loc = ""
        for part in err["loc"]:
            if isinstance(part, int):
                loc += f"[{part}]"
            elif part in ITEM_KINDS:
                continue  # the discriminator's tag adds nothing for the reader
            else:
                loc += ("." if loc else "") + str(part)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        out.append(f"{loc}: {msg}")
    return out


def parse_scheme(data: dict[str, Any], source: str = "scheme") -> Scheme:
    """Validate a scheme mapping (from TOML or JSON) against its class."""
    problems: list[str] = []
    items = data.get("items")
    if isinstance(items, list):
        for n, item in enumerate(items):
            kind = item.get("kind") if isinstance(item, dict) else None
            if kind not in ITEM_KINDS:
                problems.append(
                    f"items[{n}].kind: unknown test item {kind!r}; allowed: {', '.join(ITEM_KINDS)}"
                )
    if problems:
        raise SchemeError(source, problems)
    try:
        scheme = Scheme.model_validate(data)
    except ValidationError as exc:
        raise SchemeError(source, _pydantic_problems(exc)) from None
    problems = scheme._class_problems()
    if problems:
        raise SchemeError(source, problems)
    return scheme


def load_scheme(path: str | Path) -> Scheme:
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SchemeError(str(p), [f"not valid TOML: {exc}"]) from None
    return parse_scheme(data, str(p))


def scheme_from_json(text: str) -> Scheme:
    return parse_scheme(json.loads(text), "stored scheme")
