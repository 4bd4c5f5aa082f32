"""Warehouse alarms clear when their cause goes: door closed, fault reset, jam cleared,
held load re-identified; in the service, through the alarm engine's conditions."""

import asyncio

from controller.alarms import AlarmEngine, AlarmState
from controller.virtual_time import run_virtual
from controller.warehouse.plant_io import CraneState
from controller.warehouse.subsystem import _AlarmAdapter

from .harness import Rig, manifest

CRANE = "warehouse/cranes/1"
INBOUND = "warehouse/conveyors/1-in"


def test_door_alarm_clears_when_the_door_closes_even_with_no_task():
    async def scenario():
        rig = Rig()
        await rig.wh.start()
        rig.plant.set_door(1, True)
        await asyncio.sleep(1)
        assert (CRANE, "door") in rig.alarms.active
        rig.plant.set_door(1, False)
        await asyncio.sleep(1)
        assert (CRANE, "door") not in rig.alarms.active
        assert [k for _s, k, _m in rig.alarms.cleared] == ["door"]
        # closed but not reset: no alarm, the state tag tells the crane waits
        assert rig.image.value("warehouse/cranes/1/state") == "stopped"
        await rig.wh.stop()

    run_virtual(scenario())


def test_fault_alarm_clears_on_reset_and_the_held_task_completes():
    async def scenario():
        rig = Rig()
        wh = rig.wh
        await wh.start()
        order = wh.submit("inbound", manifest("NB", 1))
        rig.plant.inject_box(1, "NB00000")
        await rig.wait_for(lambda: rig.plant.cranes[0].state is CraneState.MOVING, step=0.1)
        rig.plant.crane_fault(1)
        await asyncio.sleep(1)
        assert (CRANE, "fault") in rig.alarms.active
        await asyncio.sleep(30)
        assert (CRANE, "fault") in rig.alarms.active  # nothing cleared it by itself
        await wh.reset_crane(1)
        assert (CRANE, "fault") not in rig.alarms.active
        await rig.wait_for(lambda: rig.order_state(order) == "completed")
        assert not rig.alarms.active
        rig.check_consistent()
        await wh.stop()

    run_virtual(scenario())


def test_jam_and_noread_alarms_clear_when_the_conveyor_recovers():
    async def scenario():
        rig = Rig()
        wh = rig.wh
        await wh.start()
        order = wh.submit("inbound", manifest("NB", 2))
        rig.plant.jam(1, False, 1)
        rig.plant.inject_box(1, "NB00000")
        await asyncio.sleep(30)
        assert (INBOUND, "jam") in rig.alarms.active
        rig.plant.jam(1, False, 1, stuck=False)
        await rig.wait_for(lambda: (INBOUND, "jam") not in rig.alarms.active, step=0.1)
        rig.plant.misread(1, 10)
        rig.plant.inject_box(1, "NB00001")
        await asyncio.sleep(30)
        assert (INBOUND, "noread") in rig.alarms.active
        wh.inbound[1].resync(0, "NB00001")
        await rig.wait_for(lambda: rig.order_state(order) == "completed")
        assert not rig.alarms.active
        assert [k for _s, k, _m in rig.alarms.cleared] == ["jam", "noread"]
        await wh.stop()

    run_virtual(scenario())


def test_engine_condition_stays_active_while_any_cause_is_present():
    engine = AlarmEngine()
    adapter = _AlarmAdapter(engine)
    key = f"crane_fault:{CRANE}"
    adapter.raise_alarm(CRANE, "door", 700, "door open")
    adapter.raise_alarm(CRANE, "fault", 800, "drive fault")
    assert engine.get(key).state is AlarmState.UNACKED
    adapter.clear_alarm(CRANE, "door", "door closed")
    assert engine.get(key).active  # the drive fault is still there
    adapter.clear_alarm(CRANE, "fault", "fault reset")
    assert engine.get(key).state is AlarmState.RTN_UNACKED
    engine.acknowledge(key, "operator")
    assert engine.get(key).state is AlarmState.NORMAL
    # a restored alarm whose cause is gone after a restart is cleared at start
    engine.set("conveyor_fault", INBOUND, True, "jam: before the restart")
    fresh = _AlarmAdapter(engine)
    assert fresh.settle() == 1
    assert not engine.get(f"conveyor_fault:{INBOUND}").active


async def test_service_alarm_engine_sees_raise_and_clear(tmp_path):
    from controller.service import Service
    from drivers.sim.plant import SimulatedPlant

    from .test_subsystem import config, wait_for

    cfg = config(tmp_path)
    sim = SimulatedPlant(cfg)
    await sim.start()
    svc = Service(cfg)
    await svc.start()
    try:
        plant = sim.warehouse.plant
        crane_key, conv_key = f"crane_fault:{CRANE}", "conveyor_fault:warehouse/conveyors/1-out"

        def active(key: str) -> bool:
            return any(a.key == key and a.active for a in svc.alarms)

        plant.set_door(1, True)
        await wait_for(lambda: active(crane_key))
        plant.set_door(1, False)
        await wait_for(lambda: not active(crane_key))
        await svc.subsystems[0].wh.reset_crane(1)
        plant.crane_fault(1)
        await wait_for(lambda: active(crane_key))
        await svc.subsystems[0].wh.reset_crane(1)
        await wait_for(lambda: not active(crane_key))
        plant.jam(1, True, 0)  # the drop-off zone will not release
        svc.subsystems[0].wh.submit("outbound_verification", {"batch": "J", "boxes": 1})
        await wait_for(lambda: active(conv_key), timeout=30)
        plant.jam(1, True, 0, stuck=False)
        await wait_for(lambda: not active(conv_key), timeout=30)
        assert svc.alarms.get(crane_key).state is AlarmState.RTN_UNACKED
    finally:
        await svc.stop()
        await sim.stop()
