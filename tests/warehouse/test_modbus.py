"""The same service over Modbus TCP to the simulated PLC, in real (fast) time."""

import asyncio
import socket

from controller.warehouse.config import WarehouseConfig
from controller.warehouse.crane import CraneDriver
from controller.warehouse.inventory import open_db
from controller.warehouse.plant_io import CraneState, Op, Result
from controller.warehouse.rack import Location
from controller.warehouse.service import Warehouse
from drivers.sim.warehouse import WarehousePlant, make_modbus_server

from .harness import Alarms, close_plc, manifest, open_plc, sim_plant

FAST = dict(
    rows=2,
    bays=5,
    levels=3,
    cranes=[dict(vx_m_s=10.0, ax_m_s2=20.0, vy_m_s=5.0, ay_m_s2=20.0, fork_cycle_s=0.1)],
    inbound=dict(zones=3, zone_travel_s=0.05, jam_timeout_s=2.0),
    outbound=dict(zones=3, zone_travel_s=0.05, jam_timeout_s=2.0),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _serve(plant: WarehousePlant):
    port = free_port()
    server = make_modbus_server(plant, "127.0.0.1", port)
    task = asyncio.create_task(server.serve_forever())
    for _ in range(100):
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            break
        except OSError:
            await asyncio.sleep(0.02)
    return server, task, port


async def test_crane_command_over_modbus():
    cfg = WarehouseConfig.model_validate(FAST)
    plant = sim_plant(cfg)
    server, task, port = await _serve(plant)
    io = await open_plc(port, 1, poll_s=0.01)
    try:
        drv = CraneDriver(io, 1)
        st = await drv.status()
        assert st.state is CraneState.IDLE and not st.fork_loaded
        seq = await drv.command(Op.MOVE, Location(1, 5, 3))
        await asyncio.sleep(0.05)
        assert (await drv.status()).state is CraneState.MOVING
        for _ in range(200):
            st = await drv.status()
            if st.done_seq == seq:
                break
            await asyncio.sleep(0.01)
        assert st.done_result is Result.OK
        assert (st.x, st.y) == (5.4, 1.6)  # (5 − ½)·1.2 m, (3 − 1)·0.8 m
        # picking from an empty slot is refused by the PLC
        seq = await drv.command(Op.PICK, Location(1, 5, 3))
        for _ in range(100):
            st = await drv.status()
            if st.done_seq == seq:
                break
            await asyncio.sleep(0.01)
        assert st.done_result is Result.REFUSED_EMPTY
    finally:
        await close_plc(io)
        await server.shutdown()
        task.cancel()


async def test_service_over_modbus_stores_boxes(tmp_path):
    cfg = WarehouseConfig.model_validate(FAST)
    plant = sim_plant(cfg)
    server, task, port = await _serve(plant)
    io = await open_plc(port, 1, poll_s=0.01)
    wh = Warehouse(cfg, open_db(str(tmp_path / "wh.db")), io, alarms=Alarms())
    try:
        await wh.start()
        order = wh.submit("inbound", manifest("NB", 4))
        for i in range(4):
            plant.inject_box(1, f"NB{i:05d}")
        for _ in range(1500):
            wh.check_running()
            if wh.order(order).state.value == "completed":
                break
            await asyncio.sleep(0.01)
        assert wh.order(order).state.value == "completed"
        census = plant.census()
        journal = {b.barcode: b.location for b in wh.inv.boxes()}
        assert {c: p[0] for c, p in census.items()} == journal
        report = await wh.count()
        assert report == {"slots": 30, "differences": []}
    finally:
        await wh.stop()
        await close_plc(io)
        await server.shutdown()
        task.cancel()
