"""The simulated rig built from the line's configuration.

The rig (``drivers.sim.rig``) is an independent witness: it takes plain
nameplate values and the line's layout, never the controller's models or
formulas. This module is where the controller hands them over.
"""

from __future__ import annotations

from typing import IO

from controller.verification.clock import Clock, ScaledClock, VirtualClock
from controller.verification.config import LineConfig
from controller.verification.scheme import MeterType
from drivers.sim.rig import SimLine, SimNameplate, SimRig, SimUnitSpec


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
