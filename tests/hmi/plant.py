"""A demo plant behind a real gridctl OPC UA server, for the HMI tests and benchmark.

The HMI's tests against the real service are tests/hmi/test_real_service.py;
this fake stays for the states that service's small simulated plant cannot
produce on demand (see tests/hmi/test_app.py); other tests (tests/opcua_server) build on it too.

The server is the real :class:`opcua_server.OpcUaServer` fed by a real
:class:`ProcessImage`, with two stand-ins that make states on demand:

- :class:`FakeSink` stands in for the load-switching logic: it accepts a
  command and, shortly after, writes the relay read-back into the image (what
  the driver would do once status word 3 confirms it);
- :class:`FakeAlarms` is the alarm source; :func:`publish_alarm_list` tells the
  server (which publishes ``@alarms/Active`` itself) when the list changed.
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.api import CommandRefused, CommandRequest
from controller.bus_stats import BusSnapshot
from controller.process_image import ProcessImage, Quality
from controller.quality_reason import Reason
from opcua_server import AlarmInfo, OpcUaConfig, OpcUaServer, ServerSettings, UserConfig
from opcua_server.users import hash_password
from tests.opcua_server.conftest import FakeSelections

PASSWORDS = {"vera": "viewer-pw", "otto": "operator-pw", "emma": "engineer-pw"}
ROLES = {"vera": "viewer", "otto": "operator", "emma": "engineer"}
USERS = [
    UserConfig(name=n, password_hash=hash_password(p, n=2**10), role=ROLES[n])
    for n, p in PASSWORDS.items()
]

# The names the DL/T 645 drivers give the quantities (drivers/quantities.py).
QUANTITIES: tuple[tuple[str, str], ...] = (
    ("power_active_total", "kW"),
    ("voltage_a", "V"),
    ("current_a", "A"),
    ("power_factor_total", ""),
    ("energy_fwd_active_total", "kWh"),
    ("frequency", "Hz"),
)
LOADS = ("feeder1_l1", "feeder1_l2", "feeder2_l1")
STATIONS = 8  # two units of four positions
RACK = (2, 10, 6)  # rows, bays, levels
DEMO_BOXES = 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def meter_addr(bus: int, m: int) -> str:
    return f"{bus:02d}{m:010d}"


def demo_image(
    buses: int = 2,
    meters: int = 4,
    quantities: tuple[tuple[str, str], ...] = QUANTITIES,
    rack_map: bool = True,
) -> ProcessImage:
    """Meters with plausible values; the last meter of bus 1 is quarantined (Bad).

    Loads, demand groups, the verification line and the warehouse carry the tag
    names the controller publishes (controller/loads/runtime.py,
    controller/verification/, controller/warehouse/service.py).
    """
    image = ProcessImage()
    for b in range(1, buses + 1):
        for m in range(1, meters + 1):
            base = f"buses/bus{b}/meters/{meter_addr(b, m)}"
            for q, unit in quantities:
                image.define(f"{base}/{q}", unit)
            write_meter(image, base, quantities, seed=b * 1000 + m)
    for b_m in [(1, meters)]:
        base = f"buses/bus{b_m[0]}/meters/{meter_addr(*b_m)}"
        for q, _unit in quantities:
            image.write(
                f"{base}/{q}", None, Quality.BAD, "meter quarantined", code=Reason.QUARANTINED
            )
    for load in LOADS:
        for name in ("relay_open", "relay_commanded_open", "keep_power", "locked_out"):
            image.define(f"loads/{load}/{name}", "", initial=False)
            image.write(f"loads/{load}/{name}", name == "keep_power" and load == "feeder2_l1")
    group = "demand/groups/feeder1/"
    image.define(group + "average_kw", "kW")
    image.define(group + "limit_kw", "kW")
    image.define(group + "state", "")
    image.define(group + "rounds_shed", "", initial=0)
    image.write(group + "average_kw", 87.5)
    image.write(group + "limit_kw", 120.0)
    image.write(group + "state", "normal")
    image.write(group + "rounds_shed", 0)
    define_line(image)
    define_warehouse(image, rack_map)
    return image


def define_line(image: ProcessImage) -> None:
    for name, value in (
        ("line/time_scale", 100.0),
        ("line/rig", "sim"),
        ("line/state", "idle"),
        ("line/schemes", "class1-single-phase, class2-quick"),
        ("line/meter_type", "DDZY-1-5(60)A"),
    ):
        image.define(name, "")
        image.write(name, value)
    for name in ("id", "scheme", "state", "meters", "passed", "failed", "message"):
        image.define(f"line/batch/{name}", "")
    image.define("line/batch/progress", "%")
    image.define("line/metrics/meters_tested", "")
    image.define("line/metrics/pass_rate", "%")
    image.define("line/metrics/items_per_hour", "1/h")
    for unit in (1, 2):
        image.define(f"line/units/{unit}/state", "")
        image.define(f"line/units/{unit}/item", "")
    for sid in range(1, STATIONS + 1):
        for leaf in ("state", "meter", "last_item", "last_verdict", "verdict"):
            image.define(f"line/stations/{sid:02d}/{leaf}", "")
        image.define(f"line/stations/{sid:02d}/temperature", "°C")
        image.write(f"line/stations/{sid:02d}/temperature", 25.0 + sid / 10)


def line_done(image: ProcessImage, batch_id: str) -> None:
    """The batch ended: verdicts and counts as the line writes them."""
    for sid in range(1, STATIONS + 1):
        verdict = "fail" if sid == 3 else "pass"
        image.write(f"line/stations/{sid:02d}/verdict", verdict)
        image.write(f"line/stations/{sid:02d}/state", f"boxed: {verdict}")
    image.write("line/batch/state", "done")
    image.write("line/batch/progress", 100.0)
    image.write("line/batch/passed", STATIONS - 1)
    image.write("line/batch/failed", 1)
    image.write("line/state", "idle")
    image.write("line/batch/message", f"batch {batch_id} done: {STATIONS - 1} passed, 1 failed")


def line_running(image: ProcessImage, batch_id: str = "b-0001") -> None:
    """A batch half way: stations testing, one verdict already FAIL."""
    image.write("line/state", "running")
    image.write("line/batch/id", batch_id)
    image.write("line/batch/scheme", "class1-single-phase v1")
    image.write("line/batch/state", "running")
    image.write("line/batch/meters", STATIONS)
    image.write("line/batch/progress", 42.5)
    image.write("line/batch/message", f"batch {batch_id} running")
    image.write("line/metrics/meters_tested", 10)
    image.write("line/metrics/pass_rate", 90.0)
    image.write("line/units/1/state", "testing")
    image.write("line/units/1/item", "7: basic error 0.1Ib PF1")
    for sid in range(1, STATIONS + 1):
        p = f"line/stations/{sid:02d}/"
        image.write(p + "meter", f"M{sid:05d}")
        image.write(p + "state", "testing: error")
        image.write(p + "last_item", "basic error 0.1Ib PF1")
        image.write(p + "last_verdict", "pass")
    image.write("line/stations/03/state", "sorted: fail")
    image.write("line/stations/03/verdict", "fail")
    image.write("line/stations/03/temperature", 61.5)


# Slot codes of the per-slot rack map (one String per rack row and level).
SLOT_CODES = {"free": ".", "unverified": "U", "qualified": "Q", "rejected": "X"}


def define_warehouse(image: ProcessImage, rack_map: bool) -> None:
    rows, bays, levels = RACK
    counts = {
        "occupied": DEMO_BOXES,
        "free": rows * bays * levels - DEMO_BOXES,
        "reserved": 0,
        "blocked": 0,
        "unverified": DEMO_BOXES,
        "qualified": 0,
        "rejected": 0,
    }
    for name, n in counts.items():
        image.define(f"warehouse/slots/{name}", "")
        image.write(f"warehouse/slots/{name}", n)
    for state in ("created", "released", "in_progress", "held", "completed", "failed", "cancelled"):
        image.define(f"warehouse/orders/{state}", "")
        image.write(f"warehouse/orders/{state}", 0)
    crane = "warehouse/cranes/1/"
    for name, unit, value in (
        ("state", "", "idle"),
        ("x", "m", 0.0),
        ("y", "m", 0.0),
        ("fork_loaded", "", False),
        ("fork_barcode", "", ""),
        ("door_open", "", False),
        ("fault", "", 0),
        ("task", "", ""),
    ):
        image.define(crane + name, unit)
        image.write(crane + name, value)
    for conv in ("1-in", "1-out"):
        p = f"warehouse/conveyors/{conv}/"
        for name, value in (("eyes", 0), ("motors", 0), ("loads", ",,,"), ("jam", False)):
            image.define(p + name, "")
            image.write(p + name, value)
    if rack_map:
        # Demo stock: lowest level first, nearest bays first, alternating rows.
        filled = sorted(
            (lv, bay, row)
            for row in range(1, rows + 1)
            for bay in range(1, bays + 1)
            for lv in range(1, levels + 1)
        )[:DEMO_BOXES]
        for row in range(1, rows + 1):
            for lv in range(1, levels + 1):
                text = "".join(
                    SLOT_CODES["unverified"] if (lv, bay, row) in filled else SLOT_CODES["free"]
                    for bay in range(1, bays + 1)
                )
                tag = f"warehouse/racks/{row:02d}/L{lv:02d}"
                image.define(tag, "")
                image.write(tag, text)


def write_meter(
    image: ProcessImage,
    base: str,
    quantities: tuple[tuple[str, str], ...] = QUANTITIES,
    seed: int = 0,
    step: int = 0,
) -> None:
    values = {
        "power_active_total": round(1.0 + (seed % 97) / 10 + (step % 7) * 0.01, 4),
        "voltage_a": 220.0 + (seed % 11),
        "current_a": round(5.0 + (seed % 13) / 10, 3),
        "power_factor_total": 0.95,
        "energy_fwd_active_total": 1000.0 + seed,
        "frequency": 50.0,
    }
    for q, _unit in quantities:
        image.write(f"{base}/{q}", values.get(q, 0.0))


def bus_snapshots(buses: int) -> list[BusSnapshot]:
    return [
        BusSnapshot(
            name=f"bus{b}",
            protocol="dlt645",
            connected=True,
            meters_total=4,
            meters_quarantined=1 if b == 1 else 0,
            transactions={"ok": 990, "timeout": 10 if b == 1 else 0},
            busy_s=40.0 * b,
            uptime_s=100.0,
        )
        for b in range(1, buses + 1)
    ]


@dataclass
class FakeSink(FakeSelections):
    """Stands in for the subsystems: accepts, then confirms by writing the read-back.

    Warehouse orders get numbers as the real subsystem gives them, and the
    command states carry ``order N`` the way its command records do.
    """

    image: ProcessImage
    delay_s: float = 0.3
    requests: list[CommandRequest] = field(default_factory=list)
    refuse: CommandRefused | None = None
    states: dict[str, tuple[str, str]] = field(default_factory=dict)
    orders: int = 0

    async def submit(self, request: CommandRequest) -> str:
        if self.refuse:
            raise self.refuse
        self.requests.append(request)
        command_id = f"cmd-{len(self.requests):04d}"
        self.states[command_id] = ("sent", request.reason)
        if request.kind == "create_order":
            self.orders += 1
            self.states[command_id] = ("sent", f"order {self.orders}")
        elif request.kind == "cancel_order":
            self.states[command_id] = ("confirmed", f"order {request.args['order_id']} cancelled")
        elif request.kind == "set_demand_limit":
            self.image.write("demand/groups/feeder1/limit_kw", float(request.args["limit_kw"]))
            self.states[command_id] = ("confirmed", "limit set")
        elif request.kind == "start_batch":
            line_running(self.image, command_id)
            self.states[command_id] = ("confirmed", f"batch {command_id} started")
        elif request.kind == "abort_batch":
            self.image.write("line/state", "idle")
            self.image.write("line/batch/state", "aborted")
            self.states[command_id] = ("confirmed", "batch aborted")
        asyncio.get_running_loop().call_later(self.delay_s, self._read_back, request)
        return command_id

    def command_state(self, command_id: str) -> tuple[str, str] | None:
        return self.states.get(command_id)

    def _read_back(self, request: CommandRequest) -> None:
        tag, value = {
            "trip": ("relay_open", True),
            "close_direct": ("relay_open", False),
            "close_allowed": ("relay_open", False),
            "keep_power_on": ("keep_power", True),
            "keep_power_off": ("keep_power", False),
        }.get(request.kind, ("", None))
        if request.kind in (
            "trip",
            "close_direct",
            "close_allowed",
            "keep_power_on",
            "keep_power_off",
        ):
            self.states[f"cmd-{self.requests.index(request) + 1:04d}"] = ("confirmed", "read back")
        if tag:
            if tag == "relay_open":
                self.image.write(f"{request.target}/relay_commanded_open", value)
            self.image.write(f"{request.target}/{tag}", value)


@dataclass
class FakeAlarms:
    alarms: dict[str, AlarmInfo] = field(default_factory=dict)
    comments: list[tuple[str, str, str]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        for a in (
            AlarmInfo(
                "A-0001", "buses/bus1", "bus1: meter 010000000004 quarantined", 700, True, False
            ),
            AlarmInfo(
                "A-0002", "groups/feeder1", "feeder1 demand above 70 % of limit", 400, True, False
            ),
            AlarmInfo("A-0003", "buses/bus2", "bus2: checksum errors rising", 200, True, True),
        ):
            self.alarms[a.alarm_id] = a

    def active_alarms(self) -> list[AlarmInfo]:
        return list(self.alarms.values())

    async def acknowledge(self, alarm_id: str, user: str, comment: str) -> None:
        a = self.alarms[alarm_id]
        self.alarms[alarm_id] = AlarmInfo(
            a.alarm_id, a.source, a.message, a.severity, a.active, True
        )
        self.comments.append((alarm_id, user, comment))
        self.changed.set()


def alarm_json(alarms: FakeAlarms) -> str:
    return json.dumps(
        [
            {
                "id": a.alarm_id,
                "source": a.source,
                "message": a.message,
                "severity": a.severity,
                "active": a.active,
                "acknowledged": a.acknowledged,
                "shelved": False,
                "time": "2025-01-01T08:00:00Z",
            }
            for a in alarms.active_alarms()
        ]
    )


async def publish_alarm_list(srv: OpcUaServer, alarms: FakeAlarms) -> asyncio.Task[None]:
    """The server publishes ``@alarms/Active`` from the alarm source; nudge it on change."""

    async def keep() -> None:
        while True:
            await alarms.changed.wait()
            alarms.changed.clear()
            srv.alarms_changed()

    return asyncio.create_task(keep())


@dataclass
class Plant:
    server: OpcUaServer
    image: ProcessImage
    sink: FakeSink
    alarms: FakeAlarms
    url: str
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await self.server.stop()


async def start_plant(
    state_dir: Path,
    *,
    buses: int = 2,
    meters: int = 4,
    quantities: tuple[tuple[str, str], ...] = QUANTITIES,
    alarm_list: bool = True,
    port: int | None = None,
    rack_map: bool = True,
) -> Plant:
    image = demo_image(buses, meters, quantities, rack_map)
    sink = FakeSink(image)
    alarms = FakeAlarms()
    url = f"opc.tcp://127.0.0.1:{port or free_port()}/gridctl"
    config = OpcUaConfig(
        endpoint=url,
        security_policies=["None"],
        anonymous="read-only",
        users=USERS,
        allow_plaintext_password_on_loopback=True,
        min_publishing_interval_ms=50.0,
    )
    settings = ServerSettings(
        state_dir=state_dir,
        bus_snapshots=lambda: bus_snapshots(buses),
        commands=sink,
        alarms=alarms,
        diagnostics_period_s=0.5,
    )
    srv = OpcUaServer(config, image, settings)
    await srv.start()
    plant = Plant(srv, image, sink, alarms, url)
    if alarm_list:
        plant.tasks.append(await publish_alarm_list(srv, alarms))
    return plant
