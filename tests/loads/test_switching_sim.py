"""The executor against simulated meters on real ptys: confirmation by read-back."""

from __future__ import annotations

from controller.commands import CommandState

from .conftest import ADDR1, ADDR2, loads_config, wait_for

POWER1 = f"buses/bus1/meters/{ADDR1}/power_active_total"


async def test_trip_then_close_relay_and_power_follow(rig):
    r = await rig()
    assert await wait_for(lambda: (r.image.value(POWER1) or 0) > 0, 10)
    cmd = await r.executor.run("trip", "l1", who="otto", why="test trip")
    assert cmd.state is CommandState.CONFIRMED, cmd.reason
    assert [t.state.value for t in cmd.history] == ["queued", "sent", "confirmed"]
    assert r.meter(ADDR1).relay_open is True
    assert r.image.value(f"buses/bus1/meters/{ADDR1}/relay_open") is True
    assert await wait_for(lambda: r.image.value(POWER1) == 0, 10)

    cmd = await r.executor.run("direct_close", "l1", who="otto", why="test close")
    assert cmd.state is CommandState.CONFIRMED, cmd.reason
    assert r.meter(ADDR1).relay_open is False
    assert await wait_for(lambda: (r.image.value(POWER1) or 0) > 0, 10)
    r.executor.mirror()
    assert r.image.value("loads/l1/relay_open") is False
    assert r.executor.outcomes[("trip", "confirmed")] == 1


async def test_close_allowed_confirms_on_commanded_state(rig):
    r = await rig()
    assert (await r.executor.run("trip", "l1", who="otto", why="t")).state is CommandState.CONFIRMED
    cmd = await r.executor.run("close_allowed", "l1", who="otto", why="customer may close")
    assert cmd.state is CommandState.CONFIRMED, cmd.reason
    assert r.meter(ADDR1).relay_commanded_open is False


async def test_meter_ignoring_1c_fails_not_confirmed_and_alarms(rig):
    r = await rig(
        extra=f'[sim.buses.bus1.meters."{ADDR1}"]\nfaults = ["drop_control"]\n',
        loads=loads_config(confirm={"timeout_s": 1.0, "reread_interval_s": 0.2, "max_rereads": 2}),
    )
    cmd = await r.executor.run("trip", "l1", who="otto", why="test")
    assert cmd.state is CommandState.FAILED
    assert "not confirmed" in cmd.reason and "relay closed" in cmd.reason
    assert r.meter(ADDR1).relay_open is False
    alarm = r.alarms.get("relay_mismatch:loads/l1")
    assert alarm.active and "commanded ≠ observed" in alarm.message


async def test_keep_power_refuses_trip_by_interlock_nothing_sent(rig):
    r = await rig(extra=f'[sim.buses.bus1.meters."{ADDR2}"]\nkeep_power = true\n')
    assert await wait_for(
        lambda: r.image.value(f"buses/bus1/meters/{ADDR2}/keep_power") is True, 10
    )
    cmd = await r.executor.run("trip", "l2", who="otto", why="test")
    assert cmd.state is CommandState.REFUSED
    assert "keep-power" in cmd.reason
    assert r.meter(ADDR2).controls_honoured == 0
    assert r.executor.sent_frames == 0
    auto = await r.executor.run("trip", "l2", who="demand", why="round 1", automation=True)
    assert auto.state is CommandState.REFUSED


async def test_same_command_id_acts_once(rig):
    r = await rig()
    a = await r.executor.submit("trip", "l1", who="otto", why="t", command_id="abc-1")
    b = await r.executor.submit("trip", "l1", who="otto", why="t", command_id="abc-1")
    assert a.id == b.id == "abc-1"
    done = await r.executor.wait("abc-1")
    assert done.state is CommandState.CONFIRMED
    c = await r.executor.run("trip", "l1", who="otto", why="t", command_id="abc-1")
    assert c.state is CommandState.CONFIRMED
    assert r.executor.sent_frames == 1
    assert r.meter(ADDR1).controls_honoured == 1


async def test_second_command_on_busy_load_is_refused(rig):
    r = await rig()
    first = await r.executor.submit("trip", "l1", who="otto", why="t")
    second = await r.executor.run("direct_close", "l1", who="otto", why="t")
    assert second.state is CommandState.REFUSED and "in progress" in second.reason
    assert (await r.executor.wait(first.id)).state is CommandState.CONFIRMED


async def test_lock_out_blocks_close(rig):
    r = await rig()
    await r.executor.run("trip", "l1", who="otto", why="t")
    r.executor.lock_out("l1", who="emma", why="line work")
    cmd = await r.executor.run("direct_close", "l1", who="otto", why="t")
    assert cmd.state is CommandState.REFUSED and "lock-out by emma" in cmd.reason
    r.executor.release_lock_out("l1", who="emma", why="done")
    cmd = await r.executor.run("direct_close", "l1", who="otto", why="t")
    assert cmd.state is CommandState.CONFIRMED
