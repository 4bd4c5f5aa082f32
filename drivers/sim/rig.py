"""Simulated verification rig: meters under test, sources, reference standards,
error calculators, temperature sensors and the line PLC's handling I/O.

Physics is computed analytically, not stepped: a sample's end time and the
standard's count follow from the meter's pulse rate, so the rig costs a few
timer events per sample and a 48-meter batch runs in virtual time in about a
second. Every random quantity (pulse phase, clock noise) comes from a
generator seeded by the meter's barcode, so a run is reproducible.

Meter pulse rate at true power P (W): r = C · k · P · (1 + e/100) / 3.6e6 pulses/s,
with e the meter's configured error at the load point and k its constant
factor (1 for a meter whose pulse constant is right). The standard counts
C0 · P · t / 3.6e6 pulses in the same time t; so γ = (m0 − m)/m ≈ e.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Literal

from controller.verification.clock import Clock, loop_seconds, loop_timeout
from controller.verification.config import LineConfig
from controller.verification.errors import PowerFactor
from controller.verification.ports import PulseWindow
from controller.verification.scheme import MeterType

# DL/T 645 at 2400 baud 8E1: a short read is ≈ 36 characters on the wire
# (request + reply, 4.583 ms each) plus the meter's response delay.
COMM_TRANSACTION_S = 36 * 11 / 2400 + 0.05
COMM_TIMEOUT_S = 0.5


@dataclass
class SimMeterSpec:
    barcode: str
    address: str
    error_pct: float = 0.0
    # (I/Ib, PF value) -> error %; a load point not listed uses error_pct.
    point_errors: dict[tuple[float, str], float] = field(default_factory=dict)
    creep_w: float = 0.0  # power the meter registers with no current (a faulty meter creeps)
    # The meter's own starting threshold as a fraction of the class starting current;
    # above 1 the meter does not start in the test.
    starting_factor: float = 0.5
    clock_drift_s_per_day: float = 0.1
    leakage_ma: float = 0.3
    powers_on: bool = True
    comm_ok: bool = True
    relay_ok: bool = True
    constant_factor: float = 1.0  # pulses per registered kWh relative to C (≠ 1: wrong constant)
    heating: float = 1.0  # terminal heating relative to a good contact (a loose terminal: 5)

    def error_at(self, i_over_ib: float, pf: PowerFactor | str) -> float:
        pf = PowerFactor(pf)
        for (i, p), e in self.point_errors.items():
            if p == pf.value and math.isclose(i, i_over_ib, rel_tol=1e-6):
                return e
        return self.error_pct


class SimMeter:
    def __init__(self, spec: SimMeterSpec) -> None:
        self.spec = spec
        seed = int.from_bytes(hashlib.sha256(spec.barcode.encode()).digest()[:8], "big")
        self.rng = random.Random(seed)
        self.register_kwh = 1000.0 * self.rng.random()
        self.relay_open = False
        self.sealed = False


class SimUnit:
    def __init__(self, rig: SimRig, unit_id: int, stations: list[int], c0: int) -> None:
        self.id = unit_id
        self.rig = rig
        self.station_ids = stations
        self.c0 = c0
        self.voltage_pct = 0.0
        self.current_a = 0.0
        self.pf = PowerFactor.UNITY

    async def apply(self, voltage_pct: float, current_a: float, pf: PowerFactor) -> None:
        now = self.rig.clock.monotonic()
        for sid in self.station_ids:
            self.rig.stations[sid]._integrate(now)
        self.voltage_pct, self.current_a, self.pf = voltage_pct, current_a, pf
        for sid in self.station_ids:
            self.rig.stations[sid]._state_changed(now)

    async def off(self) -> None:
        await self.apply(0.0, 0.0, PowerFactor.UNITY)

    async def withstand(self, kv: float, seconds: float, ramp_s: float) -> dict[int, float]:
        await self.off()
        await self.rig.clock.sleep(2 * ramp_s + seconds)
        out: dict[int, float] = {}
        for sid in self.station_ids:
            meter = self.rig.stations[sid].meter
            if meter is not None:
                out[sid] = meter.spec.leakage_ma
                self.rig.log(sid, "withstand", out[sid])
        return out


class SimComms:
    def __init__(self, station: SimStation) -> None:
        self.station = station

    async def _transaction(self) -> SimMeter | None:
        meter = self.station.meter
        clock = self.station.rig.clock
        if meter is None or not meter.spec.comm_ok or self.station.unit.voltage_pct <= 0:
            await clock.sleep(COMM_TIMEOUT_S)
            return None
        await clock.sleep(COMM_TRANSACTION_S)
        return meter

    async def read_address(self) -> str | None:
        meter = await self._transaction()
        value = None if meter is None else meter.spec.address
        self.station.rig.log(self.station.id, "read_address", value)
        return value

    async def read_energy(self) -> float | None:
        meter = await self._transaction()
        if meter is None:
            return None
        self.station._integrate(self.station.rig.clock.monotonic())
        value = math.floor(meter.register_kwh * 100) / 100  # XXXXXX.XX kWh
        self.station.rig.log(self.station.id, "read_energy", value)
        return value

    async def read_relay_open(self) -> bool | None:
        meter = await self._transaction()
        value = None if meter is None else meter.relay_open
        self.station.rig.log(self.station.id, "read_relay", value)
        return value

    async def relay_control(
        self, command: Literal["trip", "close"], valid_until: tuple[int, int, int, int, int, int]
    ) -> bool:
        meter = await self._transaction()
        if meter is None:
            return False
        if meter.spec.relay_ok:
            meter.relay_open = command == "trip"
        self.station.rig.log(self.station.id, f"relay_{command}", True)
        return True


class SimStation:
    AMBIENT_C = 25.0
    # Terminal heating: a good contact at 60 A rises 20 K (k·I², k = 20/60²).
    HEAT_K_PER_A2 = 20.0 / 3600.0
    TAU_S = 120.0  # thermal time constant of terminal block and sensor

    def __init__(self, rig: SimRig, station_id: int, unit: SimUnit) -> None:
        self.id = station_id
        self.rig = rig
        self.unit = unit
        self.meter: SimMeter | None = None
        self.comms = SimComms(self)
        self.cut = False
        self.forced_c: float | None = None
        self._t0 = 0.0
        self._temp0 = self.AMBIENT_C
        self._temp_inf = self.AMBIENT_C
        self._last_integrated = 0.0
        self._next_edge: float | None = None
        self.energy_hold = False  # energy preset reached (constant test): nothing registers

    # -- physics ----------------------------------------------------------------
    @property
    def current_a(self) -> float:
        return 0.0 if self.cut else self.unit.current_a

    def true_power_w(self) -> float:
        """Power through the meter; the source holds voltage, the loop may be cut."""
        mt = self.rig.meter_type
        return (
            mt.phases
            * float(mt.un)
            * self.unit.voltage_pct
            / 100
            * self.current_a
            * float(self.unit.pf.cos_phi)
        )

    def registering_power_w(self) -> float:
        """Power the meter registers (its error applied; creep when no current flows)."""
        meter = self.meter
        if meter is None or self.unit.voltage_pct <= 0 or not meter.spec.powers_on:
            return 0.0
        if self.energy_hold:
            return 0.0
        mt = self.rig.meter_type
        i = self.current_a
        if i <= 0:
            return meter.spec.creep_w
        if i < meter.spec.starting_factor * self.rig.class_starting_a:
            return 0.0
        e = meter.spec.error_at(i / float(mt.ib), self.unit.pf)
        return self.true_power_w() * (1 + e / 100)

    def pulse_rate(self) -> float:
        assert self.meter is not None
        return (
            self.rig.meter_type.constant
            * self.meter.spec.constant_factor
            * self.registering_power_w()
            / 3.6e6
        )

    def _integrate(self, now: float) -> None:
        if self.meter is not None:
            self.meter.register_kwh += (
                self.registering_power_w() * (now - self._last_integrated) / 3.6e6
            )
        self._last_integrated = now

    def _state_changed(self, now: float) -> None:
        self._temp0 = self.temperature()
        self._t0 = now
        self._temp_inf = self.AMBIENT_C + self.HEAT_K_PER_A2 * self.heating * self.current_a**2
        self._next_edge = None  # new load point: the error calculator waits for a fresh edge
        self.energy_hold = False
        self._last_integrated = now

    @property
    def heating(self) -> float:
        return 1.0 if self.meter is None else self.meter.spec.heating

    # -- StationPort ------------------------------------------------------------------
    def temperature(self) -> float:
        if self.forced_c is not None:
            return self.forced_c
        dt = self.rig.clock.monotonic() - self._t0
        return self._temp_inf + (self._temp0 - self._temp_inf) * math.exp(-dt / self.TAU_S)

    def cut_current(self) -> None:
        now = self.rig.clock.monotonic()
        self._integrate(now)
        self.cut = True
        self._state_changed(now)
        self.rig.log(self.id, "cut_current", self.rig.clock.monotonic())

    def restore_current(self) -> None:
        now = self.rig.clock.monotonic()
        self._integrate(now)
        self.cut = False
        self._state_changed(now)

    async def scan_barcode(self) -> str | None:
        await self.rig.clock.sleep(0.3)
        return None if self.meter is None else self.meter.spec.barcode

    async def power_ok(self, power_on_s: float) -> bool:
        await self.rig.clock.sleep(power_on_s)
        ok = self.meter is not None and self.unit.voltage_pct > 0 and self.meter.spec.powers_on
        self.rig.log(self.id, "power_ok", ok)
        return ok

    async def _never(self) -> None:
        await asyncio.get_running_loop().create_future()  # no pulses ever come

    async def error_sample(self, pulses: int) -> int:
        meter = self.meter
        clock = self.rig.clock
        if meter is None:
            await self._never()
        assert meter is not None
        rate = self.pulse_rate()
        if rate <= 0:
            await self._never()
        now = clock.monotonic()
        if self._next_edge is None or self._next_edge < now:
            self._next_edge = now + meter.rng.random() / rate
        start = self._next_edge
        end = start + pulses / rate
        true_kwh = self.true_power_w() * (end - start) / 3.6e6
        m = math.floor(meter.rng.random() + self.unit.c0 * true_kwh)
        await clock.sleep_until(end)
        self._next_edge = end
        self.rig.log(self.id, "error_sample", m)
        return m

    async def count_pulses(self, window_s: float) -> PulseWindow:
        meter = self.meter
        rate = 0.0 if meter is None else self.pulse_rate()
        phase = 0.0 if meter is None else meter.rng.random()
        await self.rig.clock.sleep(window_s)
        count = math.floor(phase + rate * window_s) if rate > 0 else 0
        first = (1 - phase) / rate if count else None
        self.rig.log(self.id, "pulses", count)
        return PulseWindow(count, first)

    async def meter_pulses_during_energy(self, energy_kwh: float) -> int:
        meter = self.meter
        power = self.true_power_w()
        if meter is None or power <= 0:
            await self._never()
        assert meter is not None
        seconds = energy_kwh * 3.6e6 / power
        phase = meter.rng.random()
        start = self.rig.clock.monotonic()
        await self.rig.clock.sleep(seconds)
        now = self.rig.clock.monotonic()
        # Pulses are counted while the source is on: on a scaled real-time clock a late
        # wake-up lengthens the gate, and the register sees that energy too. Then the
        # source's energy preset holds the station until the next load point (in virtual
        # time the sequencer switches at the same instant, so the hold never shows).
        count = math.floor(phase + self.pulse_rate() * max(seconds, now - start))
        self._integrate(now)
        self.energy_hold = True
        self.rig.log(self.id, "constant_pulses", count)
        return count

    async def clock_reading(self, gate_s: float) -> float:
        meter = self.meter
        if meter is None or self.unit.voltage_pct <= 0:
            await self._never()
        assert meter is not None
        await self.rig.clock.sleep(gate_s)
        # time-base resolution 1 µs over the gate -> a few ms/d of noise
        value = round(meter.spec.clock_drift_s_per_day + meter.rng.gauss(0, 0.01), 3)
        self.rig.log(self.id, "clock", value)
        return value


class SimLineIO:
    """The line PLC: coils start motions, feedback inputs follow after travel times."""

    CONVEYOR_S_PER_METER = 1.0
    LIFT_S = 4.0
    PRESS_S = 3.0
    SEAL_S = 2.0

    def __init__(self, rig: SimRig) -> None:
        self.rig = rig
        self.points: dict[str, bool] = {}
        self._waiters: dict[str, list[tuple[bool, asyncio.Future[bool]]]] = {}

    def read(self, point: str) -> bool:
        return self.points.get(point, False)

    def _set(self, point: str, value: bool) -> None:
        self.points[point] = value
        for want, fut in self._waiters.pop(point, []):
            if want == value and not fut.done():
                fut.set_result(True)
            elif not fut.done():
                self._waiters.setdefault(point, []).append((want, fut))

    def _later(self, delay: float, fn: object, *args: object) -> None:
        asyncio.get_running_loop().call_later(
            loop_seconds(self.rig.clock, delay),
            fn,  # type: ignore[arg-type]
            *args,
        )

    def write(self, point: str, value: bool) -> None:
        self.points[point] = value
        kind, _, name = point.partition("/")
        if kind.startswith("unit"):
            unit = self.rig.units[int(kind[4:])]
            n = len(unit.station_ids)
            if name == "load" and value:
                self._set(f"{kind}/empty", False)
                self._later(n * self.CONVEYOR_S_PER_METER + self.LIFT_S, self._loaded, unit)
            elif name == "press":
                self._set(f"{kind}/press_up", False)
                self._set(f"{kind}/press_down", False)
                self._later(
                    self.PRESS_S, self._set, f"{kind}/press_{'down' if value else 'up'}", True
                )
            elif name == "unload" and value:
                self._set(f"{kind}/loaded", False)
                self._later(self.LIFT_S + n * self.CONVEYOR_S_PER_METER, self._unloaded, unit)
        elif kind.startswith("station") and name == "seal":
            sid = int(kind[7:])
            if value:
                self._later(self.SEAL_S, self._sealed, sid)
            else:
                self._set(f"{kind}/sealed", False)

    def _loaded(self, unit: SimUnit) -> None:
        for sid in unit.station_ids:
            if self.rig.infeed:
                self.rig.stations[sid].meter = self.rig.infeed.popleft()
        self._set(f"unit{unit.id}/loaded", True)

    def _sealed(self, sid: int) -> None:
        meter = self.rig.stations[sid].meter
        if meter is not None:
            meter.sealed = True
        self._set(f"station{sid}/sealed", True)

    def _unloaded(self, unit: SimUnit) -> None:
        for sid in unit.station_ids:
            station = self.rig.stations[sid]
            if station.meter is not None:
                reject = self.read(f"station{sid}/reject")
                self.rig.boxes["fail" if reject else "pass"].append(station.meter.spec.barcode)
                station.meter = None
        self._set(f"unit{unit.id}/empty", True)

    async def wait_for(self, point: str, value: bool, timeout_s: float) -> bool:
        if self.read(point) == value:
            return True
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(point, []).append((value, fut))
        try:
            return await asyncio.wait_for(fut, loop_timeout(self.rig.clock, timeout_s))
        except TimeoutError:
            return False


class SimRig:
    """The whole simulated line for one meter type."""

    def __init__(
        self,
        config: LineConfig,
        meter_type: MeterType,
        clock: Clock,
        measure_log: IO[str] | None = None,
    ) -> None:
        from controller.verification.errors import starting_current

        self.clock = clock
        self.meter_type = meter_type
        self.class_starting_a = float(
            starting_current(meter_type.accuracy_class, meter_type.connection, meter_type.ib)
        )
        self.units: dict[int, SimUnit] = {}
        self.stations: dict[int, SimStation] = {}
        for u in config.units:
            ids = [s.id for s in sorted(u.stations, key=lambda s: s.position)]
            unit = SimUnit(self, u.id, ids, u.standard_constant)
            self.units[u.id] = unit
            for sid in ids:
                self.stations[sid] = SimStation(self, sid, unit)
        self.io = SimLineIO(self)
        self.infeed: deque[SimMeter] = deque()
        self.boxes: dict[str, list[str]] = {"pass": [], "fail": []}
        self._log = measure_log

    def feed(self, specs: Iterable[SimMeterSpec]) -> None:
        """Meters arriving on the infeed conveyor, in order."""
        self.infeed.extend(SimMeter(s) for s in specs)

    def clear(self) -> None:
        """The line emptied before a new batch: an aborted or failed batch leaves meters on
        stations and lifts or presses mid-way, which the operator clears by hand."""
        self.infeed.clear()
        for station in self.stations.values():
            station.meter = None
        self.io.points.clear()

    def place(self, station: int, spec: SimMeterSpec) -> None:
        """A meter already on a station (the plant's state after a controller restart)."""
        self.stations[station].meter = SimMeter(spec)
        unit = self.stations[station].unit
        self.io.points[f"unit{unit.id}/loaded"] = True

    def force_temperature(self, station: int, celsius: float | None) -> None:
        self.stations[station].forced_c = celsius

    def log(self, station: int, what: str, value: object) -> None:
        """Measurement log: every value the rig produced, written before it is returned."""
        if self._log is None:
            return
        meter = self.stations[station].meter
        self._log.write(
            json.dumps(
                {
                    "t": round(self.clock.now(), 6),
                    "station": station,
                    "barcode": None if meter is None else meter.spec.barcode,
                    "what": what,
                    "value": value,
                }
            )
            + "\n"
        )
        self._log.flush()
