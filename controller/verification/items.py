"""The test items: one handler class per scheme item type, found through a registry.

The sequencer owns the order of items, their bookkeeping (attempts, skips,
stop-on-fail, progress) and the station tasks; a handler only drives the rig
for its item and turns what it measured into result rows. Every handler has
the same interface, ``async run(run, item) -> rows``:

- a unit-wide item (``Scope.UNIT``) is run once for the unit's pending meters
  and returns a row for each of them (and each load point);
- a per-station item (``Scope.STATION``) is run for one meter, in that
  station's own task (so an over-temperature trip cancels it alone), and
  returns that meter's rows.

A new item kind is a scheme model plus a class here decorated with
``@handles(ThatItem)``; nothing in the sequencer changes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, Generic, TypeVar

from controller.verification.clock import Clock, loop_timeout
from controller.verification.config import LineConfig
from controller.verification.errors import (
    CREEP_MAX_PULSES,
    STARTING_MIN_PULSES,
    Evaluation,
    PowerFactor,
    clock_error_s_per_day,
    creep_time_s,
    error_limit,
    evaluate_clock,
    evaluate_error,
    round_to_interval,
    starting_time_s,
    theoretical_count,
    to_decimal,
)
from controller.verification.ports import Rig
from controller.verification.results import ABORTED, FAIL, PASS, ResultRow
from controller.verification.scheme import (
    AppearanceItem,
    BasicErrorItem,
    ClockItem,
    CommunicationItem,
    ConstantItem,
    CostControlItem,
    CreepItem,
    Current,
    MeterType,
    Scheme,
    SchemeError,
    StartingItem,
    WithstandItem,
    point_power_w,
    starting_amperes,
)
from drivers.site_time import to_wall
from drivers.verification_rig import CLOCK_PULSE_NOMINAL_HZ


@dataclass(slots=True)
class Meter:
    """A meter of the batch on its station, as the sequencer tracks it."""

    barcode: str
    address: str
    station: int
    state: str
    verdict: str
    stopped: str = ""  # why the station skips the rest of the scheme


@dataclass(slots=True)
class Aborted:
    """A station's measurement that did not finish (cut for over-temperature, cancelled)."""

    reason: str


def result_row(
    *,
    batch_id: str,
    scheme: Scheme,
    meter: Meter,
    index: int,
    point_index: int = 0,
    point: str = "",
    samples: list[dict[str, Any]] | None = None,
    average: Any = None,
    rounded: Any = None,
    limits: tuple[Any, Any] | None = None,
    unit: str = "",
    verdict: str,
    reason: str = "",
    started: float,
    ended: float,
) -> ResultRow:
    """A result row as stored: numbers as their decimal text, an open limit as None."""
    return ResultRow(
        batch_id=batch_id,
        barcode=meter.barcode,
        item_index=index,
        point_index=point_index,
        kind=scheme.items[index].kind,
        point=point,
        station=meter.station,
        samples=[] if samples is None else samples,
        average=None if average is None else str(average),
        rounded=None if rounded is None else str(rounded),
        limit_low=None if limits is None or limits[0] is None else str(limits[0]),
        limit_high=None if limits is None or limits[1] is None else str(limits[1]),
        unit=unit,
        verdict=verdict,
        reason=reason,
        started=started,
        ended=ended,
        scheme_version=scheme.version,
    )


Parallel = Callable[[Sequence[Meter], Callable[[Meter], Awaitable[Any]]], Awaitable[dict[str, Any]]]


