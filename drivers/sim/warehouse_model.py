"""The simulated warehouse's own physics: rack geometry, crane kinematics, conveyors, stock.

The simulator is a witness for the controller, so it computes where a slot is
and how long a crane takes to get there from its own parameters and its own
formulas, never from the controller's rack model: a wrong slot geometry on
either side then shows up as a crane that stops somewhere else than the
controller expects. Whoever builds the plant fills :class:`WarehouseModel`,
usually from the site's ``[warehouse]`` table (:meth:`WarehouseModel.from_table`).

Geometry of one aisle (one crane, two facing rows 2k-1 and 2k): the transfer
stations are at the aisle entrance, x = 0, y = 0; a slot's centre is at
x = (bay − ½)·bay width along the aisle and y = (level − 1)·level height above
the lowest level, the same for both rows of the aisle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from drivers.warehouse_plc_map import STATION_IN, STATION_OUT, STATION_ROW

# a position register holds 0..655.35 m and a target coordinate one register
MAX_COORD = 0xFFFF
MAX_ZONES = 16  # one bit per zone in the 16-bit eye and motor bitmaps
# the crane stops on a slot within a millimetre, or it is not at that slot
AT_SLOT_TOLERANCE_M = 0.001


class Spot(NamedTuple):
    """A crane target as the PLC sees it: a rack slot, or an aisle's transfer station (row 0)."""

    row: int
    bay: int
    level: int

    @property
    def is_station(self) -> bool:
        return self.row == STATION_ROW

    @property
    def aisle(self) -> int:
        # a station carries its aisle in the bay word; two rows share an aisle
        return self.bay if self.is_station else (self.row + 1) // 2

    @property
    def code(self) -> str:
        """The name the warehouse journal uses for this place (for census comparisons)."""
        if self.is_station:
            return f"A{self.bay}-{'IN' if self.level == STATION_IN else 'OUT'}"
        return f"R{self.row:02d}-B{self.bay:03d}-L{self.level:02d}"


@dataclass(frozen=True, slots=True)
class CraneModel:
    """One stacker crane: each axis accelerates, cruises and brakes symmetrically."""

    vx_m_s: float  # travel top speed
    ax_m_s2: float  # travel acceleration = deceleration
    vy_m_s: float  # hoist top speed
    ay_m_s2: float  # hoist acceleration = deceleration
    fork_cycle_s: float  # fork out, lift or lower, fork in

    def move_time(self, dx: float, dy: float) -> float:
        """Both axes start together; the move ends when the slower one arrives."""
        return max(
            axis_travel_time(dx, self.vx_m_s, self.ax_m_s2),
            axis_travel_time(dy, self.vy_m_s, self.ay_m_s2),
        )

    def offset_after(self, dx: float, dy: float, t: float) -> tuple[float, float]:
        """How far the crane has come after ``t`` seconds of a move by (dx, dy)."""
        return (
            axis_distance(dx, self.vx_m_s, self.ax_m_s2, t),
            axis_distance(dy, self.vy_m_s, self.ay_m_s2, t),
        )


@dataclass(frozen=True, slots=True)
class ConveyorModel:
    zones: int  # zone 0 .. zones-1, incl. the transfer station
    zone_travel_s: float  # time a load takes to cross into the next zone


@dataclass(frozen=True, slots=True)
class WarehouseModel:
    rows: int
    bays: int
    levels: int
    bay_width_m: float
    level_height_m: float
    cranes: tuple[CraneModel, ...]  # one per aisle, aisle 1 first
    inbound: ConveyorModel
    outbound: ConveyorModel

    def __post_init__(self) -> None:
        if self.rows % 2:
            raise ValueError(f"warehouse.rows: must be even (two rows per aisle), got {self.rows}")
        if len(self.cranes) != self.aisles:
            raise ValueError(
                f"warehouse.cranes: one per aisle, expected {self.aisles} for {self.rows} rows, "
                f"got {len(self.cranes)}"
            )

    @property
    def aisles(self) -> int:
        return self.rows // 2

    @property
    def slot_count(self) -> int:
        return self.rows * self.bays * self.levels

    def crane(self, aisle: int) -> CraneModel:
        return self.cranes[aisle - 1]

    def contains(self, spot: Spot) -> bool:
        """Whether a crane can be sent there: a slot of this rack or an aisle's station."""
        if spot.is_station:
            return 1 <= spot.bay <= self.aisles and spot.level in (STATION_IN, STATION_OUT)
        return (
            1 <= spot.row <= self.rows
            and 1 <= spot.bay <= self.bays
            and 1 <= spot.level <= self.levels
        )

    def position(self, spot: Spot) -> tuple[float, float]:
        """(x, y) in metres from the aisle entrance, where the crane stops for ``spot``."""
        if spot.is_station:
            return (0.0, 0.0)
        return ((spot.bay - 0.5) * self.bay_width_m, (spot.level - 1) * self.level_height_m)

    def bay_level_at(self, x: float, y: float) -> tuple[int, int] | None:
        """The (bay, level) whose slots a crane standing at (x, y) faces, or None between slots."""
        bay = x / self.bay_width_m + 0.5
        level = y / self.level_height_m + 1.0
        b, lv = round(bay), round(level)
        if not (1 <= b <= self.bays and 1 <= lv <= self.levels):
            return None
        if abs(bay - b) * self.bay_width_m > AT_SLOT_TOLERANCE_M:
            return None
        if abs(level - lv) * self.level_height_m > AT_SLOT_TOLERANCE_M:
            return None
        return (b, lv)

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> WarehouseModel:
        """The plant described by a ``[warehouse]`` table (a dict, e.g. parsed JSON or TOML).

        Keys the plant does not model (the controller's timing, the PLC address,
        ...) are ignored; a missing key takes the demo plant's value. A bad value
        raises ValueError naming the key and its allowed range.
        """
        cranes_raw = table.get("cranes", [{}])  # the demo plant's one crane
        if not isinstance(cranes_raw, list):
            raise ValueError(f"warehouse.cranes: must be a list of tables, got {cranes_raw!r}")
        cranes = tuple(
            _crane(_table(c, f"warehouse.cranes.{i}"), f"warehouse.cranes.{i}")
            for i, c in enumerate(cranes_raw)
        )
        return cls(
            rows=_int(table, "warehouse.rows", "rows", 2, 2),
            bays=_int(table, "warehouse.bays", "bays", 20, 1),
            levels=_int(table, "warehouse.levels", "levels", 8, 1),
            bay_width_m=_float(table, "warehouse.bay_width_m", "bay_width_m", 1.2),
            level_height_m=_float(table, "warehouse.level_height_m", "level_height_m", 0.8),
            cranes=cranes,
            inbound=_conveyor(_table(table.get("inbound", {}), "warehouse.inbound"), "inbound"),
            outbound=_conveyor(_table(table.get("outbound", {}), "warehouse.outbound"), "outbound"),
        )


