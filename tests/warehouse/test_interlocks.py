import asyncio

from controller.virtual_time import run_virtual
from controller.warehouse.conveyor import HOLD, plan_motors
from controller.warehouse.plant_io import CraneState, Op
from controller.warehouse.rack import Location

from .harness import Rig, manifest, spot


async def _stock(rig: Rig, n: int, prefix: str = "NB") -> int:
    order = rig.wh.submit("inbound", manifest(prefix, n))
    for i in range(n):
        rig.plant.inject_box(1, f"{prefix}{i:05d}")
    await rig.wait_for(lambda: rig.order_state(order) == "completed")
    return order


async def _until_moving(rig: Rig) -> None:
    await rig.wait_for(lambda: rig.plant.cranes[0].state is CraneState.MOVING, step=0.1)


def test_zero_pressure_plan_hand_checked():
    a, b = "A", "B"
    # loads in 0 and 1, 2 and 3 empty: only 1 may release (into 2); 0 waits for an empty zone
    assert plan_motors([True, True, False, False], [a, b, None, None], set(), False) == 0b0110
    # 3 is the inbound dead end: nothing releases from it; 2 cannot release into it
    assert plan_motors([False, False, True, True], [None, None, a, b], set(), False) == 0
    # outbound discharge end releases when the sink is ready
    assert plan_motors([False, False, False, True], [None, None, None, a], set(), True) == 0b1000
    # unidentified (held) loads never move
    assert plan_motors([True, False, False, False], [HOLD, None, None, None], set(), False) == 0
    # a locked station (fork inside) neither releases nor receives
    assert plan_motors([False, False, True, False], [None, None, a, None], {3}, False) == 0
    assert plan_motors([True, False, False, False], [a, None, None, None], {0}, True) == 0


def test_door_open_stops_crane_alarms_holds_and_resumes_after_reset():
    async def scenario():
        rig = Rig()
        wh = rig.wh
        await wh.start()
        order = wh.submit("inbound", manifest("NB", 1))
        rig.plant.inject_box(1, "NB00000")
        await _until_moving(rig)
        await asyncio.sleep(0.5)
        rig.plant.set_door(1, True)
        await asyncio.sleep(1.0)
        assert rig.plant.cranes[0].state is CraneState.STOPPED
        assert "door" in rig.alarms.kinds()
        (task,) = wh.inv.open_tasks()
        assert task.state == "held"
        await asyncio.sleep(60)
        assert rig.order_state(order) == "in_progress"  # nothing moves while the door is open
        await wh.reset_crane(1)  # refused by the PLC while the door is open
        await asyncio.sleep(1)
        assert rig.plant.cranes[0].state is CraneState.STOPPED
        rig.plant.set_door(1, False)
        await wh.reset_crane(1)
        await rig.wait_for(lambda: rig.order_state(order) == "completed")
        rig.check_consistent()
        assert wh.inv.box("NB00000").location.startswith("R")
        await wh.stop()

    run_virtual(scenario())


def test_crane_fault_mid_move_holds_task_until_reset_no_box_lost():
    async def scenario():
        rig = Rig()
        wh = rig.wh
        await wh.start()
        await _stock(rig, 3)
        feed = wh.request_batch("B", 1)
        await _until_moving(rig)
        await asyncio.sleep(0.3)
        rig.plant.crane_fault(1)
        await asyncio.sleep(1)
        assert "fault" in rig.alarms.kinds()
        (task,) = wh.inv.open_tasks()
        assert task.state == "held"
        rig.check_consistent()
        await asyncio.sleep(30)
        assert rig.order_state(feed.order_id) != "completed"
        await wh.reset_crane(1)
        await rig.wait_for(lambda: rig.order_state(feed.order_id) == "completed")
        rig.check_consistent()
        await wh.stop()

    run_virtual(scenario())


def test_foreign_box_in_slot_journal_thinks_empty_is_refused_and_box_goes_elsewhere():
    async def scenario():
        rig = Rig()
        wh = rig.wh
        await wh.start()
        target = wh.rack.nearest_empty(1)
        rig.plant.place_foreign_box(spot(target), "FOREIGN")
        order = wh.submit("inbound", manifest("NB", 1))
        rig.plant.inject_box(1, "NB00000")
        await rig.wait_for(lambda: rig.order_state(order) == "completed")
        assert "slot_occupied:" + target.code in rig.alarms.kinds()
        assert wh.rack.slot(target).blocked
        box = wh.inv.box("NB00000")
        assert box.location.startswith("R") and box.location != target.code
        assert rig.plant.slots[spot(target)] == "FOREIGN"
        # the count finds the foreign box
        report = await wh.count()
        assert report["differences"] == [{"slot": target.code, "journal": None, "scan": "FOREIGN"}]
        await wh.stop()

    run_virtual(scenario())