@dataclass(slots=True)
class ItemRun:
    """One run of one item on one unit: what a handler may use, and its row builder."""

    batch_id: str
    scheme: Scheme
    meter_type: MeterType
    unit_id: int
    index: int
    meters: list[Meter]  # the meters that still need the item
    started: float
    clock: Clock
    rig: Rig
    config: LineConfig
    site_tz: dt.tzinfo
    tripped: dict[int, str]  # station -> why it was cut
    # run a coroutine per meter in the station's own task; a cut station yields Aborted
    parallel: Parallel

    def row(
        self,
        meter: Meter,
        *,
        point_index: int = 0,
        point: str = "",
        samples: list[dict[str, Any]] | None = None,
        average: Any = None,
        rounded: Any = None,
        limits: tuple[Any, Any] | None = None,
        unit: str = "",
        verdict: str,
        reason: str = "",
        started: float | None = None,
        ended: float,
    ) -> ResultRow:
        return result_row(
            batch_id=self.batch_id,
            scheme=self.scheme,
            meter=meter,
            index=self.index,
            point_index=point_index,
            point=point,
            samples=samples,
            average=average,
            rounded=rounded,
            limits=limits,
            unit=unit,
            verdict=verdict,
            reason=reason,
            started=self.started if started is None else started,
            ended=ended,
        )

    def aborted_row(
        self, meter: Meter, reason: str, *, point_index: int = 0, point: str = "", ended: float
    ) -> ResultRow:
        """A station that stopped before measuring (tripped, faulted) leaves a row saying why."""
        return self.row(
            meter,
            point_index=point_index,
            point=point,
            verdict=ABORTED,
            reason=reason,
            ended=ended,
        )

    def measured(
        self,
        results: dict[str, Any],
        rows: list[ResultRow],
        *,
        meters: Sequence[Meter] | None = None,
        point_index: int = 0,
        point: str = "",
        started: float | None = None,
    ) -> list[Meter]:
        """The meters that measured at this load point; an aborted row for each station
        that was cut (appended to ``rows``)."""
        alive = []
        for m in self.meters if meters is None else meters:
            r = results.get(m.barcode)
            if isinstance(r, Aborted):
                rows.append(
                    self.row(
                        m,
                        point_index=point_index,
                        point=point,
                        verdict=ABORTED,
                        reason=r.reason,
                        started=started,
                        ended=self.clock.now(),
                    )
                )
            elif m.barcode in results:
                alive.append(m)
        return alive


ItemT = TypeVar("ItemT")


class ItemHandler(Generic[ItemT]):
    """Runs one scheme item type; see the module docstring for the two scopes."""

    async def run(self, run: ItemRun, item: ItemT) -> list[ResultRow]:
        raise NotImplementedError


_HANDLERS: dict[type[Any], ItemHandler[Any]] = {}

H = TypeVar("H", bound=type[ItemHandler[Any]])


def handles(item_type: type[Any]) -> Callable[[H], H]:
    """Register the decorated handler class for a scheme item type (one handler each)."""

    def register(cls: H) -> H:
        if item_type in _HANDLERS:
            raise ValueError(f"{item_type.__name__}: a handler is already registered")
        _HANDLERS[item_type] = cls()
        return cls

    return register


def handler_for(scheme: Scheme, index: int) -> ItemHandler[Any]:
    item = scheme.items[index]
    handler = _HANDLERS.get(type(item))
    if handler is None:
        raise SchemeError(scheme.name, [f"items[{index}]: no handler for kind {item.kind!r}"])
    return handler


def registered_item_types() -> frozenset[type[Any]]:
    return frozenset(_HANDLERS)


# -- unit-wide items ---------------------------------------------------------------------------
@handles(WithstandItem)
class Withstand(ItemHandler[WithstandItem]):
    async def run(self, run: ItemRun, item: WithstandItem) -> list[ResultRow]:
        leak = await run.rig.units[run.unit_id].withstand(item.kv, item.seconds, item.ramp_s)
        now = run.clock.now()
        limit = Decimal(str(item.leakage_limit_ma))
        rows: list[ResultRow] = []
        for m in run.meters:
            if m.station in run.tripped:
                rows.append(run.aborted_row(m, run.tripped[m.station], ended=now))
                continue
            value = Decimal(str(leak.get(m.station, float("inf"))))
            verdict = PASS if value <= limit else FAIL
            rows.append(
                run.row(
                    m,
                    point=f"{item.kv} kV {item.seconds:g} s",
                    samples=[{"leakage_ma": str(value)}],
                    average=value,
                    rounded=value,
                    limits=(None, limit),
                    unit="mA",
                    verdict=verdict,
                    reason="" if verdict == PASS else "leakage above limit",
                    ended=now,
                )
            )
        return rows


@handles(StartingItem)
class Starting(ItemHandler[StartingItem]):
    async def run(self, run: ItemRun, item: StartingItem) -> list[ResultRow]:
        mt = run.meter_type
        amps = starting_amperes(item, mt)
        limit_s = starting_time_s(mt.constant, mt.elements, mt.un, amps)
        await run.rig.units[run.unit_id].apply(100.0, float(amps), PowerFactor.UNITY)
        await run.clock.sleep(item.settle_s)
        res = await run.parallel(
            run.meters, lambda m: run.rig.stations[m.station].count_pulses(float(limit_s))
        )
        now = run.clock.now()
        limit_txt = to_decimal(limit_s, 1)
        rows: list[ResultRow] = []
        for m in run.measured(res, rows, point=f"{float(amps):g} A"):
            w = res[m.barcode]
            verdict = PASS if w.count >= STARTING_MIN_PULSES else FAIL
            first = None if w.first_pulse_s is None else Decimal(str(round(w.first_pulse_s, 1)))
            rows.append(
                run.row(
                    m,
                    point=f"{float(amps):g} A",
                    samples=[
                        {"pulses": w.count, "first_pulse_s": None if first is None else str(first)}
                    ],
                    average=first,
                    rounded=first,
                    limits=(None, limit_txt),
                    unit="s",
                    verdict=verdict,
                    reason="" if verdict == PASS else f"no pulse within {limit_txt} s",
                    ended=now,
                )
            )
        return rows


