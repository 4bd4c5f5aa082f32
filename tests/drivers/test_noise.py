"""Noise and broken frames on the line: nothing good is lost, counters move, nothing crashes."""

from __future__ import annotations

import asyncio

from controller.process_image import Quality

from .conftest import dlt645_config, wait_for


async def test_noisy_line_and_bad_checksums(tmp_path, running) -> None:
    extra = (
        '[sim.buses.bus1.meters."000000000002"]\nfaults = ["noisy"]\n'
        '[sim.buses.bus1.meters."000000000003"]\nfaults = ["bad_checksum"]\n'
    )
    config = dlt645_config(tmp_path, meters=6, quarantine_s=1.0, extra=extra)
    sim, plant, image = await running(config)
    bus = plant.bus("bus1")
    clean = ["000000000001", "000000000004", "000000000005", "000000000006"]

    def good(address: str) -> bool:
        return all(
            t.current.quality is Quality.GOOD for t in image.tags(f"buses/bus1/meters/{address}/")
        )

    assert await wait_for(lambda: all(good(a) for a in clean), 15)
    # the noisy meter's replies survive the garbage around them (retries cover the corrupted ones)
    assert await wait_for(lambda: good("000000000002"), 15)
    await asyncio.sleep(3)
    snap = plant.snapshot()[0]
    assert snap.checksum_errors > 0
    assert snap.discarded_bytes > 0
    assert snap.transactions.get("checksum", 0) > 0
    # the meter whose every reply is corrupt ends up quarantined with the reason
    assert bus.quarantined("000000000003")
    assert "checksum" in image.get("buses/bus1/meters/000000000003/voltage_a").reason
    assert all(good(a) for a in clean)
    assert bus._task is not None and not bus._task.done()
    farm = sim.farms["bus1"]
    assert farm.requests > 0


async def test_raw_garbage_on_the_wire_between_transactions(tmp_path, running) -> None:
    config = dlt645_config(tmp_path, meters=3)
    sim, plant, _image = await running(config)
    farm = sim.farms["bus1"]
    bus = plant.bus("bus1")
    await wait_for(lambda: bus.transactions["ok"] > 10, 10)
    # a chattering device on the line: half frames, false headers, random bytes
    for _ in range(20):
        farm._send(b"\x68\x01\x02\x68\x16\xfe\xfe\x68" + bytes(range(40)))
        await asyncio.sleep(0.02)
    ok = bus.transactions["ok"]
    await asyncio.sleep(2)
    assert bus.transactions["ok"] > ok
    assert bus.connected and not bus._task.done()
    assert plant.snapshot()[0].discarded_bytes > 0
