"""Zero-pressure accumulation conveyors with load tracking and jam detection.

Each zone has a motor and a photo-eye. A zone releases its load only into an
empty zone (zero pressure: loads never touch, so nothing is crushed and a
stopped line accumulates with gaps). The load's identity is tracked from zone
to zone on photo-eye edges and re-synchronised by barcode at the induct (and
again by the crane's fork reader at the transfer station). A photo-eye that
stays blocked while its zone runs for longer than ``jam_timeout_s`` is a jam.

Inbound: zone 0 is the induct with a barcode reader, the last zone the crane's
pick-up station. Outbound: zone 0 is the crane's drop-off station, the last zone
discharges to the line feed or the delivery dock.

Each conveyor is a program of the scan cycle: a scan reads the photo-eyes,
motors and reader from the process image, tracks and plans, and queues the
motor command on the PLC bus's control lane (confirmed by reading the actual
motors back); it never waits for the wire, and while the PLC does not answer
it commands nothing.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from controller.cycle import Series
from controller.warehouse.config import ConveyorConfig
from controller.warehouse.plant_io import (
    NOREAD,
    V_MOTOR_CMD,
    V_MOTORS,
    V_REREAD,
    ConveyorStatus,
    PlantIO,
    Sent,
    conveyor_base,
    conveyor_fields,
)
from drivers.warehouse_plc import CONVEYOR_STATUS_REGS

if TYPE_CHECKING:
    from controller.warehouse.service import Warehouse

SCAN_WINDOW = 1024  # recent scan times kept per program
HOLD = "?"  # tracking placeholder: a load whose identity is unknown is never released


def plan_motors(eyes: list[bool], ids: list[str | None], locked: set[int], discharge: bool) -> int:
    """Zero-pressure release logic as a pure function, for one scan.

    A zone releases when it holds an identified load and the next zone is empty
    and not already receiving; the receiving zone runs with it. The last zone
    releases only when ``discharge`` (outbound sink ready). Locked zones (a fork
    is in the station) neither release nor receive.
    """
    n = len(eyes)
    motors = 0
    receiving = [False] * n
    for z in range(n - 1, -1, -1):
        if not eyes[z] or ids[z] in (None, HOLD) or z in locked:
            continue
        if z == n - 1:
            if discharge:
                motors |= 1 << z
            continue
        nxt = z + 1
        if eyes[nxt] or receiving[nxt] or nxt in locked:
            continue
        motors |= (1 << z) | (1 << nxt)
        receiving[nxt] = True
    return motors


class ConveyorController:
    def __init__(self, wh: Warehouse, aisle: int, outbound: bool, cfg: ConveyorConfig) -> None:
        self.wh = wh
        self.aisle = aisle
        self.outbound = outbound
        self.cfg = cfg
        self.n = cfg.zones
        self.io: PlantIO = wh.io
        self.base = conveyor_base(aisle, outbound)
        self.name = f"{aisle}:{'out' if outbound else 'in'}"
        self.location = f"CONV:{self.name}"
        # tag and alarm source path (the OPC UA model types "conveyors/<id>" as ConveyorType)
        self.path = f"warehouse/conveyors/{aisle}-{'out' if outbound else 'in'}"
        self.ids: list[str | None] = [None] * self.n
        self.eyes = [False] * self.n
        self.motors = 0
        self.locked = False  # the crane's fork is at this conveyor's transfer station
        self.read_count: int | None = None
        self.retries = 0
        self.blocked_since: list[float | None] = [None] * self.n
        self.jammed: set[int] = set()
        self.held_alarm = ""  # the alarm kind raised for the load held at the induct, if any
        self.watcher = wh.wake
        self.program = f"conveyor-{aisle}-{'out' if outbound else 'in'}"
        self.scan_time = Series(SCAN_WINDOW)
        self.due: float | None = None
        self.available = False  # the PLC's status for this conveyor was Good at the last scan
        self._motor_cmd: tuple[int, Sent] | None = None  # last motor bitmap sent, in flight

    @property
    def station_zone(self) -> int:
        return 0 if self.outbound else self.n - 1

    def blocked(self, z: int) -> bool:
        return self.eyes[z]

    def running(self, z: int) -> bool:
        return bool((self.motors >> z) & 1)

    def _unpack(self, st: ConveyorStatus) -> tuple[list[bool], int, int, str]:
        eyes = [bool((st.eyes >> z) & 1) for z in range(self.n)]
        return eyes, st.motors, st.read_count, st.read_code

    async def read(self) -> tuple[list[bool], int, int, str]:
        """Read the status block now (start-up reconcile; scans read the image)."""
        regs = await self.io.read(self.base, CONVEYOR_STATUS_REGS)
        return self._unpack(ConveyorStatus.from_fields(conveyor_fields(regs)))

    def scan(self, deadline: float = 0.0) -> None:
        """One scan of the conveyor program; never awaits."""
        t0 = time.perf_counter()
        try:
            left = self._scan()
            self.due = None if left is None else self.wh.loop_time() + left
        finally:
            self.scan_time.add(time.perf_counter() - t0)

    def _scan(self) -> float | None:
        """Returns how long until something time-based is due."""
        st = self.io.conveyor_status(self.aisle, self.outbound)
        if st is None:
            # safe state: command nothing; the PLC's own logic holds the zones
            if self.available:
                self.wh.publish_unavailable(self.path + "/", self.io.unavailable())
            self.available = False
            return None
        self.available = True
        eyes, motors, count, code = self._unpack(st)
        prev = self.eyes
        self.motors = motors
        self._track(prev, eyes)
        self.eyes = eyes
        if not self.outbound:
            self._induct(count, code)
            if self.held_alarm and self.ids[0] != HOLD:
                # the held load was re-identified or taken off: the cause is gone
                self.wh.clear_alarm(
                    self.path, self.held_alarm, f"conveyor {self.name}: induct clear"
                )
                self.held_alarm = ""
            z = self.n - 1
            ident = self.ids[z]
            if eyes[z] and ident not in (None, HOLD):
                self.wh.box_at_station(self.aisle, ident)
        locked = {self.station_zone} if self.locked else set()
        want = plan_motors(eyes, self.ids, locked, discharge=self.outbound)
        if want != motors and not self._motor_in_flight(want):
            sent = self.io.send(self.base + V_MOTOR_CMD, [want], (self.base + V_MOTORS, [want]))
            self._motor_cmd = (want, sent)
            self.motors = want
        self.wh.publish_conveyor(self)
        return self._jam_check()

    def _motor_in_flight(self, want: int) -> bool:
        """The same bitmap already sent and not yet settled: do not queue it again."""
        cmd = self._motor_cmd
        if cmd is None or cmd[0] != want or cmd[1] is None:
            return False
        return not cmd[1].done()

    def _track(self, prev: list[bool], eyes: list[bool]) -> None:
        """Move identities on photo-eye edges of running zones.

        Zero pressure guarantees a zone only receives while empty, so a rising
        edge at z+1 while z runs is z's load arriving, even when z's own eye
        stays blocked because the next load is already right behind (the induct
        is fed from outside).
        """
        n = self.n
        # downstream first, so a load moving z -> z+1 finds z+1's identity already moved on
        for z in range(n - 1, -1, -1):
            if not self.running(z):
                continue
            if z == n - 1:
                if prev[z] and not eyes[z]:
                    ident, self.ids[z] = self.ids[z], None
                    if self.outbound and ident:
                        self.wh.delivered(self.aisle, ident)
            elif eyes[z + 1] and not prev[z + 1]:
                self.ids[z + 1], self.ids[z] = self.ids[z], None

    def _induct(self, count: int, code: str) -> None:
        if not self.eyes[0]:
            self.read_count = count
            self.retries = 0
            return
        if self.ids[0] not in (None, HOLD) or count == self.read_count:
            return
        self.read_count = count
        if code == NOREAD or not code:
            if self.retries < self.wh.cfg.barcode_retries:
                self.retries += 1
                self.io.send(self.base + V_REREAD, [1])
                return
            self.ids[0] = HOLD
            self.held_alarm = "noread"
            self.wh.alarm(
                self.path,
                "noread",
                600,
                f"conveyor {self.name}: no barcode read at the induct after {self.retries} re-reads; load held",
            )
            return
        self.retries = 0
        self.ids[0] = code if self.wh.inducted(self.aisle, code) else HOLD
        if self.ids[0] == HOLD:
            self.held_alarm = "unexpected_box"

    def resync(self, zone: int, barcode: str) -> None:
        """Operator re-identifies a held load (e.g. after a no-read)."""
        if not 0 <= zone < self.n:
            raise ValueError(f"zone: {zone} outside 0..{self.n - 1}")
        if zone == 0 and not self.outbound:
            self.ids[0] = barcode if self.wh.inducted(self.aisle, barcode) else HOLD
        else:
            self.ids[zone] = barcode
        self.watcher.kick()

    def _jam_check(self) -> float | None:
        now = self.wh.loop_time()
        due: float | None = None
        for z in range(self.n):
            if self.eyes[z] and self.running(z):
                since = self.blocked_since[z]
                if since is None:
                    since = self.blocked_since[z] = now
                left = since + self.cfg.jam_timeout_s - now
                if left <= 0:
                    if z not in self.jammed:
                        self.jammed.add(z)
                        self.wh.alarm(
                            self.path,
                            "jam",
                            700,
                            f"conveyor {self.name} zone {z}: photo-eye blocked "
                            f"> {self.cfg.jam_timeout_s}s while running (jam)",
                        )
                        self.wh.publish_conveyor(self)
                else:
                    due = left if due is None else min(due, left)
            else:
                self.blocked_since[z] = None
                if z in self.jammed:
                    self.jammed.discard(z)
                    if not self.jammed:
                        self.wh.clear_alarm(
                            self.path, "jam", f"conveyor {self.name}: jam cleared, zones moving"
                        )
                    self.wh.publish_conveyor(self)
        return due

    def reconcile(self, eyes: list[bool], journal: list[str]) -> list[str]:
        """Rebuild tracking after a restart from the photo-eyes and the journal.

        Conveyors keep order, so the journalled loads (oldest first) map onto
        the blocked zones from the discharge end back. Returns the journalled
        loads with no blocked zone left for them.
        """
        self.eyes = eyes
        self.ids = [None] * self.n
        zones = [z for z in range(self.n - 1, -1, -1) if eyes[z]]
        pending = list(journal)
        for z in zones:
            if pending:
                self.ids[z] = pending.pop(0)
        if not self.outbound and eyes[0] and self.ids[0] is None:
            self.read_count = None  # force a fresh identification at the induct
        return pending

    async def force_reread(self) -> None:
        """Operator action: trigger the induct reader now."""
        await self.io.write(self.base + V_REREAD, [1])