@handles(CreepItem)
class Creep(ItemHandler[CreepItem]):
    async def run(self, run: ItemRun, item: CreepItem) -> list[ResultRow]:
        mt = run.meter_type
        window = creep_time_s(mt.accuracy_class, mt.constant, mt.elements, mt.un, mt.imax)
        await run.rig.units[run.unit_id].apply(item.voltage_pct, 0.0, PowerFactor.UNITY)
        await run.clock.sleep(item.settle_s)
        res = await run.parallel(
            run.meters, lambda m: run.rig.stations[m.station].count_pulses(float(window))
        )
        now = run.clock.now()
        rows: list[ResultRow] = []
        for m in run.measured(res, rows, point=f"{item.voltage_pct:g}% Un"):
            w = res[m.barcode]
            verdict = PASS if w.count <= CREEP_MAX_PULSES else FAIL
            rows.append(
                run.row(
                    m,
                    point=f"{item.voltage_pct:g}% Un {to_decimal(window, 1)} s",
                    samples=[{"pulses": w.count}],
                    average=w.count,
                    rounded=w.count,
                    limits=(None, CREEP_MAX_PULSES),
                    unit="pulses",
                    verdict=verdict,
                    reason=""
                    if verdict == PASS
                    else f"{w.count} pulses in {to_decimal(window, 1)} s",
                    ended=now,
                )
            )
        return rows


@handles(BasicErrorItem)
class BasicError(ItemHandler[BasicErrorItem]):
    async def run(self, run: ItemRun, item: BasicErrorItem) -> list[ResultRow]:
        mt = run.meter_type
        unit = run.rig.units[run.unit_id]
        c0 = next(u.standard_constant for u in run.config.units if u.id == run.unit_id)
        rows: list[ResultRow] = []
        alive = run.meters
        for k, p in enumerate(item.points):
            cur = p.current
            amps = cur.amperes(mt)
            point_limit = error_limit(
                mt.accuracy_class, p.pf, cur.over_ib(mt), mt.imax_over_ib, mt.connection
            )
            if point_limit is None:  # validate_for() refuses such schemes; never guess a limit
                raise SchemeError(run.scheme.name, [f"items[{run.index}].points[{k}]: no limit"])
            limit = point_limit
            await unit.apply(100.0, float(amps), p.pf)
            await run.clock.sleep(item.settle_s)
            point_started = run.clock.now()
            power = point_power_w(mt, cur, p.pf)
            pulse_s = float(Fraction(3_600_000) / (mt.constant * power))
            timeout = run.config.sample_timeout_factor * pulse_s * (p.pulses + 1)

            async def measure(m: Meter, p: Any = p, timeout: float = timeout) -> list[int] | None:
                st = run.rig.stations[m.station]
                counts = []
                for _ in range(p.samples):
                    try:
                        counts.append(
                            await asyncio.wait_for(
                                st.error_sample(p.pulses), loop_timeout(run.clock, timeout)
                            )
                        )
                    except TimeoutError:
                        return None
                return counts

            res = await run.parallel(alive, measure)
            now = run.clock.now()
            m0 = theoretical_count(c0, p.pulses, mt.constant)
            still = []
            for m in run.measured(
                res, rows, meters=alive, point_index=k, point=p.name, started=point_started
            ):
                counts = res[m.barcode]
                if counts is None:
                    rows.append(
                        run.row(
                            m,
                            point_index=k,
                            point=p.name,
                            limits=(-limit, limit),
                            unit="%",
                            verdict=FAIL,
                            reason=f"no meter pulses within {timeout:.0f} s",
                            started=point_started,
                            ended=now,
                        )
                    )
                    still.append(m)
                    continue
                ev = evaluate_error(m0, counts, mt.accuracy_class, limit)
                rows.append(
                    _error_row(run, m, k, p.name, p.pulses, m0, counts, ev, point_started, now)
                )
                still.append(m)
            alive = still
        return rows


