"""The warehouse PLC as the scan programs see it: its bus, or the simulator in-process.

The plant (real PLC or ``drivers.sim.warehouse``) exposes holding registers;
the register map itself — addresses, sizes, bit meanings, word encodings — is
the wire contract in :mod:`drivers.warehouse_plc_map`, re-exported here for
the warehouse code. In the service the PLC is a bus of the field plant
(:class:`drivers.warehouse_plc.WarehousePlcBus`): it polls the status blocks
into the process image and takes writes on its control lane, and
:class:`PlcImageIO` gives the programs that image and that lane. For fast
virtual-time runs the simulator is called in-process through
:class:`LocalPlantIO` with identical semantics.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from controller.process_image import Quality
from drivers.warehouse_plc import (
    CONVEYOR_STATUS_REGS,
    conveyor_fields,
    conveyor_name,
    crane_fields,
)
from drivers.warehouse_plc_map import (
    C_ACK_SEQ,
    C_CMD,
    C_CMD_REGS,
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
    CONV_BASE,
    CONV_STRIDE,
    CRANE_BASE,
    CRANE_STRIDE,
    H_ACK_SEQ,
    H_AISLE,
    H_CODE,
    H_SEQ,
    HANDOVER_BASE,
    NOREAD,
    REGISTER_COUNT,
    SCAN_BASE,
    SCAN_CODE,
    SCAN_OCCUPIED,
    STATION_IN,
    STATION_OUT,
    STATION_ROW,
    V_EYES,
    V_MOTOR_CMD,
    V_MOTORS,
    V_READ_CODE,
    V_READ_COUNT,
    V_REREAD,
    V_ZONES,
    CraneState,
    Fault,
    Op,
    Result,
    conveyor_base,
    crane_base,
    decode_code,
    decode_position,
    encode_code,
    encode_position,
)

if TYPE_CHECKING:
    from drivers.warehouse_plc import WarehousePlcBus


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

    @classmethod
    def from_fields(cls, f: dict[str, Any]) -> CraneStatus:
        """From the driver's tag fields (``drivers.warehouse_plc.crane_fields``)."""
        return cls(
            state=CraneState(f["state"]),
            x=f["x"],
            y=f["y"],
            fork_loaded=f["fork_loaded"],
            fork_code=f["fork_barcode"],
            fault=f["fault"],
            done_seq=f["done_seq"],
            done_result=Result(f["done_result"]),
            door_open=f["door_open"],
            ack_seq=f["ack_seq"],
        )


@dataclass(slots=True, frozen=True)
class ConveyorStatus:
    eyes: int  # bit i = zone i blocked
    motors: int  # bit i = zone i running (actual)
    read_count: int
    read_code: str

    @classmethod
    def from_fields(cls, f: dict[str, Any]) -> ConveyorStatus:
        return cls(f["eyes"], f["motors"], f["read_count"], f["read_barcode"])


Check = tuple[int, list[int]] | None  # registers read back to confirm a write
# A queued write: None when it was applied at once (in-process plant), else a
# future that fails when the PLC did not take it.
Sent = asyncio.Future[list[int]] | None


def send_failed(sent: Sent) -> bool:
    return sent is not None and sent.done() and (sent.cancelled() or sent.exception() is not None)


class PlantIO(Protocol):
    """The warehouse PLC as the programs see it.

    The scan side never waits: ``crane_status`` / ``conveyor_status`` read the
    latest polled state (None while the PLC is not answering), ``send`` queues
    a write. ``read`` / ``write`` wait for the wire; they are for start-up
    (reconcile), operator actions (reset, rack count) and the line hand-over,
    never for a scan.
    """

    def crane_status(self, aisle: int) -> CraneStatus | None: ...

    def conveyor_status(self, aisle: int, outbound: bool) -> ConveyorStatus | None: ...

    def unavailable(self) -> str:
        """Why the PLC's state cannot be trusted now ("" when it can)."""
        ...

    def send(self, address: int, values: list[int], check: Check = None) -> Sent: ...

    async def read(self, address: int, count: int) -> list[int]: ...

    async def write(self, address: int, values: list[int], check: Check = None) -> None: ...

    def watcher(self) -> Watcher: ...


class Watcher:
    """Wakes a scan loop on a plant change, a local kick, or a timeout.

    With ``poll_s`` the wait is capped at that period (a safety net when change
    notices may be missed); in-process the plant signals every change, so the
    loop sleeps until something happens and virtual time can jump straight to it.
    """

    def __init__(self, poll_s: float | None) -> None:
        self._event = asyncio.Event()
        self._poll_s = poll_s

    def kick(self) -> None:
        self._event.set()

    async def wait(self, timeout: float | None) -> None:
        if self._poll_s is not None:
            timeout = self._poll_s if timeout is None else min(timeout, self._poll_s)
        if not self._event.is_set():
            if timeout is None:
                await self._event.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._event.wait(), timeout)
        self._event.clear()


class LocalPlant(Protocol):
    def read_registers(self, address: int, count: int) -> list[int]: ...

    def write_registers(self, address: int, values: list[int]) -> None: ...

    def add_watcher(self, watcher: Watcher) -> None: ...


