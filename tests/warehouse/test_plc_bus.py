"""The warehouse PLC as a bus: tags and metrics, quarantine, and scans that never wait.

Real sockets on 127.0.0.1: the simulated PLC over Modbus TCP, and for the dead
PLC a TCP relay in front of it that can stop forwarding (the PLC's link stays
up, it just does not answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Callable

from controller.config import GridConfig
from controller.cycle import CycleTask
from controller.process_image import ProcessImage, Quality
from controller.quality_reason import Reason
from controller.warehouse.config import WarehouseConfig
from controller.warehouse.crane import CraneExecutor
from controller.warehouse.inventory import open_db
from controller.warehouse.plant_io import PlcImageIO, crane_base
from controller.warehouse.service import Warehouse
from drivers.config import Quarantine
from drivers.plant import WAREHOUSE_PLC_BUS, FieldPlant
from drivers.warehouse_plc import WarehousePlcBus

from .harness import Alarms, manifest, sim_plant
from .test_modbus import FAST, _serve, free_port

PREFIX = "buses/warehouse_plc/devices/plc/"


async def _until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)


class Relay:
    """A TCP relay to the PLC that can go silent: bytes in, nothing out."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.silent = False
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while data := await src.read(4096):
                    if not self.silent:
                        dst.write(data)
                        await dst.drain()

        await asyncio.gather(pump(r, uw), pump(ur, w))
        w.close()
        uw.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


def test_field_plant_builds_the_plc_bus_from_the_warehouse_config():
    port = free_port()
    cfg = GridConfig.model_validate(
        {"warehouse": {**FAST, "plc": f"tcp://127.0.0.1:{port}", "poll_s": 0.02}}
    )
    plant = FieldPlant(cfg, ProcessImage())
    bus = plant.bus(WAREHOUSE_PLC_BUS)
    assert isinstance(bus, WarehousePlcBus)
    assert (bus.host, bus.port, bus.aisles) == ("127.0.0.1", port, 1)
    # no [warehouse] table: no PLC bus
    assert WAREHOUSE_PLC_BUS not in FieldPlant(GridConfig.model_validate({}), ProcessImage()).buses


async def test_plc_bus_tags_and_metrics_carry_the_plcs_values():
    cfg = WarehouseConfig.model_validate(FAST)
    plant = sim_plant(cfg)
    # the plant's state set by hand: crane at bay 5 level 3, aisle door open, a box at the induct
    plant.cranes[0].x, plant.cranes[0].y = 5.4, 1.6
    plant.set_door(1, True)
    plant.inject_box(1, "NB00007")
    server, task, port = await _serve(plant)
    image = ProcessImage()
    bus = WarehousePlcBus(
        "warehouse_plc", image, host="127.0.0.1", port=port, aisles=1, poll_s=0.01
    )
    await bus.start()
    try:
        await _until(lambda: image.value(PREFIX + "online") is True, "PLC online")
        crane = {f: image.value(PREFIX + "cranes/1/" + f) for f in ("x", "y", "state", "fault")}
        # 5.4 m and 1.6 m are 540 and 160 cm on the wire, read back in metres;
        # an idle crane with its door open is STOPPED (4) with fault DOOR (4)
        assert crane == {"x": 5.4, "y": 1.6, "state": 4, "fault": 4}
        assert image.value(PREFIX + "cranes/1/door_open") is True
        assert image.value(PREFIX + "cranes/1/fork_loaded") is False
        # the induct (zone 0 of 3) is blocked: eye bitmap 0b001; the reader read the box once
        conv = {
            f: image.value(PREFIX + "conveyors/1-in/" + f)
            for f in ("zones", "eyes", "motors", "read_count", "read_barcode")
        }
        assert conv == {
            "zones": 3,
            "eyes": 1,
            "motors": 0,
            "read_count": 1,
            "read_barcode": "NB00007",
        }
        assert image.value(PREFIX + "conveyors/1-out/eyes") == 0
        assert image.get(PREFIX + "handover/ack_seq").quality is Quality.GOOD
        snap = bus.snapshot()
        assert (snap.name, snap.protocol, snap.connected) == ("warehouse_plc", "modbus_tcp", True)
        assert (snap.meters_total, snap.meters_quarantined) == (1, 0)
        # one poll = 4 block reads (crane, inbound, outbound, hand-over), all answered
        assert snap.transactions["ok"] % 4 == 0 and snap.transactions["ok"] > 0
        assert "timeout" not in snap.transactions
        # a command on the control lane is confirmed by its read-back: the accepted seq
        base = crane_base(1)
        plant.set_door(1, False)
        seen = await bus.write(base + 20, [4, 0, 0, 0, 9], (base + 16, [9]))
        assert seen == [9]
        assert plant.cranes[0].ack_seq == 9
    finally:
        await bus.stop()
        await server.shutdown()
        task.cancel()


