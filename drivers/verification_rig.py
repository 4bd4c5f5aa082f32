"""What crosses between the verification line's controller and its rig.

The contract both sides build on: the operations the sequencer calls on the
plant (a unit's source and standard, a station's error-calculator channel and
sensors, the meter's DL/T 645 operations, the line PLC's named I/O points) and
the records that come back. Only raw measurements cross: pulse counts, time-base
ticks, register readings. Every formula that turns them into a verdict is the
controller's (``controller.verification``); every formula that produces them is
the rig's (``drivers.sim.rig`` today, the source/standard, error-calculator,
PLC and meter drivers on site). Neither side imports the other's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, Protocol

# Power-factor settings of a source, as codes: "L" lagging (inductive), "C" leading.
POWER_FACTOR_CODES: tuple[str, ...] = ("1.0", "0.5L", "0.8C")

# DL/T 645 DI 00010000 (forward active total energy) is XXXXXX.XX kWh: the register
# is read truncated to this resolution.
ENERGY_REGISTER_RESOLUTION_KWH = Decimal("0.01")

# The meter's clock output (second pulse) runs at this frequency when the clock is exact.
CLOCK_PULSE_NOMINAL_HZ = 1

RelayCommand = Literal["trip", "close"]
# 1C expiry as (year, month, day, hour, minute, second) of the meter's clock.
ValidUntil = tuple[int, int, int, int, int, int]

# Line PLC points: a unit's handling coils and feedback inputs, a station's sealer and
# sorter flag. Coils: load, press, unload, seal, reject; inputs: the rest.
UnitPoint = Literal["load", "loaded", "press", "press_down", "press_up", "unload", "empty"]
StationPoint = Literal["seal", "sealed", "reject"]


def unit_point(unit: int, name: UnitPoint) -> str:
    return f"unit{unit}/{name}"


def station_point(station: int, name: StationPoint) -> str:
    return f"station{station}/{name}"


@dataclass(frozen=True, slots=True)
class PulseWindow:
    """Meter pulses counted in a window (starting, creep)."""

    count: int
    first_pulse_s: float | None  # seconds from the window start to the first pulse


@dataclass(frozen=True, slots=True)
class ClockGate:
    """One gate over the meter's clock output: ``pulses`` whole periods of the second
    pulse, timed by the error calculator's time base as ``ticks`` of ``timebase_hz``
    (the gate opens and closes on a second-pulse edge)."""

    pulses: int
    ticks: int
    timebase_hz: int


class MeterComms(Protocol):
    """The DL/T 645 operations the line uses; ``None`` means no (valid) reply."""

    async def read_address(self) -> str | None: ...

    async def read_energy(self) -> Decimal | None:
        """Forward active total energy, kWh (DI 00010000), as the register shows it."""

    async def read_relay_open(self) -> bool | None:
        """Status word 3 (DI 04000503) bit 4: True when the relay is open."""

    async def relay_control(self, command: RelayCommand, valid_until: ValidUntil) -> bool:
        """1C with N1 = 1A (trip) or 1C (direct close); True when the meter acknowledged (9C)."""


class StationPort(Protocol):
    """One position: the meter's circuits, its error-calculator channel, sensors."""

    @property
    def id(self) -> int: ...

    @property
    def comms(self) -> MeterComms: ...

    async def scan_barcode(self) -> str | None: ...

    async def power_ok(self, power_on_s: float) -> bool:
        """Energised for ``power_on_s``: does the voltage circuit draw its burden?"""

    async def error_sample(self, pulses: int) -> int:
        """Standard pulses m counted while the meter emits ``pulses`` pulses (waits for its next edge)."""

    async def count_pulses(self, window_s: float) -> PulseWindow: ...

    async def meter_pulses_during_energy(self, energy_kwh: float) -> int:
        """Meter pulses counted while the unit's standard measures ``energy_kwh``."""

    async def clock_gate(self, pulses: int) -> ClockGate:
        """Time ``pulses`` periods of the meter's second pulse on the station's time base."""

    def temperature(self) -> float:
        """Current-terminal temperature, °C (read every fast cycle: must not block)."""

    def cut_current(self) -> None:
        """Bypass the station and open its current loop (the series loop goes on for the others)."""

    def restore_current(self) -> None: ...


class UnitPort(Protocol):
    """A unit's source and reference standard, shared by its stations."""

    @property
    def id(self) -> int: ...

    async def apply(self, voltage_pct: float, current_a: float, pf: str) -> None:
        """Voltage in % of Un, current in A per element, ``pf`` one of POWER_FACTOR_CODES."""

    async def off(self) -> None: ...

    async def withstand(self, kv: float, seconds: float, ramp_s: float) -> dict[int, float]:
        """Apply the test voltage; the peak leakage current per station, mA."""


class LineIO(Protocol):
    """Named I/O points on the line PLC (coils written, inputs read)."""

    def write(self, point: str, value: bool) -> None: ...

    def read(self, point: str) -> bool: ...

    async def wait_for(self, point: str, value: bool, timeout_s: float) -> bool: ...


class Rig(Protocol):
    @property
    def units(self) -> Mapping[int, UnitPort]: ...

    @property
    def stations(self) -> Mapping[int, StationPort]: ...

    @property
    def io(self) -> LineIO: ...
