"""Stacker crane: register driver, and the task executor with its interlocks.

Cycles: a single command is pick + put (store, retrieve or relocate); a dual
command chains a store and a retrieve (pick at the inbound station, put away,
travel empty to the retrieval slot, pick, put at the outbound station), which
saves one empty return trip (Bozer–White).

Every step is journalled write-ahead (see ``inventory``): the intent and the
target reservation before the first motion, the pick after the plant confirms
the fork is loaded with the expected barcode, the put after the plant confirms
it. Interlocks live here as well as in the PLC: the executor never commands a
fork into a slot the journal says is full or reserved by another task, or into
a transfer station that is occupied or whose conveyor zone is running; an open
aisle door or a broken light curtain stops the crane (the PLC stops it, the
executor holds the task and alarms); a drive fault holds the task until the
operator resets.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from controller.warehouse.inventory import TaskRow
from controller.warehouse.plant_io import (
    C_ACK_SEQ,
    C_CMD,
    C_CODE,
    C_DONE_RESULT,
    C_DONE_SEQ,
    C_DOOR,
    C_FAULT,
    C_FORK,
    C_STATE,
    C_STATUS_REGS,
    C_X,
    C_Y,
    CODE_REGS,
    CraneState,
    Op,
    PlantIO,
    Result,
    crane_base,
    decode_code,
    decode_position,
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


@dataclass(slots=True, frozen=True)
class CraneStatus:
    state: CraneState
    x: float
    y: float
    fork_loaded: bool
    fork_code: str
    fault: int
    done_seq: int
    done_result: Result
    door_open: bool
    ack_seq: int


class CraneDriver:
    """One crane's status and command registers."""

    STATUS_REGS = C_STATUS_REGS

    def __init__(self, io: PlantIO, aisle: int) -> None:
        self.io = io
        self.aisle = aisle
        self.base = crane_base(aisle)
        self._seq: int | None = None

    async def status(self) -> CraneStatus:
        r = await self.io.read(self.base, self.STATUS_REGS)
        return CraneStatus(
            state=CraneState(r[C_STATE]),
            x=decode_position(r[C_X]),
            y=decode_position(r[C_Y]),
            fork_loaded=bool(r[C_FORK]),
            fork_code=decode_code(r[C_CODE : C_CODE + CODE_REGS]),
            fault=r[C_FAULT],
            done_seq=r[C_DONE_SEQ],
            done_result=Result(r[C_DONE_RESULT]),
            door_open=bool(r[C_DOOR]),
            ack_seq=r[C_ACK_SEQ],
        )

    async def command(self, op: Op, loc: Location) -> int:
        if self._seq is None:
            # continue after whatever the PLC last latched, so a restart never
            # re-uses a seq the PLC would ignore as a retry
            self._seq = (await self.status()).ack_seq
        self._seq = self._seq % 65535 + 1
        await self.io.write(self.base + C_CMD, [int(op), loc.row, loc.bay, loc.level, self._seq])
        return self._seq


class InterlockRefused(RuntimeError):
    """The journal forbids the fork move (e.g. the target slot is occupied)."""


