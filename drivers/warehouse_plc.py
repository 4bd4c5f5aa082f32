"""The warehouse PLC as a bus: one `BusOwner` on its Modbus TCP link.

The owner polls the PLC's status blocks (every crane, both conveyors of every
aisle, the line hand-over's accepted seq) into the process image under
``buses/<bus>/devices/plc/…``, one tag per field of the register map
(:mod:`drivers.warehouse_plc_map`), Good while the PLC answers and Bad with the
reason when it does not (a link down, or quarantine after its retries). The
warehouse programs read those tags and never touch the wire.

Commands go out on the control lane, ahead of the next poll: a register block
is written and the registers that prove it took effect are read back in the
same control slot (a crane command's accepted seq, a conveyor's actual
motors, the scan window's address). :meth:`WarehousePlcBus.send` queues one
without waiting, for the scan programs; :meth:`write` and :meth:`read` wait,
for start-up and operator actions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pymodbus.client import AsyncModbusTcpClient

from controller.process_image import ProcessImage, Quality
from controller.quality_reason import Reason
from drivers.bus_owner import (
    LANES,
    PeriodicJob,
)
from drivers.config import LinkConfig, Quarantine
from drivers.errors import CommandRejected, ModbusDeviceError, TransportClosed
from drivers.modbus_exchange import ModbusClientBus
from drivers.warehouse_plc_map import (
    C_ACK_SEQ,
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
    H_ACK_SEQ,
    HANDOVER_BASE,
    V_EYES,
    V_MOTORS,
    V_READ_CODE,
    V_READ_COUNT,
    V_ZONES,
    conveyor_base,
    crane_base,
    decode_code,
    decode_position,
)

log = logging.getLogger(__name__)

DEVICE = "plc"
POLL_GROUP = "status"
CONVEYOR_STATUS_REGS = V_READ_CODE + CODE_REGS
# one TCP round trip per block on a LAN
BLOCK_EXPECTED_S = 0.002


@dataclass(frozen=True, slots=True)
class StatusBlock:
    """One polled register block and the tags it fills."""

    prefix: str  # under the device prefix, e.g. "cranes/1/"
    address: int
    count: int
    decode: Callable[[list[int]], dict[str, Any]]


def crane_fields(r: list[int]) -> dict[str, Any]:
    return {
        "state": r[C_STATE],
        "x": decode_position(r[C_X]),
        "y": decode_position(r[C_Y]),
        "fork_loaded": bool(r[C_FORK]),
        "fork_barcode": decode_code(r[C_CODE : C_CODE + CODE_REGS]),
        "fault": r[C_FAULT],
        "done_seq": r[C_DONE_SEQ],
        "done_result": r[C_DONE_RESULT],
        "door_open": bool(r[C_DOOR]),
        "ack_seq": r[C_ACK_SEQ],
    }


CRANE_UNITS = {"x": "m", "y": "m"}


def conveyor_fields(r: list[int]) -> dict[str, Any]:
    return {
        "zones": r[V_ZONES],
        "eyes": r[V_EYES],
        "motors": r[V_MOTORS],
        "read_count": r[V_READ_COUNT],
        "read_barcode": decode_code(r[V_READ_CODE : V_READ_CODE + CODE_REGS]),
    }


def handover_fields(r: list[int]) -> dict[str, Any]:
    return {"ack_seq": r[0]}


def conveyor_name(aisle: int, outbound: bool) -> str:
    return f"{aisle}-{'out' if outbound else 'in'}"


class PlcListener(Protocol):
    def kick(self) -> None: ...


class CommandNotConfirmed(RuntimeError):
    """The PLC acknowledged a write but the read-back does not show it."""


class WarehousePlcBus(ModbusClientBus):
    protocol = "modbus_tcp"

    def __init__(
        self,
        name: str,
        image: ProcessImage,
        *,
        host: str,
        port: int,
        aisles: int,
        poll_s: float = 0.01,
        response_timeout_s: float = 1.0,
        retries: int = 1,
        quarantine: Quarantine | None = None,
        unit_id: int = 1,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        link = LinkConfig(
            port=f"tcp://{host}:{port}",
            response_timeout_s=response_timeout_s,
            reconnect_initial_s=0.2,
            reconnect_max_s=5.0,
        )
        super().__init__(
            name,
            link,
            image,
            # a PLC is one device: a short back-off, so a blip does not stop the plant long
            quarantine=quarantine or Quarantine(initial_s=1.0, max_s=10.0),
            clock=clock,
            wall=wall,
        )
        self.host, self.port = host, port
        self.unit_id = unit_id
        self.retries = retries
        self.aisles = aisles
        self._client: AsyncModbusTcpClient | None = None
        self._listeners: list[PlcListener] = []
        self.blocks: list[StatusBlock] = []
        for aisle in range(1, aisles + 1):
            self.blocks.append(
                StatusBlock(f"cranes/{aisle}/", crane_base(aisle), C_STATUS_REGS, crane_fields)
            )
            for outbound in (False, True):
                self.blocks.append(
                    StatusBlock(
                        f"conveyors/{conveyor_name(aisle, outbound)}/",
                        conveyor_base(aisle, outbound),
                        CONVEYOR_STATUS_REGS,
                        conveyor_fields,
                    )
                )
        self.blocks.append(StatusBlock("handover/", HANDOVER_BASE + H_ACK_SEQ, 1, handover_fields))
        prefix = self.prefix
        image.define(prefix + "online", "", f"warehouse PLC answers on {self.name}")
        for block in self.blocks:
            for field in block.decode([0] * block.count):
                image.define(
                    prefix + block.prefix + field,
                    CRANE_UNITS.get(field, "") if block.prefix.startswith("cranes/") else "",
                    f"holding {block.address}+{block.count}",
                )
        self.add_periodic(
            DEVICE, POLL_GROUP, poll_s, LANES["cyclic"], BLOCK_EXPECTED_S * len(self.blocks)
        )
        self.unconfirmed = 0  # queued commands whose read-back did not show them

    @property
    def prefix(self) -> str:
        return self._device_prefix(DEVICE)

    def _device_prefix(self, device: str) -> str:
        return f"buses/{self.name}/devices/{device}/"

    def devices(self) -> list[str]:
        return [DEVICE]

    def add_listener(self, listener: PlcListener) -> None:
        """``listener.kick()`` after every poll that changed a tag (value or quality)."""
        self._listeners.append(listener)

    def _kick(self) -> None:
        for listener in self._listeners:
            listener.kick()

    # -- link ------------------------------------------------------------------------
    async def _open(self) -> None:
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            timeout=self.link_config.response_timeout_s,
            retries=0,
            reconnect_delay=0,
        )
        try:
            ok = await client.connect()
        except Exception as exc:
            raise TransportClosed(f"{self.link_config.port}: cannot connect: {exc}") from exc
        if not ok:
            client.close()
            raise TransportClosed(f"{self.link_config.port}: cannot connect")
        self._client = client

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _link_down(self, reason: str) -> None:
        super()._link_down(reason)
        self._kick()  # the programs see Bad at their next scan and hold

    # -- one exchange -------------------------------------------------------------------
    async def _call(self, fc: int, call: Callable[[], Awaitable[Any]], retries: int) -> Any:
        return await self._transact(DEVICE, "warehouse PLC", fc, call, retries)

    async def _read_now(self, address: int, count: int, retries: int) -> list[int]:
        client = self._client
        if client is None:
            raise TransportClosed(f"{self.link_config.port}: not connected")
        reply = await self._call(
            3,
            lambda: client.read_holding_registers(address, count=count, device_id=self.unit_id),
            retries,
        )
        return [int(r) for r in reply.registers[:count]]

    async def _write_now(self, address: int, values: list[int]) -> None:
        client = self._client
        if client is None:
            raise TransportClosed(f"{self.link_config.port}: not connected")
        await self._call(
            16,
            lambda: client.write_registers(address, values, device_id=self.unit_id),
            self.retries,
        )

    # -- polling ------------------------------------------------------------------------
    async def _poll(self, job: PeriodicJob, probe: bool) -> None:
        retries = 0 if probe else self.retries
        prefix = self.prefix
        changed = False
        for block in self.blocks:
            try:
                regs = await self._read_now(block.address, block.count, retries)
            except ModbusDeviceError as exc:
                # the PLC answers but refuses this block: its tags Bad, the rest polled on
                changed |= bool(
                    self.image.invalidate(
                        prefix + block.prefix, str(exc), code=Reason.DEVICE_REFUSED
                    )
                )
                continue
            retries = self.retries
            now = self.wall()
            for field, value in block.decode(regs).items():
                changed |= self.image.write(
                    prefix + block.prefix + field, value, Quality.GOOD, "", now
                )
        if changed:
            self._kick()

    def _device_answered(self, device: str) -> None:
        name = self.prefix + "online"
        cur = self.image.get(name)
        if cur.value is not True or cur.quality is not Quality.GOOD:
            self.image.write(name, True, Quality.GOOD, "", self.wall())
            self._kick()

    def _enter_quarantine(self, device: str, now: float, exc: Any) -> None:
        super()._enter_quarantine(device, now, exc)
        self._kick()

    # -- commands -----------------------------------------------------------------------
    def _confirmed_write(
        self, address: int, values: list[int], check: tuple[int, list[int]] | None
    ) -> Callable[[], Awaitable[list[int]]]:
        async def action() -> list[int]:
            await self._write_now(address, values)
            if check is None:
                return []
            at, expected = check
            seen = await self._read_now(at, len(expected), self.retries)
            if seen != expected:
                raise CommandNotConfirmed(
                    f"warehouse PLC: wrote {values} at {address}, "
                    f"read back {seen} at {at}, expected {expected}"
                )
            return seen

        return action

    def send(
        self, address: int, values: list[int], check: tuple[int, list[int]] | None = None
    ) -> asyncio.Future[list[int]]:
        """Queue a write on the control lane and return at once (for scan programs).

        ``check`` is (address, registers) read back after the write to confirm it;
        the future fails with :class:`CommandNotConfirmed` when they differ, with
        :class:`CommandRejected` when the bus is stopped or its control queue full,
        and with the wire error when the PLC did not answer."""
        future: asyncio.Future[list[int]]
        if self._stopping or not self.connected:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(CommandRejected(f"bus {self.name}: not connected"))
        else:
            future = self.queue_control(self._confirmed_write(address, list(values), check))
        future.add_done_callback(self._settled)
        return future

    def _settled(self, future: asyncio.Future[list[int]]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self.unconfirmed += 1
            log.warning("bus %s: command not confirmed: %s", self.name, exc)

    async def write(
        self, address: int, values: list[int], check: tuple[int, list[int]] | None = None
    ) -> list[int]:
        """Write on the control lane and wait for the read-back (start-up, operator actions)."""
        return await self._submit_control(self._confirmed_write(address, list(values), check))

    async def read(self, address: int, count: int) -> list[int]:
        """Read a register block now, on the control lane."""

        async def action() -> list[int]:
            return await self._read_now(address, count, self.retries)

        return await self._submit_control(action)


__all__ = [
    "CONVEYOR_STATUS_REGS",
    "DEVICE",
    "CommandNotConfirmed",
    "WarehousePlcBus",
    "conveyor_name",
]
