"""Merge a Modbus device's tags into as few block reads as possible.

Adjacent (or nearly adjacent) addresses of one table become one read, capped
at 125 registers (functions 03/04) or 2000 bits (01/02) per the Modbus
application protocol. Small holes are read through: one longer read is
cheaper than a second round trip.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.config import (
    MAX_READ_BITS,
    MAX_READ_REGISTERS,
    REGISTER_WIDTH,
    ModbusDeviceConfig,
    ModbusTag,
)

# Read through a gap of up to this many unused registers rather than split.
MAX_GAP = 8


@dataclass(frozen=True, slots=True)
class BlockRead:
    table: str
    start: int
    count: int
    tags: tuple[ModbusTag, ...]


def merge_reads(tags: list[ModbusTag], max_gap: int = MAX_GAP) -> list[BlockRead]:
    out: list[BlockRead] = []
    for table in ("coil", "discrete_input", "holding", "input"):
        limit = MAX_READ_BITS if table in ("coil", "discrete_input") else MAX_READ_REGISTERS
        members = sorted((t for t in tags if t.table == table), key=lambda t: t.address)
        start = end = -1
        group: list[ModbusTag] = []
        for tag in members:
            t_end = tag.address + REGISTER_WIDTH[tag.type]
            if group and tag.address - end <= max_gap and max(end, t_end) - start <= limit:
                end = max(end, t_end)
                group.append(tag)
                continue
            if group:
                out.append(BlockRead(table, start, end - start, tuple(group)))
            start, end, group = tag.address, t_end, [tag]
        if group:
            out.append(BlockRead(table, start, end - start, tuple(group)))
    return out


def plan_device_reads(device: ModbusDeviceConfig) -> list[BlockRead]:
    return merge_reads(device.tags)