class CraneExecutor:
    """Runs one aisle's crane tasks in priority order, pairing store + retrieve into dual cycles."""

    def __init__(self, wh: Warehouse, aisle: int) -> None:
        self.wh = wh
        self.aisle = aisle
        self.cfg = wh.cfg.cranes[aisle - 1]
        self.driver = CraneDriver(wh.io, aisle)
        self.watcher = wh.io.watcher()
        self.status: CraneStatus | None = None
        self.current: list[int] = []
        self.cycles = {"single": 0, "dual": 0}
        self._alarmed: set[str] = set()
        self._refusals: set[str] = set()

    # -- status --------------------------------------------------------------------
    async def poll(self) -> CraneStatus:
        st = await self.driver.status()
        self.status = st
        self.wh.publish_crane(self.aisle, st, self.current)
        self._conditions(st)
        return st

    def _conditions(self, st: CraneStatus) -> None:
        """Door and drive fault are states of the plant: alarmed while present, cleared when gone.

        Evaluated on every status read, so an open door is alarmed even with no
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

    async def run(self) -> None:
        while True:
            batch = self.next_batch()
            if not batch:
                await self.poll()
                await self.watcher.wait(None)
                continue
            await self.execute(batch)

    async def execute(self, batch: list[TaskRow]) -> None:
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
            if task.step in ("intent", "") and not await self._pick(task):
                continue
            if task.step == "picked":
                await self._put(task)
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
    async def _pick(self, task: TaskRow) -> bool:
        loc = Location.parse(task.src)
        res, st = await self._command(Op.PICK, loc, task)
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

    async def _put(self, task: TaskRow) -> None:
        assert task.dst is not None
        loc = Location.parse(task.dst)
        while True:
            try:
                res, _st = await self._command(Op.PUT, loc, task)
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

    async def _command(self, op: Op, loc: Location, task: TaskRow) -> tuple[Result, CraneStatus]:
        """Issue one pick or put once the interlocks allow, and see it through faults."""
        while True:
            await self._interlocks(op, loc, task)
            conv = self._station_conveyor(loc)
            if conv is not None:
                conv.locked = True  # the conveyor must not move the station zone under the fork
            try:
                seq = await self.driver.command(op, loc)
                res, st = await self._await_done(seq, op, loc, task)
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

    async def _interlocks(self, op: Op, loc: Location, task: TaskRow) -> None:
        wh = self.wh
        held = False
        while True:
            st = await self.poll()
            why = ""
            if st.door_open:
                why = "aisle door open / light curtain"
            elif st.state is CraneState.FAULT:
                why = f"crane fault {st.fault}"
            elif st.state is CraneState.STOPPED:
                why = "crane stopped, waiting for reset"
            if why:
                # door and fault alarms come from poll(); here the task is held
                if not held:
                    held = True
                    wh.inv.update_task(task.id, wh.clock(), state="held", reason=why)
                    wh.inv.event(wh.clock(), "task_held", why, task.order_id, task.id, task.barcode)
                await self.watcher.wait(None)
                continue
            if st.state is not CraneState.IDLE:
                await self.watcher.wait(None)
                continue
            if held:
                held = False
                wh.inv.update_task(task.id, wh.clock(), state="active", reason="")
            refusal = self._refusal(op, loc, task)
            if refusal is None:
                self._refusals.discard(loc.code)
                return
            if op is Op.PUT and not loc.is_station:
                raise InterlockRefused(refusal)
            if loc.code not in self._refusals:
                self._refusals.add(loc.code)
                wh.inv.event(wh.clock(), "interlock", refusal, task.order_id, task.id, task.barcode)
            await self.watcher.wait(None)

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

    async def _await_done(
        self, seq: int, op: Op, loc: Location, task: TaskRow
    ) -> tuple[Result, CraneStatus]:
        st = self.status
        p0 = (st.x, st.y) if st else (0.0, 0.0)
        expected = travel_time(self.cfg, p0, position(self.wh.cfg, loc)) + self.cfg.fork_cycle_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + expected + self.wh.cfg.crane_timeout_margin_s
        while True:
            st = await self.poll()
            if st.done_seq == seq:
                self._clear(f"timeout:{task.id}", f"task {task.id}: {op.name} at {loc.code} done")
                return st.done_result, st
            remaining: float | None = deadline - loop.time()
            if remaining is not None and remaining <= 0:
                self._alarm(
                    f"timeout:{task.id}",
                    700,
                    f"crane {self.aisle}: {op.name} at {loc.code} not done within {expected:.1f}s + margin",
                )
                remaining = None  # keep supervising; the PLC decides the outcome
            await self.watcher.wait(remaining)

    async def reset(self) -> None:
        await self.driver.command(Op.RESET, Location(0, 0, 0))
        await self.poll()  # a successful reset clears the fault alarm now, not at the next task


__all__ = ["STATION_IN", "STATION_OUT", "CraneDriver", "CraneExecutor", "CraneStatus"]
