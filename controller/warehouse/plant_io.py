"""The warehouse PLC's Modbus register map, and the two ways to reach it.

The plant (real PLC or ``drivers.sim.warehouse``) exposes holding registers;
the controller reads status blocks and writes command blocks. The same map is
served by the simulator over Modbus TCP (pymodbus) and, for fast virtual-time
runs, called in-process through :class:`LocalPlantIO` with identical semantics.

Crane block (one per aisle, base ``crane_base(aisle)``), read side:
  +0 state (CraneState)      +1 x position, cm       +2 y position, cm
  +3 fork load sensor 0/1    +4..+11 barcode at fork (16 ASCII chars)
  +12 fault code (Fault)     +13 done seq            +14 done result (Result)
  +15 aisle door / light curtain open 0/1            +16 accepted seq
Command side: +20 op (Op), +21 row, +22 bay, +23 level, +24 seq — written in
one block; the PLC latches a command when the seq changes, so a repeated write
of the same block (a retry) is idempotent.

Conveyor block (two per aisle: inbound then outbound, base ``conveyor_base``):
  +0 zones  +1 photo-eye bitmap (bit i = zone i blocked)  +2 motor bitmap (actual)
  +3 reader count (increments on each read at the induct)  +4..+11 last barcode read
  +20 motor command bitmap   +21 re-read trigger (write any value)

Rack scan window (the rack's inventory reader): write row, bay, level at
``SCAN_BASE``+0..2, then read +3 occupied and +4..+11 barcode.

Line return hand-over (the verification line's boxing out-feed pushes a box
onto an aisle's inbound induct), base ``HANDOVER_BASE``: write +0 aisle,
+1..+8 barcode, +9 seq in one block; the PLC latches it when the seq changes
(a rewrite is a retry) and ignores a barcode already in the plant. Read +10
accepted seq.
"""

from __future__ import annotations

import asyncio
import contextlib
from enum import IntEnum
from typing import Any, Protocol

CRANE_BASE = 100
CRANE_STRIDE = 50
CONV_BASE = 400
CONV_STRIDE = 40
SCAN_BASE = 900
HANDOVER_BASE = 950
H_AISLE, H_CODE, H_SEQ, H_ACK_SEQ = 0, 1, 9, 10
REGISTER_COUNT = 1000
CODE_REGS = 8  # 16 chars, two per register

C_STATE, C_X, C_Y, C_FORK, C_CODE, C_FAULT, C_DONE_SEQ, C_DONE_RESULT, C_DOOR, C_ACK_SEQ = (
    0,
    1,
    2,
    3,
    4,
    12,
    13,
    14,
    15,
    16,
)
C_CMD = 20
V_ZONES, V_EYES, V_MOTORS, V_READ_COUNT, V_READ_CODE = 0, 1, 2, 3, 4
V_MOTOR_CMD, V_REREAD = 20, 21
NOREAD = "NOREAD"


class CraneState(IntEnum):
    IDLE = 0
    MOVING = 1
    FORKING = 2
    FAULT = 3
    STOPPED = 4  # aisle door open or light curtain broken


class Op(IntEnum):
    PICK = 1
    PUT = 2
    MOVE = 3
    RESET = 4


class Result(IntEnum):
    OK = 0
    REFUSED_OCCUPIED = 1  # put: the fork's occupancy check found the target full
    REFUSED_EMPTY = 2  # pick: nothing there
    REFUSED_FORK = 3  # pick with a loaded fork, or put with an empty one
    ABORTED = 4  # fault, door or light curtain during the command
    BAD_TARGET = 5
    REFUSED_NOT_READY = 6  # command while in fault / stopped


class Fault(IntEnum):
    NONE = 0
    DRIVE = 1
    DOOR = 4


def crane_base(aisle: int) -> int:
    return CRANE_BASE + CRANE_STRIDE * (aisle - 1)


def conveyor_base(aisle: int, outbound: bool) -> int:
    return CONV_BASE + CONV_STRIDE * (2 * (aisle - 1) + (1 if outbound else 0))


def encode_code(text: str) -> list[int]:
    raw = text.encode("ascii", "replace")[: 2 * CODE_REGS].ljust(2 * CODE_REGS, b"\0")
    return [(raw[i] << 8) | raw[i + 1] for i in range(0, len(raw), 2)]


def decode_code(regs: list[int]) -> str:
    raw = b"".join(bytes(((r >> 8) & 0xFF, r & 0xFF)) for r in regs)
    return raw.rstrip(b"\0").decode("ascii", "replace")


class PlantIO(Protocol):
    """Register access to the warehouse PLC."""

    async def read(self, address: int, count: int) -> list[int]: ...

    async def write(self, address: int, values: list[int]) -> None: ...

    def watcher(self) -> Watcher: ...


class Watcher:
    """Wakes a control loop on a plant change, a local kick, or a timeout.

    Over Modbus there are no change notifications, so ``wait`` is capped at the
    poll period; in-process the plant signals every change, so loops sleep until
    something happens and virtual time can jump straight to it.
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
    """In-process access to a simulated plant, same register semantics as Modbus."""

    def __init__(self, plant: LocalPlant) -> None:
        self._plant = plant

    async def read(self, address: int, count: int) -> list[int]:
        return self._plant.read_registers(address, count)

    async def write(self, address: int, values: list[int]) -> None:
        self._plant.write_registers(address, list(values))

    def watcher(self) -> Watcher:
        w = Watcher(None)
        self._plant.add_watcher(w)
        return w


class PlantIOError(IOError):
    pass


class ModbusPlantIO:
    """Modbus TCP client to the PLC (pymodbus); one transaction in flight at a time."""

    def __init__(
        self, host: str, port: int, poll_s: float = 0.01, device_id: int = 1, timeout: float = 2.0
    ) -> None:
        from pymodbus.client import AsyncModbusTcpClient

        self._client: Any = AsyncModbusTcpClient(host, port=port, timeout=timeout, retries=1)
        self._device_id = device_id
        self._poll_s = poll_s
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        if not await self._client.connect():
            raise PlantIOError("cannot connect to the warehouse PLC")

    def close(self) -> None:
        self._client.close()

    async def read(self, address: int, count: int) -> list[int]:
        async with self._lock:
            rr = await self._client.read_holding_registers(
                address, count=count, device_id=self._device_id
            )
        if rr.isError():
            raise PlantIOError(f"read {address}+{count}: {rr}")
        return list(rr.registers)

    async def write(self, address: int, values: list[int]) -> None:
        async with self._lock:
            rr = await self._client.write_registers(address, values, device_id=self._device_id)
        if rr.isError():
            raise PlantIOError(f"write {address}: {rr}")

    def watcher(self) -> Watcher:
        return Watcher(self._poll_s)
