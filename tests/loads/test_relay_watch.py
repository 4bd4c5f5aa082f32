"""The periodic relay-mismatch watch against simulated meters: polled bit 4 vs last commanded."""

from __future__ import annotations

import time

from controller.commands import CommandState
from controller.process_image import Quality
from drivers.sim.control import request

from .conftest import ADDR1, loads_config, wait_for

RELAY1 = f"buses/bus1/meters/{ADDR1}/relay_open"
ALARM = "relay_mismatch:loads/l1"
GRACE_S = 1.0


def active(r) -> bool:
    a = r.alarms.get(ALARM) if ALARM in {x.key for x in r.alarms} else None
    return bool(a and a.active)


async def watch_until(r, predicate, timeout: float) -> bool:
    """Run the control cycle's watch until ``predicate`` holds."""

    def step() -> bool:
        r.executor.watch_relays()
        return predicate()

    return await wait_for(step, timeout, step=0.1)


async def test_relay_moving_without_a_command_raises_then_clears(rig, tmp_path):
    r = await rig(loads=loads_config(mismatch_grace_s=GRACE_S), status=0.3)
    cmd = await r.executor.run("trip", "l1", who="otto", why="arrears")
    assert cmd.state is CommandState.CONFIRMED
    assert r.executor.commanded["l1"] is True
    r.executor.watch_relays()
    assert not active(r)

    # closed on site by hand: no command went out
    r.meter(ADDR1).relay_open = False
    assert await wait_for(lambda: r.image.value(RELAY1) is False, 5)
    seen = time.monotonic()
    r.executor.watch_relays()
    assert not active(r)  # within the grace time: one reading is not yet a mismatch
    assert await watch_until(r, lambda: active(r), 5)
    assert time.monotonic() - seen >= GRACE_S * 0.9
    alarm = r.alarms.get(ALARM)
    assert "commanded ≠ observed" in alarm.message and "trip" in alarm.message
    assert "reads closed" in alarm.message

    # offline: the tags go Bad; that neither clears nor re-raises the mismatch
    sock = tmp_path / "sim.sock"
    assert (await request(sock, {"op": "fault", "meter": ADDR1, "kind": "dead"}))["ok"]
    assert await wait_for(lambda: r.image.get(RELAY1).quality is not Quality.GOOD, 10)
    r.meter(ADDR1).relay_open = True  # opened again meanwhile: not observable yet
    for _ in range(5):
        r.executor.watch_relays()
    assert active(r)

    # back online, reading as commanded: cleared
    assert (await request(sock, {"op": "fault", "meter": ADDR1, "kind": "dead", "on": False}))["ok"]
    assert await watch_until(r, lambda: not active(r), 15)
    assert r.image.value(RELAY1) is True
    assert "as commanded" in r.alarms.get(ALARM).message


async def test_no_command_no_expectation_and_a_command_in_flight_is_left_alone(rig):
    r = await rig(loads=loads_config(mismatch_grace_s=0.0), status=0.3)
    # l2 was never commanded by this controller: whatever it reads is no mismatch
    r.meter("000000000002").relay_open = True
    await watch_until(r, lambda: False, 1.0)
    assert "relay_mismatch:loads/l2" not in {x.key for x in r.alarms}
    # a trip in flight: the read-back decides, not the watch
    cmd = await r.executor.submit("trip", "l1", who="otto", why="t")
    r.executor.watch_relays()
    assert not active(r)
    assert (await r.executor.wait(cmd.id)).state is CommandState.CONFIRMED
    r.executor.watch_relays()
    assert not active(r)


async def test_expectation_is_restored_from_the_command_log(rig):
    r = await rig(loads=loads_config(mismatch_grace_s=0.0), status=0.3)
    assert (await r.executor.run("trip", "l1", who="otto", why="t")).state is CommandState.CONFIRMED
    closed = await r.executor.run("direct_close", "l1", who="otto", why="t")
    assert closed.state is CommandState.CONFIRMED
    r.executor.lock_out("l1", who="emma", why="works")
    assert (await r.executor.run("direct_close", "l1", who="otto", why="t")).state is (
        CommandState.REFUSED
    )
    from controller.loads.switching import SwitchingExecutor

    fresh = SwitchingExecutor(r.executor.config, r.commands, r.executor.actuators, alarms=r.alarms)
    assert fresh.restore_commanded() == 1
    # the last command that reached the relay was the close; the refused one never acted
    assert fresh.commanded == {"l1": False}


async def test_control_cycle_watches_and_a_restart_keeps_the_expectation(tmp_path):
    from .test_runtime import cfg, make

    config = cfg(accounts=[], mismatch_grace_s=0.0)
    journal, _, relays, rt = await make(tmp_path, config)
    assert (await rt.executor.run("trip", "b", who="otto", why="t")).state is (
        CommandState.CONFIRMED
    )
    await rt.control()
    assert rt.alarms is not None
    assert "relay_mismatch:loads/b" not in {a.key for a in rt.alarms if a.active}
    journal.close()

    # restarted; meanwhile the relay was closed by hand
    journal, _, relays, rt = await make(tmp_path, config)
    relays["b"].open = False
    await rt.control()
    assert rt.alarms is not None
    alarm = rt.alarms.get("relay_mismatch:loads/b")
    assert alarm.active and "commanded open" in alarm.message
    relays["b"].open = True
    await rt.control()
    assert not alarm.active
    journal.close()