async def test_a_silent_plc_is_quarantined_and_the_cranes_hold(tmp_path):
    cfg = WarehouseConfig.model_validate(FAST)
    plant = sim_plant(cfg)
    server, task, port = await _serve(plant)
    relay = Relay(port)
    image = ProcessImage()
    bus = WarehousePlcBus(
        "warehouse_plc",
        image,
        host="127.0.0.1",
        port=await relay.start(),
        aisles=1,
        poll_s=0.01,
        response_timeout_s=0.1,
        retries=0,
        quarantine=Quarantine(initial_s=0.5, max_s=0.5),
    )
    await bus.start()
    io = PlcImageIO(bus)
    alarms = Alarms()
    wh = Warehouse(cfg, open_db(str(tmp_path / "wh.db")), io, image=image, alarms=alarms)
    cycle = CycleTask("fast", 0.01)
    try:
        await _until(lambda: not io.unavailable(), "PLC online")
        await wh.start(cycle=cycle)
        cycle.start()
        order = wh.submit("inbound", manifest("NB", 2))
        plant.inject_box(1, "NB00000")
        plant.inject_box(1, "NB00001")
        ex = wh.cranes[1]
        # the crane is under way with the first box
        await _until(lambda: ex.current != [], "a crane task started")
        relay.silent = True
        await _until(lambda: bus.quarantined("plc"), "PLC quarantined")
        await _until(lambda: ex.status is None, "crane status Bad")
        state = image.get(PREFIX + "cranes/1/state")
        assert state.quality is Quality.BAD
        assert state.code in (Reason.NO_ANSWER, Reason.QUARANTINED)
        assert bus.snapshot().meters_quarantined == 1
        assert image.get("warehouse/cranes/1/state").quality is Quality.BAD
        await _until(
            lambda: image.get("warehouse/conveyors/1-in/eyes").quality is Quality.BAD,
            "conveyor tags Bad",
        )
        assert "not answering" in io.unavailable()
        assert ("warehouse/cranes/1", "plc") in alarms.active
        # safe state: scans go on, no command block is written while the PLC is silent
        mark = asyncio.get_running_loop().time()  # the wire log's clock
        scans = ex.scan_time.count
        await _until(lambda: ex.scan_time.count >= scans + 50, "50 more crane scans")
        assert [r for r in bus.wire_log if r.function == 16 and r.sent > mark] == []
        # the PLC answers again: out of quarantine, the order completes
        relay.silent = False
        await _until(lambda: not io.unavailable(), "PLC answering again", timeout=15.0)
        await _until(
            lambda: wh.order(order).state.value == "completed", "order completed", timeout=30.0
        )
        assert ("warehouse/cranes/1", "plc") not in alarms.active
        wh.check_running()
    finally:
        await cycle.stop()
        await wh.stop()
        await bus.stop()
        await relay.stop()
        await server.shutdown()
        task.cancel()


async def test_a_crane_scan_returns_at_once_with_a_dead_plc_and_is_measured(tmp_path):
    assert not inspect.iscoroutinefunction(CraneExecutor.scan)
    cfg = WarehouseConfig.model_validate(FAST)
    plant = sim_plant(cfg)
    server, task, port = await _serve(plant)
    image = ProcessImage()
    bus = WarehousePlcBus(
        "warehouse_plc", image, host="127.0.0.1", port=port, aisles=1, poll_s=0.01
    )
    await bus.start()
    io = PlcImageIO(bus)
    wh = Warehouse(cfg, open_db(str(tmp_path / "wh.db")), io, image=image, alarms=Alarms())
    cycle = CycleTask("fast", 0.01)
    try:
        await _until(lambda: not io.unavailable(), "PLC online")
        await wh.start(cycle=cycle)
        cycle.start()
        await _until(lambda: cycle.cycles >= 20, "20 cycles")
        await cycle.stop()
        ex = wh.cranes[1]
        # every cycle scanned the crane once; the count is exported per program
        assert ex.scan_time.count == cycle.cycles
        wh._stats_at = -1e18  # the tags are written once a second: write them now
        wh._program_stats()
        assert image.value("warehouse/programs/crane-1/scans") == cycle.cycles
        assert image.value("warehouse/programs/conveyor-1-in/scans") == cycle.cycles
        # the longest scan of the last interval is one of the measured scans
        assert image.value("warehouse/programs/crane-1/scan_max_s") in ex.scan_time.recent()
        # the PLC dies: the link goes down, its tags Bad
        await server.shutdown()
        task.cancel()
        await _until(lambda: io.unavailable() != "", "PLC down")
        order = wh.submit("inbound", manifest("NB", 1))
        before = ex.scan_time.count
        wire = len(bus.wire_log)
        for _ in range(100):
            # a plain call that returns: nothing to await, nothing on the wire
            assert ex.scan() is None
        assert ex.scan_time.count == before + 100
        assert len(bus.wire_log) == wire
        assert ex.status is None and ex.current == []
        assert wh.order(order).state.value == "released"
    finally:
        await cycle.stop()
        await wh.stop()
        await bus.stop()
        with contextlib.suppress(Exception):
            await server.shutdown()
        task.cancel()
