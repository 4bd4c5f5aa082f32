"""The real service under SIGKILL: `gridctl run` killed and restarted, the plant living on.

Scaffolding for tests/faults/test_service_sigkill.py. The simulated meters run
in their own `gridctl sim` process, started here rather than by the service
(`[sim] enabled = false`), so a killed service leaves the plant as it was: a
relay a 1C moved stays moved, and the meter's own `controls_honoured` counter
is the independent witness of how many control commands reached it.

Commands go in as an operator would send them: OPC UA Arm + Execute on the
load. The journal is read from its SQLite file, read-only, while the service
writes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncua import Client

from controller.msgpack_frames import FrameDecoder, encode

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = ("confirmed", "failed", "expired", "refused")
OPEN_ORDERS = "SELECT id FROM wh_order WHERE state NOT IN ('completed', 'cancelled', 'failed')"

# The demo's operator (config/demo.toml; password demo-operator).
OPERATOR_HASH = (
    "scrypt$16384$8$1$FQI2o6OR33eacgc01jZRhg==$z4gjOZujs7mF4ZEB4sOa59p6yy7J7t27CRjLarWtMJo="
)


@dataclass(frozen=True)
class Load:
    name: str
    address: str


LOADS = tuple(Load(f"l100{i}", f"00000000100{i}") for i in range(1, 4))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# A small, brisk warehouse: 2 rows x 5 bays x 3 levels, one crane; the simulator
# process serves its PLC with the demo stock (NEW00000...) in the rack, and the
# service seeds the same stock into an empty inventory.
WAREHOUSE = """
[warehouse]
plc = "tcp://127.0.0.1:{port}"
rows = 2
bays = 5
levels = 3
meters_per_box = 4
demo_boxes = {boxes}
poll_s = 0.02
cranes = [ {{ vx_m_s = 4.0, ax_m_s2 = 8.0, vy_m_s = 2.0, ay_m_s2 = 8.0, fork_cycle_s = 0.4 }} ]
inbound = {{ zones = 3, zone_travel_s = 0.1, jam_timeout_s = 5.0 }}
outbound = {{ zones = 3, zone_travel_s = 0.1, jam_timeout_s = 5.0 }}
"""
WAREHOUSE_SHAPE = {"rows": 2, "bays": 5, "levels": 3}


def write_config(directory: Path, boxes: int = 0) -> tuple[Path, str]:
    """One simulated DL/T 645 line of four meters, three of them loads; OPC UA separate.

    ``boxes`` > 0 adds the warehouse with that many demo boxes in the rack.
    """
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/gridctl"
    loads = "".join(
        f'\n[[loads.loads]]\nname = "{ld.name}"\nbus = "bus1"\naddress = "{ld.address}"\n'
        f'feeder = "f{ld.name}"\n'  # a feeder each: the rate limiter never holds one back
        for ld in LOADS
    )
    text = f"""
[service]
name = "gridctl-sigkill"
state_dir = "var"
control_socket = "var/gridctl.sock"

[journal]
path = "var/journal.sqlite"

[metrics]
enabled = false

[opcua]
enabled = true
process = "separate"
endpoint = "{endpoint}"
security_policies = ["None"]
anonymous = "read-only"
allow_plaintext_password_on_loopback = true
client_certificates = "trust-all"
users = [{{ name = "operator", role = "operator", password_hash = "{OPERATOR_HASH}" }}]

[poll_groups.status]
period_s = 60
items = ["04000503"]

[[buses]]
name = "bus1"
protocol = "dlt645"
port = "var/tty/bus1"
baud = 9600
parity = "E"
stop_bits = 1
response_timeout_s = 1.0
byte_timeout_s = 0.5
meter_block = {{ first_address = "000000001001", count = 4, groups = ["status"] }}

# the plant is started by the test, not by the service, so it outlives a SIGKILL
[sim]
enabled = false
fast = true
control_socket = "var/sim.sock"
seed = 7

[loads]
confirm = {{ timeout_s = 10, reread_interval_s = 0.2, max_rereads = 20 }}
rate_limit = {{ per_feeder_per_s = 20, burst = 4 }}
{loads}"""
    if boxes:
        text += WAREHOUSE.format(port=free_port(), boxes=boxes)
    path = directory / "service.toml"
    path.write_text(text)
    return path, endpoint


# -- processes -------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


class Simulator:
    """`gridctl sim` in its own process (its own session: no signal of ours reaches it)."""

    def __init__(self, config: Path, timeout: float = 30.0) -> None:
        self.cwd = config.parent
        self.err = (self.cwd / "sim.err").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "sim", "--config", str(config), "--fast"],
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=self.err,
            env=_env(),
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        end = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise AssertionError(f"simulator not ready in {timeout} s: {self.stderr()}")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"simulator exited: {self.stderr()}")
            line += chunk
        assert line.startswith(b"gridctl-sim ready "), line
        # keep draining stdout so the child never blocks on a full pipe
        threading.Thread(target=self.proc.communicate, daemon=True).start()
        self.socket = self.cwd / "var" / "sim.sock"

    def stderr(self) -> str:
        return (self.cwd / "sim.err").read_text(errors="replace")

    def meter(self, address: str) -> dict[str, Any]:
        """The simulated meter's own state, over the simulator's control socket."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5.0)
            s.connect(str(self.socket))
            s.sendall(encode({"op": "state", "meter": address}))
            decoder = FrameDecoder(1 << 20)
            while data := s.recv(65536):
                for reply in decoder.feed(data):
                    assert reply.get("ok"), reply
                    return dict(reply)
        raise AssertionError("simulator closed the control socket without a reply")

    def stop(self) -> None:
        """Teardown (the checks ask the running simulator, so a dead one fails them first)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Service:
    """One run of `gridctl run`, its log in its own file."""

    def __init__(self, config: Path, run: int) -> None:
        self.log = config.parent / f"service-{run}.log"
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "run", "--config", str(config)],
            cwd=config.parent,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=_env(),
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"service exited ({self.proc.returncode}):\n{self.text()}")
        return "service ready" in self.text()

    def wait_ready(self, timeout: float = 60.0) -> None:
        wait_for(self.ready, timeout, lambda: f"service not ready:\n{self.text()}")

    def pending_at_start(self) -> int:
        """Commands the previous run left pending (this run reconciles them by read-back)."""
        m = re.search(
            r"journal ready: .* (\d+) commands pending from the previous run", self.text()
        )
        assert m, self.text()
        return int(m.group(1))

    def kill(self) -> None:
        """SIGKILL, and wait until its OPC UA server child has followed it out."""
        children = _children(self.proc.pid)
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=10) == -signal.SIGKILL
        self._out.close()
        wait_for(
            lambda: not any(_alive(c) for c in children),
            15.0,
            lambda: f"children {children} of the killed service still running",
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(timeout=15) == 0, self.text()
        self._out.close()

    def close(self) -> None:
        """Teardown after a failure: nothing of ours left running."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


