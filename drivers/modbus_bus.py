"""A Modbus bus (TCP or RTU) through pymodbus: merged block reads, coils for load control.

pymodbus owns the socket or serial port and the framing; this owner adds what
the field needs on top: one request in flight, the priority lanes, our own
retry count (pymodbus retries are off so they cannot hide a dead device),
quarantine, and tags in the process image under
``buses/<bus>/devices/<device>/<tag>``.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

from controller.process_image import ProcessImage, Quality
from controller.quality_reason import Reason
from drivers.bus_owner import LANES, PeriodicJob
from drivers.config import ModbusBusConfig, ModbusDeviceConfig, ModbusTag
from drivers.errors import ModbusDeviceError, TransportClosed
from drivers.modbus_blocks import BlockRead, merge_reads
from drivers.modbus_exchange import ModbusClientBus
from drivers.quantities import SECONDARY_SUFFIX, scales_with_ratio, transformer_factor

FC = {"coil": 1, "discrete_input": 2, "holding": 3, "input": 4}
POLL_GROUP = "poll"


def decode_tag(tag: ModbusTag, block: BlockRead, values: list[int] | list[bool]) -> Any:
    """A tag's engineering value from a block read's registers (or bits)."""
    offset = tag.address - block.start
    if tag.type == "bool":
        return bool(values[offset])
    regs = [
        int(v) for v in values[offset : offset + (2 if tag.type in ("u32", "i32", "f32") else 1)]
    ]
    if tag.type == "u16":
        raw: float = regs[0]
    elif tag.type == "i16":
        raw = struct.unpack(">h", struct.pack(">H", regs[0]))[0]
    else:
        # two registers, high word first (the common "big-endian" device order)
        packed = struct.pack(">HH", regs[0], regs[1])
        raw = struct.unpack({"u32": ">I", "i32": ">i", "f32": ">f"}[tag.type], packed)[0]
    value = raw * tag.scale
    return round(value, 6) if isinstance(value, float) else value


# Raw integer range of each register type (f32 is bounded by the float itself).
RAW_RANGES: dict[str, tuple[float, float]] = {
    "u16": (0, 0xFFFF),
    "i16": (-0x8000, 0x7FFF),
    "u32": (0, 0xFFFF_FFFF),
    "i32": (-0x8000_0000, 0x7FFF_FFFF),
    "f32": (-3.4028234663852886e38, 3.4028234663852886e38),
}


def through_transformers(device: ModbusDeviceConfig, tag: ModbusTag) -> bool:
    """A reading a CT or PT scales: a read-only register of a transformer-operated device.

    Writable tags (setpoints, coils) keep the device's own units: a value
    written and read back must be the same number."""
    return (
        (device.ct_ratio != 1.0 or device.pt_ratio != 1.0)
        and not tag.writable
        and tag.type != "bool"
        and scales_with_ratio(tag.unit)
    )


def value_range(tag: ModbusTag) -> tuple[float, float]:
    """The engineering values a register tag can hold: its raw range times the scale."""
    lo, hi = RAW_RANGES[tag.type]
    a, b = lo * tag.scale, hi * tag.scale
    # round like decode_tag, so 65535 * 0.1 reads 6553.5, not 6553.500000000001
    return (round(min(a, b), 6), round(max(a, b), 6))


def encode_tag(tag: ModbusTag, value: object) -> list[int]:
    """A register tag's registers for an engineering value; ValueError (naming the tag and
    its range) when the value does not fit."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"value: {tag.name} takes a finite number (got {value!r})")
    raw = value / tag.scale
    lo, hi = RAW_RANGES[tag.type]
    n: float = raw if tag.type == "f32" else round(raw)
    if not lo <= n <= hi:
        vlo, vhi = value_range(tag)
        unit = f" {tag.unit}" if tag.unit else ""
        raise ValueError(
            f"value: {value:g}{unit} is outside {tag.name}'s range {vlo:g}..{vhi:g}{unit} "
            f"({tag.type} raw {lo:g}..{hi:g}, scale {tag.scale:g})"
        )
    if tag.type in ("u16", "i16"):
        return [int(n) & 0xFFFF]
    fmt = {"u32": ">I", "i32": ">i", "f32": ">f"}[tag.type]
    return list(struct.unpack(">HH", struct.pack(fmt, n)))


