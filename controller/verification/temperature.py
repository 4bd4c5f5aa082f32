"""Current-terminal temperature supervision, for the fast (10 ms) cycle.

A loose or oxidised current terminal at tens of amperes heats fast; the line
must cut that station's current loop before the terminal block chars, while
the other stations of the unit go on (their loop is series-connected, so the
station is bypassed and isolated rather than the source switched off).
``scan()`` reads every sensor and cuts the loop in the same call that sees the
limit exceeded, so the reaction time is at most one fast cycle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from controller.process_image import ProcessImage
from controller.verification.clock import Clock
from controller.verification.ports import AlarmSink, NullAlarms, StationPort

ALARM_SEVERITY_HIGH = 800  # OPC UA severity scale 1..1000


def station_tag(station: int, leaf: str) -> str:
    return f"line/stations/{station:02d}/{leaf}"


class TemperatureSupervisor:
    def __init__(
        self,
        stations: Mapping[int, StationPort],
        limit_c: float,
        on_trip: Callable[[int, float], None] | None = None,
        image: ProcessImage | None = None,
        alarms: AlarmSink | None = None,
        deadband_c: float = 0.2,
    ) -> None:
        self.limit_c = limit_c
        self._ports = sorted(stations.items())
        self._on_trip = on_trip
        self._image = image
        self._alarms = alarms or NullAlarms()
        self._deadband = deadband_c
        self.tripped: dict[int, float] = {}
        self._published: dict[int, float] = {}
        self._tags = {sid: station_tag(sid, "temperature") for sid, _ in self._ports}
        self.scans = 0
        if image is not None:
            for sid, _ in self._ports:
                image.define(self._tags[sid], "°C", "current-terminal temperature")

    def scan(self) -> int:
        """One fast-cycle pass; returns how many stations were cut in this pass."""
        self.scans += 1
        cut = 0
        limit = self.limit_c
        for sid, port in self._ports:
            t = port.temperature()
            if t > limit and sid not in self.tripped:
                port.cut_current()
                self.tripped[sid] = t
                cut += 1
                self._alarms.raise_alarm(
                    f"line/stations/{sid:02d}",
                    "over_temperature",
                    ALARM_SEVERITY_HIGH,
                    f"station {sid:02d}: current terminal at {t:.1f} °C > limit {limit:.1f} °C; "
                    "current loop cut, meter aborted",
                )
                if self._on_trip is not None:
                    self._on_trip(sid, t)
            if self._image is not None:
                last = self._published.get(sid)
                if last is None or abs(t - last) >= self._deadband:
                    self._published[sid] = t
                    self._image.write(self._tags[sid], round(t, 2))
        return cut

    def reset(self, station: int) -> None:
        """Operator reset after the terminal was inspected: the station may carry current again."""
        if self.tripped.pop(station, None) is not None:
            dict(self._ports)[station].restore_current()


async def run_fast_cycle(
    clock: Clock, body: Callable[[], object], stop: asyncio.Event, period_s: float = 0.01
) -> int:
    """A minimal cyclic task on absolute deadlines (t_k = t_0 + k·T), for tests and the bench;
    on the plant ``body`` is registered with the runtime's ``fast`` task instead."""
    t0 = clock.monotonic()
    k = 0
    while not stop.is_set():
        body()
        k += 1
        await clock.sleep_until(t0 + k * period_s)
    return k
