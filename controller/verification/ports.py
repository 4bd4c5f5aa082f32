"""What the sequencer needs from the plant.

The operations and records that cross between the line and its rig are the
contract in :mod:`drivers.verification_rig`, shared with the rig; this module
adds the controller's own alarm sink. The simulated rig (``drivers.sim.rig``)
implements the contract today; on site the source/standard driver, the error
calculators, the line PLC over Modbus and the DL/T 645 client do, without the
sequencer changing.
"""

from __future__ import annotations

from typing import Protocol

from drivers.verification_rig import (
    ClockGate,
    LineIO,
    MeterComms,
    PulseWindow,
    Rig,
    StationPort,
    UnitPort,
)

__all__ = [
    "AlarmSink",
    "ClockGate",
    "LineIO",
    "MeterComms",
    "NullAlarms",
    "PulseWindow",
    "Rig",
    "StationPort",
    "UnitPort",
]


class AlarmSink(Protocol):
    def raise_alarm(self, source: str, kind: str, severity: int, message: str) -> None: ...


class NullAlarms:
    def raise_alarm(self, source: str, kind: str, severity: int, message: str) -> None:
        return None
