import pytest

from controller.virtual_time import run_virtual
from controller.warehouse.marketing import MarketingError, MarketingInterface

from .harness import Rig, manifest


def test_nine_interface_points_end_to_end():
    async def scenario():
        rig = Rig()
        wh = rig.wh
        mi = MarketingInterface(wh)
        await wh.start()
        inbound = wh.submit("inbound", manifest("NB", 4, meters=2))
        for i in range(4):
            rig.plant.inject_box(1, f"NB{i:05d}")
        await rig.wait_for(lambda: rig.order_state(inbound) == "completed")

        q = mi.query_meter("000000000000")  # 1
        assert q["state"] == "new" and q["box"] == "NB00000" and q["location"].startswith("R")
        out = mi.outbound_for_verification("B7", 2)  # 8
        assert [m["address"] for m in out["meters"]] == [
            "000000000000",
            "000000000001",
            "000000010000",
            "000000010001",
        ]
        tasks = mi.fetch_verification_tasks()  # 2
        assert tasks[0]["batch"] == "B7" and len(tasks[0]["meters"]) == 4
        await rig.wait_for(lambda: mi.order_state(out["order_id"]) == "completed")
        assert mi.fetch_verification_tasks() == []

        addrs = [m["address"] for m in out["meters"]]
        wv = [{"address": a, "voltage_kv": 4.0, "duration_s": 60, "passed": True} for a in addrs]
        assert mi.upload_withstand_voltage("B7", wv) == 4  # 7
        results = [{"address": a, "verdict": "qualified", "verified_at": 500.0} for a in addrs[:3]]
        results.append({"address": addrs[3], "verdict": "rejected", "verified_at": 501.0})
        assert mi.upload_results("B7", results) == 4  # 5
        boxing = [{"barcode": "QB1", "meters": addrs[:3]}, {"barcode": "RB1", "meters": addrs[3:]}]
        assert mi.upload_boxing("B7", boxing) == 2  # 4
        ret = mi.qualified_return("B7")  # 6
        rig.plant.inject_box(1, "QB1")
        rig.plant.inject_box(1, "RB1")
        await rig.wait_for(lambda: mi.order_state(ret) == "completed")
        slots = mi.slot_codes_for_qualified()  # 3
        assert set(slots) == set(addrs[:3]) and len(set(slots.values())) == 1
        assert wh.inv.box("RB1").klass.value == "rejected"
        dist = mi.distribution_outbound("east", 1)  # 9
        assert dist["boxes"] == ["QB1"]
        await rig.wait_for(lambda: mi.order_state(dist["order_id"]) == "completed")
        assert mi.query_meter(addrs[0])["district"] == "east"
        assert mi.query_meter(addrs[0])["location"] == "DOCK:east"
        rig.check_consistent()
        await wh.stop()

    run_virtual(scenario())


def test_bad_arguments_name_the_field():
    async def scenario():
        rig = Rig()
        mi = MarketingInterface(rig.wh)
        await rig.wh.start()
        with pytest.raises(MarketingError, match="address: unknown meter"):
            mi.query_meter("999")
        with pytest.raises(MarketingError, match=r"results\.0\.verdict: 'maybe'"):
            mi.upload_results("B", [{"address": "1", "verdict": "maybe", "verified_at": 1}])
        with pytest.raises(MarketingError, match=r"results\.0\.voltage_kv: 50 outside"):
            mi.upload_withstand_voltage(
                "B", [{"address": "1", "voltage_kv": 50, "duration_s": 60, "passed": True}]
            )
        with pytest.raises(
            MarketingError, match=r"distribution_outbound\.boxes: 1 requested, only 0"
        ):
            mi.distribution_outbound("x", 1)
        with pytest.raises(MarketingError, match="batch: no boxing details"):
            mi.qualified_return("nope")
        assert rig.wh.inv.events("boxing") == []
        await rig.wh.stop()

    run_virtual(scenario())
