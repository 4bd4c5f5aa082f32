"""The simulator as a child process, its control socket and the `gridctl sim fault` CLI; TCP wire."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from controller.process_image import ProcessImage, Quality
from drivers.plant import FieldPlant
from drivers.sim.control import request
from drivers.sim.launch import start_simulator

from .conftest import dlt645_config, free_port, wait_for

REPO = Path(__file__).resolve().parents[2]


async def test_start_simulator_fault_cli_and_exception_replies(tmp_path) -> None:
    config = dlt645_config(tmp_path, meters=3)
    path = tmp_path / "field.toml"
    sim = start_simulator(path, fast=True, cwd=REPO)
    image = ProcessImage()
    plant = FieldPlant(config, image)
    try:
        assert sim.alive() and Path(sim.control_socket).exists()
        await plant.start()
        good = lambda a: all(  # noqa: E731
            t.current.quality is Quality.GOOD for t in image.tags(f"buses/bus1/meters/{a}/")
        )
        assert await wait_for(lambda: good("000000000002"), 10)
        cli = [sys.executable, "-m", "controller", "sim", "fault", "000000000002", "exception"]
        done = subprocess.run(
            [*cli, "--config", str(path)], capture_output=True, text=True, cwd=REPO, timeout=30
        )
        assert done.returncode == 0, done.stderr
        assert "exception" in done.stdout
        bus = plant.bus("bus1")
        before = bus.transactions["exception"]
        assert await wait_for(
            lambda: (
                "no requested data" in image.get("buses/bus1/meters/000000000002/voltage_a").reason
            ),
            5,
        )
        # exception replies are not retried, and the meter is alive: not quarantined
        assert bus.transactions["exception"] > before
        assert not bus.quarantined("000000000002")
        assert bus.client.retried + bus.poller.retried == 0
        bad = subprocess.run(
            [*cli[:-2], "999999999998", "dead", "--config", str(path)],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        assert bad.returncode == 2 and "no simulated meter" in bad.stderr
        reply = await request(sim.control_socket, {"op": "state", "meter": "000000000001"})
        assert reply["ok"] and reply["relay_open"] is False
        reply = await request(
            sim.control_socket, {"op": "fault", "meter": "000000000001", "kind": "melt"}
        )
        assert not reply["ok"] and "kind" in reply["error"]
        # a relay that moves without a command: what was commanded stays closed
        relay = [sys.executable, "-m", "controller", "sim", "relay", "000000000003", "open"]
        moved = subprocess.run(
            [*relay, "--config", str(path)], capture_output=True, text=True, cwd=REPO, timeout=30
        )
        assert moved.returncode == 0, moved.stderr
        assert moved.stdout.strip() == "bus1/000000000003: relay open"
        reply = await request(sim.control_socket, {"op": "state", "meter": "000000000003"})
        assert reply["relay_open"] is True and reply["relay_commanded_open"] is False
        reply = await request(
            sim.control_socket, {"op": "relay", "meter": "000000000003", "open": "yes"}
        )
        assert reply == {"ok": False, "error": "open: must be true or false, got 'yes'"}
    finally:
        await plant.stop()
        assert sim.stop() == 0


async def test_meters_behind_a_tcp_serial_server(tmp_path, running) -> None:
    config = dlt645_config(tmp_path, meters=4, port=f"tcp://127.0.0.1:{free_port()}")
    sim, plant, image = await running(config)
    assert await wait_for(
        lambda: image.value("buses/bus1/meters/000000000004/voltage_a") is not None, 10
    )
    assert plant.snapshot()[0].connected
    # the transparent server goes away: a fault with a reason, not a crash; then it comes back
    wire = sim._wires[0]
    await wire.stop()
    assert await wait_for(
        lambda: "bus down" in image.get("buses/bus1/meters/000000000004/voltage_a").reason, 10
    )
    await wire.start()
    assert await wait_for(
        lambda: image.get("buses/bus1/meters/000000000004/voltage_a").quality is Quality.GOOD, 15
    )
    await asyncio.sleep(0)


async def test_missing_serial_port_is_a_fault_not_a_crash(tmp_path) -> None:
    config = dlt645_config(tmp_path, meters=1, port=str(tmp_path / "no-such-tty"))
    image = ProcessImage()
    plant = FieldPlant(config, image)
    await plant.start()
    try:
        await asyncio.sleep(0.3)
        snap = plant.snapshot()[0]
        assert not snap.connected
        assert "cannot open" in image.get("buses/bus1/meters/000000000001/voltage_a").reason
        assert not plant.bus("bus1")._task.done()
    finally:
        await plant.stop()
