import asyncio

from controller.virtual_time import run_virtual
from controller.warehouse.line_link import ReturnBox, VerifiedMeter
from controller.warehouse.rack import BoxClass

from .harness import Rig, manifest


def _checked(rig: Rig):
    """Check journal/plant consistency after every journalled crane step."""
    wh = rig.wh
    orig_put, orig_pick = wh.mark_put, wh.mark_picked
    checks = {"n": 0}

    def mark_put(task, loc, aisle):
        orig_put(task, loc, aisle)
        rig.check_consistent()
        checks["n"] += 1

    def mark_picked(task, loc, aisle):
        orig_pick(task, loc, aisle)
        rig.check_consistent()
        checks["n"] += 1

    wh.mark_put, wh.mark_picked = mark_put, mark_picked
    return checks


def test_inbound_200_verification_batch_return_distribution():
    async def scenario():
        rig = Rig()
        checks = _checked(rig)
        wh = rig.wh
        await wh.start()
        inbound = wh.submit("inbound", manifest("NB", 200, meters=4))
        for i in range(200):
            rig.plant.inject_box(1, f"NB{i:05d}")
        await rig.wait_for(lambda: rig.order_state(inbound) == "completed")
        rig.check_consistent()
        totals = wh.inv.totals()
        assert totals["slots_unverified"] == 200 and totals["in_racks"] == 200
        assert totals["meters_in_stock"] == 800
        assert rig.image.value("warehouse/slots/occupied") == 200
        assert rig.image.value("warehouse/slots/free") == 320 - 200
        # nearest-first allocation: the 200 stored boxes occupy the 200 quickest slots
        quick = set(wh.rack._by_time[1][:200])
        assert {s.loc for s in wh.rack.slots.values() if s.box} == quick

        # outbound for verification: 10 boxes, FIFO by arrival
        feed = wh.request_batch("B1", 10)
        assert feed.boxes == tuple(f"NB{i:05d}" for i in range(10))
        assert len(feed.meters) == 40 and all(m.slot.startswith("R") for m in feed.meters)
        await rig.wait_for(lambda: rig.order_state(feed.order_id) == "completed")
        assert rig.line.feeds and rig.line.feeds[0].meters == feed.meters
        assert all(wh.inv.box(c).location == "LINE:B1" for c in feed.boxes)
        rig.check_consistent()
        assert wh.inv.totals()["in_racks"] == 190

        # the line verifies: 36 qualified in 9 boxes, 4 rejected in 1 box
        addrs = [m.address for m in feed.meters]
        returns = []
        for i in range(9):
            ms = tuple(VerifiedMeter(a, "qualified") for a in addrs[4 * i : 4 * i + 4])
            returns.append(ReturnBox(f"Q{i:04d}", 1000.0 + i, ms))
        returns.append(
            ReturnBox("RJ0001", 2000.0, tuple(VerifiedMeter(a, "rejected") for a in addrs[36:]))
        )
        ret = wh.return_boxes("B1", returns)
        for b in returns:
            rig.plant.inject_box(1, b.barcode)
        await rig.wait_for(lambda: rig.order_state(ret) == "completed")
        rig.check_consistent()
        totals = wh.inv.totals()
        assert totals["slots_qualified"] == 9 and totals["slots_rejected"] == 1
        assert totals["slots_unverified"] == 190 and totals["meters_in_stock"] == 800
        assert wh.inv.meter(addrs[0]).state == "qualified" and wh.inv.meter(addrs[0]).box == "Q0000"
        assert wh.inv.meter(addrs[39]).state == "rejected"

        # distribution: FIFO by verification date; rejects leave on their own order
        dist = wh.submit("distribution_outbound", {"district": "north", "boxes": 3})
        rej = wh.submit("rejected_outbound", {"boxes": 1})
        await rig.wait_for(
            lambda: rig.order_state(dist) == "completed" and rig.order_state(rej) == "completed"
        )
        assert [wh.inv.box(f"Q{i:04d}").location for i in range(4)] == [
            "DOCK:north",
            "DOCK:north",
            "DOCK:north",
            wh.inv.box("Q0003").location,
        ]
        assert wh.inv.box("Q0003").location.startswith("R")
        assert wh.inv.box("RJ0001").location == "DOCK:rejects"
        assert wh.inv.meter(addrs[0]).district == "north"
        rig.check_consistent()
        totals = wh.inv.totals()
        assert totals["in_racks"] == 190 + 6 and totals["slots_qualified"] == 6
        # the rack map (one string per row and level, a character per bay) agrees
        rack_map = "".join(str(rig.image.value(t.name)) for t in rig.image.tags("warehouse/racks/"))
        assert len(rack_map) == 320
        counts = {c: rack_map.count(c) for c in "UQX.*#"}
        assert counts == {"U": 190, "Q": 6, "X": 0, ".": 320 - 196, "*": 0, "#": 0}
        for loc, slot in wh.rack.slots.items():
            char = rig.image.value(f"warehouse/racks/{loc.row:02d}/L{loc.level:02d}")[loc.bay - 1]
            klass = wh.inv.box(slot.box).klass.value if slot.box else None
            assert char == {None: ".", "unverified": "U", "qualified": "Q"}[klass], loc
        assert (
            "warehouse/cranes/1/state" in rig.image
            and rig.image.value("warehouse/orders/completed") == 5
        )
        assert checks["n"] >= 2 * (200 + 10 + 10 + 4)
        assert not rig.alarms.raised
        await wh.stop()

    run_virtual(scenario())


