"""The simulated line plant: the rig built from the line's configuration, and the
meters that arrive on it.

The rig (``drivers.sim.rig``) is an independent witness: it takes plain
nameplate values and the line's layout, never the controller's models or
formulas. This module, part of the service (the composition root), is where the
controller hands them over; the line itself only knows the ``LinePlant`` seam.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from typing import IO

from controller.verification.clock import Clock, ScaledClock, VirtualClock
from controller.verification.config import LineConfig
from controller.verification.scheme import MeterType
from drivers.sim.rig import SimLine, SimMeterSpec, SimNameplate, SimRig, SimUnitSpec


def sim_line(config: LineConfig, meter_type: MeterType, clock: Clock) -> SimLine:
    """The rig's parameters: layout, the meter type's nameplate, and the clock's time scale."""
    scale, slack = (
        (clock.scale, clock.timeout_slack_s) if isinstance(clock, ScaledClock) else (1.0, 0.0)
    )
    return SimLine(
        units=tuple(
            SimUnitSpec(
                u.id,
                tuple(s.id for s in sorted(u.stations, key=lambda s: s.position)),
                u.standard_constant,
            )
            for u in config.units
        ),
        meter=SimNameplate(
            accuracy_class=meter_type.accuracy_class.value,
            connection=meter_type.connection.value,
            wiring=meter_type.system.value,
            un_v=float(meter_type.un),
            ib_a=float(meter_type.ib),
            constant=meter_type.constant,
        ),
        time_scale=scale,
        timeout_slack_s=slack,
    )


def build_sim_rig(
    config: LineConfig, meter_type: MeterType, clock: Clock, measure_log: IO[str] | None = None
) -> SimRig:
    """A simulated rig on the clock's event loop (a virtual-time loop runs the rig too)."""
    loop = clock.loop if isinstance(clock, VirtualClock) else None
    return SimRig(sim_line(config, meter_type, clock), measure_log, loop)


def sim_spec(barcode: str, address: str) -> SimMeterSpec:
    """A simulated meter for a barcode: reproducible, mostly good, about one in twelve
    out of tolerance (so a demo batch shows both verdicts)."""
    rng = random.Random(int.from_bytes(hashlib.sha256(barcode.encode()).digest()[:8], "big"))
    error = round(rng.uniform(-0.5, 0.5), 2)
    if rng.random() < 1 / 12:
        error = rng.choice((1.4, -1.6))
    return SimMeterSpec(
        barcode=barcode,
        address=address,
        error_pct=error,
        clock_drift_s_per_day=round(rng.uniform(-0.3, 0.3), 3),
    )


class SimulatedLinePlant:
    """The ``LinePlant`` of the simulated line: one SimRig, meters from ``sim_spec``."""

    def __init__(self) -> None:
        self.sim: SimRig | None = None

    def build(self, config: LineConfig, meter_type: MeterType, clock: Clock) -> SimRig:
        self.sim = build_sim_rig(config, meter_type, clock)
        return self.sim

    def _rig(self) -> SimRig:
        assert self.sim is not None, "build() comes first"
        return self.sim

    def clear(self) -> None:
        self._rig().clear()

    def arrive(self, meters: Iterable[tuple[str, str]]) -> None:
        self._rig().feed(sim_spec(barcode, address) for barcode, address in meters)

    def on_station(self, station: int, barcode: str, address: str) -> None:
        self._rig().place(station, sim_spec(barcode, address))
