"""32 meters on one pseudo-terminal line, through pyserial, against the simulated farm."""

from __future__ import annotations

import asyncio
import math

from controller import _core_rs as core
from controller.process_image import Quality
from drivers.sim.control import request

from .conftest import dlt645_config, wait_for

UNITS = {
    "voltage_a": "V",
    "voltage_c": "V",
    "current_b": "A",
    "power_active_total": "kW",
    "power_factor_total": "",
    "energy_fwd_active_total": "kWh",
    "remaining_money": "yuan",
    "status_word_3": "",
    "relay_open": "",
}


def meter_tags_good(image, address: str) -> bool:
    prefix = f"buses/bus1/meters/{address}/"
    return all(t.current.quality is Quality.GOOD for t in image.tags(prefix))


async def test_all_values_arrive_with_units(tmp_path, running) -> None:
    config = dlt645_config(tmp_path, meters=32)
    _sim, plant, image = await running(config)
    addresses = [f"{i:012d}" for i in range(1, 33)]
    assert await wait_for(lambda: all(meter_tags_good(image, a) for a in addresses), 20)
    for address in addresses:
        prefix = f"buses/bus1/meters/{address}/"
        for quantity, unit in UNITS.items():
            tag = image.tag(prefix + quantity)
            assert tag.unit == unit, (quantity, tag.unit)
        assert 200 < image.value(prefix + "voltage_a") < 240
        assert image.value(prefix + "energy_fwd_active_total") > 0
        assert image.value(prefix + "online") is True
    snap = plant.snapshot()[0]
    assert snap.connected and snap.meters_total == 32 and snap.meters_quarantined == 0
    assert snap.transactions.get("ok", 0) >= 32 * 7  # 4 instant + 2 energy + 1 status


async def test_dead_meter_is_quarantined_and_costs_one_timeout_per_backoff(
    tmp_path, running
) -> None:
    quarantine_s = 2.0
    timeout_s = 0.15
    config = dlt645_config(
        tmp_path,
        meters=32,
        quarantine_s=quarantine_s,
        response_timeout_s=timeout_s,
        extra='[sim.buses.bus1.meters."000000000007"]\nfaults = ["dead"]\n',
    )
    _sim, plant, image = await running(config)
    bus = plant.bus("bus1")
    dead = "000000000007"
    live = [f"{i:012d}" for i in range(1, 33) if i != 7]
    assert await wait_for(lambda: all(meter_tags_good(image, a) for a in live), 20)
    assert await wait_for(lambda: bus.quarantined(dead), 5)
    prefix = f"buses/bus1/meters/{dead}/"
    assert image.get(prefix + "voltage_a").quality is Quality.BAD
    assert "no answer" in image.get(prefix + "voltage_a").reason
    assert image.value(prefix + "online") is False
    # measure over a window: the dead meter gets at most one probe per back-off period
    before = bus.transactions["timeout"]
    window = 6.0
    ok_before = bus.transactions["ok"]
    await asyncio.sleep(window)
    probes = bus.transactions["timeout"] - before
    assert probes <= math.ceil(window / quarantine_s) + 1, probes
    # the others keep being polled at their periods meanwhile
    assert bus.transactions["ok"] - ok_before > 31 * 4
    assert all(meter_tags_good(image, a) for a in live)
    # it recovers by itself once it answers again
    reply = await request(
        config.sim.control_socket, {"op": "fault", "meter": dead, "kind": "dead", "on": False}
    )
    assert reply["ok"]
    assert await wait_for(lambda: meter_tags_good(image, dead), quarantine_s * 4 + 5)
    assert not bus.quarantined(dead)


async def test_control_issued_during_busy_cycle_goes_out_next(tmp_path, running) -> None:
    config = dlt645_config(tmp_path, meters=32, instant=0.5, energy=0.5, status=0.5)
    sim, plant, image = await running(config)
    bus = plant.bus("bus1")
    await wait_for(lambda: bus.transactions["ok"] > 50, 10)
    loop = asyncio.get_running_loop()
    target = "000000000020"
    for _ in range(5):
        submitted = loop.time()
        await bus.submit_control(target, core.N1_TRIP, read_back=False)
        after = [r for r in bus.wire_log if r.sent >= submitted]
        assert after and after[0].function == core.FN_CONTROL and after[0].device == target
    assert sim.farms["bus1"].meters[target].relay_open
    await bus.submit_control(target, core.N1_DIRECT_CLOSE)
    # the read-back on the event lane confirms it in the image
    assert await wait_for(lambda: image.value(f"buses/bus1/meters/{target}/relay_open") is False, 5)
