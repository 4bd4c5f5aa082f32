"""The real service for the HMI tests: `gridctl run` as a subprocess with a small
simulated plant, and the two control sockets the tests read their expectations from.

The plant is the demo's service, site, tasks, journal and OPC UA sections (so
its users log in: operator / demo-operator ...), with two DL/T 645 buses of
five meters in all and two loads; no line, no warehouse, no Modbus terminal, so
the service is up in a few seconds. Expected values come from the simulator's
``state`` op and the service's ``status`` op, never from the HMI under test.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from asyncua import Client

from drivers.local_channel import request

ROOT = Path(__file__).resolve().parents[2]
USERS = {"operator": "demo-operator", "engineer": "demo-engineer", "viewer": "demo-viewer"}

# bus -> its meters' addresses, as the [[buses]] meter blocks below number them
BUSES = {
    "bus1": ["000000001001", "000000001002", "000000001003"],
    "bus2": ["000000002001", "000000002002"],
}
# the simulated meter behind load l1001: a fixed peak load and opening register
METERED = "000000001001"
METERED_PEAK_KW = 3.6
METERED_OPENING_KWH = 5000.0

# Instant values every 2 s (the demo's 20 s would make a dead meter take that long
# to be found); a short reply timeout so a dead meter is quarantined within seconds.
PLANT = f"""
[poll_groups.instant]
period_s = 2
items = ["0201FF00", "0202FF00", "02030000", "02060000"]

[poll_groups.energy]
period_s = 900
items = ["0001FF00"]

[poll_groups.status]
period_s = 60
items = ["04000503"]

[bus_defaults.dlt645]
response_timeout_s = 0.5
byte_timeout_s = 0.2

[[buses]]
name = "bus1"
protocol = "dlt645"
port = "var/tty/bus1"
meter_block = {{ first_address = "000000001001", count = 3, groups = ["instant", "energy", "status"] }}

[[buses]]
name = "bus2"
protocol = "dlt645"
port = "var/tty/bus2"
meter_block = {{ first_address = "000000002001", count = 2, groups = ["instant", "energy", "status"] }}

[sim]
enabled = true
fast = true
control_socket = "var/sim.sock"
seed = 7

[sim.buses.bus1.meters."{METERED}"]
peak_kw = {METERED_PEAK_KW}
energy_kwh = {METERED_OPENING_KWH}

[loads]
confirm = {{ timeout_s = 10, reread_interval_s = 0.5, max_rereads = 5, arm_timeout_s = 30 }}

[[loads.loads]]
name = "l1001"
bus = "bus1"
address = "{METERED}"
feeder = "feeder1"

[[loads.loads]]
name = "l1002"
bus = "bus1"
address = "000000001002"
feeder = "feeder1"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def small_config(tmp_path: Path) -> Path:
    """The demo's non-field sections on free ports, with the small plant above."""
    demo = (ROOT / "config" / "demo.toml").read_text()
    head = demo.split("# --- field:", 1)[0]
    head = re.sub(r"(?m)^port = 9108", "port = 0", head)
    head = head.replace("127.0.0.1:4840", f"127.0.0.1:{free_port()}")
    # nothing here needs the 10 ms task (no line, no warehouse); at 100 ms a loaded
    # test machine raises no cycle_overrun alarms beside the ones a test makes
    head = head.replace("fast_period_ms = 10 ", "fast_period_ms = 100")
    path = tmp_path / "hmi-plant.toml"
    path.write_text(head + PLANT)
    return path


class RealService:
    """`gridctl run --config <small plant>` in ``tmp_path``, log to a file."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.config = small_config(tmp_path)
        self.log = tmp_path / "service.log"
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "run", "--config", str(self.config)],
            cwd=tmp_path,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)},
        )
        self.url = ""
        self.started = time.monotonic()  # before the simulator's meters start to count

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_line(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = re.search(pattern, self.text())
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r}; log:\n{self.text()}")

    def start(self) -> RealService:
        self.url = self.wait_for_line(r"opcua ready: (opc\.tcp://\S+)").group(1)
        self.wait_for_line(r"service ready")
        return self

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()

    async def sim_state(self, meter: str) -> dict[str, Any]:
        """The simulated meter's own state (its relay, its energy register, its load)."""
        reply = await request(self.dir / "var" / "sim.sock", {"op": "state", "meter": meter}, 5.0)
        assert reply.get("ok"), reply
        return reply

    async def status(self) -> dict[str, Any]:
        """What the service itself reports on its control socket (`gridctl status`)."""
        reply = await request(self.dir / "var" / "gridctl.sock", {"op": "status"}, 5.0)
        assert reply.get("ok"), reply
        return reply

    async def alarms(self) -> dict[str, dict[str, Any]]:
        """The service's alarm list as its OPC UA server publishes it (``@alarms/Active``),
        read by a plain OPC UA client: id -> alarm."""
        async with Client(self.url, timeout=10) as client:
            ns = await client.get_namespace_index("urn:gridctl")
            text = await client.get_node(f"ns={ns};s=@alarms/Active").read_value()
        return {a["id"]: a for a in json.loads(text)}

    def sim_fault(self, meter: str, kind: str) -> str:
        """`gridctl sim fault METER KIND`, as an operator of the test rig types it."""
        command = ["controller", "sim", "fault", meter, kind, "--config", str(self.config)]
        done = subprocess.run(
            [sys.executable, "-m", *command],
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()
