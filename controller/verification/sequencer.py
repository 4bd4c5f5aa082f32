"""The batch sequencer: handling, then the scheme's items, unit by unit.

Units run concurrently and independently (each has its own source and
standard). Within a unit, a unit-wide item (anything needing the source) runs
for all stations at once; a run of consecutive per-station items runs as one
independent chain per station, so the unit waits only once for its slowest
station. With exact meters the unit's test time is therefore the scheme's
lower bound: Σ unit-wide items + the per-station chain.

Every measured value becomes a result only when its item completes; see
:mod:`.results` for the crash rules. On ``run()`` of a batch that was running
when the controller died, interrupted items are marked and run again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.process_image import ProcessImage
from controller.verification.clock import Clock
from controller.verification.config import LineConfig
from controller.verification.errors import PowerFactor
from controller.verification.items import (
    Aborted,
    ItemHandler,
    ItemRun,
    Meter,
    handler_for,
    result_row,
)
from controller.verification.ports import AlarmSink, NullAlarms, Rig
from controller.verification.results import (
    ABORTED,
    FAIL,
    PASS,
    SKIPPED,
    ResultRow,
    ResultsRepository,
    Written,
)
from controller.verification.scheme import MeterType, Scheme, Scope
from controller.verification.temperature import station_tag
from drivers.site_time import host_zone
from drivers.verification_rig import station_point, unit_point

OVER_TEMPERATURE = "over-temperature"


@dataclass(frozen=True, slots=True)
class MeterTask:
    barcode: str
    address: str


@dataclass(slots=True)
class BatchSummary:
    batch_id: str
    state: str
    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # barcode -> verdict
    started: float = 0.0
    tests_started: float = 0.0
    tests_ended: float = 0.0
    ended: float = 0.0


@dataclass(slots=True)
class _Ctx:
    batch_id: str
    scheme: Scheme
    meter_type: MeterType
    unit: int
    meters: list[Meter]
    done: set[tuple[str, int]]
    verdicts: dict[tuple[str, int], list[str]]


class BatchError(ValueError):
    pass


class Sequencer:
    def __init__(
        self,
        config: LineConfig,
        rig: Rig,
        repo: ResultsRepository,
        clock: Clock,
        image: ProcessImage | None = None,
        alarms: AlarmSink | None = None,
        site_tz: dt.tzinfo | None = None,
    ) -> None:
        self.config = config
        # the zone of the meters' wall clocks: a 1C expiry is wall-clock time
        self.site_tz = site_tz or host_zone()
        self.rig = rig
        self.repo = repo
        self.clock = clock
        self.image = image if image is not None else ProcessImage(clock.now)
        self.alarms = alarms or NullAlarms()
        self.tripped: dict[int, str] = {}
        self._station_tasks: dict[int, asyncio.Task[Any]] = {}
        self._main: asyncio.Task[BatchSummary] | None = None
        self._abort_reason = ""
        self._conveyor: asyncio.Lock | None = None
        self._progress_total = 1
        self._progress_done = 0
        self._run_started = 0.0
        self.meters_tested = 0
        self.meters_passed = 0
        self._define_tags()

    # -- public API -------------------------------------------------------------------
    def create_batch(
        self, batch_id: str, scheme: Scheme, meter_type: str, meters: Sequence[MeterTask]
    ) -> Written:
        """Validate and record a batch: meters are assigned to stations in line order
        (await the result before running it)."""
        mt = self.config.meter_type(meter_type)
        scheme.validate_for(mt)
        stations = self.config.station_ids
        if not meters:
            raise BatchError("meters: a batch needs at least 1 meter")
        if len(meters) > len(stations):
            raise BatchError(
                f"meters: {len(meters)} meters but the line has {len(stations)} stations "
                f"(allowed 1..{len(stations)})"
            )
        seen: set[str] = set()
        for m in meters:
            if m.barcode in seen:
                raise BatchError(f"meters: barcode {m.barcode!r} appears twice")
            seen.add(m.barcode)
        return self.repo.create_batch(
            batch_id,
            scheme,
            mt,
            [
                (m.barcode, m.address, self.config.unit_of(sid).id, sid)
                for m, sid in zip(meters, stations, strict=False)
            ],
            self.clock.now(),
        )

    async def run(self, batch_id: str) -> BatchSummary:
        """Run (or resume) a batch to its end, or until :meth:`abort`."""
        self._main = asyncio.current_task()  # type: ignore[assignment]
        self._abort_reason = ""
        self._conveyor = asyncio.Lock()
        rec = self.repo.batch(batch_id)
        summary = BatchSummary(batch_id, rec.state, started=self.clock.now())
        if rec.state == "done":
            return self._summarise(batch_id, summary)
        if rec.state != "created":
            await self.repo.mark_interrupted(batch_id, self.clock.now())
        await self.repo.set_batch_state(batch_id, "running", self.clock.now())
        self._write("line/batch/id", batch_id)
        self._write("line/batch/scheme", f"{rec.scheme.name} v{rec.scheme.version}")
        self._write("line/batch/state", "running")
        done = self.repo.completed_items(batch_id)
        verdicts: dict[tuple[str, int], list[str]] = {}
        for r in self.repo.results(batch_id):
            verdicts.setdefault((r.barcode, r.item_index), []).append(r.verdict)
        self._progress_total = max(1, len(rec.meters) * len(rec.scheme.items))
        self._progress_done = len(done)
        self._run_started = self.clock.monotonic()
        ctxs = []
        for u in self.config.units:
            ms = [
                Meter(m.barcode, m.address, m.station, m.state, m.verdict)
                for m in rec.meters
                if m.unit == u.id
            ]
            if ms:
                ctxs.append(_Ctx(batch_id, rec.scheme, rec.meter_type, u.id, ms, done, verdicts))
        # A station's tags describe this batch only: what the previous meter left
        # there (its verdict, its last item) is cleared, so a SCADA client never
        # reads an old verdict as the new meter's.
        placed = {m.station: m for ctx in ctxs for m in ctx.meters}
        for sid in self.config.station_ids:
            m = placed.get(sid)
            self._write(station_tag(sid, "meter"), m.barcode if m else "")
            self._write(station_tag(sid, "state"), m.state if m else "empty")
            self._write(station_tag(sid, "verdict"), (m.verdict or "") if m else "")
            self._write(station_tag(sid, "last_item"), "")
            self._write(station_tag(sid, "last_verdict"), "")
        self._publish_progress(batch_id)
        summary.tests_started = float("inf")
        try:
            times = await asyncio.gather(*(self._run_unit(ctx) for ctx in ctxs))
        except asyncio.CancelledError:
            if not self._abort_reason:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await self._safe_state()
            await self.repo.mark_interrupted(batch_id, self.clock.now())
            await self.repo.set_batch_state(
                batch_id, "aborted", self.clock.now(), self._abort_reason
            )
            self._write("line/batch/state", "aborted")
            summary.state = "aborted"
            summary.ended = self.clock.now()
            return summary
        finally:
            self._main = None
        summary.tests_started = min((t[0] for t in times), default=0.0)
        summary.tests_ended = max((t[1] for t in times), default=0.0)
        await self.repo.set_batch_state(batch_id, "done", self.clock.now())
        self._write("line/batch/state", "done")
        summary.ended = self.clock.now()
        return self._summarise(batch_id, summary)

    def abort(self, reason: str) -> None:
        """Stop the running batch: sources off, running items recorded as interrupted.

        Meters stay where they are (their recorded state says where); ``run()``
        resumes the batch later at the interrupted items."""
        if self._main is not None and not self._main.done():
            self._abort_reason = reason or "operator abort"
            self._main.cancel()

    def on_over_temperature(self, station: int, celsius: float) -> None:
        """Called by the temperature supervisor in the fast cycle, after it cut the loop."""
        self.tripped[station] = OVER_TEMPERATURE
        task = self._station_tasks.get(station)
        if task is not None and not task.done():
            task.cancel()
        self._write(station_tag(station, "state"), f"aborted: {OVER_TEMPERATURE}")

    def reset_station(self, station: int) -> None:
        """Operator reset after an over-temperature trip (with ``TemperatureSupervisor.reset``):
        the station takes meters again in the next batch."""
        self.tripped.pop(station, None)

    # -- unit ------------------------------------------------------------------------------
    async def _run_unit(self, ctx: _Ctx) -> tuple[float, float]:
        cfg = self.config.handling
        io = self.rig.io
        unit = self.rig.units[ctx.unit]
        await unit.off()  # known state first: after a restart the source may still be on
        if all(m.state == "queued" for m in ctx.meters):
            assert self._conveyor is not None
            async with self._conveyor:
                self._set_unit(ctx, "loading")
                io.write(unit_point(ctx.unit, "load"), True)
                ok = await io.wait_for(unit_point(ctx.unit, "loaded"), True, cfg.load_timeout_s)
                io.write(unit_point(ctx.unit, "load"), False)
            if not ok:
                raise BatchError(f"unit {ctx.unit}: loading timed out after {cfg.load_timeout_s} s")
            await self._meter_states(ctx, ctx.meters, "loaded")
        if any(m.state in ("loaded", "connected", "testing") for m in ctx.meters):
            # Scan on every (re)start: after a restart we trust what is on the station,
            # not what memory says.
            scans = await asyncio.gather(
                *(self.rig.stations[m.station].scan_barcode() for m in ctx.meters)
            )
            for m, code in zip(ctx.meters, scans, strict=True):
                if code != m.barcode and not m.verdict:
                    m.verdict = "rejected: barcode mismatch"
                    m.stopped = f"barcode read {code!r}, task says {m.barcode!r}"
                    await self.repo.set_meter_states(
                        ctx.batch_id, [(m.barcode, m.state, m.verdict)], self.clock.now()
                    )
                    self._write(station_tag(m.station, "verdict"), m.verdict)
            io.write(unit_point(ctx.unit, "press"), True)
            if not await io.wait_for(unit_point(ctx.unit, "press_down"), True, cfg.press_timeout_s):
                raise BatchError(
                    f"unit {ctx.unit}: wiring press did not close in {cfg.press_timeout_s} s"
                )
            await self._meter_states(
                ctx, [m for m in ctx.meters if m.state != "testing"], "connected"
            )
        tests_started = self.clock.now()
        if any(m.state in ("connected", "testing") for m in ctx.meters):
            await self._meter_states(ctx, ctx.meters, "testing")
            await self._run_items(ctx)
            await unit.off()
            await self._finish_verdicts(ctx)
            await self._meter_states(ctx, ctx.meters, "tested")
        tests_ended = self.clock.now()
        if any(m.state == "tested" for m in ctx.meters):
            io.write(unit_point(ctx.unit, "press"), False)
            if not await io.wait_for(unit_point(ctx.unit, "press_up"), True, cfg.press_timeout_s):
                raise BatchError(
                    f"unit {ctx.unit}: wiring press did not open in {cfg.press_timeout_s} s"
                )
            await self._meter_states(ctx, ctx.meters, "disconnected")
        if any(m.state == "disconnected" for m in ctx.meters):
            passed = [m for m in ctx.meters if m.verdict == PASS]
            for m in passed:
                io.write(station_point(m.station, "seal"), True)
            for m in passed:
                if not await io.wait_for(
                    station_point(m.station, "sealed"), True, cfg.seal_timeout_s
                ):
                    raise BatchError(f"station {m.station}: sealing timed out")
                io.write(station_point(m.station, "seal"), False)
            await self._meter_states(ctx, passed, "sealed")
            await self._meter_states(ctx, [m for m in ctx.meters if m.verdict != PASS], "sorted")
        if any(m.state in ("sealed", "sorted") for m in ctx.meters):
            for m in ctx.meters:
                io.write(station_point(m.station, "reject"), m.verdict != PASS)
            assert self._conveyor is not None
            async with self._conveyor:
                io.write(unit_point(ctx.unit, "unload"), True)
                ok = await io.wait_for(unit_point(ctx.unit, "empty"), True, cfg.unload_timeout_s)
                io.write(unit_point(ctx.unit, "unload"), False)
            if not ok:
                raise BatchError(
                    f"unit {ctx.unit}: unloading timed out after {cfg.unload_timeout_s} s"
                )
            await self._meter_states(ctx, ctx.meters, "boxed")
        self._set_unit(ctx, "idle")
        return tests_started, tests_ended

    async def _run_items(self, ctx: _Ctx) -> None:
        items = ctx.scheme.items
        unit = self.rig.units[ctx.unit]
        await unit.apply(100.0, 0.0, PowerFactor.UNITY)  # meters powered at Un between items
        n = 0
        while n < len(items):
            if items[n].scope is Scope.UNIT:
                await self._unit_item(ctx, n)
                await unit.apply(100.0, 0.0, PowerFactor.UNITY)
                n += 1
                continue
            end = n
            while end < len(items) and items[end].scope is Scope.STATION:
                end += 1
            await asyncio.gather(*(self._station_chain(ctx, m, range(n, end)) for m in ctx.meters))
            n = end

    # -- bookkeeping helpers -----------------------------------------------------------------
    async def _pending(self, ctx: _Ctx, index: int, meters: Sequence[Meter]) -> list[Meter]:
        """Meters that still need this item run; updates 'stopped' from stored verdicts,
        and records 'skipped' for stopped meters."""
        item = ctx.scheme.items[index]
        todo: list[Meter] = []
        skips: list[ResultRow] = []
        for m in meters:
            key = (m.barcode, index)
            if key in ctx.done:
                self._note_verdicts(m, item, ctx.verdicts.get(key, []))
                continue
            if m.station in self.tripped and not m.stopped:
                m.stopped = f"aborted: {self.tripped[m.station]}"
            if m.stopped or m.verdict:
                now = self.clock.now()
                reason = m.stopped or m.verdict
                skips.append(
                    result_row(
                        batch_id=ctx.batch_id,
                        scheme=ctx.scheme,
                        meter=m,
                        index=index,
                        verdict=SKIPPED,
                        reason=reason,
                        started=now,
                        ended=now,
                    )
                )
                continue
            todo.append(m)
        if skips:
            await self.repo.record_skipped(skips)
            self._mark_done(ctx, skips)
        return todo

    def _note_verdicts(self, m: Meter, item: Any, verdicts: list[str]) -> None:
        if ABORTED in verdicts and not m.stopped:
            m.stopped = f"aborted: {OVER_TEMPERATURE}"
        elif FAIL in verdicts and item.stop_on_fail and not m.stopped:
            m.stopped = f"failed item {item.kind}"

    def _mark_done(self, ctx: _Ctx, rows: Sequence[ResultRow]) -> None:
        for r in rows:
            key = (r.barcode, r.item_index)
            if key not in ctx.done:
                ctx.done.add(key)
                self._progress_done += 1
            ctx.verdicts.setdefault(key, []).append(r.verdict)
        self._publish_progress(ctx.batch_id)

    async def _finish(
        self, ctx: _Ctx, index: int, rows: list[ResultRow], attempts: dict[str, int]
    ) -> None:
        for r in rows:
            r.attempt = attempts[r.barcode]
        await self.repo.finish_item(rows, self.clock.now())
        self._mark_done(ctx, rows)
        item = ctx.scheme.items[index]
        by_meter: dict[str, list[str]] = {}
        for r in rows:
            by_meter.setdefault(r.barcode, []).append(r.verdict)
        for m in ctx.meters:
            if m.barcode in by_meter:
                self._note_verdicts(m, item, by_meter[m.barcode])
                v = by_meter[m.barcode]
                last = ABORTED if ABORTED in v else FAIL if FAIL in v else PASS
                self._write(station_tag(m.station, "last_item"), item.label or item.kind)
                self._write(station_tag(m.station, "last_verdict"), last)

    async def _parallel(
        self, meters: Sequence[Meter], fn: Callable[[Meter], Awaitable[Any]]
    ) -> dict[str, Any]:
        """Run ``fn`` per meter concurrently; a station cut for over-temperature yields Aborted."""
        tasks: dict[str, asyncio.Task[Any]] = {}
        out: dict[str, Any] = {}
        for m in meters:
            if m.station in self.tripped:
                out[m.barcode] = Aborted(self.tripped[m.station])
                continue
            task = asyncio.ensure_future(fn(m))
            tasks[m.barcode] = task
            self._station_tasks[m.station] = task
        try:
            if tasks:
                await asyncio.wait(tasks.values())
        except asyncio.CancelledError:
            for t in tasks.values():
                t.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            raise
        finally:
            for m in meters:
                if self._station_tasks.get(m.station) is tasks.get(m.barcode):
                    self._station_tasks.pop(m.station, None)
        for m in meters:
            done_task = tasks.get(m.barcode)
            if done_task is None:
                continue
            task = done_task
            if task.cancelled():
                out[m.barcode] = Aborted(self.tripped.get(m.station, "cancelled"))
            else:
                exc = task.exception()
                if exc is not None:
                    raise exc
                out[m.barcode] = task.result()
        return out

    # -- items ----------------------------------------------------------------------------------
    def _item_run(self, ctx: _Ctx, index: int, meters: list[Meter], started: float) -> ItemRun:
        return ItemRun(
            batch_id=ctx.batch_id,
            scheme=ctx.scheme,
            meter_type=ctx.meter_type,
            unit_id=ctx.unit,
            index=index,
            meters=meters,
            started=started,
            clock=self.clock,
            rig=self.rig,
            config=self.config,
            site_tz=self.site_tz,
            tripped=self.tripped,
            parallel=self._parallel,
        )

    async def _unit_item(self, ctx: _Ctx, index: int) -> None:
        item = ctx.scheme.items[index]
        handler = handler_for(ctx.scheme, index)
        meters = await self._pending(ctx, index, ctx.meters)
        if not meters:
            return
        self._write(f"line/units/{ctx.unit}/item", f"{index}: {item.label or item.kind}")
        started = self.clock.now()
        attempts, running = self.repo.begin_item(
            ctx.batch_id, [m.barcode for m in meters], index, item.kind, started
        )
        await running  # write-ahead: recorded as running before the rig is touched
        for m in meters:
            self._write(station_tag(m.station, "state"), f"testing: {item.kind}")
        rows = await handler.run(self._item_run(ctx, index, meters, started), item)
        await self._finish(ctx, index, rows, attempts)

    async def _station_chain(self, ctx: _Ctx, m: Meter, indices: range) -> None:
        for index in indices:
            if not await self._pending(ctx, index, [m]):
                continue
            item = ctx.scheme.items[index]
            handler = handler_for(ctx.scheme, index)
            started = self.clock.now()
            attempts, running = self.repo.begin_item(
                ctx.batch_id, [m.barcode], index, item.kind, started
            )
            await running  # write-ahead: recorded as running before the rig is touched
            self._write(station_tag(m.station, "state"), f"testing: {item.kind}")
            run = self._item_run(ctx, index, [m], started)
            res = await self._parallel([m], _on_station(handler, run, item))
            r = res[m.barcode]
            rows = (
                [run.aborted_row(m, r.reason, ended=self.clock.now())]
                if isinstance(r, Aborted)
                else r
            )
            await self._finish(ctx, index, rows, attempts)

    # -- end of tests, safe state ---------------------------------------------------------------
    async def _finish_verdicts(self, ctx: _Ctx) -> None:
        updates = []
        for m in ctx.meters:
            if not m.verdict:
                vs = [
                    v
                    for i in range(len(ctx.scheme.items))
                    for v in ctx.verdicts.get((m.barcode, i), [])
                ]
                if ABORTED in vs:
                    m.verdict = f"aborted: {OVER_TEMPERATURE}"
                elif all(v == PASS for v in vs) and vs:
                    m.verdict = PASS
                else:
                    m.verdict = FAIL
            updates.append((m.barcode, m.state, m.verdict))
            self._write(station_tag(m.station, "verdict"), m.verdict)
            self.meters_tested += 1
            self.meters_passed += m.verdict == PASS
        await self.repo.set_meter_states(ctx.batch_id, updates, self.clock.now())
        self._publish_progress(ctx.batch_id)

    async def _safe_state(self) -> None:
        for unit in self.rig.units.values():
            await unit.off()

    async def _meter_states(self, ctx: _Ctx, meters: Sequence[Meter], state: str) -> None:
        for m in meters:
            m.state = state
            self._write(
                station_tag(m.station, "state"), state if not m.verdict else f"{state}: {m.verdict}"
            )
        await self.repo.set_meter_states(
            ctx.batch_id, [(m.barcode, state, None) for m in meters], self.clock.now()
        )

    def _set_unit(self, ctx: _Ctx, state: str) -> None:
        self._write(f"line/units/{ctx.unit}/state", state)

    def _summarise(self, batch_id: str, summary: BatchSummary) -> BatchSummary:
        rec = self.repo.batch(batch_id)
        summary.state = rec.state
        for m in rec.meters:
            if m.verdict == PASS:
                summary.passed.append(m.barcode)
            else:
                summary.failed[m.barcode] = m.verdict
        return summary

    # -- process image --------------------------------------------------------------------------
    def _define_tags(self) -> None:
        img = self.image
        for name, unit, desc in (
            ("line/batch/id", "", "running batch"),
            ("line/batch/scheme", "", "scheme name and version"),
            ("line/batch/state", "", "created/running/aborted/done"),
            ("line/batch/progress", "%", "completed meter-items of the batch"),
            ("line/metrics/meters_tested", "", "meters with a final verdict since start-up"),
            ("line/metrics/pass_rate", "%", "share of tested meters that passed"),
            ("line/metrics/items_per_hour", "1/h", "meter-items completed per hour in this run"),
        ):
            img.define(name, unit, desc)
        for u in self.config.units:
            img.define(f"line/units/{u.id}/state", "", "handling/test state")
            img.define(f"line/units/{u.id}/item", "", "item the unit runs")
        for sid in self.config.station_ids:
            for leaf in ("state", "meter", "last_item", "last_verdict", "verdict"):
                img.define(station_tag(sid, leaf))

    def _write(self, tag: str, value: Any) -> None:
        self.image.write(tag, value)

    def _publish_progress(self, batch_id: str) -> None:
        self._write(
            "line/batch/progress", round(100.0 * self._progress_done / self._progress_total, 2)
        )
        self._write("line/metrics/meters_tested", self.meters_tested)
        if self.meters_tested:
            self._write(
                "line/metrics/pass_rate", round(100.0 * self.meters_passed / self.meters_tested, 2)
            )
        hours = (self.clock.monotonic() - self._run_started) / 3600
        if hours > 0:
            self._write("line/metrics/items_per_hour", round(self._progress_done / hours, 1))


def _on_station(
    handler: ItemHandler[Any], run: ItemRun, item: Any
) -> Callable[[Meter], Awaitable[list[ResultRow]]]:
    """A per-station item as the coroutine of its station's task."""
    return lambda _m: handler.run(run, item)