class LocalPlantIO:
    """In-process access to a simulated plant, same register semantics as Modbus.

    For virtual-time runs: status is read from the plant when a scan asks for
    it, writes apply at once (the plant signals each change)."""

    def __init__(self, plant: LocalPlant) -> None:
        self._plant = plant

    def crane_status(self, aisle: int) -> CraneStatus:
        regs = self._plant.read_registers(crane_base(aisle), C_STATUS_REGS)
        return CraneStatus.from_fields(crane_fields(regs))

    def conveyor_status(self, aisle: int, outbound: bool) -> ConveyorStatus:
        regs = self._plant.read_registers(conveyor_base(aisle, outbound), CONVEYOR_STATUS_REGS)
        return ConveyorStatus.from_fields(conveyor_fields(regs))

    def unavailable(self) -> str:
        return ""

    def send(self, address: int, values: list[int], check: Check = None) -> Sent:
        self._plant.write_registers(address, list(values))
        return None

    async def read(self, address: int, count: int) -> list[int]:
        return self._plant.read_registers(address, count)

    async def write(self, address: int, values: list[int], check: Check = None) -> None:
        self._plant.write_registers(address, list(values))

    def watcher(self) -> Watcher:
        w = Watcher(None)
        self._plant.add_watcher(w)
        return w


class PlcImageIO:
    """The PLC through its bus: status from the process image, writes on the control lane."""

    def __init__(self, bus: WarehousePlcBus) -> None:
        self.bus = bus
        self.image = bus.image
        self._crane_tags = {
            a: [(f, f"{bus.prefix}cranes/{a}/{f}") for f in crane_fields([0] * C_STATUS_REGS)]
            for a in range(1, bus.aisles + 1)
        }
        fields = list(conveyor_fields([0] * CONVEYOR_STATUS_REGS))
        self._conv_tags = {
            (a, out): [(f, f"{bus.prefix}conveyors/{conveyor_name(a, out)}/{f}") for f in fields]
            for a in range(1, bus.aisles + 1)
            for out in (False, True)
        }

    def _fields(self, tags: list[tuple[str, str]]) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        for field, name in tags:
            v = self.image.get(name)
            if v.quality is not Quality.GOOD:
                return None
            out[field] = v.value
        return out

    def crane_status(self, aisle: int) -> CraneStatus | None:
        f = self._fields(self._crane_tags[aisle])
        return None if f is None else CraneStatus.from_fields(f)

    def conveyor_status(self, aisle: int, outbound: bool) -> ConveyorStatus | None:
        f = self._fields(self._conv_tags[(aisle, outbound)])
        return None if f is None else ConveyorStatus.from_fields(f)

    def unavailable(self) -> str:
        v = self.image.get(self.bus.prefix + "online")
        if v.quality is Quality.GOOD and v.value is True:
            return ""
        # the status tags carry why (link down, no answer, quarantined); online only says that
        why = self.image.get(self._crane_tags[1][0][1]).reason or v.reason or "offline"
        return f"warehouse PLC not answering: {why}"

    def send(self, address: int, values: list[int], check: Check = None) -> Sent:
        return self.bus.send(address, values, check)

    async def read(self, address: int, count: int) -> list[int]:
        return await self.bus.read(address, count)

    async def write(self, address: int, values: list[int], check: Check = None) -> None:
        await self.bus.write(address, values, check)

    def watcher(self) -> Watcher:
        w = Watcher(None)
        self.bus.add_listener(w)
        return w


class PlantIOError(IOError):
    pass


__all__ = [
    "CODE_REGS",
    "CONV_BASE",
    "CONV_STRIDE",
    "CRANE_BASE",
    "CRANE_STRIDE",
    "C_ACK_SEQ",
    "C_CMD",
    "C_CMD_REGS",
    "C_CODE",
    "C_DONE_RESULT",
    "C_DONE_SEQ",
    "C_DOOR",
    "C_FAULT",
    "C_FORK",
    "C_STATE",
    "C_STATUS_REGS",
    "C_X",
    "C_Y",
    "HANDOVER_BASE",
    "H_ACK_SEQ",
    "H_AISLE",
    "H_CODE",
    "H_SEQ",
    "NOREAD",
    "REGISTER_COUNT",
    "SCAN_BASE",
    "SCAN_CODE",
    "SCAN_OCCUPIED",
    "STATION_IN",
    "STATION_OUT",
    "STATION_ROW",
    "V_EYES",
    "V_MOTORS",
    "V_MOTOR_CMD",
    "V_READ_CODE",
    "V_READ_COUNT",
    "V_REREAD",
    "V_ZONES",
    "Check",
    "ConveyorStatus",
    "CraneState",
    "CraneStatus",
    "Fault",
    "LocalPlant",
    "LocalPlantIO",
    "Op",
    "PlantIO",
    "PlantIOError",
    "PlcImageIO",
    "Result",
    "Sent",
    "Watcher",
    "conveyor_base",
    "crane_base",
    "decode_code",
    "decode_position",
    "encode_code",
    "encode_position",
    "send_failed",
]