def _error_row(
    run: ItemRun,
    m: Meter,
    k: int,
    point: str,
    pulses: int,
    m0: Fraction,
    counts: list[int],
    ev: Evaluation,
    started: float,
    ended: float,
) -> ResultRow:
    samples = [
        {
            "n": pulses,
            "m0": f"{m0.numerator}/{m0.denominator}",
            "m": c,
            "error_pct": str(to_decimal(g, 6)),
        }
        for c, g in zip(counts, ev.samples, strict=True)
    ]
    return run.row(
        m,
        point_index=k,
        point=point,
        samples=samples,
        average=to_decimal(ev.mean, 6),
        rounded=ev.rounded,
        limits=(ev.limit_low, ev.limit_high),
        unit="%",
        verdict=PASS if ev.passed else FAIL,
        reason="" if ev.passed else f"error {ev.rounded} % outside ±{ev.limit_high} %",
        started=started,
        ended=ended,
    )


@handles(ConstantItem)
class Constant(ItemHandler[ConstantItem]):
    async def run(self, run: ItemRun, item: ConstantItem) -> list[ResultRow]:
        mt = run.meter_type
        unit = run.rig.units[run.unit_id]
        cur = Current.parse(item.i)
        point_limit = error_limit(
            mt.accuracy_class, item.pf, cur.over_ib(mt), mt.imax_over_ib, mt.connection
        )
        if point_limit is None:  # validate_for() refuses such schemes; never guess a limit
            raise SchemeError(run.scheme.name, [f"items[{run.index}].i: no limit"])
        limit = point_limit
        await unit.apply(100.0, float(cur.amperes(mt)), item.pf)
        await run.clock.sleep(item.settle_s)

        async def constant(m: Meter) -> tuple[Decimal | None, int, None]:
            st = run.rig.stations[m.station]
            before = await st.comms.read_energy()
            pulses = await st.meter_pulses_during_energy(item.energy_kwh)
            return before, pulses, None

        res = await run.parallel(run.meters, constant)
        await unit.apply(100.0, 0.0, PowerFactor.UNITY)
        after = await run.parallel(
            [m for m in run.meters if not isinstance(res.get(m.barcode), Aborted)],
            lambda m: run.rig.stations[m.station].comms.read_energy(),
        )
        now = run.clock.now()
        point = f"{cur} {item.energy_kwh:g} kWh"
        rows: list[ResultRow] = []
        for m in run.measured(res, rows, point=str(cur)):
            before, pulses, _ = res[m.barcode]
            r2 = after.get(m.barcode)
            if isinstance(r2, Aborted):
                rows.append(run.aborted_row(m, r2.reason, point=str(cur), ended=now))
                continue
            sample = {
                "register_before": None if before is None else str(before),
                "register_after": None if r2 is None else str(r2),
                "pulses": pulses,
                "constant": mt.constant,
            }
            if before is None or r2 is None or pulses <= 0:
                reason = "register not readable" if pulses > 0 else "no meter pulses"
                rows.append(
                    run.row(
                        m,
                        point=point,
                        samples=[sample],
                        limits=(-limit, limit),
                        unit="%",
                        verdict=FAIL,
                        reason=reason,
                        ended=now,
                    )
                )
                continue
            # The register's advance against the energy its pulse output stands
            # for (N / C): a wrong constant shows as their relative difference,
            # judged like a basic error against the class limit at this load point.
            advance = Fraction(Decimal(str(r2)) - Decimal(str(before)))
            by_pulses = Fraction(pulses, mt.constant)
            error = (advance - by_pulses) / by_pulses * 100
            rounded = round_to_interval(error, mt.accuracy_class.rounding_interval)
            verdict = PASS if -limit <= rounded <= limit else FAIL
            rows.append(
                run.row(
                    m,
                    point=point,
                    samples=[sample],
                    average=to_decimal(error, 6),
                    rounded=rounded,
                    limits=(-limit, limit),
                    unit="%",
                    verdict=verdict,
                    reason=""
                    if verdict == PASS
                    else f"register advance {rounded} % off pulses / C (limit ±{limit} %)",
                    ended=now,
                )
            )
        return rows


# -- per-station items: run.meters is the one meter of the station's task ---------------------
@handles(AppearanceItem)
class Appearance(ItemHandler[AppearanceItem]):
    async def run(self, run: ItemRun, item: AppearanceItem) -> list[ResultRow]:
        (m,) = run.meters
        ok = await run.rig.stations[m.station].power_ok(item.power_on_s)
        return [
            run.row(
                m,
                point="power-on",
                samples=[{"power_ok": ok}],
                verdict=PASS if ok else FAIL,
                reason="" if ok else "no voltage-circuit burden at power-on",
                ended=run.clock.now(),
            )
        ]


