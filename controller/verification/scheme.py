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

from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from controller.config_model import ConfigModel
from controller.verification.errors import (
    AccuracyClass,
    Connection,
    PowerFactor,
    Wiring,
    creep_time_s,
    error_limit,
    lowest_current,
    starting_current,
    starting_time_s,
    to_fraction,
)
from drivers.verification_rig import ENERGY_REGISTER_RESOLUTION_KWH


class SchemeError(ValueError):
    """A scheme that cannot run; ``problems`` lists every ``field: message``."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class Scope(StrEnum):
    UNIT = "unit"  # needs the unit's source: runs once for every station of the unit at once
    STATION = "station"  # per-station: runs in parallel, each station at its own pace


class MeterType(ConfigModel):
    """Nominal data of one meter type (the nameplate)."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1, max_length=64)
    accuracy_class: AccuracyClass = Field(strict=False)  # TOML spells it as text
    # "ct": transformer-operated (rated current In; lower load points and starting current)
    connection: Connection = Field(default=Connection.DIRECT, strict=False)
    phases: Literal[1, 3] = 1
    # 1P2W, 3P3W (two elements on line voltages, m = √3) or 3P4W (m = 3); by default
    # 1P2W for one phase and 3P4W for three.
    wiring: Wiring | None = Field(default=None, strict=False)
    un: Decimal = Field(strict=False, gt=0, le=1000, description="reference voltage Un, V")
    ib: Decimal = Field(
        strict=False, gt=0, le=100, description="basic current Ib (In for transformer meters), A"
    )
    imax: Decimal = Field(strict=False, gt=0, le=200, description="maximum current Imax, A")
    constant: int = Field(ge=1, le=1_000_000, description="meter constant C, imp/kWh")

    @field_validator("imax")
    @classmethod
    def _imax_over_ib(cls, v: Decimal, info: Any) -> Decimal:
        ib = info.data.get("ib")
        if ib is not None and v < ib:
            raise ValueError(f"imax must be >= ib ({ib} A), got {v} A")
        return v

    @model_validator(mode="before")
    @classmethod
    def _phases_from_wiring(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("wiring") is not None and "phases" not in data:
            return {**data, "phases": 1 if str(data["wiring"]) == "1P2W" else 3}
        return data

    @model_validator(mode="after")
    def _wiring_matches_phases(self) -> MeterType:
        if self.wiring is not None and (self.wiring is Wiring.SINGLE_PHASE) != (self.phases == 1):
            raise ValueError(
                f"wiring: {self.wiring.value} does not fit phases = {self.phases} "
                "(1P2W for 1 phase; 3P3W or 3P4W for 3)"
            )
        return self

    @property
    def system(self) -> Wiring:
        if self.wiring is not None:
            return self.wiring
        return Wiring.SINGLE_PHASE if self.phases == 1 else Wiring.THREE_PHASE_FOUR_WIRE

    @property
    def elements(self) -> Fraction:
        """m in P = m · Un · I · cos φ and in the starting and creep formulas."""
        return self.system.elements

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


class _Item(ConfigModel):
    model_config = ConfigDict(frozen=True)
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


class LoadPoint(ConfigModel):
    model_config = ConfigDict(frozen=True)
    i: Annotated[str, Field(description="current, e.g. '0.05Ib', 'Ib', 'Imax'")]
    pf: PowerFactor = Field(default=PowerFactor.UNITY, strict=False)
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
    pf: PowerFactor = Field(default=PowerFactor.UNITY, strict=False)
    # At least enough that one register digit is one rounding interval of the class
    # (checked against the meter type): 10 kWh for class 1, 5 kWh for class 2.
    energy_kwh: float = Field(default=10.0, ge=0.05, le=100)
    settle_s: float = Field(default=2.0, ge=0, le=60)

    @field_validator("i")
    @classmethod
    def _current(cls, v: str) -> str:
        return _check_current(v)


class ClockItem(_Item):
    kind: Literal["clock"] = "clock"
    readings: int = Field(default=10, ge=2, le=100)
    gate_s: float = Field(default=10.0, ge=1, le=600)
    limit_s_per_day: Decimal = Field(default=Decimal("0.5"), strict=False, gt=0, le=10)
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


class Scheme(ConfigModel):
    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=_NAME)
    version: int = Field(ge=1, le=1_000_000)
    accuracy_class: AccuracyClass = Field(strict=False)  # TOML spells it as text
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
                # A scheme names no connection: the lower of the two ranges is checked
                # here, the meter type's own in problems_for().
                low = min(lowest_current(self.accuracy_class, pf, c) for c in Connection)
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
                need = constant_min_energy_kwh(meter.accuracy_class)
                if Decimal(str(item.energy_kwh)) < need:
                    problems.append(
                        f"items[{n}].energy_kwh: {item.energy_kwh:g} kWh is too little for "
                        f"class {meter.accuracy_class.value}: one register digit "
                        f"({ENERGY_REGISTER_RESOLUTION_KWH} kWh) must be at most one rounding "
                        f"interval ({meter.accuracy_class.rounding_interval} %) of the energy, "
                        f"so at least {float(need):g} kWh "
                        f"(allowed {float(need):g}..{CONSTANT_MAX_KWH} kWh)"
                    )
        return problems

    def _point_problem(
        self, problems: list[str], where: str, cur: Current, pf: PowerFactor, meter: MeterType
    ) -> None:
        ratio = cur.over_ib(meter)
        if (
            error_limit(self.accuracy_class, pf, ratio, meter.imax_over_ib, meter.connection)
            is None
        ):
            low = lowest_current(self.accuracy_class, pf, meter.connection)
            kind = "direct-connected" if meter.connection is Connection.DIRECT else "ct"
            hint = ""
            if (
                meter.connection is Connection.DIRECT
                and ratio < low
                and ratio >= lowest_current(self.accuracy_class, pf, Connection.CT)
            ):
                hint = "; points below that are for transformer-operated meters (connection = 'ct')"
            problems.append(
                f"{where}: {cur} = {_fmt(ratio * to_fraction(meter.ib))} A at PF {pf.value} is "
                f"outside the range of meter type {meter.name!r} (class "
                f"{self.accuracy_class.value} {kind}: {_fmt(low)} Ib = "
                f"{_fmt(low * to_fraction(meter.ib))} A .. Imax = {meter.imax} A{hint})"
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


CONSTANT_MAX_KWH = 100


def constant_min_energy_kwh(cls: AccuracyClass) -> Decimal:
    """Least energy for the constant test: both register readings truncate to one
    digit, so the advance is known to ±1 digit; that digit must not exceed one
    rounding interval of the result (0.1 % for class 1: 0.01 kWh / 0.1 % = 10 kWh)."""
    return ENERGY_REGISTER_RESOLUTION_KWH * 100 / cls.rounding_interval


# DL/T 645 timing used for planning the per-station items: one short
# transaction at 2400 baud 8E1 (≈ 30 characters × 4.583 ms) plus a typical
# 60 ms meter response delay.
COMM_TRANSACTION_S = 0.2


def point_power_w(
    meter: MeterType, cur: Current, pf: PowerFactor, voltage_pct: float = 100
) -> Fraction:
    return (
        meter.elements
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
        return item.settle_s + float(starting_time_s(meter.constant, meter.elements, meter.un, i))
    if isinstance(item, CreepItem):
        return item.settle_s + float(
            creep_time_s(cls, meter.constant, meter.elements, meter.un, meter.imax)
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
