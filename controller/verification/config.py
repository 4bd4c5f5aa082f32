"""`LineConfig`: the verification line's section of the site configuration.

Stations (positions) are grouped into units; a unit has one source and one
reference standard and runs the unit-wide items for all its stations at once.
Handling (conveyor, lift, wiring press, sealing, sorter) is a set of named I/O
points on the line PLC over Modbus.

Only what the controller reads is accepted: the wiring of a real rig (a
station's RS-485 link and error-calculator channel, a unit's source address,
the line PLC's link) arrives with the rig driver that uses it; the simulated
rig (``rig = "sim"``) needs none of it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from controller.config_model import ConfigModel
from controller.verification.errors import AccuracyClass
from controller.verification.scheme import MeterType


class StationConfig(ConfigModel):
    model_config = ConfigDict(frozen=True)

    id: int = Field(ge=1, le=999, description="line-wide station number (tags use two digits)")
    position: int = Field(
        ge=1, le=99, description="position within its unit, 1 = nearest the infeed"
    )


class UnitConfig(ConfigModel):
    model_config = ConfigDict(frozen=True)

    id: int = Field(ge=1, le=99)
    standard_constant: int = Field(
        default=100_000_000,
        ge=1_000,
        le=10**10,
        description="reference standard constant C0, imp/kWh",
    )  # high-frequency output: 1/m0 must stay far below the rounding interval at the lowest point
    stations: list[StationConfig] = Field(min_length=1, max_length=99)

    @model_validator(mode="after")
    def _positions(self) -> Self:
        positions = [s.position for s in self.stations]
        if len(set(positions)) != len(positions):
            raise ValueError(
                f"units[{self.id}].stations: positions must be unique, got {positions}"
            )
        return self


class HandlingConfig(ConfigModel):
    """Timeouts of the handling steps; each waits for a PLC feedback input."""

    model_config = ConfigDict(frozen=True)

    load_timeout_s: float = Field(default=120, ge=1, le=1800)
    press_timeout_s: float = Field(default=15, ge=1, le=120)
    seal_timeout_s: float = Field(default=15, ge=1, le=120)
    unload_timeout_s: float = Field(default=120, ge=1, le=1800)
    box_size: int = Field(default=12, ge=1, le=100, description="meters per box")


class TemperatureConfig(ConfigModel):
    model_config = ConfigDict(frozen=True)

    limit_c: float = Field(
        default=75.0, ge=40, le=150, description="cut a station's current above this"
    )
    publish_deadband_c: float = Field(default=0.2, ge=0, le=10)


class LineConfig(ConfigModel):
    model_config = ConfigDict(frozen=True)

    enabled: bool = True
    # The rig the service drives. Only the simulated rig (drivers.sim.rig, in the
    # service's process) exists in this build.
    rig: Literal["sim"] = "sim"
    # Simulated rig only: rig and sequencer run this many times faster than real
    # time (1 = real time). Result records keep real wall-clock times.
    time_scale: float = Field(default=1.0, ge=1.0, le=100_000.0)
    # Meter type of batches started by command (StartBatch names no type); may be
    # left empty when exactly one type is configured.
    batch_meter_type: str = Field(default="", max_length=64)
    units: list[UnitConfig] = Field(min_length=1, max_length=32)
    meter_types: dict[str, MeterType] = Field(default_factory=dict)
    scheme_dir: str = Field(default="config/schemes", max_length=512)
    # Where batches come from: "list" = only operator-chosen meters (StartBatch);
    # "warehouse" = also fed from the warehouse's unverified stock whenever the line
    # is idle (outbound order -> batch -> qualified return / rejected outbound).
    feed: Literal["list", "warehouse"] = "list"
    feed_boxes: int = Field(
        default=3, ge=1, le=100, description="boxes per warehouse-fed batch (capped by stations)"
    )
    # Scheme of warehouse-fed batches; may be left empty when one scheme suits the meter type.
    feed_scheme: str = Field(default="", max_length=64)
    handling: HandlingConfig = HandlingConfig()
    temperature: TemperatureConfig = TemperatureConfig()
    # A sample may take this many times its nominal duration before the
    # station is declared "no pulses" (a dead or very slow meter).
    sample_timeout_factor: float = Field(default=3.0, ge=1.5, le=20)

    @model_validator(mode="before")
    @classmethod
    def _station_counts(cls, data: Any) -> Any:
        """``stations = N`` in a unit is shorthand for positions 1..N, numbered on line-wide."""
        if not isinstance(data, dict) or not isinstance(data.get("units"), list):
            return data
        units = []
        next_id = 1
        for n, unit in enumerate(data["units"]):
            stations = unit.get("stations") if isinstance(unit, dict) else None
            if isinstance(stations, int) and not isinstance(stations, bool):
                if not 1 <= stations <= 99:
                    raise ValueError(
                        f"units[{n}].stations: a count must be between 1 and 99 (got {stations})"
                    )
                unit = {
                    **unit,
                    "stations": [
                        {"id": next_id + p - 1, "position": p} for p in range(1, stations + 1)
                    ],
                }
            if isinstance(unit, dict) and isinstance(unit.get("stations"), list):
                ids = [s.get("id") for s in unit["stations"] if isinstance(s, dict)]
                next_id = max([next_id - 1, *(i for i in ids if isinstance(i, int))]) + 1
            units.append(unit)
        return {**data, "units": units}

    @model_validator(mode="after")
    def _batch_meter_type(self) -> Self:
        if not self.meter_types:
            raise ValueError("meter_types: at least one meter type is needed to run batches")
        if self.batch_meter_type:
            if self.batch_meter_type not in self.meter_types:
                raise ValueError(
                    f"batch_meter_type: unknown {self.batch_meter_type!r}; "
                    f"configured meter_types: {sorted(self.meter_types)}"
                )
        elif len(self.meter_types) > 1:
            raise ValueError(
                "batch_meter_type: required when several meter_types are configured "
                f"(one of {sorted(self.meter_types)})"
            )
        return self

    @property
    def default_meter_type(self) -> str:
        """The meter type of batches started by command."""
        return self.batch_meter_type or next(iter(self.meter_types))

    @model_validator(mode="after")
    def _unique_ids(self) -> Self:
        ids = [u.id for u in self.units]
        if len(set(ids)) != len(ids):
            raise ValueError(f"units: ids must be unique, got {ids}")
        stations = [s.id for u in self.units for s in u.stations]
        dupes = sorted({s for s in stations if stations.count(s) > 1})
        if dupes:
            raise ValueError(
                f"units[].stations[].id: station ids must be unique line-wide, repeated: {dupes}"
            )
        return self

    @property
    def station_ids(self) -> list[int]:
        return [s.id for u in self.units for s in sorted(u.stations, key=lambda s: s.position)]

    def unit_of(self, station: int) -> UnitConfig:
        for u in self.units:
            if any(s.id == station for s in u.stations):
                return u
        raise KeyError(f"unknown station {station}")

    def meter_type(self, name: str) -> MeterType:
        try:
            return self.meter_types[name]
        except KeyError:
            raise KeyError(
                f"meter_type: unknown {name!r}; configured: {sorted(self.meter_types)}"
            ) from None


def demo_line(units: int = 2, stations_per_unit: int = 24) -> LineConfig:
    """A line like the demo site's: ``units`` × ``stations_per_unit`` positions, one meter type."""
    return LineConfig(
        units=[
            UnitConfig(
                id=u,
                stations=[
                    StationConfig(id=(u - 1) * stations_per_unit + p, position=p)
                    for p in range(1, stations_per_unit + 1)
                ],
            )
            for u in range(1, units + 1)
        ],
        meter_types={
            "DDZY-1-5(60)A": MeterType(
                name="DDZY-1-5(60)A",
                accuracy_class=AccuracyClass.C1,
                un=Decimal(220),
                ib=Decimal(5),
                imax=Decimal(60),
                constant=1200,
            ),
        },
    )
