"""The two ways to reach the warehouse PLC's registers: Modbus TCP and in-process.

The plant (real PLC or ``drivers.sim.warehouse``) exposes holding registers;
the controller reads status blocks and writes command blocks. The register map
itself — addresses, sizes, bit meanings, word encodings — is the wire contract
in :mod:`drivers.warehouse_plc_map`, re-exported here for the warehouse code.
The simulator serves the map over Modbus TCP (pymodbus) and, for fast
virtual-time runs, is called in-process through :class:`LocalPlantIO` with
identical semantics.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol

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
    "CraneState",
    "Fault",
    "LocalPlant",
    "LocalPlantIO",
    "ModbusPlantIO",
    "Op",
    "PlantIO",
    "PlantIOError",
    "Result",
    "Watcher",
    "conveyor_base",
    "crane_base",
    "decode_code",
    "decode_position",
    "encode_code",
    "encode_position",
]
