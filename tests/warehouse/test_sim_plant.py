"""The simulated warehouse PLC as a witness: its own geometry, kinematics and stock.

Expected values are worked out by hand in the comments; the controller's rack
model is never asked.
"""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from controller.virtual_time import run_virtual
from controller.warehouse.config import WarehouseConfig
from controller.warehouse.crane import CraneDriver, CraneStatus
from controller.warehouse.plant_io import (
    CODE_REGS,
    SCAN_BASE,
    CraneState,
    LocalPlantIO,
    Op,
    Result,
    crane_base,
    decode_code,
)
from controller.warehouse.rack import Location
from drivers.sim.warehouse import WarehousePlant, WarehouseServer
from drivers.sim.warehouse_model import (
    Spot,
    WarehouseModel,
    axis_distance,
    axis_travel_time,
    demo_stock,
)
from drivers.warehouse_plc_map import C_X

from .harness import close_plc, open_plc, sim_plant
from .test_modbus import _serve

ROOT = Path(__file__).resolve().parents[2]

# two aisles, a geometry unlike the defaults (1.2 m bays, 0.8 m levels), fast cranes
WIDE = dict(
    rows=4,
    bays=6,
    levels=5,
    bay_width_m=1.5,
    level_height_m=0.6,
    cranes=[dict(vx_m_s=10.0, ax_m_s2=20.0, vy_m_s=5.0, ay_m_s2=20.0, fork_cycle_s=0.1)] * 2,
    inbound=dict(zones=3, zone_travel_s=0.05, jam_timeout_s=2.0),
    outbound=dict(zones=3, zone_travel_s=0.05, jam_timeout_s=2.0),
)


def _model(table: dict) -> WarehouseModel:
    return WarehouseModel.from_table(table)


