"""Stacker crane: its command block, and the crane program of the scan cycle.

Cycles: a single command is pick + put (store, retrieve or relocate); a dual
command chains a store and a retrieve (pick at the inbound station, put away,
travel empty to the retrieval slot, pick, put at the outbound station), which
saves one empty return trip (Bozer–White).

The program runs once per scan of its cyclic task: it reads the crane's status
from the process image (polled by the PLC's bus), steps its state machine and
queues commands on the bus's control lane; it never waits for the wire. The
state machine is a generator: each ``yield`` ends a scan, so the sequence
(interlocks, command, wait for done) reads top to bottom while every scan
returns at once.

Every step is journalled write-ahead (see ``inventory``): the intent and the
target reservation before the first motion, the pick after the plant confirms
the fork is loaded with the expected barcode, the put after the plant confirms
it. Interlocks live here as well as in the PLC: the program never commands a
fork into a slot the journal says is full or reserved by another task, or into
a transfer station that is occupied or whose conveyor zone is running; an open
aisle door or a broken light curtain stops the crane (the PLC stops it, the
program holds the task and alarms); a drive fault holds the task until the
operator resets. A PLC that does not answer (its status Bad in the image) is
the safe state: the task is held and no command is issued until it answers.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import TYPE_CHECKING

from controller.cycle import Series
from controller.warehouse.inventory import TaskRow
from controller.warehouse.plant_io import (
    C_ACK_SEQ,
    C_CMD,
    C_STATUS_REGS,
    CraneState,
    CraneStatus,
    Op,
    PlantIO,
    Result,
    Sent,
    crane_base,
    crane_fields,
    send_failed,
)
from controller.warehouse.rack import (
    STATION_IN,
    STATION_OUT,
    Location,
    position,
    travel_time,
)

if TYPE_CHECKING:
    from controller.warehouse.conveyor import ConveyorController
    from controller.warehouse.service import Warehouse

# One scan of the state machine: a generator that yields at the end of each scan.
Steps = Generator[None, None, None]
SCAN_WINDOW = 1024  # recent scan times kept per program


class CraneDriver:
    """One crane's command block: seq numbering, and the write with its read-back."""

    def __init__(self, io: PlantIO, aisle: int) -> None:
        self.io = io
        self.aisle = aisle
        self.base = crane_base(aisle)
        self._seq: int | None = None

    async def status(self) -> CraneStatus:
        """Read the status block now (start-up and tools; the program reads the image)."""
        regs = await self.io.read(self.base, C_STATUS_REGS)
        return CraneStatus.from_fields(crane_fields(regs))

    def next_seq(self, latched: int) -> int:
        if self._seq is None:
            # continue after whatever the PLC last latched, so a restart never
            # re-uses a seq the PLC would ignore as a retry
            self._seq = latched
        self._seq = self._seq % 65535 + 1
        return self._seq

    def block(self, op: Op, loc: Location, seq: int) -> list[int]:
        return [int(op), loc.row, loc.bay, loc.level, seq]

    def send(self, op: Op, loc: Location, seq: int) -> Sent:
        """Queue the command block; confirmed when the PLC's accepted seq reads back ``seq``.

        A re-send of the same block (same seq) is a retry the PLC ignores once latched."""
        return self.io.send(
            self.base + C_CMD, self.block(op, loc, seq), (self.base + C_ACK_SEQ, [seq])
        )

    async def command(self, op: Op, loc: Location) -> int:
        """Write a command now and wait for its read-back (operator reset, tools)."""
        latched = (await self.status()).ack_seq if self._seq is None else 0
        seq = self.next_seq(latched)
        await self.io.write(
            self.base + C_CMD, self.block(op, loc, seq), (self.base + C_ACK_SEQ, [seq])
        )
        return seq


class InterlockRefused(RuntimeError):
    """The journal forbids the fork move (e.g. the target slot is occupied)."""


