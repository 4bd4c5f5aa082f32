"""Rack geometry, slots, and slot allocation.

An aisle holds one crane and two facing rows (row 2k-1 on the left, 2k on the
right). Its I/O point — the inbound and outbound transfer stations — is at the
aisle entrance, x = 0, y = 0. A slot's centre is at x = (bay − ½)·bay_width,
y = (level − 1)·level_height, so a rack of ``bays`` bays spans exactly
L = bays·bay_width, the length the Bozer–White model uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from controller.warehouse.config import CraneConfig, WarehouseConfig
from drivers.warehouse_plc_map import STATION_IN, STATION_OUT, STATION_ROW


class BoxClass(StrEnum):
    """What a box holds; boxes are homogeneous, so a slot never mixes classes."""

    UNVERIFIED = "unverified"
    QUALIFIED = "qualified"
    REJECTED = "rejected"


class MeterState(StrEnum):
    NEW = "new"  # new, not yet verified
    QUALIFIED = "qualified"
    REJECTED = "rejected"
    RETURNED = "returned"  # back from the field; verified again before reuse


METER_CLASS: dict[MeterState, BoxClass] = {
    MeterState.NEW: BoxClass.UNVERIFIED,
    MeterState.RETURNED: BoxClass.UNVERIFIED,
    MeterState.QUALIFIED: BoxClass.QUALIFIED,
    MeterState.REJECTED: BoxClass.REJECTED,
}


@dataclass(frozen=True, slots=True, order=True)
class Location:
    """A crane target: a rack slot (row ≥ 1) or an aisle's transfer station (row 0)."""

    row: int
    bay: int
    level: int

    @staticmethod
    def slot(row: int, bay: int, level: int) -> Location:
        return Location(row, bay, level)

    @staticmethod
    def station(aisle: int, which: int) -> Location:
        # row 0 marks a station; bay carries the aisle, level which station
        return Location(STATION_ROW, aisle, which)

    @property
    def is_station(self) -> bool:
        return self.row == STATION_ROW

    @property
    def aisle(self) -> int:
        return self.bay if self.is_station else (self.row + 1) // 2

    @property
    def code(self) -> str:
        if self.is_station:
            return f"A{self.bay}-{'IN' if self.level == STATION_IN else 'OUT'}"
        return f"R{self.row:02d}-B{self.bay:03d}-L{self.level:02d}"

    @staticmethod
    def parse(code: str) -> Location:
        """Inverse of :attr:`code`; raises ValueError naming the bad code."""
        try:
            if code.startswith("A"):
                aisle, which = code[1:].split("-")
                return Location.station(int(aisle), STATION_IN if which == "IN" else STATION_OUT)
            r, b, lv = code.split("-")
            if r[0] != "R" or b[0] != "B" or lv[0] != "L":
                raise ValueError
            return Location(int(r[1:]), int(b[1:]), int(lv[1:]))
        except (ValueError, IndexError):
            raise ValueError(
                f"location code {code!r}: expected Rrr-Bbbb-Lll or Ak-IN/Ak-OUT"
            ) from None

    def __str__(self) -> str:
        return self.code


def position(cfg: WarehouseConfig, loc: Location) -> tuple[float, float]:
    """(x, y) in metres from the aisle's I/O point."""
    if loc.is_station:
        return (0.0, 0.0)
    return ((loc.bay - 0.5) * cfg.bay_width_m, (loc.level - 1) * cfg.level_height_m)


def axis_time(d: float, v: float, a: float) -> float:
    """Trapezoidal profile: accelerate at a, cruise at v, brake at a.

    Cruise is reached only when d ≥ v²/a (accelerating and braking each cover
    v²/2a); then t = d/v + v/a, else the profile is a triangle, t = 2√(d/a).
    """
    d = abs(d)
    if d == 0.0:
        return 0.0
    if d >= v * v / a:
        return d / v + v / a
    return 2.0 * (d / a) ** 0.5


def travel_time(crane: CraneConfig, p0: tuple[float, float], p1: tuple[float, float]) -> float:
    """Both axes start together, so a leg lasts as long as the slower axis."""
    return max(
        axis_time(p1[0] - p0[0], crane.vx_m_s, crane.ax_m_s2),
        axis_time(p1[1] - p0[1], crane.vy_m_s, crane.ay_m_s2),
    )