def test_simulator_imports_nothing_from_the_controller():
    code = (
        "import sys, drivers.sim.warehouse, drivers.sim.warehouse_model;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'controller'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_slot_positions_from_the_simulators_geometry():
    m = _model(WIDE)
    # x = (bay − ½)·1.5 m, y = (level − 1)·0.6 m; both rows of an aisle face the same point
    assert m.position(Spot(1, 1, 1)) == pytest.approx((0.75, 0.0))  # ½·1.5, 0·0.6
    assert m.position(Spot(4, 3, 5)) == pytest.approx((3.75, 2.4))  # 2.5·1.5, 4·0.6
    assert m.position(Spot(3, 3, 5)) == pytest.approx((3.75, 2.4))
    assert m.position(Spot(2, 6, 2)) == pytest.approx((8.25, 0.6))  # 5.5·1.5, 1·0.6
    assert m.position(Spot(0, 2, 1)) == (0.0, 0.0)  # aisle 2's inbound station
    # and back: the slot column a crane standing there faces, none between slots
    assert m.bay_level_at(3.75, 2.4) == (3, 5)
    assert m.bay_level_at(8.25, 0.6) == (6, 2)
    assert m.bay_level_at(3.0, 2.4) is None  # half a bay off
    assert m.bay_level_at(0.0, 0.0) is None  # the station is no slot
    # rows 3 and 4 belong to aisle 2; a station carries its aisle in the bay word
    assert (Spot(3, 1, 1).aisle, Spot(4, 1, 1).aisle, Spot(0, 2, 2).aisle) == (2, 2, 2)
    assert Spot(4, 3, 5).code == "R04-B003-L05" and Spot(0, 2, 2).code == "A2-OUT"
    assert m.contains(Spot(4, 6, 5)) and not m.contains(Spot(5, 1, 1))
    assert not m.contains(Spot(1, 7, 1)) and not m.contains(Spot(0, 3, 1))


def test_axis_travel_time_and_distance_by_hand():
    # v = 3 m/s, a = 0.5 m/s²: each ramp takes v/a = 6 s and covers v²/2a = 9 m
    assert axis_travel_time(30.0, 3.0, 0.5) == pytest.approx(16.0)  # 6 + (30 − 18)/3 + 6
    assert axis_travel_time(-30.0, 3.0, 0.5) == pytest.approx(16.0)
    # 8 m < 18 m: no cruise, peak √(0.5·8) = 2 m/s after 4 s, 8 s in all
    assert axis_travel_time(8.0, 3.0, 0.5) == pytest.approx(8.0)
    assert axis_travel_time(0.0, 3.0, 0.5) == 0.0
    assert axis_distance(30.0, 3.0, 0.5, 6.0) == pytest.approx(9.0)  # end of the ramp
    assert axis_distance(30.0, 3.0, 0.5, 8.0) == pytest.approx(15.0)  # 9 + 3·2
    assert axis_distance(30.0, 3.0, 0.5, 15.0) == pytest.approx(29.75)  # 30 − ½·0.5·1²
    assert axis_distance(-8.0, 3.0, 0.5, 4.0) == pytest.approx(-4.0)  # ½·0.5·4²
    assert axis_distance(8.0, 3.0, 0.5, 99.0) == 8.0


def test_crane_move_timing_and_registers_in_virtual_time():
    # default crane (vx 3, ax 0.5, vy 1, ay 0.5), default rack (1.2 m bays, 0.8 m levels)
    plant = sim_plant(WarehouseConfig.model_validate({}))

    async def scenario() -> tuple[list[int], list[int], CraneStatus, float]:
        loop = asyncio.get_running_loop()
        io = LocalPlantIO(plant)
        watcher = io.watcher()
        drv = CraneDriver(io, 1)
        t0 = loop.time()
        seq = await drv.command(Op.MOVE, Location(2, 20, 8))
        await asyncio.sleep(6.0)
        mid = await io.read(crane_base(1) + C_X, 2)
        await asyncio.sleep(7.7)  # t = 13.7 s
        late = await io.read(crane_base(1), 1)
        while (st := await drv.status()).done_seq != seq:
            await watcher.wait(60.0)
        return mid, late, st, loop.time() - t0

    mid, late, st, took = run_virtual(scenario())
    # x: 23.4 m = 19.5·1.2; ramps cover 9 m each (v²/a = 18 ≤ 23.4), so 23.4/3 + 3/0.5 = 13.8 s
    # y: 5.6 m = 7·0.8; ramps cover 1 m each, 5.6/1 + 1/0.5 = 7.6 s; the move takes 13.8 s
    assert took == pytest.approx(13.8)
    assert late == [CraneState.MOVING]
    # at 6 s: x at the end of its ramp, ½·0.5·6² = 9 m; y braking since 5.6 s,
    # 5.6 − ½·0.5·(7.6 − 6)² = 5.6 − 0.64 = 4.96 m; registers count cm
    assert mid == [900, 496]
    assert (st.state, st.done_result, st.x, st.y) == (CraneState.IDLE, Result.OK, 23.4, 5.6)


async def _until_done(drv: CraneDriver, seq: int) -> CraneStatus:
    for _ in range(500):
        st = await drv.status()
        if st.done_seq == seq:
            return st
        await asyncio.sleep(0.01)
    raise AssertionError(f"crane {drv.aisle}: command {seq} not done within 5 s")


async def test_controller_move_arrives_at_the_slot_of_the_simulators_geometry():
    plant = sim_plant(WarehouseConfig.model_validate(WIDE))
    plant.place_foreign_box(Spot(3, 2, 1), "BOX42")  # stocked by hand on the plant side
    server, task, port = await _serve(plant)
    io = await open_plc(port, 2, poll_s=0.01)
    try:
        drv = CraneDriver(io, 2)
        st = await _until_done(drv, await drv.command(Op.PICK, Location(3, 2, 1)))
        assert (st.done_result, st.fork_code) == (Result.OK, "BOX42")
        # aisle 2's crane stops facing bay 2, level 1: (2 − ½)·1.5 = 2.25 m, 0 m
        assert (st.x, st.y) == (2.25, 0.0)
        st = await _until_done(drv, await drv.command(Op.PUT, Location(4, 3, 5)))
        assert st.done_result is Result.OK and not st.fork_loaded
        # (3 − ½)·1.5 = 3.75 m along, (5 − 1)·0.6 = 2.4 m up, as the controller reads it...
        assert (st.x, st.y) == (3.75, 2.4)
        # ...and where the plant's crane physically is, and which slot it faces
        crane = plant.cranes[1]
        assert (crane.x, crane.y) == pytest.approx((3.75, 2.4))
        assert plant.model.bay_level_at(crane.x, crane.y) == (3, 5)
        assert plant.slots == {Spot(4, 3, 5): "BOX42"}
        # the rack reader finds the box at that slot over the wire
        await io.write(SCAN_BASE, [4, 3, 5])
        r = await io.read(SCAN_BASE + 3, 1 + CODE_REGS)
        assert (r[0], decode_code(r[1:])) == (1, "BOX42")
        # a slot outside this rack's 6 bays is refused by the PLC, the crane stays
        st = await _until_done(drv, await drv.command(Op.MOVE, Location(4, 7, 1)))
        assert (st.done_result, st.x, st.y) == (Result.BAD_TARGET, 3.75, 2.4)
    finally:
        await close_plc(io)
        await server.shutdown()
        task.cancel()


def test_demo_stock_fills_lowest_level_nearest_bay_first():
    m = _model(dict(rows=2, bays=3, levels=2))
    # level 1 first, bay by bay, both rows of a bay in row order
    assert demo_stock(m, 5) == [
        ("NEW00000", Spot(1, 1, 1)),
        ("NEW00001", Spot(2, 1, 1)),
        ("NEW00002", Spot(1, 2, 1)),
        ("NEW00003", Spot(2, 2, 1)),
        ("NEW00004", Spot(1, 3, 1)),
    ]
    assert demo_stock(m, 0) == []
    assert demo_stock(m, 12)[-1] == ("NEW00011", Spot(2, 3, 2))  # 2·3·2 = 12 slots
    with pytest.raises(ValueError, match=r"demo_boxes: must be 0\.\.12 .*got 13"):
        demo_stock(m, 13)


def test_server_starts_with_the_stock_it_is_given():
    m = _model(dict(rows=2, bays=3, levels=2))
    server = WarehouseServer(m, "127.0.0.1", 0, demo_stock(m, 2))
    assert server.plant.slots == {Spot(1, 1, 1): "NEW00000", Spot(2, 1, 1): "NEW00001"}
    with pytest.raises(ValueError, match="stock: X at R01-B004-L01 is not a slot"):
        WarehouseServer(m, "127.0.0.1", 0, [("X", Spot(1, 4, 1))])


def test_model_from_a_controller_table_ignores_controller_keys():
    table = WarehouseConfig.model_validate(WIDE).model_dump()
    assert "poll_s" in table and "plc" in table  # the controller's own keys are there too
    m = _model(table)
    assert (m.rows, m.bays, m.levels, m.bay_width_m, m.level_height_m) == (4, 6, 5, 1.5, 0.6)
    assert m.aisles == 2 and m.crane(2).fork_cycle_s == 0.1
    assert (m.inbound.zones, m.outbound.zone_travel_s) == (3, 0.05)
    # a plant nobody described is the demo plant: 2 rows × 20 bays × 8 levels, 4-zone conveyors
    d = _model({})
    assert (d.slot_count, d.bay_width_m, d.level_height_m, d.inbound.zones) == (320, 1.2, 0.8, 4)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"bays": 0}, r"warehouse\.bays: must be an integer 1\.\.65535, got 0"),
        ({"rows": 3, "cranes": [{}]}, r"warehouse\.rows: must be even"),
        ({"rows": 4}, r"warehouse\.cranes: one per aisle, expected 2 for 4 rows, got 1"),
        ({"bay_width_m": -1.2}, r"warehouse\.bay_width_m: must be a finite number > 0, got -1\.2"),
        (
            {"cranes": [{"vx_m_s": "fast"}]},
            r"warehouse\.cranes\.0\.vx_m_s: must be a finite number > 0, got 'fast'",
        ),
        ({"inbound": {"zones": 17}}, r"warehouse\.inbound\.zones: must be an integer 2\.\.16"),
    ],
)
def test_bad_plant_description_names_the_key_and_range(table, message):
    with pytest.raises(ValueError, match=message):
        _model(table)


def test_cli_refuses_a_bad_plant_description():
    out = subprocess.run(
        [sys.executable, "-m", "drivers.sim.warehouse", "--config", json.dumps({"levels": 0})],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "--config: warehouse.levels: must be an integer 1..65535, got 0" in out.stderr


def test_rows_of_one_aisle_share_a_crane_position():
    # the plant only ever moves crane k for rows 2k-1 and 2k: a target in the other aisle
    # is refused without motion
    async def scenario() -> Result:
        plant = WarehousePlant(_model(WIDE))
        drv = CraneDriver(LocalPlantIO(plant), 1)
        seq = await drv.command(Op.MOVE, Location(3, 1, 1))
        st = await drv.status()
        assert st.done_seq == seq and (st.x, st.y) == (0.0, 0.0)
        return st.done_result

    assert run_virtual(scenario()) is Result.BAD_TARGET
