"""A demo plant behind a real gridctl OPC UA server, for the HMI tests and benchmark.

The server is the real :class:`opcua_server.OpcUaServer` fed by a real
:class:`ProcessImage`. Two stand-ins remain, for parts not built yet:

- :class:`FakeSink` stands in for the load-switching logic: it accepts a
  command and, shortly after, writes the relay read-back into the image (what
  the driver would do once status word 3 confirms it);
- :func:`publish_alarm_list` adds the ``@alarms/Active`` variable (a JSON list of
  the alarms) that the HMI asks the server to expose; the server today only
  has ``@alarms/Acknowledge``.
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.process_image import ProcessImage, Quality
from drivers.bus_stats import BusSnapshot
from opcua_server import (
    AlarmInfo,
    CommandRefused,
    CommandRequest,
    OpcUaConfig,
    OpcUaServer,
    UserConfig,
)
from opcua_server.users import hash_password

PASSWORDS = {"vera": "viewer-pw", "otto": "operator-pw", "emma": "engineer-pw"}
ROLES = {"vera": "viewer", "otto": "operator", "emma": "engineer"}
USERS = [
    UserConfig(name=n, password_hash=hash_password(p, n=2**10), role=ROLES[n])
    for n, p in PASSWORDS.items()
]

QUANTITIES: tuple[tuple[str, str], ...] = (
    ("power_active", "kW"),
    ("voltage_a", "V"),
    ("current_a", "A"),
    ("power_factor", "PF"),
    ("energy_forward_active", "kWh"),
    ("frequency", "Hz"),
)
LOADS = ("feeder1_l1", "feeder1_l2", "feeder2_l1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def meter_addr(bus: int, m: int) -> str:
    return f"{bus:02d}{m:010d}"


def demo_image(
    buses: int = 2, meters: int = 4, quantities: tuple[tuple[str, str], ...] = QUANTITIES
) -> ProcessImage:
    """Meters with plausible values; the last meter of bus 1 is quarantined (Bad)."""
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
            image.write(f"{base}/{q}", None, Quality.BAD, "meter quarantined")
    for load in LOADS:
        image.define(f"loads/{load}/relay_open", "", initial=False)
        image.define(f"loads/{load}/relay_commanded_open", "", initial=False)
        image.define(f"loads/{load}/keep_power", "", initial=False)
        image.write(f"loads/{load}/relay_open", False)
        image.write(f"loads/{load}/relay_commanded_open", False)
        image.write(f"loads/{load}/keep_power", load == "feeder2_l1")
    image.define("groups/feeder1/limit", "kW")
    image.define("groups/feeder1/demand", "kW")
    image.define("groups/feeder1/round", "", initial=0)
    image.write("groups/feeder1/limit", 120.0)
    image.write("groups/feeder1/demand", 87.5)
    image.write("groups/feeder1/round", 0)
    return image


def write_meter(
    image: ProcessImage,
    base: str,
    quantities: tuple[tuple[str, str], ...] = QUANTITIES,
    seed: int = 0,
    step: int = 0,
) -> None:
    values = {
        "power_active": round(1.0 + (seed % 97) / 10 + (step % 7) * 0.01, 4),
        "voltage_a": 220.0 + (seed % 11),
        "current_a": round(5.0 + (seed % 13) / 10, 3),
        "power_factor": 0.95,
        "energy_forward_active": 1000.0 + seed,
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
class FakeSink:
    """Stands in for load switching: accepts, then confirms by writing the read-back."""

    image: ProcessImage
    delay_s: float = 0.3
    requests: list[CommandRequest] = field(default_factory=list)
    refuse: str | None = None

    async def submit(self, request: CommandRequest) -> str:
        if self.refuse:
            raise CommandRefused(self.refuse)
        self.requests.append(request)
        command_id = f"cmd-{len(self.requests):04d}"
        asyncio.get_running_loop().call_later(self.delay_s, self._read_back, request)
        return command_id

    def _read_back(self, request: CommandRequest) -> None:
        tag, value = {
            "trip": ("relay_open", True),
            "close_direct": ("relay_open", False),
            "close_allowed": ("relay_open", False),
            "keep_power_on": ("keep_power", True),
            "keep_power_off": ("keep_power", False),
        }.get(request.kind, ("", None))
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
) -> Plant:
    image = demo_image(buses, meters, quantities)
    sink = FakeSink(image)
    alarms = FakeAlarms()
    url = f"opc.tcp://127.0.0.1:{port or free_port()}/gridctl"
    config = OpcUaConfig(
        endpoint=url,
        security_policies=["None"],
        anonymous="read-only",
        users=USERS,
        min_publishing_interval_ms=50.0,
    )
    srv = OpcUaServer(
        config,
        image,
        state_dir=state_dir,
        bus_snapshots=lambda: bus_snapshots(buses),
        commands=sink,
        alarms=alarms,
        diagnostics_period_s=0.5,
    )
    await srv.start()
    plant = Plant(srv, image, sink, alarms, url)
    if alarm_list:
        plant.tasks.append(await publish_alarm_list(srv, alarms))
    return plant
