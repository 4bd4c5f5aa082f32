"""Simulated verification rig: meters under test, sources, reference standards,
error calculators, temperature sensors and the line PLC's handling I/O.

An independent witness: it talks to the controller only through the contract
in :mod:`drivers.verification_rig` and computes its side of the physics from its
own parameters (:class:`SimLine`, :class:`SimNameplate`), never from the
controller's formulas: if both sides shared one and it were wrong, every test
would still agree with itself.

Physics is computed analytically, not stepped: a sample's end time and the
standard's count follow from the meter's pulse rate, so the rig costs a few
timer events per sample and a 48-meter batch runs in virtual time in about a
second. Every random quantity (pulse phase, time-base phase) comes from a
generator seeded by the meter's barcode, so a run is reproducible.

Power through a meter: P = m · U · I · cos φ, m the number of measuring elements
as they enter the power (1 single-phase, 3 three-phase four-wire with U the phase
voltage, √3 three-phase three-wire with U the line voltage).
Meter pulse rate at true power P (W): r = C · k · P · (1 + e/100) / 3.6e6 pulses/s,
with e the meter's configured error at the load point and k its constant factor
(1 for a meter whose pulse constant is right). The standard counts
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
from decimal import ROUND_FLOOR, Decimal
from typing import IO

from drivers.verification_rig import (
    CLOCK_PULSE_NOMINAL_HZ,
    ENERGY_REGISTER_RESOLUTION_KWH,
    POWER_FACTOR_CODES,
    ClockGate,
    PulseWindow,
    RelayCommand,
    ValidUntil,
    station_point,
    unit_point,
)

# DL/T 645 at 2400 baud 8E1: a short read is ≈ 36 characters on the wire
# (request + reply, 4.583 ms each) plus the meter's response delay.
COMM_TRANSACTION_S = 36 * 11 / 2400 + 0.05
COMM_TIMEOUT_S = 0.5

# The error calculator times the meter's second pulse with a 1 MHz time base (1 µs).
TIMEBASE_HZ = 1_000_000

SECONDS_PER_DAY = 86_400


def cos_phi(pf: str) -> float:
    """cos φ of a source setting ("1.0", "0.5L", "0.8C")."""
    if pf not in POWER_FACTOR_CODES:
        raise ValueError(f"pf: {pf!r} is not a source setting; allowed: {POWER_FACTOR_CODES}")
    return float(pf.rstrip("LC"))


@dataclass(frozen=True, slots=True)
class SimNameplate:
    """The meter type on the rig, as plain nameplate values."""

    accuracy_class: str  # "0.2S", "0.5S", "1", "2"
    connection: str  # "direct" or "ct" (transformer-operated)
    wiring: str  # "1P2W", "3P3W", "3P4W"
    un_v: float  # reference voltage (phase voltage for 3P4W, line voltage for 3P3W)
    ib_a: float  # Ib (In for transformer-operated meters)
    constant: int  # imp/kWh

    def __post_init__(self) -> None:
        if self.accuracy_class not in ("0.2S", "0.5S", "1", "2"):
            raise ValueError(f"accuracy_class: {self.accuracy_class!r} not one of 0.2S, 0.5S, 1, 2")
        if self.connection not in ("direct", "ct"):
            raise ValueError(f"connection: {self.connection!r} not one of direct, ct")
        if self.wiring not in ("1P2W", "3P3W", "3P4W"):
            raise ValueError(f"wiring: {self.wiring!r} not one of 1P2W, 3P3W, 3P4W")

    @property
    def power_elements(self) -> float:
        """m in P = m · U · I · cos φ."""
        return {"1P2W": 1.0, "3P4W": 3.0, "3P3W": math.sqrt(3)}[self.wiring]

    @property
    def class_starting_a(self) -> float:
        """Starting current the standard sets for the class (JJG 596-2012 Table 7,
        GB/T 17215.321 / .322 §8.3.3): direct-connected class 1 0.004 Ib, class 2
        0.005 Ib; transformer-operated class 1 0.002 In, class 2 0.003 In;
        classes 0.2S and 0.5S (transformer-operated) 0.001 In."""
        if self.accuracy_class in ("0.2S", "0.5S"):
            fraction = 0.001
        elif self.connection == "direct":
            fraction = 0.004 if self.accuracy_class == "1" else 0.005
        else:
            fraction = 0.002 if self.accuracy_class == "1" else 0.003
        return fraction * self.ib_a


@dataclass(frozen=True, slots=True)
class SimUnitSpec:
    id: int
    stations: tuple[int, ...]  # station ids, nearest the infeed first
    standard_constant: int  # C0 of the unit's reference standard, imp/kWh


@dataclass(frozen=True, slots=True)
class SimLine:
    """Everything the rig is built from."""

    units: tuple[SimUnitSpec, ...]
    meter: SimNameplate
    # Rig seconds per second of the event loop's clock (1 on a virtual-time loop).
    time_scale: float = 1.0
    # Added to every wait on a scaled loop: a long loop step is not a dead PLC.
    timeout_slack_s: float = 0.0


class RigTime:
    """The rig's clock: the event loop's time times ``scale``."""

    def __init__(
        self,
        scale: float = 1.0,
        slack_s: float = 0.0,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not scale > 0:
            raise ValueError(f"time_scale: must be > 0 (got {scale})")
        self.scale = scale
        self.slack_s = slack_s
        self._loop = loop

    def _loop_time(self) -> float:
        loop = self._loop if self._loop is not None else asyncio.get_running_loop()
        return loop.time()

    def monotonic(self) -> float:
        return self._loop_time() * self.scale

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.scale)

    async def sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - self.monotonic()) / self.scale)

    def loop_delay(self, seconds: float) -> float:
        return seconds / self.scale

    def loop_timeout(self, seconds: float) -> float:
        return seconds / self.scale + (self.slack_s if self.scale != 1.0 else 0.0)


@dataclass
class SimMeterSpec:
    barcode: str
    address: str
    error_pct: float = 0.0
    # (I/Ib, PF code) -> error %; a load point not listed uses error_pct.
    point_errors: dict[tuple[float, str], float] = field(default_factory=dict)
    creep_w: float = 0.0  # power the meter registers with no current (a faulty meter creeps)
    # The meter's own starting threshold as a fraction of the class starting current;
    # above 1 the meter does not start in the test.
    starting_factor: float = 0.5
    clock_drift_s_per_day: float = 0.1  # > 0: the meter's clock runs fast
    leakage_ma: float = 0.3
    powers_on: bool = True
    comm_ok: bool = True
    relay_ok: bool = True
    constant_factor: float = 1.0  # pulses per registered kWh relative to C (≠ 1: wrong constant)
    heating: float = 1.0  # terminal heating relative to a good contact (a loose terminal: 5)

    def error_at(self, i_over_ib: float, pf: str) -> float:
        for (i, p), e in self.point_errors.items():
            if p == pf and math.isclose(i, i_over_ib, rel_tol=1e-6):
                return e
        return self.error_pct

    @property
    def clock_hz(self) -> float:
        """Second-pulse frequency: a clock gaining y s/d counts 86 400 + y seconds a day."""
        return (
            CLOCK_PULSE_NOMINAL_HZ
            * (SECONDS_PER_DAY + self.clock_drift_s_per_day)
            / SECONDS_PER_DAY
        )


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
        self.pf = "1.0"
        self.cos_phi = 1.0

    async def apply(self, voltage_pct: float, current_a: float, pf: str) -> None:
        cos = cos_phi(str(pf))
        now = self.rig.clock.monotonic()
        for sid in self.station_ids:
            self.rig.stations[sid]._integrate(now)
        self.voltage_pct, self.current_a, self.pf, self.cos_phi = voltage_pct, current_a, pf, cos
        for sid in self.station_ids:
            self.rig.stations[sid]._state_changed(now)

    async def off(self) -> None:
        await self.apply(0.0, 0.0, "1.0")

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

    async def read_energy(self) -> Decimal | None:
        meter = await self._transaction()
        if meter is None:
            return None
        self.station._integrate(self.station.rig.clock.monotonic())
        # The display truncates: 12.345 kWh reads 12.34.
        value = Decimal(repr(meter.register_kwh)).quantize(
            ENERGY_REGISTER_RESOLUTION_KWH, rounding=ROUND_FLOOR
        )
        self.station.rig.log(self.station.id, "read_energy", str(value))
        return value

    async def read_relay_open(self) -> bool | None:
        meter = await self._transaction()
        value = None if meter is None else meter.relay_open
        self.station.rig.log(self.station.id, "read_relay", value)
        return value

    async def relay_control(self, command: RelayCommand, valid_until: ValidUntil) -> bool:
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
        mt = self.rig.meter
        return (
            mt.power_elements
            * mt.un_v
            * self.unit.voltage_pct
            / 100
            * self.current_a
            * self.unit.cos_phi
        )

    def registering_power_w(self) -> float:
        """Power the meter registers (its error applied; creep when no current flows)."""
        meter = self.meter
        if meter is None or self.unit.voltage_pct <= 0 or not meter.spec.powers_on:
            return 0.0
        if self.energy_hold:
            return 0.0
        i = self.current_a
        if i <= 0:
            return meter.spec.creep_w
        if i < meter.spec.starting_factor * self.rig.meter.class_starting_a:
            return 0.0
        e = meter.spec.error_at(i / self.rig.meter.ib_a, self.unit.pf)
        return self.true_power_w() * (1 + e / 100)

    def pulse_rate(self) -> float:
        assert self.meter is not None
        return (
            self.rig.meter.constant
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

    async def clock_gate(self, pulses: int) -> ClockGate:
        meter = self.meter
        if meter is None or self.unit.voltage_pct <= 0 or not meter.spec.powers_on:
            await self._never()
        assert meter is not None
        clock = self.rig.clock
        hz = meter.spec.clock_hz
        # The gate opens on the meter's next second-pulse edge and closes ``pulses``
        # periods later; the time base counts whole ticks in between, so the count
        # is the true duration in ticks with the first tick's phase random.
        opens = clock.monotonic() + meter.rng.random() / hz
        duration = pulses / hz
        ticks = math.floor(meter.rng.random() + duration * TIMEBASE_HZ)
        await clock.sleep_until(opens + duration)
        gate = ClockGate(pulses, ticks, TIMEBASE_HZ)
        self.rig.log(self.id, "clock", [pulses, ticks])
        return gate


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
            self.rig.clock.loop_delay(delay),
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
                self._set(unit_point(unit.id, "empty"), False)
                self._later(n * self.CONVEYOR_S_PER_METER + self.LIFT_S, self._loaded, unit)
            elif name == "press":
                self._set(unit_point(unit.id, "press_up"), False)
                self._set(unit_point(unit.id, "press_down"), False)
                self._later(
                    self.PRESS_S,
                    self._set,
                    unit_point(unit.id, "press_down" if value else "press_up"),
                    True,
                )
            elif name == "unload" and value:
                self._set(unit_point(unit.id, "loaded"), False)
                self._later(self.LIFT_S + n * self.CONVEYOR_S_PER_METER, self._unloaded, unit)
        elif kind.startswith("station") and name == "seal":
            sid = int(kind[7:])
            if value:
                self._later(self.SEAL_S, self._sealed, sid)
            else:
                self._set(station_point(sid, "sealed"), False)

    def _loaded(self, unit: SimUnit) -> None:
        for sid in unit.station_ids:
            if self.rig.infeed:
                self.rig.stations[sid].meter = self.rig.infeed.popleft()
        self._set(unit_point(unit.id, "loaded"), True)

    def _sealed(self, sid: int) -> None:
        meter = self.rig.stations[sid].meter
        if meter is not None:
            meter.sealed = True
        self._set(station_point(sid, "sealed"), True)

    def _unloaded(self, unit: SimUnit) -> None:
        for sid in unit.station_ids:
            station = self.rig.stations[sid]
            if station.meter is not None:
                reject = self.read(station_point(sid, "reject"))
                self.rig.boxes["fail" if reject else "pass"].append(station.meter.spec.barcode)
                station.meter = None
        self._set(unit_point(unit.id, "empty"), True)

    async def wait_for(self, point: str, value: bool, timeout_s: float) -> bool:
        if self.read(point) == value:
            return True
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(point, []).append((value, fut))
        try:
            return await asyncio.wait_for(fut, self.rig.clock.loop_timeout(timeout_s))
        except TimeoutError:
            return False


class SimRig:
    """The whole simulated line for one meter type."""

    def __init__(
        self,
        line: SimLine,
        measure_log: IO[str] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """``loop``: the event loop whose time the rig keeps when called from outside it
        (a virtual-time loop in tests); by default the running loop."""
        self.clock = RigTime(line.time_scale, line.timeout_slack_s, loop)
        self.meter = line.meter
        self.units: dict[int, SimUnit] = {}
        self.stations: dict[int, SimStation] = {}
        for u in line.units:
            unit = SimUnit(self, u.id, list(u.stations), u.standard_constant)
            self.units[u.id] = unit
            for sid in u.stations:
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
        self.io.points[unit_point(unit.id, "loaded")] = True

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
                    "t": round(self.clock.monotonic(), 6),  # rig seconds
                    "station": station,
                    "barcode": None if meter is None else meter.spec.barcode,
                    "what": what,
                    "value": value,
                }
            )
            + "\n"
        )
        self._log.flush()
