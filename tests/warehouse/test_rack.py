import math

import pytest

from controller.warehouse.config import (
    ConfigError,
    CraneConfig,
    WarehouseConfig,
    load_warehouse_config,
)
from controller.warehouse.rack import (
    AllocationError,
    BoxClass,
    BoxInfo,
    Location,
    Rack,
    axis_position,
    axis_time,
    fifo_select,
    position,
    travel_time,
)


def test_axis_time_trapezoid_and_triangle_hand_checked():
    # v=3 m/s, a=0.5 m/s²: cruise needs d >= v²/a = 18 m
    assert axis_time(30.0, 3.0, 0.5) == pytest.approx(30 / 3 + 3 / 0.5)  # 16 s
    assert axis_time(8.0, 3.0, 0.5) == pytest.approx(2 * math.sqrt(8 / 0.5))  # 8 s
    # both branches meet at the boundary: 18/3 + 6 = 12 = 2·√36
    assert axis_time(18.0, 3.0, 0.5) == pytest.approx(12.0)
    assert axis_time(-8.0, 3.0, 0.5) == pytest.approx(8.0)
    assert axis_time(0.0, 3.0, 0.5) == 0.0


def test_axis_position_follows_profile():
    d, v, a = 30.0, 3.0, 0.5
    assert axis_position(d, v, a, 0.0) == 0.0
    assert axis_position(d, v, a, 6.0) == pytest.approx(9.0)  # end of acceleration: v²/2a
    assert axis_position(d, v, a, 8.0) == pytest.approx(15.0)  # half way at half time
    assert axis_position(d, v, a, 16.0) == pytest.approx(30.0)
    assert axis_position(-d, v, a, 8.0) == pytest.approx(-15.0)
    # triangle: 8 m, peaks at t=4 with 4 m covered
    assert axis_position(8.0, v, a, 4.0) == pytest.approx(4.0)


def test_leg_time_is_max_of_axes():
    crane = CraneConfig(vx_m_s=3.0, ax_m_s2=0.5, vy_m_s=1.0, ay_m_s2=0.5)
    # x: 30 m -> 16 s; y: 4 m -> triangle 2√8 = 5.657 s
    assert travel_time(crane, (0, 0), (30, 4)) == pytest.approx(16.0)
    # x: 2 m -> 2√4 = 4 s; y: 10 m, v²/a=2 -> 10/1 + 2 = 12 s
    assert travel_time(crane, (0, 0), (2, 10)) == pytest.approx(12.0)


def test_slot_positions_and_codes():
    cfg = WarehouseConfig(rows=2, bays=10, levels=5, bay_width_m=1.0, level_height_m=0.5)
    assert position(cfg, Location(1, 1, 1)) == (0.5, 0.0)
    assert position(cfg, Location(2, 10, 5)) == (9.5, 2.0)
    assert Location(1, 3, 2).code == "R01-B003-L02"
    assert Location.parse("R01-B003-L02") == Location(1, 3, 2)
    assert Location.parse("A1-IN") == Location.station(1, 1)
    assert Location.station(1, 2).code == "A1-OUT"
    with pytest.raises(ValueError, match="location code 'X9'"):
        Location.parse("X9")


def test_nearest_empty_by_travel_time_and_reservation():
    cfg = WarehouseConfig(rows=2, bays=10, levels=5)
    rack = Rack(cfg)
    first = rack.nearest_empty(1)
    assert first.bay == 1 and first.level == 1
    rack.reserve(first, task_id=7)
    second = rack.nearest_empty(1)
    assert second != first
    # travel times never decrease along the allocation order
    crane = cfg.cranes[0]
    t1 = travel_time(crane, (0, 0), position(cfg, first))
    t2 = travel_time(crane, (0, 0), position(cfg, second))
    assert t2 >= t1
    with pytest.raises(AllocationError, match="reserved_by=7"):
        rack.reserve(first, task_id=8)
    rack.release(first, 7)
    assert rack.slot(first).free


def test_full_rack_refuses():
    cfg = WarehouseConfig(rows=2, bays=1, levels=1)
    rack = Rack(cfg)
    for s in rack.slots.values():
        s.box = "X"
    with pytest.raises(AllocationError, match="no free slot"):
        rack.nearest_empty(1)


def test_fifo_by_verification_date_for_qualified():
    boxes = [
        BoxInfo("B1", BoxClass.QUALIFIED, "R01-B001-L01", arrived_at=1, verified_at=30),
        BoxInfo("B2", BoxClass.QUALIFIED, "R01-B002-L01", arrived_at=2, verified_at=10),
        BoxInfo("B3", BoxClass.UNVERIFIED, "R01-B003-L01", arrived_at=0),
        BoxInfo("B4", BoxClass.QUALIFIED, "A1-IN", arrived_at=0, verified_at=1),  # not in a slot
        BoxInfo("B5", BoxClass.QUALIFIED, "R02-B001-L01", arrived_at=0, verified_at=5, order_id=3),
    ]
    assert [b.barcode for b in fifo_select(boxes, BoxClass.QUALIFIED, 5)] == ["B2", "B1"]
    assert [b.barcode for b in fifo_select(boxes, BoxClass.UNVERIFIED, 5)] == ["B3"]


def test_config_errors_name_field_and_range():
    with pytest.raises(ConfigError, match=r"warehouse\.bays: .*allowed: >= 1 and <= 500.*got 0"):
        load_warehouse_config({"bays": 0})
    with pytest.raises(
        ConfigError, match=r"warehouse\.cranes\.0\.vx_m_s.*allowed: > 0.0 and <= 50.0"
    ):
        load_warehouse_config({"cranes": [{"vx_m_s": 51}]})
    with pytest.raises(ConfigError, match=r"warehouse\.colour: Extra inputs"):
        load_warehouse_config({"colour": "red"})
    with pytest.raises(ConfigError, match="one per aisle, expected 2"):
        load_warehouse_config({"rows": 4})
    cfg = load_warehouse_config({"rows": 4, "cranes": [{}, {}]})
    assert cfg.aisles == 2 and cfg.slot_count == 4 * 20 * 8