class ModbusBus(ModbusClientBus):
    def __init__(
        self,
        config: ModbusBusConfig,
        image: ProcessImage,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            config.name, config, image, quarantine=config.quarantine, clock=clock, wall=wall
        )
        self.protocol = config.protocol
        self.config = config
        self.device_configs: dict[str, ModbusDeviceConfig] = {d.name: d for d in config.devices}
        self.reads: dict[str, list[BlockRead]] = {
            d.name: merge_reads(d.tags) for d in config.devices
        }
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        for device in config.devices:
            prefix = self._device_prefix(device.name)
            image.define(prefix + "online", "", f"device {device.name} answers on {self.name}")
            for tag in device.tags:
                where = f"{tag.table} {tag.address}"
                if through_transformers(device, tag):
                    factor = transformer_factor(tag.unit, device.ct_ratio, device.pt_ratio)
                    image.define(prefix + tag.name, tag.unit, f"{where}, primary (× {factor:g})")
                    image.define(
                        prefix + tag.name + SECONDARY_SUFFIX,
                        tag.unit,
                        f"{where}, as the device reads it (transformer secondary)",
                    )
                else:
                    image.define(prefix + tag.name, tag.unit, where)
            # one TCP round trip or RTU exchange per block read
            expected = 0.005 * len(self.reads[device.name])
            self.add_periodic(device.name, POLL_GROUP, device.period_s, LANES["cyclic"], expected)

    def _device_prefix(self, device: str) -> str:
        return f"buses/{self.name}/devices/{device}/"

    def devices(self) -> list[str]:
        return list(self.device_configs)

    # -- link ------------------------------------------------------------------------
    async def _open(self) -> None:
        cfg = self.config
        client: AsyncModbusTcpClient | AsyncModbusSerialClient
        if cfg.is_tcp:
            host, port = cfg.tcp_endpoint
            client = AsyncModbusTcpClient(
                host, port=port, timeout=cfg.response_timeout_s, retries=0, reconnect_delay=0
            )
        else:
            client = AsyncModbusSerialClient(
                cfg.port,
                baudrate=cfg.baud,
                bytesize=cfg.byte_size,
                parity=cfg.parity,
                stopbits=cfg.stop_bits,
                timeout=cfg.response_timeout_s,
                retries=0,
                reconnect_delay=0,
            )
        try:
            ok = await client.connect()
        except Exception as exc:
            raise TransportClosed(f"{cfg.port}: cannot connect: {exc}") from exc
        if not ok:
            client.close()
            raise TransportClosed(f"{cfg.port}: cannot connect")
        self._client = client

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- one exchange -------------------------------------------------------------------
    async def _call(
        self, device: ModbusDeviceConfig, fc: int, call: Callable[[], Awaitable[Any]], retries: int
    ) -> Any:
        return await self._transact(device.name, f"device {device.name}", fc, call, retries)

    # -- polling ------------------------------------------------------------------------
    async def _poll(self, job: PeriodicJob, probe: bool) -> None:
        device = self.device_configs[job.device]
        retries = 0 if probe else self.config.retries
        prefix = self._device_prefix(device.name)
        for block in self.reads[device.name]:
            try:
                response = await self._call(
                    device, FC[block.table], self._reader(device, block), retries
                )
            except ModbusDeviceError as exc:
                for tag in block.tags:
                    names = [tag.name]
                    if through_transformers(device, tag):
                        names.append(tag.name + SECONDARY_SUFFIX)
                    for name in names:
                        cur = self.image.get(prefix + name)
                        self.image.write(
                            prefix + name,
                            cur.value,
                            Quality.BAD,
                            str(exc),
                            code=Reason.DEVICE_REFUSED,
                        )
                continue
            retries = self.config.retries
            values = (
                response.bits if block.table in ("coil", "discrete_input") else response.registers
            )
            now = self.wall()
            for tag in block.tags:
                self._publish(device, tag, decode_tag(tag, block, values), now)

    def _publish(self, device: ModbusDeviceConfig, tag: ModbusTag, value: Any, when: float) -> None:
        """A decoded tag into the image: primary value, and the device's own reading
        as ``<tag>_secondary`` when transformers sit in front of it."""
        prefix = self._device_prefix(device.name)
        if through_transformers(device, tag):
            factor = transformer_factor(tag.unit, device.ct_ratio, device.pt_ratio)
            self.image.write(prefix + tag.name + SECONDARY_SUFFIX, value, Quality.GOOD, "", when)
            value = round(value * factor, 6)
        self.image.write(prefix + tag.name, value, Quality.GOOD, "", when)

    def _reader(self, device: ModbusDeviceConfig, block: BlockRead) -> Callable[[], Awaitable[Any]]:
        client = self._client
        assert client is not None
        method = {
            "coil": client.read_coils,
            "discrete_input": client.read_discrete_inputs,
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
        }[block.table]
        return lambda: method(block.start, count=block.count, device_id=device.unit_id)

    def _device_answered(self, device: str) -> None:
        name = self._device_prefix(device) + "online"
        cur = self.image.get(name)
        if cur.value is not True or cur.quality is not Quality.GOOD:
            self.image.write(name, True, Quality.GOOD, "", self.wall())

    # -- commands -----------------------------------------------------------------------
    def _tag(self, device: str, tag: str) -> tuple[ModbusDeviceConfig, ModbusTag]:
        dev = self.device_configs.get(device)
        if dev is None:
            raise KeyError(f"device: no device {device!r} on bus {self.name}")
        for t in dev.tags:
            if t.name == tag:
                if not t.writable:
                    raise ValueError(f"tag: {device}/{tag} is not writable")
                return dev, t
        raise KeyError(f"tag: no tag {tag!r} on device {device!r}")

    def _coil(self, device: str, tag: str) -> tuple[ModbusDeviceConfig, ModbusTag]:
        dev = self.device_configs.get(device)
        if dev is None:
            raise KeyError(f"device: no device {device!r} on bus {self.name}")
        for t in dev.tags:
            if t.name == tag:
                if t.table != "coil":
                    raise ValueError(f"tag: {device}/{tag} is a {t.table}, not a coil")
                return dev, t
        raise KeyError(f"tag: no tag {tag!r} on device {device!r}")

    async def _read_coil_now(self, dev: ModbusDeviceConfig, t: ModbusTag) -> bool:
        client = self._client
        if client is None:
            raise TransportClosed(f"{self.config.port}: not connected")
        reply = await self._call(
            dev,
            1,
            lambda: client.read_coils(t.address, count=1, device_id=dev.unit_id),
            self.config.retries,
        )
        value = bool(reply.bits[0])
        self.image.write(
            self._device_prefix(dev.name) + t.name, value, Quality.GOOD, "", self.wall()
        )
        return value

    async def write_coil(self, device: str, tag: str, value: bool) -> bool:
        """Write a coil (e.g. a load-control output) on the control lane and read it back.

        Write (FC 5) and read-back (FC 1) go out back to back in one control
        slot; the coil as read lands in the image and is returned. A write
        acknowledgement alone does not prove the output moved (a terminal in
        local/manual mode echoes the write and ignores it): the caller
        compares the returned state with ``value``."""
        dev, t = self._tag(device, tag)
        if t.table != "coil":
            raise ValueError(f"tag: {device}/{tag} is a {t.table}, not a coil")

        async def action() -> bool:
            client = self._client
            if client is None:
                raise TransportClosed(f"{self.config.port}: not connected")
            await self._call(
                dev,
                5,
                lambda: client.write_coil(t.address, value, device_id=dev.unit_id),
                self.config.retries,
            )
            return await self._read_coil_now(dev, t)

        return await self._submit_control(action)

    async def read_coil(self, device: str, tag: str) -> bool:
        """Read one coil now on the control lane (a confirmation re-read, ahead of polls)."""
        dev, t = self._coil(device, tag)

        async def action() -> bool:
            return await self._read_coil_now(dev, t)

        return await self._submit_control(action)

    def coil_tag(self, device: str, tag: str) -> str:
        """The process-image name of a coil (``buses/<bus>/devices/<device>/<tag>``)."""
        self._coil(device, tag)
        return self._device_prefix(device) + tag

    def holding_tag(self, device: str, tag: str) -> ModbusTag:
        """A writable holding register's config (KeyError / ValueError say why not)."""
        _dev, t = self._tag(device, tag)
        if t.table != "holding":
            raise ValueError(f"tag: {device}/{tag} is a {t.table}, not a holding register")
        return t

    async def _read_holding_now(self, dev: ModbusDeviceConfig, t: ModbusTag) -> list[int]:
        client = self._client
        if client is None:
            raise TransportClosed(f"{self.config.port}: not connected")
        count = 2 if t.type in ("u32", "i32", "f32") else 1
        reply = await self._call(
            dev,
            3,
            lambda: client.read_holding_registers(t.address, count=count, device_id=dev.unit_id),
            self.config.retries,
        )
        regs = [int(r) for r in reply.registers[:count]]
        block = BlockRead("holding", t.address, count, (t,))
        self._publish(dev, t, decode_tag(t, block, regs), self.wall())
        return regs

    async def write_register(self, device: str, tag: str, value: float) -> list[int]:
        """Write a holding register tag (scaled, u16/i16 or two registers) and read it back.

        Write (FC 6 or 16) and read-back (FC 3) go out back to back in one
        control slot; the registers as read land in the image and are returned.
        A write acknowledgement alone does not prove the device took the value
        (it may clamp it, or ignore writes in local mode): the caller compares
        the returned registers with :func:`encode_tag`'s."""
        dev, t = self._tag(device, tag)
        if t.table != "holding":
            raise ValueError(f"tag: {device}/{tag} is a {t.table}, not a holding register")
        regs = encode_tag(t, value)

        async def action() -> list[int]:
            client = self._client
            if client is None:
                raise TransportClosed(f"{self.config.port}: not connected")
            if len(regs) == 1:
                await self._call(
                    dev,
                    6,
                    lambda: client.write_register(t.address, regs[0], device_id=dev.unit_id),
                    self.config.retries,
                )
            else:
                await self._call(
                    dev,
                    16,
                    lambda: client.write_registers(t.address, regs, device_id=dev.unit_id),
                    self.config.retries,
                )
            return await self._read_holding_now(dev, t)

        return await self._submit_control(action)

    async def read_register(self, device: str, tag: str) -> list[int]:
        """Read one holding register tag now on the control lane (a reconcile read-back)."""
        dev, t = self._tag(device, tag)
        if t.table != "holding":
            raise ValueError(f"tag: {device}/{tag} is a {t.table}, not a holding register")

        async def action() -> list[int]:
            return await self._read_holding_now(dev, t)

        return await self._submit_control(action)
