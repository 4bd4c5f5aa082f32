"""`gridctl status` against a running service, over its real control socket."""

import asyncio
import json
import re
import subprocess
import sys

from controller.config import validate_config
from controller.service import Service
from drivers.local_channel import request


def config(tmp_path):
    return validate_config(
        {
            "service": {
                "name": "status-test",
                "state_dir": str(tmp_path / "var"),
                "control_socket": str(tmp_path / "var" / "gridctl.sock"),
            },
            "tasks": {"gc_freeze": False},
            "journal": {"path": str(tmp_path / "var" / "journal.sqlite")},
            "metrics": {"port": 0},
            "opcua": {"enabled": False},
        }
    )


async def gridctl_status(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "controller.cli", "status", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_status_reports_tasks_journal_and_alarms_of_the_running_service(tmp_path):
    cfg = config(tmp_path)
    sock = cfg.service.control_socket
    svc = Service(cfg)
    await svc.start()
    try:
        svc.alarms.set("bus_down", "bus/x", True, "test")
        await asyncio.sleep(0.3)
        done = await gridctl_status("--socket", sock, "--json")
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        assert status["service"]["name"] == "status-test"
        assert status["service"]["accepting_commands"] is True
        fast = next(t for t in status["tasks"] if t["name"] == "fast")
        assert fast["period_s"] == 0.01 and fast["cycles"] > 5
        # bus_down is ours; a loaded test machine may add a cycle_overrun alarm
        assert status["alarms"]["active"] >= 1 and status["alarms"]["unacknowledged"] >= 1
        assert status["alarms"]["by_severity"]["high"]["active"] == 1
        assert status["journal"]["schema_version"] >= 1
        assert status["metrics"] == f"http://127.0.0.1:{svc.metrics.port}/metrics"

        text = await gridctl_status("--socket", sock)
        assert text.returncode == 0, text.stderr
        assert "service   status-test" in text.stdout
        assert re.search(
            r"^alarms    \d+ active, \d+ unacknowledged, 0 shelved$", text.stdout, re.M
        )
        assert " ms" in text.stdout  # latencies carry their unit

        bad = await request(sock, {"op": "reboot"})
        assert bad == {"ok": False, "error": "op must be one of 'ping', 'status', got 'reboot'"}
    finally:
        assert await svc.stop()
    gone = await gridctl_status("--socket", sock)
    assert gone.returncode == 1
    assert f"no service is listening on {sock}" in gone.stderr


async def test_status_with_the_channel_disabled_in_config_says_so(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[service]\ncontrol_socket = ""\n')
    done = await gridctl_status("--config", str(path))
    assert done.returncode == 2
    assert "service.control_socket is empty" in done.stderr