def test_journal_refuses_fork_into_occupied_or_foreign_reserved_slot():
    async def scenario():
        rig = Rig()
        wh = rig.wh
        await wh.start()
        ex = wh.cranes[1]
        from controller.warehouse.inventory import TaskRow

        task = TaskRow(
            99, None, 1, "store", "X", "A1-IN", "R01-B001-L01", 0, "active", "picked", 0.0
        )
        slot = wh.rack.slot(Location(1, 1, 1))
        slot.box = "OTHER"
        assert "holds box OTHER" in ex._refusal(Op.PUT, Location(1, 1, 1), task)
        slot.box, slot.reserved_by = None, 5
        assert "reserved by task 5" in ex._refusal(Op.PUT, Location(1, 1, 1), task)
        slot.reserved_by = 99
        assert ex._refusal(Op.PUT, Location(1, 1, 1), task) is None
        # transfer stations: occupied or moving
        out = wh.outbound[1]
        out.eyes[0] = True
        assert "occupied" in ex._refusal(Op.PUT, Location.station(1, 2), task)
        out.eyes[0], out.motors = False, 1
        assert "moving" in ex._refusal(Op.PUT, Location.station(1, 2), task)
        inb = wh.inbound[1]
        assert "nothing at the transfer station" in ex._refusal(
            Op.PICK, Location.station(1, 1), task
        )
        inb.eyes[-1], inb.motors = True, 1 << (inb.n - 1)
        assert "moving" in ex._refusal(Op.PICK, Location.station(1, 1), task)
        await wh.stop()

    run_virtual(scenario())


def test_outbound_station_occupied_blocks_put_until_clear():
    async def scenario():
        rig = Rig()
        wh = rig.wh
        await wh.start()
        await _stock(rig, 2)
        rig.plant.jam(1, True, 0)  # the drop-off station's load will not move off
        feed = wh.request_batch("B", 2)
        await asyncio.sleep(600)
        assert rig.order_state(feed.order_id) != "completed"
        assert any("transfer station occupied" in e[5] for e in wh.inv.events("interlock"))
        assert "jam" in rig.alarms.kinds()
        rig.check_consistent()
        assert rig.plant.cranes[0].fork is not None  # second box waits on the fork
        rig.plant.jam(1, True, 0, stuck=False)
        await rig.wait_for(lambda: rig.order_state(feed.order_id) == "completed")
        rig.check_consistent()
        await wh.stop()

    run_virtual(scenario())


def test_conveyor_jam_alarm_and_recovery():
    async def scenario():
        rig = Rig()
        wh = rig.wh
        await wh.start()
        order = wh.submit("inbound", manifest("NB", 2))
        rig.plant.jam(1, False, 1)
        rig.plant.inject_box(1, "NB00000")
        rig.plant.inject_box(1, "NB00001")
        await asyncio.sleep(30)
        assert [k for k in rig.alarms.kinds() if k == "jam"] == ["jam"]
        assert rig.image.value("warehouse/conveyors/1-in/jam") is True
        rig.plant.jam(1, False, 1, stuck=False)
        await rig.wait_for(lambda: rig.order_state(order) == "completed")
        assert rig.image.value("warehouse/conveyors/1-in/jam") is False
        rig.check_consistent()
        await wh.stop()

    run_virtual(scenario())


def test_misread_reread_then_noread_hold_and_operator_resync():
    async def scenario():
        rig = Rig()
        wh = rig.wh
        await wh.start()
        order = wh.submit("inbound", manifest("NB", 2))
        rig.plant.misread(1, 1)  # one bad read: a re-read fixes it silently
        rig.plant.inject_box(1, "NB00000")
        await rig.wait_for(lambda: wh.inv.box("NB00000") is not None)
        assert not rig.alarms.raised
        rig.plant.misread(1, 10)
        rig.plant.inject_box(1, "NB00001")
        await asyncio.sleep(60)
        assert "noread" in rig.alarms.kinds()
        assert wh.inbound[1].ids[0] == "?"
        assert wh.inv.box("NB00001") is None
        wh.inbound[1].resync(0, "NB00001")
        await rig.wait_for(lambda: rig.order_state(order) == "completed")
        rig.check_consistent()
        await wh.stop()

    run_virtual(scenario())


def test_unexpected_box_at_induct_is_held():
    async def scenario():
        rig = Rig()
        wh = rig.wh
        await wh.start()
        rig.plant.inject_box(1, "STRAY")
        await asyncio.sleep(30)
        assert "unexpected_box" in rig.alarms.kinds()
        assert rig.plant.conveyors[(1, False)].zones[0] == "STRAY"
        assert wh.inv.box("STRAY") is None
        await wh.stop()

    run_virtual(scenario())


def test_pick_from_slot_found_empty_flags_box_missing():
    async def scenario():
        rig = Rig()
        wh = rig.wh
        await wh.start()
        await _stock(rig, 1)
        loc = Location.parse(wh.inv.box("NB00000").location)
        del rig.plant.slots[spot(loc)]  # the box vanished behind the controller's back
        feed = wh.request_batch("B", 1)
        await rig.wait_for(lambda: rig.order_state(feed.order_id) == "failed")
        assert any(k.startswith("pick_empty") for k in rig.alarms.kinds())
        assert wh.inv.box("NB00000").location == f"MISSING:{loc.code}"
        await wh.stop()

    run_virtual(scenario())