def test_dual_command_cycles_when_storing_and_retrieving():
    async def scenario():
        rig = Rig()
        _checked(rig)
        wh = rig.wh
        await wh.start()
        first = wh.submit("inbound", manifest("NB", 20))
        for i in range(20):
            rig.plant.inject_box(1, f"NB{i:05d}")
        await rig.wait_for(lambda: rig.order_state(first) == "completed")
        second = wh.submit("inbound", manifest("NC", 10))
        out = wh.submit("outbound_verification", {"batch": "B2", "boxes": 10})
        for i in range(10):
            rig.plant.inject_box(1, f"NC{i:05d}")
        await rig.wait_for(
            lambda: rig.order_state(second) == "completed" and rig.order_state(out) == "completed"
        )
        assert wh.cranes[1].cycles["dual"] >= 5
        rig.check_consistent()
        assert wh.inv.totals()["in_racks"] == 20
        await wh.stop()

    run_virtual(scenario())


def test_order_validation_names_field_and_writes_nothing():
    async def scenario():
        rig = Rig()
        wh = rig.wh
        await wh.start()
        import pytest

        from controller.warehouse.orders import OrderError

        with pytest.raises(OrderError, match=r"inbound\.boxes\.0\.meters\.0\.address"):
            wh.submit(
                "inbound", {"boxes": [{"barcode": "X", "meters": [{"address": "12", "type": "t"}]}]}
            )
        with pytest.raises(OrderError, match=r"outbound_verification\.boxes: 5 requested, only 0"):
            wh.submit("outbound_verification", {"batch": "B", "boxes": 5})
        with pytest.raises(OrderError, match="kind: unknown order kind 'teleport'"):
            wh.submit("teleport", {})
        with pytest.raises(OrderError, match="mixed verdicts"):
            wh.submit(
                "qualified_return",
                {
                    "batch": "B",
                    "boxes": [
                        {
                            "barcode": "Q1",
                            "verified_at": 1.0,
                            "meters": [
                                {"address": "000000000001", "verdict": "qualified"},
                                {"address": "000000000002", "verdict": "rejected"},
                            ],
                        }
                    ],
                },
            )
        assert wh.inv.order_rows() == []
        await wh.stop()

    run_virtual(scenario())


def test_box_class_enum_values():
    assert {c.value for c in BoxClass} == {"unverified", "qualified", "rejected"}
    assert asyncio.iscoroutinefunction(Rig.wait_for)
