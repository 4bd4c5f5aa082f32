"""What the sequencer needs from the plant, as small protocols.

The simulated rig (``drivers.sim.rig``) implements them today; on site the
same protocols are implemented by the source/standard driver, the error
calculators, the line PLC over Modbus and the DL/T 645 client, without the
sequencer changing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from controller.verification.errors import PowerFactor


class AlarmSink(Protocol):
    def raise_alarm(self, source: str, kind: str, severity: int, message: str) -> None: ...


class NullAlarms:
    def raise_alarm(self, source: str, kind: str, severity: int, message: str) -> None:
        return None


class MeterComms(Protocol):
    """The DL/T 645 operations the line uses; ``None`` means no (valid) reply."""

    async def read_address(self) -> str | None: ...

    async def read_energy(self) -> float | None:
        """Forward active total energy, kWh (DI 00010000)."""

    async def read_relay_open(self) -> bool | None:
        """Status word 3 (DI 04000503) bit 4: True when the relay is open."""

    async def relay_control(
        self, command: Literal["trip", "close"], valid_until: tuple[int, int, int, int, int, int]
    ) -> bool:
        """1C with N1 = 1A (trip) or 1C (direct close); True when the meter acknowledged (9C)."""


@dataclass(frozen=True, slots=True)
class PulseWindow:
    count: int
    first_pulse_s: float | None  # seconds from the window start to the first pulse


class StationPort(Protocol):
    """One position: the meter's circuits, its error-calculator channel, sensors."""

    id: int
    comms: MeterComms

    async def scan_barcode(self) -> str | None: ...

    async def power_ok(self, power_on_s: float) -> bool:
        """Energised for ``power_on_s``: does the voltage circuit draw its burden?"""

    async def error_sample(self, pulses: int) -> int:
        """Standard pulses m counted while the meter emits ``pulses`` pulses (waits for its next edge)."""

    async def count_pulses(self, window_s: float) -> PulseWindow: ...

    async def meter_pulses_during_energy(self, energy_kwh: float) -> int:
        """Meter pulses counted while the unit's standard measures ``energy_kwh``."""

    async def clock_reading(self, gate_s: float) -> float:
        """Daily clock error (s/d) from one gate over the meter's second pulse."""

    def temperature(self) -> float:
        """Current-terminal temperature, °C (read every fast cycle: must not block)."""

    def cut_current(self) -> None:
        """Bypass the station and open its current loop (the series loop goes on for the others)."""

    def restore_current(self) -> None: ...


class UnitPort(Protocol):
    """A unit's source and reference standard, shared by its stations."""

    id: int

    async def apply(self, voltage_pct: float, current_a: float, pf: PowerFactor) -> None: ...

    async def off(self) -> None: ...

    async def withstand(self, kv: float, seconds: float, ramp_s: float) -> dict[int, float]:
        """Apply the test voltage; the peak leakage current per station, mA."""


class LineIO(Protocol):
    """Named I/O points on the line PLC (coils written, inputs read)."""

    def write(self, point: str, value: bool) -> None: ...

    def read(self, point: str) -> bool: ...

    async def wait_for(self, point: str, value: bool, timeout_s: float) -> bool: ...


class Rig(Protocol):
    units: dict[int, UnitPort]
    stations: dict[int, StationPort]
    io: LineIO