def axis_travel_time(d: float, v: float, a: float) -> float:
    """Seconds for one axis to cover |d| from standstill to standstill.

    The axis ramps up at ``a`` to the peak speed, cruises, and ramps down at
    ``a``; the peak is the top speed ``v`` when there is room for both ramps
    (each ramp covers v²/2a), else √(a·|d|) and the move is all ramps.
    """
    d = abs(d)
    if d == 0.0:
        return 0.0
    peak = min(v, math.sqrt(a * d))
    ramp_s = peak / a
    cruise_s = max(0.0, d - peak * ramp_s) / peak
    return 2.0 * ramp_s + cruise_s


def axis_distance(d: float, v: float, a: float, t: float) -> float:
    """Distance covered ``t`` seconds into a move of ``d`` (signed like ``d``)."""
    sign = -1.0 if d < 0 else 1.0
    d = abs(d)
    total = axis_travel_time(d, v, a)
    if t >= total:
        return sign * d
    if t <= 0.0:
        return 0.0
    peak = min(v, math.sqrt(a * d))
    ramp_s = peak / a
    if t <= ramp_s:
        s = 0.5 * a * t * t
    elif t <= total - ramp_s:
        s = 0.5 * peak * ramp_s + peak * (t - ramp_s)
    else:
        left = total - t
        s = d - 0.5 * a * left * left
    return sign * s


def demo_stock(model: WarehouseModel, count: int) -> list[tuple[str, Spot]]:
    """The demo rack's first ``count`` boxes: NEW00000, NEW00001, ... and their slots.

    Filled from the lowest level up, nearest bay first, across the rows of a
    bay in row order, so the demo's first retrievals are short crane trips.
    """
    if not 0 <= count <= model.slot_count:
        raise ValueError(
            f"demo_boxes: must be 0..{model.slot_count} (the rack's slots), got {count}"
        )
    spots = (
        Spot(row, bay, level)
        for level in range(1, model.levels + 1)
        for bay in range(1, model.bays + 1)
        for row in range(1, model.rows + 1)
    )
    return [(f"NEW{i:05d}", spot) for i, spot in zip(range(count), spots, strict=False)]


# -- reading a [warehouse] table -----------------------------------------------------


def _table(value: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{name}: must be a table, got {value!r}")
    return value


def _int(table: Mapping[str, Any], name: str, key: str, default: int, lo: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= MAX_COORD:
        raise ValueError(f"{name}: must be an integer {lo}..{MAX_COORD}, got {value!r}")
    return value


def _float(
    table: Mapping[str, Any], name: str, key: str, default: float, *, zero_ok: bool = False
) -> float:
    value = table.get(key, default)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero_ok):
        allowed = ">= 0" if zero_ok else "> 0"
        raise ValueError(f"{name}: must be a finite number {allowed}, got {value!r}")
    return float(value)


def _crane(table: Mapping[str, Any], name: str) -> CraneModel:
    return CraneModel(
        vx_m_s=_float(table, f"{name}.vx_m_s", "vx_m_s", 3.0),
        ax_m_s2=_float(table, f"{name}.ax_m_s2", "ax_m_s2", 0.5),
        vy_m_s=_float(table, f"{name}.vy_m_s", "vy_m_s", 1.0),
        ay_m_s2=_float(table, f"{name}.ay_m_s2", "ay_m_s2", 0.5),
        fork_cycle_s=_float(table, f"{name}.fork_cycle_s", "fork_cycle_s", 6.0, zero_ok=True),
    )


def _conveyor(table: Mapping[str, Any], side: str) -> ConveyorModel:
    name = f"warehouse.{side}"
    zones = table.get("zones", 4)
    if isinstance(zones, bool) or not isinstance(zones, int) or not 2 <= zones <= MAX_ZONES:
        raise ValueError(f"{name}.zones: must be an integer 2..{MAX_ZONES}, got {zones!r}")
    return ConveyorModel(
        zones=zones,
        zone_travel_s=_float(table, f"{name}.zone_travel_s", "zone_travel_s", 2.0),
    )