def axis_position(d: float, v: float, a: float, t: float) -> float:
    """Distance covered after t seconds of a trapezoidal move of length |d| (signed like d)."""
    sign = 1.0 if d >= 0 else -1.0
    d = abs(d)
    total = axis_time(d, v, a)
    if t >= total:
        return sign * d
    if t <= 0:
        return 0.0
    if d >= v * v / a:
        ta = v / a
        if t < ta:
            s = 0.5 * a * t * t
        elif t < total - ta:
            s = 0.5 * v * ta + v * (t - ta)
        else:
            r = total - t
            s = d - 0.5 * a * r * r
    else:
        half = total / 2
        s = 0.5 * a * t * t if t < half else d - 0.5 * a * (total - t) ** 2
    return sign * s


@dataclass(slots=True)
class Slot:
    loc: Location
    box: str | None = None
    reserved_by: int | None = None  # task id holding this slot as its target
    blocked: str = ""  # why the slot may not be used (found occupied, damaged, ...)

    @property
    def free(self) -> bool:
        return self.box is None and self.reserved_by is None and not self.blocked


@dataclass(slots=True)
class BoxInfo:
    barcode: str
    klass: BoxClass
    location: str
    arrived_at: float
    verified_at: float | None = None
    order_id: int | None = None  # order the box is committed to (not allocatable)
    meters: int = 0


class AllocationError(RuntimeError):
    pass


@dataclass
class Rack:
    """In-memory view of the slots, mirrored from the inventory repository."""

    cfg: WarehouseConfig
    slots: dict[Location, Slot] = field(default_factory=dict)
    # per aisle, slots sorted by one-way crane travel time from the I/O point
    _by_time: dict[int, list[Location]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cfg = self.cfg
        for row in range(1, cfg.rows + 1):
            for bay in range(1, cfg.bays + 1):
                for level in range(1, cfg.levels + 1):
                    loc = Location(row, bay, level)
                    self.slots[loc] = Slot(loc)
        for aisle in range(1, cfg.aisles + 1):
            crane = cfg.cranes[aisle - 1]
            locs = [loc for loc in self.slots if loc.aisle == aisle]
            io = (0.0, 0.0)
            locs.sort(key=lambda loc: (travel_time(crane, io, position(cfg, loc)), loc))
            self._by_time[aisle] = locs

    def slot(self, loc: Location) -> Slot:
        try:
            return self.slots[loc]
        except KeyError:
            raise AllocationError(f"no slot {loc.code} in this rack") from None

    def aisle_of(self, loc: Location) -> int:
        return loc.aisle

    def nearest_empty(self, aisle: int, exclude: set[Location] | None = None) -> Location:
        """Nearest free slot by crane travel time from the aisle's I/O point."""
        for loc in self._by_time[aisle]:
            s = self.slots[loc]
            if s.free and (not exclude or loc not in exclude):
                return loc
        raise AllocationError(f"aisle {aisle}: no free slot")

    def free_count(self) -> int:
        return sum(1 for s in self.slots.values() if s.free)

    def occupied_count(self) -> int:
        return sum(1 for s in self.slots.values() if s.box is not None)

    def reserve(self, loc: Location, task_id: int) -> None:
        s = self.slot(loc)
        if s.box is not None or s.blocked or (s.reserved_by not in (None, task_id)):
            raise AllocationError(
                f"slot {loc.code} cannot be reserved by task {task_id}: "
                f"box={s.box} reserved_by={s.reserved_by} blocked={s.blocked!r}"
            )
        s.reserved_by = task_id

    def release(self, loc: Location, task_id: int) -> None:
        s = self.slots.get(loc)
        if s is not None and s.reserved_by == task_id:
            s.reserved_by = None


def fifo_select(
    boxes: list[BoxInfo], klass: BoxClass, count: int, aisle: int | None = None
) -> list[BoxInfo]:
    """Oldest first: by verification date for qualified boxes, by arrival otherwise.

    Only boxes sitting in a rack slot and not already committed to an order qualify.
    """
    candidates = [
        b
        for b in boxes
        if b.klass is klass
        and b.order_id is None
        and b.location.startswith("R")
        and (aisle is None or Location.parse(b.location).aisle == aisle)
    ]
    if klass is BoxClass.QUALIFIED:
        candidates.sort(key=lambda b: (b.verified_at or 0.0, b.arrived_at, b.barcode))
    else:
        candidates.sort(key=lambda b: (b.arrived_at, b.barcode))
    return candidates[:count]
