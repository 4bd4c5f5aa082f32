"""Modbus TCP against a real pymodbus server (the simulated load-control terminal)."""

from __future__ import annotations

import asyncio

from controller.process_image import Quality
from drivers.config import ModbusTag
from drivers.modbus_blocks import merge_reads

from .conftest import free_port, lct_config, wait_for


def tag(name: str, table: str, address: int, type_: str = "u16") -> ModbusTag:
    return ModbusTag(name=name, table=table, address=address, type=type_)  # type: ignore[arg-type]


def test_adjacent_tags_merge_into_blocks_of_at_most_125() -> None:
    tags = [tag(f"r{i}", "holding", i) for i in range(0, 300)]
    reads = merge_reads(tags)
    assert [r.count for r in reads] == [125, 125, 50]
    assert reads[1].start == 125
    mixed = [
        tag("a", "input", 0, "u32"),
        tag("b", "input", 2),
        tag("c", "input", 500),
        tag("k", "coil", 3, "bool"),
    ]
    reads = merge_reads(mixed)
    assert [(r.table, r.start, r.count) for r in reads] == [
        ("coil", 3, 1),
        ("input", 0, 3),
        ("input", 500, 1),
    ]


async def test_poll_and_trip_a_load_over_modbus_tcp(tmp_path, running) -> None:
    config = lct_config(tmp_path, free_port())
    sim, plant, image = await running(config)
    bus = plant.bus("lct")
    prefix = "buses/lct/devices/t1/"
    assert await wait_for(lambda: image.value(prefix + "power_total") is not None, 10)
    assert image.tag(prefix + "power_total").unit == "kW"
    assert image.value(prefix + "out1") is True
    assert image.value(prefix + "power_1") > 0
    # the poll merged the two input blocks into one read per table
    assert [(r.table, r.count) for r in bus.reads["t1"]] == [("coil", 2), ("input", 4)]
    await bus.write_coil("t1", "out1", False)
    assert image.value(prefix + "out1") is False
    terminal = sim.modbus["lct"].devices[0]
    assert not terminal.closed(0) and terminal.closed(1)
    assert await wait_for(lambda: image.value(prefix + "power_1") == 0.0, 5)
    assert image.value(prefix + "power_2") > 0


async def test_server_gone_is_a_fault_and_the_bus_reconnects(tmp_path, running) -> None:
    port = free_port()
    config = lct_config(tmp_path, port)
    sim, plant, image = await running(config)
    bus = plant.bus("lct")
    prefix = "buses/lct/devices/t1/"
    assert await wait_for(lambda: image.value(prefix + "power_total") is not None, 10)
    await sim.modbus["lct"].stop()
    assert await wait_for(lambda: image.get(prefix + "power_total").quality is Quality.BAD, 10)
    assert "bus down" in image.get(prefix + "power_total").reason
    assert not bus._task.done()
    from drivers.sim.modbus_device import ModbusDeviceServer

    server = ModbusDeviceServer("127.0.0.1", port, sim.modbus["lct"].devices)
    sim.modbus["lct"] = server
    await server.start()
    try:
        assert await wait_for(lambda: image.get(prefix + "power_total").quality is Quality.GOOD, 15)
    finally:
        await server.stop()
    await asyncio.sleep(0)
