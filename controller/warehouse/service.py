"""The warehouse service: what the runtime starts.

    wh = Warehouse(cfg, conn, io, image=image, alarms=alarms, line=line_link)
    await wh.start(cycle=svc.fast)  # schema, reconcile with the plant, attach the programs
    wh.submit("inbound", {...})
    ...
    await wh.stop()

``io`` is a :class:`~controller.warehouse.plant_io.PlantIO`: the PLC's bus of
the field plant (``PlcImageIO``) or the in-process simulator (``LocalPlantIO``).

The cranes and conveyors are programs of a cyclic task (``CycleTask.attach``):
each scan reads the image, steps its state machine and queues commands; none
awaits the wire. Without a cyclic task (tests in virtual time, tools) the
warehouse scans its programs itself whenever the plant changes or a program's
timer is due. Each program's scan time is exported as tags under
``warehouse/programs/<program>/`` (max and mean over the last second, scans).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from typing import Any, Protocol

from controller.cycle import CycleTask
from controller.process_image import ProcessImage, Quality
from controller.warehouse.config import WarehouseConfig
from controller.warehouse.conveyor import ConveyorController
from controller.warehouse.crane import CraneExecutor, CraneStatus
from controller.warehouse.inventory import Inventory, TaskRow
from controller.warehouse.line_link import BatchFeed, LineLink, MeterRef, ReturnBox
from controller.warehouse.orders import (
    INBOUND_KINDS,
    OUTBOUND_KINDS,
    Order,
    OrderBook,
    OrderError,
    OrderKind,
    OrderState,
)
from controller.warehouse.plant_io import (
    CODE_REGS,
    H_ACK_SEQ,
    HANDOVER_BASE,
    SCAN_BASE,
    CraneState,
    PlantIO,
    Watcher,
    decode_code,
    encode_code,
)
from controller.warehouse.rack import (
    STATION_IN,
    STATION_OUT,
    BoxClass,
    Location,
    Rack,
)


class AlarmSink(Protocol):
    def raise_alarm(self, source: str, kind: str, severity: int, message: str) -> None: ...

    def clear_alarm(self, source: str, kind: str, message: str) -> None: ...


class _NoAlarms:
    def raise_alarm(self, source: str, kind: str, severity: int, message: str) -> None:
        pass

    def clear_alarm(self, source: str, kind: str, message: str) -> None:
        pass


FINAL_LINE = {"stored", "delivered", "relocated", "failed"}
PROGRAM_STATS_PERIOD_S = 1.0  # scan-time tags are written at most this often
RECONCILE_TIMEOUT_S = 600.0
# the crane and conveyor tags that are the plant's state (Bad while the PLC is silent)
PLANT_FIELDS = (
    "state",
    "x",
    "y",
    "fork_loaded",
    "fork_barcode",
    "door_open",
    "fault",
    "eyes",
    "motors",
)  # a latched command finishing on its own takes at most this


class ScanProgram(Protocol):
    program: str
    due: float | None
    scan_time: Any  # controller.cycle.Series

    def scan(self, deadline: float = 0.0) -> None: ...


class Warehouse:
    def __init__(
        self,
        cfg: WarehouseConfig,
        conn: sqlite3.Connection,
        io: PlantIO,
        image: ProcessImage | None = None,
        alarms: AlarmSink | None = None,
        line: LineLink | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.cfg = cfg
        self.io = io
        self.inv = Inventory(conn)
        self.book = OrderBook(self.inv, cfg.meters_per_box)
        self.rack = Rack(cfg)
        self.image = image
        self.alarms: AlarmSink = alarms or _NoAlarms()
        self.line = line
        self._clock = clock
        self.cranes: dict[int, CraneExecutor] = {}
        self.inbound: dict[int, ConveyorController] = {}
        self.outbound: dict[int, ConveyorController] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.alarm_log: list[tuple[str, str, int, str]] = []
        self._defined: set[str] = set()
        self._handover_seq: int | None = None
        self.wake = Watcher(None)  # the scan loop's wake-up (plant changes, local kicks)
        self.programs: list[ScanProgram] = []
        self._scanning = False
        self._errors: list[BaseException] = []
        self._stats_at = -1e18
        self._stats_seen: dict[str, int] = {}

    # -- time ----------------------------------------------------------------------
    def clock(self) -> float:
        """Journal timestamps: the injected clock (the loop's virtual time in tests)."""
        return self._clock() if self._clock else time.time()

    def loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    # -- lifecycle -------------------------------------------------------------------
    async def start(self, run: bool = True, cycle: CycleTask | None = None) -> dict[str, Any]:
        """Schema, reconcile with the plant, then scan the programs: on ``cycle`` when
        given (one attach per program), else on the warehouse's own scan loop."""
        self.inv.create_schema()
        self.inv.load_rack(self.rack)
        self.wake = self.io.watcher()
        for aisle in range(1, self.cfg.aisles + 1):
            self.cranes[aisle] = CraneExecutor(self, aisle)
            self.inbound[aisle] = ConveyorController(self, aisle, False, self.cfg.inbound)
            self.outbound[aisle] = ConveyorController(self, aisle, True, self.cfg.outbound)
        # conveyors first: a crane's station interlocks read their tracking of this scan
        self.programs = [
            *(c for a in self.cranes for c in (self.inbound[a], self.outbound[a])),
            *self.cranes.values(),
        ]
        report = await self.reconcile()
        self.publish_totals()
        for p in self.programs:
            self._define_program_tags(p)
        if run:
            self._scanning = True
            if cycle is not None:
                for p in self.programs:
                    cycle.attach(f"warehouse {p.program}", self._scanner(p))
                cycle.attach("warehouse program stats", self._program_stats)
            else:
                self._tasks.append(asyncio.create_task(self._scan_loop(), name="warehouse-scan"))
        return report

    def _scanner(self, p: ScanProgram) -> Callable[[float], None]:
        def scan(deadline: float) -> None:
            if self._scanning:
                p.scan(deadline)

        return scan

    def scan(self, deadline: float = 0.0) -> None:
        """One scan of every program (the scan loop's step)."""
        for p in self.programs:
            p.scan(deadline)
        self._program_stats(deadline)

    async def _scan_loop(self) -> None:
        """Scan on every plant change or local kick, and when a program's timer is due."""
        while self._scanning:
            self.scan(self.loop_time())
            dues = [p.due for p in self.programs if p.due is not None]
            await self.wake.wait(None if not dues else max(0.0, min(dues) - self.loop_time()))

    def program_failed(self, program: ScanProgram, exc: BaseException) -> None:
        """A program stopped on an error: alarm, and let ``check_running`` raise it."""
        self._errors.append(exc)
        self.alarm(
            f"warehouse/programs/{program.program}",
            "program_failed",
            900,
            f"program {program.program} stopped: {type(exc).__name__}: {exc}",
        )

    def _define_program_tags(self, p: ScanProgram) -> None:
        if self.image is None:
            return
        base = f"warehouse/programs/{p.program}/"
        for name, unit, what in (
            ("scan_max_s", "s", "longest scan over the last second"),
            ("scan_mean_s", "s", "mean scan over the last second"),
            ("scans", "", "scans since start"),
        ):
            if base + name not in self._defined:
                self.image.define(base + name, unit, f"{p.program}: {what}")
                self._defined.add(base + name)

    def _program_stats(self, deadline: float = 0.0) -> None:
        """Each program's scan time into the image, at most once per second (not per scan,
        so a 10 ms task does not flood the image's subscribers)."""
        img = self.image
        if img is None:
            return
        now = self.loop_time()
        if now - self._stats_at < PROGRAM_STATS_PERIOD_S:
            return
        self._stats_at = now
        for p in self.programs:
            s = p.scan_time
            new = s.count - self._stats_seen.get(p.program, 0)
            self._stats_seen[p.program] = s.count
            base = f"warehouse/programs/{p.program}/"
            if new:
                recent = s.recent(new)
                img.write(base + "scan_max_s", max(recent))
                img.write(base + "scan_mean_s", sum(recent) / len(recent))
            img.write(base + "scans", s.count)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop scanning and cancel the background work; bounded, so a stuck transport
        cannot hang shutdown."""
        self._scanning = False
        self.wake.kick()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pending = [t for t in self._tasks if not t.done()]
        while pending and loop.time() < deadline:
            for t in pending:
                t.cancel()  # re-cancel: a library may swallow one cancellation
            await asyncio.wait(pending, timeout=0.1)
            pending = [t for t in pending if not t.done()]
        for t in self._tasks:
            if t.done() and not t.cancelled():
                with contextlib.suppress(Exception):
                    t.exception()
        self._tasks.clear()

    def check_running(self) -> None:
        """Re-raise a program's or a background task's crash (tests call this while waiting)."""
        if self._errors:
            raise self._errors[0]
        for t in self._tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]

    # -- reconciliation after a restart -------------------------------------------------
    async def reconcile(self) -> dict[str, Any]:
        """Bring the journal in line with the plant: cranes first, then conveyors."""
        report: dict[str, Any] = {"tasks": [], "conveyors": []}
        loop = asyncio.get_running_loop()
        for aisle, ex in self.cranes.items():
            st = await ex.driver.status()
            end = loop.time() + RECONCILE_TIMEOUT_S
            while st.state in (CraneState.MOVING, CraneState.FORKING):
                # the PLC finishes a latched command on its own; wait for the outcome
                if loop.time() > end:
                    raise TimeoutError(
                        f"crane {aisle}: still {st.state.name.lower()} after "
                        f"{RECONCILE_TIMEOUT_S:g} s at start-up"
                    )
                await asyncio.sleep(self.cfg.poll_s)
                st = await ex.driver.status()
            ex.status = st
            self.publish_crane(aisle, st, [])
            ex._conditions(st)
            for task in self.inv.open_tasks(aisle):
                if task.state == "queued":
                    continue
                report["tasks"].append(self._reconcile_task(task, st, aisle))
        for aisle in self.cranes:
            for conv in (self.inbound[aisle], self.outbound[aisle]):
                eyes, motors, count, _code = await conv.read()
                conv.motors = motors
                journal = [b.barcode for b in self.inv.boxes(conv.location)]
                left = conv.reconcile(eyes, journal)
                conv.read_count = (
                    None if (not conv.outbound and eyes[0] and conv.ids[0] is None) else count
                )
                for code in left:
                    if conv.outbound:
                        # a conveyor keeps order and only its discharge end lets go:
                        # loads missing from the downstream end left while we were down
                        self.delivered(aisle, code)
                        report["conveyors"].append(f"{code}: delivered during downtime")
                    else:
                        self.alarm(
                            conv.path,
                            "box_missing",
                            700,
                            f"box {code} journalled on {conv.name} but no photo-eye is blocked for it",
                        )
                        report["conveyors"].append(f"{code}: missing")
        self.inv.load_rack(self.rack)
        self.inv.event(self.clock(), "reconciled", repr(report))
        return report

    def _reconcile_task(self, task: TaskRow, st: CraneStatus, aisle: int) -> str:
        t = self.clock()
        on_fork = st.fork_loaded and st.fork_code == task.barcode
        if task.step in ("intent", ""):
            if on_fork:
                self.mark_picked(task, Location.parse(task.src), aisle)
                return f"task {task.id}: pick completed while down; box {task.barcode} on the fork"
            if st.fork_loaded:
                self.inv.update_task(task.id, t, state="held", reason=f"fork holds {st.fork_code}")
                self.alarm(
                    f"warehouse/cranes/{aisle}",
                    "reconcile",
                    800,
                    f"task {task.id}: fork holds {st.fork_code!r}, expected nothing or {task.barcode}",
                )
                return f"task {task.id}: held, unexpected box on the fork"
            return f"task {task.id}: pick not done; will re-issue"
        if task.step == "picked":
            if on_fork:
                return f"task {task.id}: box {task.barcode} on the fork; will put"
            dst = Location.parse(task.dst or "")
            from controller.warehouse.rack import position

            at_dst = (
                not st.fork_loaded
                and abs(st.x - position(self.cfg, dst)[0]) < 0.02
                and abs(st.y - position(self.cfg, dst)[1]) < 0.02
            )
            if at_dst:
                self.mark_put(task, dst, aisle)
                return f"task {task.id}: put completed while down; box {task.barcode} at {dst.code}"
            self.inv.update_task(task.id, t, state="held", reason="box not on fork nor at target")
            self.alarm(
                f"warehouse/cranes/{aisle}",
                "reconcile",
                900,
                f"task {task.id}: box {task.barcode} neither on the fork nor put at {dst.code}",
            )
            return f"task {task.id}: held, box not found"
        return f"task {task.id}: nothing to do"

    # -- orders -----------------------------------------------------------------------
    def submit(self, kind: OrderKind | str, params: dict[str, Any], priority: int = 0) -> int:
        """Create and release an order; returns its id (OrderError on bad input, nothing written)."""
        t = self.clock()
        order_id = self.book.create(kind, params, t, priority)
        order = self.book.get(order_id)
        with self.inv.tx():
            self.book.transition(order_id, OrderState.RELEASED, t)
            if order.kind in OUTBOUND_KINDS or order.kind is OrderKind.RELOCATION:
                for code in self.inv.lines(order_id):
                    box = self.inv.box(code)
                    assert box is not None
                    src = Location.parse(box.location)
                    if order.kind is OrderKind.RELOCATION:
                        to = order.params.get("to")
                        if to:
                            dst_loc = Location.parse(to)
                            if dst_loc.aisle != src.aisle or not self.rack.slot(dst_loc).free:
                                raise OrderError(
                                    f"relocation.to: slot {to} is not free in aisle {src.aisle}"
                                )
                        self.inv.create_task(
                            t, src.aisle, "relocate", code, box.location, to, order_id, priority
                        )
                    else:
                        dst = Location.station(src.aisle, STATION_OUT).code
                        self.inv.create_task(
                            t, src.aisle, "retrieve", code, box.location, dst, order_id, priority
                        )
                    self.inv.set_line(order_id, code, "queued")
        if order.kind is OrderKind.INVENTORY_COUNT:
            self._tasks.append(asyncio.get_running_loop().create_task(self._run_count(order_id)))
        self.publish_totals()
        self._kick()
        return order_id

    def cancel(self, order_id: int, reason: str = "") -> Order:
        """Cancel an order none of whose boxes has moved yet (OrderError otherwise)."""
        order = self.book.get(order_id)
        if order.state not in (OrderState.CREATED, OrderState.RELEASED):
            raise OrderError(
                f"order_id: order {order_id} is {order.state.value}; only a created or "
                "released order can be cancelled"
            )
        tasks = self.inv.tasks(order_id)
        lines = self.inv.lines(order_id)
        moved = [c for c, s in lines.items() if s not in ("expected", "allocated", "queued")]
        if moved or any(t.state != "queued" for t in tasks):
            raise OrderError(
                f"order_id: order {order_id} has boxes on the move ({', '.join(moved) or 'crane busy'}); "
                "it can no longer be cancelled"
            )
        t = self.clock()
        with self.inv.tx():
            for task in tasks:
                self.inv.update_task(task.id, t, state="cancelled", reason="order cancelled")
            for code in lines:
                self.inv.set_line(order_id, code, "cancelled")
            self.book.transition(order_id, OrderState.CANCELLED, t, reason or "cancelled")
            self.inv.event(t, "order_cancelled", reason, order_id)
        self.publish_totals()
        return self.book.get(order_id)

    def _kick(self) -> None:
        for ex in self.cranes.values():
            ex.kick()

    async def _run_count(self, order_id: int) -> None:
        order = self.book.get(order_id)
        report = await self.count(order.params.get("slots"))
        t = self.clock()
        order.params["result"] = report
        self.inv.set_order_params(order_id, order.params)
        self.book.transition(
            order_id, OrderState.COMPLETED, t, f"{len(report['differences'])} differences"
        )
        self.publish_totals()

    async def scan_slot(self, loc: Location) -> str | None:
        where = [loc.row, loc.bay, loc.level]
        await self.io.write(SCAN_BASE, where, (SCAN_BASE, where))
        r = await self.io.read(SCAN_BASE + 3, 1 + CODE_REGS)
        return decode_code(r[1:]) if r[0] else None

    async def count(self, slots: list[str] | None = None) -> dict[str, Any]:
        """Compare the journal with a scan of the racks (the inventory count)."""
        locs = [Location.parse(s) for s in slots] if slots else sorted(self.rack.slots)
        journal = {b.location: b.barcode for b in self.inv.boxes("R*")}
        diffs = []
        for loc in locs:
            seen = await self.scan_slot(loc)
            expected = journal.get(loc.code)
            if seen != expected:
                diffs.append({"slot": loc.code, "journal": expected, "scan": seen})
        return {"slots": len(locs), "differences": diffs}

    def request_batch(self, batch: str, boxes: int, priority: int = 0) -> BatchFeed:
        order_id = self.submit(
            OrderKind.OUTBOUND_VERIFICATION, {"batch": batch, "boxes": boxes}, priority
        )
        return self.batch_feed(order_id)

    def batch_feed(self, order_id: int) -> BatchFeed:
        order = self.book.get(order_id)
        codes = tuple(self.inv.lines(order_id))
        meters = []
        tasks = {t.barcode: t.src for t in self.inv.tasks(order_id)}
        for code in codes:
            for m in self.inv.meters(code):
                meters.append(MeterRef(m.address, m.type, code, tasks.get(code, "")))
        return BatchFeed(order.params["batch"], order_id, codes, tuple(meters))

    def return_boxes(self, batch: str, boxes: list[ReturnBox], priority: int = 0) -> int:
        params = {
            "batch": batch,
            "boxes": [
                {
                    "barcode": b.barcode,
                    "verified_at": b.verified_at,
                    "meters": [{"address": m.address, "verdict": m.verdict} for m in b.meters],
                }
                for b in boxes
            ],
        }
        return self.submit(OrderKind.QUALIFIED_RETURN, params, priority)

    async def hand_over(self, code: str, aisle: int | None = None) -> None:
        """Have the line's out-feed push a returned box onto an aisle's induct.

        The box must be expected by an open return order; the induct then reads
        it like any other. The PLC ignores a box already in the plant, so
        repeating this after a restart cannot create a second box.
        """
        aisle = aisle or self.cfg.return_aisle
        if self._handover_seq is None:
            # continue after the PLC's last latched seq, never re-using one it would ignore
            self._handover_seq = (await self.io.read(HANDOVER_BASE + H_ACK_SEQ, 1))[0]
        self._handover_seq = self._handover_seq % 65535 + 1
        seq = self._handover_seq
        await self.io.write(
            HANDOVER_BASE, [aisle, *encode_code(code), seq], (HANDOVER_BASE + H_ACK_SEQ, [seq])
        )
        self.inv.event(
            self.clock(), "handed_over", f"line -> aisle {aisle} induct", None, None, code
        )

    # -- events from the control loops ------------------------------------------------------
    def inducted(self, aisle: int, code: str) -> bool:
        """A barcode was read at the induct: admit the box into the inventory, or hold it."""
        t = self.clock()
        conv = self.inbound[aisle]
        box = self.inv.box(code)
        if box is not None and box.location == conv.location:
            return True  # already admitted (re-read after a restart)
        order_id = self.inv.line_order(code, ("expected",))
        if order_id is None:
            self.alarm(
                conv.path,
                "unexpected_box",
                600,
                f"box {code} at the induct is not expected by any open inbound order; held",
            )
            return False
        order = self.book.get(order_id)
        manifest = next(b for b in order.params["boxes"] if b["barcode"] == code)
        with self.inv.tx():
            if order.kind is OrderKind.INBOUND:
                meters = [(m["address"], m["type"], m["state"]) for m in manifest["meters"]]
                self.inv.add_box(
                    code, BoxClass.UNVERIFIED, conv.location, t, meters, order_id=order_id
                )
            else:
                verdict = manifest["meters"][0]["verdict"]
                klass = BoxClass(verdict)
                known = {m.address: m for m in self.inv.meters() if m.address}

                def state(address: str) -> str:
                    # a meter back untested (its batch was aborted) keeps its unverified state
                    if verdict != "unverified":
                        return verdict
                    m = known.get(address)
                    return m.state if m and m.state in ("new", "returned") else "returned"

                meters = [
                    (
                        m["address"],
                        known[m["address"]].type if m["address"] in known else "unknown",
                        state(m["address"]),
                    )
                    for m in manifest["meters"]
                ]
                self.inv.add_box(
                    code,
                    klass,
                    conv.location,
                    t,
                    meters,
                    verified_at=manifest["verified_at"] if verdict != "unverified" else None,
                    order_id=order_id,
                    batch=order.params["batch"],
                )
            self.inv.set_line(order_id, code, "inducted")
            if order.state is OrderState.RELEASED:
                self.book.transition(order_id, OrderState.IN_PROGRESS, t)
            self.inv.event(t, "inducted", conv.location, order_id, None, code)
        return True

    def box_at_station(self, aisle: int, code: str) -> None:
        """An identified box waits at the inbound transfer station: queue its put-away."""
        if any(t.barcode == code for t in self.inv.open_tasks(aisle)):
            return
        box = self.inv.box(code)
        if box is None or box.location != self.inbound[aisle].location:
            return
        order = self.book.get(box.order_id) if box.order_id else None
        src = Location.station(aisle, STATION_IN).code
        self.inv.create_task(
            self.clock(),
            aisle,
            "store",
            code,
            src,
            None,
            box.order_id,
            order.priority if order else 0,
        )
        self.cranes[aisle].kick()

    def mark_picked(self, task: TaskRow, loc: Location, aisle: int) -> None:
        t = self.clock()
        with self.inv.tx():
            self.inv.set_location(task.barcode, f"CRANE:{aisle}", t)
            self.inv.update_task(task.id, t, step="picked")
            self.inv.event(t, "picked", loc.code, task.order_id, task.id, task.barcode)
            if task.order_id and task.kind != "store":
                self.inv.set_line(task.order_id, task.barcode, "retrieving")
        task.step = "picked"
        if loc.is_station:
            conv = self.inbound[aisle]
            if conv.ids[conv.n - 1] in (task.barcode, "?"):
                conv.ids[conv.n - 1] = None
            conv.watcher.kick()
        else:
            self.rack.slot(loc).box = None
        self.publish_totals()

    def mark_put(self, task: TaskRow, loc: Location, aisle: int) -> None:
        t = self.clock()
        where = self.outbound[aisle].location if loc.is_station else loc.code
        line_state = {"store": "stored", "retrieve": "at_conveyor", "relocate": "relocated"}[
            task.kind
        ]
        with self.inv.tx():
            self.inv.set_location(task.barcode, where, t)
            if not loc.is_station:
                self.inv.release_slot(loc.code, task.id)
            self.inv.update_task(task.id, t, state="done", step="put")
            self.inv.event(t, "put", loc.code, task.order_id, task.id, task.barcode)
            if task.order_id:
                self.inv.set_line(task.order_id, task.barcode, line_state)
                if task.kind in ("store", "relocate"):
                    self.inv.set_box_order(task.barcode, None)
        task.step, task.state = "put", "done"
        if loc.is_station:
            conv = self.outbound[aisle]
            conv.ids[0] = task.barcode
            conv.watcher.kick()
        else:
            slot = self.rack.slot(loc)
            slot.box, slot.reserved_by = task.barcode, None
        self.task_finished(task)

    def task_finished(self, task: TaskRow) -> None:
        if task.order_id:
            self._update_order(task.order_id)
        self.publish_totals()

    def delivered(self, aisle: int, code: str) -> None:
        """A box left the outbound conveyor's discharge end (line feed or dock)."""
        t = self.clock()
        box = self.inv.box(code)
        if box is None:
            return
        order = self.book.get(box.order_id) if box.order_id else None
        if order is None:
            where = f"GONE:aisle{aisle}"
        elif order.kind is OrderKind.OUTBOUND_VERIFICATION:
            where = f"LINE:{order.params['batch']}"
        elif order.kind is OrderKind.DISTRIBUTION_OUTBOUND:
            where = f"DOCK:{order.params['district']}"
        else:
            where = "DOCK:rejects"
        with self.inv.tx():
            self.inv.set_location(code, where, t)
            addresses = [m.address for m in self.inv.meters(code)]
            if order is not None:
                self.inv.set_line(order.id, code, "delivered")
                if order.kind is OrderKind.OUTBOUND_VERIFICATION:
                    self.inv.update_meters(addresses, batch=order.params["batch"])
                elif order.kind is OrderKind.DISTRIBUTION_OUTBOUND:
                    self.inv.update_meters(addresses, district=order.params["district"])
            self.inv.event(t, "delivered", where, order.id if order else None, None, code)
        if order is not None:
            self._update_order(order.id)
        self.publish_totals()

    def _update_order(self, order_id: int) -> None:
        order = self.book.get(order_id)
        if order.state in (OrderState.COMPLETED, OrderState.CANCELLED, OrderState.FAILED):
            return
        lines = self.inv.lines(order_id)
        t = self.clock()
        if order.state is OrderState.RELEASED and any(
            s != "expected" and s != "queued" for s in lines.values()
        ):
            self.book.transition(order_id, OrderState.IN_PROGRESS, t)
        final = (
            "stored"
            if order.kind in INBOUND_KINDS
            else "relocated"
            if order.kind is OrderKind.RELOCATION
            else "delivered"
        )
        if lines and all(s in (final, "failed") for s in lines.values()):
            failed = sum(1 for s in lines.values() if s == "failed")
            self.book.transition(
                order_id,
                OrderState.FAILED if failed else OrderState.COMPLETED,
                t,
                f"{failed} boxes failed" if failed else "",
            )
            if (
                order.kind is OrderKind.OUTBOUND_VERIFICATION
                and self.line is not None
                and not failed
            ):
                self.line.batch_ready(self.batch_feed(order_id))

    def order(self, order_id: int) -> Order:
        return self.book.get(order_id)

    async def reset_crane(self, aisle: int) -> None:
        """Operator reset after a fault or a closed aisle door."""
        await self.cranes[aisle].reset()

    # -- alarms and the process image -------------------------------------------------------
    def alarm(self, source: str, kind: str, severity: int, message: str) -> None:
        self.alarm_log.append((source, kind, severity, message))
        self.inv.event(self.clock(), f"alarm:{kind}", message)
        self.alarms.raise_alarm(source, kind, severity, message)

    def clear_alarm(self, source: str, kind: str, message: str = "") -> None:
        """The cause of an alarm went away (door closed, fault reset, jam cleared)."""
        self.inv.event(self.clock(), f"alarm_cleared:{kind}", message)
        self.alarms.clear_alarm(source, kind, message)

    def _tag(self, name: str, value: Any, unit: str = "") -> None:
        img = self.image
        if img is None:
            return
        if name not in self._defined:
            img.define(name, unit)
            self._defined.add(name)
        img.write(name, value)

    def publish_crane(self, aisle: int, st: CraneStatus, current: list[int]) -> None:
        p = f"warehouse/cranes/{aisle}/"
        self._tag(p + "state", st.state.name.lower())
        self._tag(p + "x", st.x, "m")
        self._tag(p + "y", st.y, "m")
        self._tag(p + "fork_loaded", st.fork_loaded)
        self._tag(p + "fork_barcode", st.fork_code)
        self._tag(p + "door_open", st.door_open)
        self._tag(p + "fault", st.fault)
        self._tag(p + "task", ",".join(str(i) for i in current))

    def publish_unavailable(self, prefix: str, why: str) -> None:
        """The PLC does not answer: the plant's tags under ``prefix`` keep their last
        value, Bad (the controller's own, such as a task or the loads tracked, stay Good)."""
        img = self.image
        if img is None:
            return
        for name in PLANT_FIELDS:
            if prefix + name in self._defined:
                cur = img.get(prefix + name)
                img.write(prefix + name, cur.value, Quality.BAD, why or "PLC not answering")

    def publish_conveyor(self, conv: ConveyorController) -> None:
        p = conv.path + "/"
        self._tag(p + "eyes", sum(1 << z for z, e in enumerate(conv.eyes) if e))
        self._tag(p + "motors", conv.motors)
        self._tag(p + "loads", ",".join(i or "" for i in conv.ids))
        self._tag(p + "jam", bool(conv.jammed))

    def publish_totals(self) -> None:
        if self.image is None:
            return
        slots = self.rack.slots.values()
        self._tag("warehouse/slots/occupied", sum(1 for s in slots if s.box is not None))
        self._tag("warehouse/slots/free", sum(1 for s in slots if s.free))
        self._tag("warehouse/slots/reserved", sum(1 for s in slots if s.reserved_by is not None))
        self._tag("warehouse/slots/blocked", sum(1 for s in slots if s.blocked))
        totals = self.inv.totals()
        for klass in BoxClass:
            self._tag(f"warehouse/slots/{klass.value}", totals.get(f"slots_{klass.value}", 0))
        self._publish_rack_map()
        counts: dict[str, int] = {s.value: 0 for s in OrderState}
        for row in self.inv.order_rows():
            counts[row[2]] += 1
        for state, n in counts.items():
            self._tag(f"warehouse/orders/{state}", n)

    def _publish_rack_map(self) -> None:
        """One string per rack row and level, one character per bay (``.`` free,
        ``U``/``Q``/``X`` a box of unverified/qualified/rejected meters, ``*`` reserved,
        ``#`` blocked): an occupancy map for the HMI in rows × levels tags, not one
        tag per slot, so the address space does not grow with the rack."""
        classes = self.inv.rack_classes()
        cfg = self.rack.cfg
        for row in range(1, cfg.rows + 1):
            for level in range(1, cfg.levels + 1):
                chars = []
                for bay in range(1, cfg.bays + 1):
                    slot = self.rack.slots[Location(row, bay, level)]
                    if slot.blocked:
                        chars.append("#")
                    elif slot.box is not None:
                        chars.append(RACK_MAP_CHAR.get(classes.get(slot.loc.code, ""), "?"))
                    elif slot.reserved_by is not None:
                        chars.append("*")
                    else:
                        chars.append(".")
                self._tag(f"warehouse/racks/{row:02d}/L{level:02d}", "".join(chars))


RACK_MAP_CHAR = {"unverified": "U", "qualified": "Q", "rejected": "X"}

__all__ = ["STATION_IN", "STATION_OUT", "AlarmSink", "Warehouse"]