def wait_for(cond: Any, timeout: float, what: Any) -> None:
    """Poll ``cond`` until true; fail with ``what()`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(what())
        time.sleep(0.02)


# -- the journal, read-only ------------------------------------------------------------------


def journal_rows(db: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # schema not there yet (first start)
        return []
    finally:
        conn.close()


# -- the operator ----------------------------------------------------------------------------


class OperatorSession:
    """An operator's OPC UA session in a thread of its own, doing ``_work`` until the
    service is killed under it (expected: the error is kept, not raised)."""

    endpoint: str
    errors: list[str]

    def run_in_thread(self) -> threading.Thread:
        t = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        t.start()
        return t

    async def _run(self) -> None:
        client = Client(self.endpoint, timeout=5)
        client.set_user("operator")
        client.set_password("demo-operator")
        try:
            async with client:
                await self._work(client, await client.get_namespace_index("urn:gridctl"))
        except Exception as exc:  # the service was killed under us: expected
            self.errors.append(repr(exc))

    async def _work(self, client: Client, ns: int) -> None:
        raise NotImplementedError


@dataclass
class Operator(OperatorSession):
    """Toggles each load over OPC UA until told to stop: one command per load at a time.

    Each command is chosen from the relay as the simulated meter shows it (closed →
    trip, open → direct close), so every command that is applied moves the relay
    and is counted once by the meter.
    """

    endpoint: str
    sim: Simulator
    db: Path
    submitted: list[str] = field(default_factory=list)
    # commands seen terminal in the journal before a kill: state as seen
    seen_terminal: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    async def _work(self, client: Client, ns: int) -> None:
        await asyncio.gather(*(self._toggle(client, ns, ld) for ld in LOADS))

    async def _toggle(self, client: Client, ns: int, load: Load) -> None:
        node = client.get_node(f"ns={ns};s=loads/{load.name}")
        while not self.stop.is_set():
            relay_open = (await asyncio.to_thread(self.sim.meter, load.address))["relay_open"]
            kind = "close_direct" if relay_open else "trip"
            token, _ = await node.call_method(f"{ns}:Arm", kind, "sigkill test")
            command_id = await node.call_method(f"{ns}:Execute", token)
            self.submitted.append(command_id)
            end = time.monotonic() + 30
            while not (
                row := journal_rows(
                    self.db,
                    "SELECT state FROM commands WHERE id = ? AND state IN (?, ?, ?, ?)",
                    (command_id, *TERMINAL),
                )
            ):
                if self.stop.is_set():
                    return
                assert time.monotonic() < end, f"{command_id} not terminal in 30 s"
                await asyncio.sleep(0.01)
            self.seen_terminal[command_id] = row[0][0]


@dataclass
class Dispatcher(OperatorSession):
    """Orders boxes moved over OPC UA (CreateOrder relocation), one order at a time.

    Picks a box stored in the rack per the journal, with the seeded ``rng``, and
    waits for the command to end before the next one.
    """

    endpoint: str
    db: Path
    rng: Any
    submitted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    async def _work(self, client: Client, ns: int) -> None:
        await self._relocate(client.get_node(f"ns={ns};s=warehouse"), ns)

    async def _relocate(self, node: Any, ns: int) -> None:
        while not self.stop.is_set():
            # an order a kill interrupted resumes after the restart: let it finish first,
            # so the next one is never refused for a box it holds
            if journal_rows(self.db, OPEN_ORDERS):
                await asyncio.sleep(0.02)
                continue
            stored = journal_rows(self.db, "SELECT barcode FROM wh_box WHERE location GLOB 'R*'")
            box = self.rng.choice(sorted(b for (b,) in stored))
            command_id = await node.call_method(
                f"{ns}:CreateOrder", "relocation", [box], "sigkill test"
            )
            self.submitted.append(command_id)
            end = time.monotonic() + 60
            while not journal_rows(
                self.db,
                "SELECT 1 FROM commands WHERE id = ? AND state IN (?, ?, ?, ?)",
                (command_id, *TERMINAL),
            ):
                if self.stop.is_set():
                    return
                assert time.monotonic() < end, f"{command_id} not terminal in 60 s"
                await asyncio.sleep(0.02)