class CraneExecutor:
    """One aisle's crane program: tasks in priority order, store + retrieve paired into dual cycles."""

    def __init__(self, wh: Warehouse, aisle: int) -> None:
        self.wh = wh
        self.aisle = aisle
        self.cfg = wh.cfg.cranes[aisle - 1]
        self.driver = CraneDriver(wh.io, aisle)
        self.watcher = wh.wake
        self.program = f"crane-{aisle}"
        self.status: CraneStatus | None = None
        self.current: list[int] = []
        self.cycles = {"single": 0, "dual": 0}
        self.scan_time = Series(SCAN_WINDOW)
        self.due: float | None = None  # loop time a scan is wanted by, with no plant change
        self.error: BaseException | None = None
        self._alarmed: set[str] = set()
        self._refusals: set[str] = set()
        self.work = True  # tasks may be waiting (at start: whatever the journal holds)
        self._steps: Steps = self._run()

    # -- the scan --------------------------------------------------------------------
    def scan(self, deadline: float = 0.0) -> None:
        """One scan: read the image, step the state machine, queue commands; never awaits."""
        t0 = time.perf_counter()
        try:
            self.due = None
            self.refresh()
            if self.error is None:
                try:
                    next(self._steps)
                except StopIteration:
                    pass
                except Exception as exc:
                    # a bug stops this crane (no more commands), not the cycle
                    self.error = exc
                    self.wh.program_failed(self, exc)
        finally:
            self.scan_time.add(time.perf_counter() - t0)

    def refresh(self) -> CraneStatus | None:
        st = self.wh.io.crane_status(self.aisle)
        self.status = st
        if st is None:
            self.wh.publish_unavailable(f"{self.source}/", self.wh.io.unavailable())
            self._alarm(
                "plc", 800, f"crane {self.aisle}: {self.wh.io.unavailable() or 'no status'}"
            )
        else:
            self._clear("plc", f"crane {self.aisle}: PLC answers")
            self.wh.publish_crane(self.aisle, st, self.current)
            self._conditions(st)
        return st

    def _conditions(self, st: CraneStatus) -> None:
        """Door and drive fault are states of the plant: alarmed while present, cleared when gone.

        Evaluated on every scan, so an open door is alarmed even with no
        task waiting, and the alarm clears when the door closes (the crane may
        still wait for a reset; its state tag and the held task say so).
        """
        if st.door_open:
            self._alarm("door", 700, f"crane {self.aisle}: aisle door open / light curtain broken")
        else:
            self._clear("door", f"crane {self.aisle}: aisle door closed")
        if st.state is CraneState.FAULT:
            self._alarm("fault", 800, f"crane {self.aisle}: drive fault {st.fault}")
        else:
            self._clear("fault", f"crane {self.aisle}: fault reset")

    @property
    def source(self) -> str:
        return f"warehouse/cranes/{self.aisle}"

    def _alarm(self, kind: str, severity: int, message: str) -> None:
        """A standing alarm: raised once, held until :meth:`_clear`."""
        if kind not in self._alarmed:
            self._alarmed.add(kind)
            self.wh.alarm(self.source, kind, severity, message)

    def _clear(self, kind: str, message: str) -> None:
        if kind in self._alarmed:
            self._alarmed.discard(kind)
            self.wh.clear_alarm(self.source, kind, message)

    def _event_alarm(self, kind: str, severity: int, message: str) -> None:
        """Something that happened (a box missing, a barcode mismatch): nothing is left to
        go away, so the alarm returns to normal at once and waits for acknowledgement."""
        self.wh.alarm(self.source, kind, severity, message)
        self.wh.clear_alarm(self.source, kind, "")

    # -- dispatch ----------------------------------------------------------------------
    def next_batch(self) -> list[TaskRow]:
        tasks = self.wh.inv.open_tasks(self.aisle)
        active = [t for t in tasks if t.state in ("active", "held")]
        if active:
            return active  # resume what was running (after a restart: reconciled first)
        queued = [t for t in tasks if t.state == "queued"]
        if not queued:
            return []
        first = queued[0]
        if first.kind == "store":
            other = next((t for t in queued if t.kind == "retrieve"), None)
            return [first, other] if other else [first]
        if first.kind == "retrieve":
            other = next((t for t in queued if t.kind == "store"), None)
            return [other, first] if other else [first]
        return [first]

    def kick(self) -> None:
        """New work may be queued for this crane: look at the task table at the next scan."""
        self.work = True
        self.watcher.kick()

    def _run(self) -> Steps:
        while True:
            # an idle crane asks the journal for tasks only when told there may be some,
            # not on every scan of the fast task
            if not self.work:
                yield
                continue
            self.work = False
            batch = self.next_batch()
            if not batch:
                yield
                continue
            yield from self.execute(batch)
            self.work = True  # a finished batch: look again at once

    def execute(self, batch: list[TaskRow]) -> Steps:
        wh = self.wh
        t = wh.clock()
        with wh.inv.tx():
            for task in batch:
                if task.state == "queued":
                    dst = task.dst
                    if task.kind in ("store", "relocate") and dst is None:
                        dst = self._allocate(task).code
                    elif task.kind in ("store", "relocate") and dst is not None:
                        self._reserve(Location.parse(dst), task.id)
                    wh.inv.update_task(task.id, t, state="active", step="intent", dst=dst)
                    task.state, task.step, task.dst = "active", "intent", dst
                    wh.inv.event(
                        t, "task_started", task.dst or "", task.order_id, task.id, task.barcode
                    )
        self.current = [task.id for task in batch]
        if len(batch) == 2:
            self.cycles["dual"] += 1
        else:
            self.cycles["single"] += 1
        for task in batch:
            if task.step in ("intent", ""):
                picked = yield from self._pick(task)
                if not picked:
                    continue
            if task.step == "picked":
                yield from self._put(task)
        self.current = []

    def _allocate(self, task: TaskRow) -> Location:
        rack = self.wh.rack
        loc = rack.nearest_empty(self.aisle)
        self._reserve(loc, task.id)
        return loc

    def _reserve(self, loc: Location, task_id: int) -> None:
        self.wh.rack.reserve(loc, task_id)
        self.wh.inv.reserve_slot(loc.code, task_id)

    # -- steps ------------------------------------------------------------------------
    def _pick(self, task: TaskRow) -> Generator[None, None, bool]:
        loc = Location.parse(task.src)
        res, st = yield from self._command(Op.PICK, loc, task)
        wh = self.wh
        t = wh.clock()
        if res is Result.REFUSED_EMPTY:
            self._event_alarm(
                f"pick_empty:{task.id}",
                700,
                f"task {task.id}: nothing to pick at {loc.code} (expected box {task.barcode})",
            )
            with wh.inv.tx():
                wh.inv.set_location(task.barcode, f"MISSING:{loc.code}", t)
                wh.inv.update_task(task.id, t, state="failed", reason=f"source {loc.code} empty")
                if task.order_id:
                    wh.inv.set_line(task.order_id, task.barcode, "failed")
                self._release_dst(task)
            if not loc.is_station:
                wh.rack.slot(loc).box = None
            wh.task_finished(task)
            return False
        if res is not Result.OK:
            raise RuntimeError(f"unexpected pick result {res!r}")
        if st.fork_code != task.barcode:
            # the fork's reader is authoritative; a mismatch means tracking went wrong upstream
            self._event_alarm(
                f"barcode_mismatch:{task.id}",
                600,
                f"task {task.id}: fork reads {st.fork_code!r}, expected {task.barcode!r}",
            )
            wh.inv.event(t, "barcode_mismatch", st.fork_code, task.order_id, task.id, task.barcode)
        self.wh.mark_picked(task, loc, self.aisle)
        return True

    def _put(self, task: TaskRow) -> Steps:
        assert task.dst is not None
        loc = Location.parse(task.dst)
        while True:
            try:
                res, _st = yield from self._command(Op.PUT, loc, task)
            except InterlockRefused as exc:
                loc = self._reallocate(task, loc, str(exc))
                continue
            if res is Result.REFUSED_OCCUPIED and not loc.is_station:
                loc = self._reallocate(task, loc, "the fork's occupancy check found a box")
                continue
            if res is not Result.OK:
                raise RuntimeError(f"unexpected put result {res!r}")
            break
        self.wh.mark_put(task, loc, self.aisle)

    def _reallocate(self, task: TaskRow, loc: Location, why: str) -> Location:
        """The target turned out unusable: block it, alarm, and reserve the next nearest slot."""
        wh = self.wh
        t = wh.clock()
        self._event_alarm(
            f"slot_occupied:{loc.code}",
            600,
            f"slot {loc.code} refused for task {task.id}: {why}; slot blocked",
        )
        with wh.inv.tx():
            wh.inv.block_slot(loc.code, why)
            wh.rack.slot(loc).blocked = why
            wh.rack.slot(loc).reserved_by = None
            new = self._allocate(task)
            wh.inv.update_task(task.id, t, dst=new.code)
            wh.inv.event(
                t,
                "reallocated",
                f"{loc.code} -> {new.code}: {why}",
                task.order_id,
                task.id,
                task.barcode,
            )
        task.dst = new.code
        return new

    def _release_dst(self, task: TaskRow) -> None:
        if task.dst and not task.dst.startswith("A"):
            loc = Location.parse(task.dst)
            self.wh.rack.release(loc, task.id)
            self.wh.inv.release_slot(task.dst, task.id)

    def _command(
        self, op: Op, loc: Location, task: TaskRow
    ) -> Generator[None, None, tuple[Result, CraneStatus]]:
        """Issue one pick or put once the interlocks allow, and see it through faults."""
        while True:
            st = yield from self._interlocks(op, loc, task)
            conv = self._station_conveyor(loc)
            if conv is not None:
                conv.locked = True  # the conveyor must not move the station zone under the fork
            try:
                seq = self.driver.next_seq(st.ack_seq)
                res, st = yield from self._await_done(seq, op, loc, task)
            finally:
                if conv is not None:
                    conv.locked = False
            if res in (Result.ABORTED, Result.REFUSED_NOT_READY):
                continue  # fault or door: _interlocks holds until reset, then re-issue
            if res is Result.REFUSED_OCCUPIED and loc.is_station:
                continue
            return res, st

    def _station_conveyor(self, loc: Location) -> ConveyorController | None:
        if not loc.is_station:
            return None
        return self.wh.inbound[loc.bay] if loc.level == STATION_IN else self.wh.outbound[loc.bay]

    def _interlocks(
        self, op: Op, loc: Location, task: TaskRow
    ) -> Generator[None, None, CraneStatus]:
        """Scans until the crane may take the command; returns the status it was cleared on."""
        wh = self.wh
        held = False
        while True:
            st = self.status
            why = ""
            if st is None:
                why = wh.io.unavailable() or "warehouse PLC not answering"
            elif st.door_open:
                why = "aisle door open / light curtain"
            elif st.state is CraneState.FAULT:
                why = f"crane fault {st.fault}"
            elif st.state is CraneState.STOPPED:
                why = "crane stopped, waiting for reset"
            if why:
                # door, fault and PLC alarms come from refresh(); here the task is held
                if not held:
                    held = True
                    wh.inv.update_task(task.id, wh.clock(), state="held", reason=why)
                    wh.inv.event(wh.clock(), "task_held", why, task.order_id, task.id, task.barcode)
                yield
                continue
            assert st is not None
            if st.state is not CraneState.IDLE:
                yield
                continue
            if held:
                held = False
                wh.inv.update_task(task.id, wh.clock(), state="active", reason="")
            refusal = self._refusal(op, loc, task)
            if refusal is None:
                self._refusals.discard(loc.code)
                return st
            if op is Op.PUT and not loc.is_station:
                raise InterlockRefused(refusal)
            if loc.code not in self._refusals:
                self._refusals.add(loc.code)
                wh.inv.event(wh.clock(), "interlock", refusal, task.order_id, task.id, task.barcode)
            yield

    def _refusal(self, op: Op, loc: Location, task: TaskRow) -> str | None:
        """Why the fork may not go to ``loc`` now (None: it may)."""
        wh = self.wh
        if loc.is_station:
            if loc.level == STATION_IN:
                conv = wh.inbound[loc.bay]
                z = conv.n - 1
                if op is Op.PICK and not conv.blocked(z):
                    return f"{loc.code}: nothing at the transfer station"
            else:
                conv = wh.outbound[loc.bay]
                z = 0
                if op is Op.PUT and conv.blocked(z):
                    return f"{loc.code}: transfer station occupied"
            if conv.running(z):
                return f"{loc.code}: transfer station conveyor moving"
            return None
        slot = wh.rack.slot(loc)
        if op is Op.PUT:
            if slot.box is not None:
                return f"{loc.code} holds box {slot.box} in the journal"
            if slot.reserved_by != task.id:
                return f"{loc.code} reserved by task {slot.reserved_by}, not {task.id}"
            if slot.blocked:
                return f"{loc.code} blocked: {slot.blocked}"
        elif op is Op.PICK and slot.box != task.barcode:
            return f"{loc.code} holds {slot.box} in the journal, not {task.barcode}"
        return None

    def _await_done(
        self, seq: int, op: Op, loc: Location, task: TaskRow
    ) -> Generator[None, None, tuple[Result, CraneStatus]]:
        """Send the command and scan until the PLC reports it done.

        A send the PLC did not confirm (no answer, read-back differs) is sent
        again with the same seq once the PLC answers: the PLC latches a block
        once per seq, so the retry cannot run the command twice."""
        st = self.status
        p0 = (st.x, st.y) if st else (0.0, 0.0)
        expected = travel_time(self.cfg, p0, position(self.wh.cfg, loc)) + self.cfg.fork_cycle_s
        deadline = self.wh.loop_time() + expected + self.wh.cfg.crane_timeout_margin_s
        sent = self.driver.send(op, loc, seq)
        while True:
            st = self.status
            if st is not None and st.done_seq == seq:
                self._clear(f"timeout:{task.id}", f"task {task.id}: {op.name} at {loc.code} done")
                return st.done_result, st
            if st is not None and send_failed(sent) and st.ack_seq != seq:
                sent = self.driver.send(op, loc, seq)
            if self.wh.loop_time() >= deadline:
                self._alarm(
                    f"timeout:{task.id}",
                    700,
                    f"crane {self.aisle}: {op.name} at {loc.code} not done within {expected:.1f}s + margin",
                )
                # keep supervising; the PLC decides the outcome
            else:
                self.due = deadline
            yield

    async def reset(self) -> None:
        await self.driver.command(Op.RESET, Location(0, 0, 0))
        # a successful reset clears the fault alarm now, not at the next task
        # (over the bus: at the scan after the next poll)
        self.refresh()


__all__ = ["STATION_IN", "STATION_OUT", "CraneDriver", "CraneExecutor", "CraneStatus"]