@handles(ClockItem)
class DailyClock(ItemHandler[ClockItem]):
    async def run(self, run: ItemRun, item: ClockItem) -> list[ResultRow]:
        (m,) = run.meters
        st = run.rig.stations[m.station]
        # Each gate spans whole periods of the meter's second pulse, about gate_s long.
        gate_pulses = max(1, round(item.gate_s * CLOCK_PULSE_NOMINAL_HZ))
        samples: list[dict[str, Any]] = []
        readings: list[Fraction] = []
        for _ in range(item.readings):
            try:
                gate = await asyncio.wait_for(
                    st.clock_gate(gate_pulses), loop_timeout(run.clock, 2 * item.gate_s + 2)
                )
            except TimeoutError:
                return [
                    run.row(
                        m,
                        point="daily clock",
                        samples=samples,
                        limits=(-item.limit_s_per_day, item.limit_s_per_day),
                        unit="s/d",
                        verdict=FAIL,
                        reason="no second pulse",
                        ended=run.clock.now(),
                    )
                ]
            error = clock_error_s_per_day(
                gate.pulses, gate.ticks, gate.timebase_hz, CLOCK_PULSE_NOMINAL_HZ
            )
            readings.append(error)
            samples.append(
                {
                    "pulses": gate.pulses,
                    "ticks": gate.ticks,
                    "timebase_hz": gate.timebase_hz,
                    "s_per_day": str(to_decimal(error, 4)),
                }
            )
        ev = evaluate_clock(readings, item.limit_s_per_day)
        return [
            run.row(
                m,
                point=f"{item.readings} x {gate_pulses} s",
                samples=samples,
                average=to_decimal(ev.mean, 4),
                rounded=ev.rounded,
                limits=(ev.limit_low, ev.limit_high),
                unit="s/d",
                verdict=PASS if ev.passed else FAIL,
                reason="" if ev.passed else f"clock error {ev.rounded} s/d",
                ended=run.clock.now(),
            )
        ]


@handles(CommunicationItem)
class Communication(ItemHandler[CommunicationItem]):
    async def run(self, run: ItemRun, item: CommunicationItem) -> list[ResultRow]:
        (m,) = run.meters
        comms = run.rig.stations[m.station].comms
        samples: list[dict[str, Any]] = []
        problems = []
        if item.read_address:
            addr = await comms.read_address()
            samples.append({"address": addr})
            if addr != m.address:
                problems.append(f"read address {addr!r}, expected {m.address!r}")
        if item.read_energy:
            energy = await comms.read_energy()
            samples.append({"energy_kwh": None if energy is None else str(energy)})
            if energy is None:
                problems.append("energy not readable")
        return [
            run.row(
                m,
                point="DL/T 645",
                samples=samples,
                verdict=FAIL if problems else PASS,
                reason="; ".join(problems),
                ended=run.clock.now(),
            )
        ]


@handles(CostControlItem)
class CostControl(ItemHandler[CostControlItem]):
    async def run(self, run: ItemRun, item: CostControlItem) -> list[ResultRow]:
        (m,) = run.meters
        comms = run.rig.stations[m.station].comms
        # the meter compares the expiry with its own clock: site wall-clock time
        expiry = to_wall(run.clock.now() + item.expiry_min * 60, run.site_tz)
        valid_until = (
            expiry.year,
            expiry.month,
            expiry.day,
            expiry.hour,
            expiry.minute,
            expiry.second,
        )
        samples: list[dict[str, Any]] = []
        problems = []
        for command, want_open in (("trip", True), ("close", False)):
            ack = await comms.relay_control(command, valid_until)  # type: ignore[arg-type]
            await run.clock.sleep(item.relay_settle_s)
            state = await comms.read_relay_open()
            samples.append({"command": command, "ack": ack, "relay_open": state})
            if not ack:
                problems.append(f"{command}: no acknowledgement")
            elif state is not want_open:
                problems.append(
                    f"{command}: relay read back {'open' if state else 'closed' if state is not None else 'nothing'}"
                )
        return [
            run.row(
                m,
                point="1C trip/close",
                samples=samples,
                verdict=FAIL if problems else PASS,
                reason="; ".join(problems),
                ended=run.clock.now(),
            )
        ]
