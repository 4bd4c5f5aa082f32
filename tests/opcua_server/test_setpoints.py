"""Writable Modbus setpoints over OPC UA: by role, journaled, confirmed by read-back.

Real parts: the simulated load-control terminal (a pymodbus server on
loopback), the Modbus bus owner polling it, a SQLite journal with the command
log, real asyncua clients; one test runs the OPC UA server in its own process.
The device is the demo's ``lct1``: ``power_limit`` is a writable holding
register in 0.1 kW (u16), the outputs are writable coils behind the loads'
Arm/Execute.
"""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua

from controller.api import WRITE_SETPOINT, CommandRefused, CommandRequest
from controller.command_router import CommandRouter
from controller.commands import DEFAULT_KINDS, CommandLog
from controller.journal import Journal
from controller.process_image import ProcessImage
from controller.setpoints import PREFIX, ModbusSetpoints
from drivers.config import FieldConfig, ModbusTag
from drivers.modbus_bus import ModbusBus
from drivers.plant import FieldPlant
from drivers.sim.modbus_device import LoadControlTerminal
from drivers.sim.plant import SimulatedPlant
from opcua_server.config import Role, SetpointRule
from opcua_server.process import MirrorImage
from opcua_server.server_process import OpcUaServerProcess

from .conftest import client_for, free_port, make_config, nid, ns_of, until

SC = ua.StatusCodes
A = ua.AttributeIds
VT = ua.VariantType
DEVICE = "buses/lct1/devices/lct1/"
LIMIT = DEVICE + "power_limit"  # holding 0, u16, scale 0.1 kW: 0 .. 6553.5 kW
OUTPUT = DEVICE + "output_1_closed"  # coil 0: a load output, not a setpoint
READ = 1  # AccessLevel bit 0 CurrentRead
READ_WRITE = 3  # CurrentRead (1) | CurrentWrite (2)

TAGS = """[
  { name = "output_1_closed", table = "coil", address = 0, type = "bool", writable = true },
  { name = "power_1", table = "input", address = 2, type = "u16", scale = 0.1, unit = "kW" },
  { name = "power_limit", table = "holding", address = 0, type = "u16", scale = 0.1, unit = "kW", writable = true },
]"""


def field_config(tmp: Path) -> FieldConfig:
    text = f"""
[[buses]]
name = "lct1"
protocol = "modbus_tcp"
port = "tcp://127.0.0.1:{free_port()}"
response_timeout_s = 0.5
reconnect_initial_s = 0.2
[[buses.devices]]
name = "lct1"
unit_id = 1
period_s = 0.2
tags = {TAGS}
[sim]
control_socket = "{tmp / "sim.sock"}"
[sim.modbus_devices.lct1]
outputs = 1
power_kw = 10.0
"""
    return FieldConfig.model_validate(tomllib.loads(text))


class Field:
    """The controller's side: simulated terminal, bus owner, journal, setpoint sink."""

    def __init__(self, tmp: Path) -> None:
        self.config = field_config(tmp)
        self.sim = SimulatedPlant(self.config)
        self.image = ProcessImage()
        self.plant = FieldPlant(self.config, self.image)
        self.journal = Journal(tmp / "journal.sqlite")
        self.journal.open()
        self.log = CommandLog(self.journal, kinds=DEFAULT_KINDS | {WRITE_SETPOINT})
        self.setpoints = ModbusSetpoints(self.log, self.plant.buses, confirm_timeout_s=5.0)
        self.router = CommandRouter(self.log)
        self.router.register(PREFIX, self.setpoints)

    @property
    def terminal(self) -> LoadControlTerminal:
        return self.sim.modbus["lct1"].devices[0]

    @property
    def bus(self) -> ModbusBus:
        bus = self.plant.bus("lct1")
        assert isinstance(bus, ModbusBus)
        return bus

    def commands(self) -> list[tuple[str, str, str, str]]:
        rows = self.journal.query("SELECT kind, target, who, state FROM commands ORDER BY created")
        return [tuple(r) for r in rows]

    def history(self) -> list[str]:
        rows = self.journal.query("SELECT state FROM command_transitions ORDER BY seq")
        return [r["state"] for r in rows]

    def reason(self) -> str:
        (row,) = self.journal.query("SELECT reason FROM commands")
        return str(row["reason"])

    def register_writes(self) -> int:
        """Write requests (FC 6 / FC 16) the bus has put on the wire."""
        return sum(1 for r in self.bus.wire_log if r.function in (6, 16))


@pytest.fixture
async def field(tmp_path: Path) -> AsyncIterator[Field]:
    f = Field(tmp_path)
    await f.sim.start()
    await f.plant.start()
    try:
        # the first poll has read the register (0 at start): the variable starts Good
        await until(lambda: f.image.value(LIMIT) == 0.0, timeout=10.0)
        yield f
    finally:
        await f.setpoints.stop()
        await f.plant.stop()
        await f.sim.stop()
        f.journal.close()


def item(ns: int, path: str, value: Any, vtype: ua.VariantType = VT.Double) -> ua.WriteValue:
    return ua.WriteValue(
        NodeId=nid(ns, path), AttributeId=A.Value, Value=ua.DataValue(ua.Variant(value, vtype))
    )


async def write(client: Client, *items: ua.WriteValue) -> list[int]:
    results = await client.uaclient.write(ua.WriteParameters(NodesToWrite=list(items)))
    return [r.value for r in results]


async def access_levels(client: Client, path: str) -> list[int]:
    ns = await ns_of(client)
    reads = [
        ua.ReadValueId(NodeId=nid(ns, path), AttributeId=a)
        for a in (A.AccessLevel, A.UserAccessLevel)
    ]
    values = await client.uaclient.read(ua.ReadParameters(NodesToRead=reads))
    return [int(v.Value.Value) if v.Value is not None else -1 for v in values]


async def value_of(client: Client, path: str) -> Any:
    ns = await ns_of(client)
    return await client.get_node(nid(ns, path)).read_value()


async def reads(client: Client, path: str, expected: Any, timeout: float = 10.0) -> bool:
    """The variable reads ``expected`` (within ``timeout``: the publisher writes it)."""

    async def check() -> bool:
        return bool(await value_of(client, path) == expected)

    return bool(await until(check, timeout))


# -- config and channel rows --------------------------------------------------------------
def test_only_writable_holding_registers_are_setpoints_in_the_demo():
    config = tomllib.loads(Path("config/demo.toml").read_text())
    (lct1,) = [b for b in config["buses"] if b["name"] == "lct1"]
    tags = [ModbusTag.model_validate(t) for t in lct1["devices"][0]["tags"]]
    assert [(t.name, t.write_role) for t in tags if t.setpoint] == [("power_limit", "operator")]
    # the outputs are writable coils, switched through the loads' Arm/Execute only
    assert all(t.writable and not t.setpoint for t in tags if t.table == "coil")


def test_write_role_belongs_to_writable_holding_registers():
    ModbusTag(name="sp", table="holding", address=0, writable=True, write_role="engineer")
    for bad in (
        {"table": "coil", "type": "bool", "writable": True},
        {"table": "holding", "writable": False},
    ):
        with pytest.raises(ValueError, match="write_role is for setpoints"):
            ModbusTag.model_validate({"name": "x", "address": 0, "write_role": "admin", **bad})


def test_tag_rows_carry_the_setpoint_and_old_rows_stay_read_only():
    image = MirrorImage()
    image.define_row([0, "a/volts", "V", "", 230.0, 0, "", 1.0, 1.0, 0])  # 10 fields
    image.define_row([1, "a/limit", "kW", "", 0.0, 0, "", 1.0, 1.0, 0, ["engineer", 0.0, 6553.5]])
    image.define_row([2, "a/other", "kW", "", 0.0, 0, "", 1.0, 1.0, 0, None])
    assert image.setpoint_rules == {"a/limit": SetpointRule(Role.ENGINEER, 0.0, 6553.5)}


# -- in one process ------------------------------------------------------------------------
async def test_operator_write_is_journaled_sent_and_confirmed_by_read_back(start_server, field):
    srv = await start_server(field.image, commands=field.router, setpoints=field.setpoints.rule)
    async with client_for(srv, "otto") as client:  # operator
        ns = await ns_of(client)
        assert await value_of(client, LIMIT) == 0.0
        assert await write(client, item(ns, LIMIT, 12.5)) == [SC.Good]
        await until(lambda: field.commands()[-1][3] == "confirmed", timeout=10.0)
        assert field.commands() == [(WRITE_SETPOINT, LIMIT, "otto", "confirmed")]
        assert field.history() == ["queued", "sent", "confirmed"]
        # 12.5 kW / 0.1 kW per count = 125 counts in holding register 0
        assert field.terminal.power_limit_raw == 125
        assert field.reason() == "read back raw [125]"
        # the image holds the read-back (125 * 0.1 = 12.5), and so does the variable
        assert field.image.value(LIMIT) == 12.5
        assert await reads(client, LIMIT, 12.5)
    assert field.register_writes() == 1


async def test_viewer_is_refused_and_each_session_reads_its_own_access(start_server, field):
    srv = await start_server(field.image, commands=field.router, setpoints=field.setpoints.rule)
    async with client_for(srv, "vera") as client:  # viewer
        ns = await ns_of(client)
        assert await access_levels(client, LIMIT) == [READ_WRITE, READ]
        assert await write(client, item(ns, LIMIT, 12.5)) == [SC.BadUserAccessDenied]
    async with client_for(srv, "otto") as client:  # operator
        assert await access_levels(client, LIMIT) == [READ_WRITE, READ_WRITE]
    assert field.commands() == []
    assert field.register_writes() == 0
    assert field.terminal.power_limit_raw == 0


async def test_coil_outputs_are_not_writable_setpoints(start_server, field):
    srv = await start_server(field.image, commands=field.router, setpoints=field.setpoints.rule)
    async with client_for(srv, "ada") as client:  # admin: the role is not the reason
        ns = await ns_of(client)
        assert await access_levels(client, OUTPUT) == [READ, READ]
        assert await write(client, item(ns, OUTPUT, False, VT.Boolean)) == [SC.BadNotWritable]
    assert field.commands() == []
    assert field.terminal.closed(0)


async def test_out_of_range_values_are_refused_before_anything_is_sent(start_server, field):
    srv = await start_server(field.image, commands=field.router, setpoints=field.setpoints.rule)
    async with client_for(srv, "otto") as client:
        ns = await ns_of(client)
        codes = await write(
            client,
            item(ns, LIMIT, 6553.6),  # 65536 counts: one above u16's 65535
            item(ns, LIMIT, -0.1),  # -1 count: u16 has no negatives
            item(ns, LIMIT, 12, VT.Int32),  # the variable is a Double
        )
        assert codes == [SC.BadOutOfRange, SC.BadOutOfRange, SC.BadTypeMismatch]
    assert field.commands() == []
    assert field.register_writes() == 0
    # Past the OPC UA check (another client of the sink): refused, journaled, not sent.
    request = CommandRequest(
        target=LIMIT,
        kind=WRITE_SETPOINT,
        reason="test",
        user="otto",
        role="operator",
        token="t-range",
        armed_at=0.0,
        args={"value": 7000.0},
    )
    with pytest.raises(CommandRefused) as refused:
        await field.router.submit(request)
    assert str(refused.value) == (
        f"{LIMIT}: value: 7000 kW is outside power_limit's range 0..6553.5 kW "
        "(u16 raw 0..65535, scale 0.1)"
    )
    assert field.commands() == [(WRITE_SETPOINT, LIMIT, "otto", "refused")]
    assert field.register_writes() == 0


async def test_a_device_that_keeps_its_value_fails_the_command(start_server, field):
    field.terminal.local_mode = True  # acknowledges the write, keeps 0
    srv = await start_server(field.image, commands=field.router, setpoints=field.setpoints.rule)
    async with client_for(srv, "otto") as client:
        ns = await ns_of(client)
        assert await write(client, item(ns, LIMIT, 30.0)) == [SC.Good]
        await until(lambda: field.commands()[-1][3] == "failed", timeout=10.0)
        assert field.history() == ["queued", "sent", "failed"]
        # 30.0 kW = 300 counts written; the device still holds 0
        assert field.reason() == (
            "the device did not take the value: wrote raw [300], read back raw [0] "
            "(power_limit, u16, scale 0.1)"
        )
        assert field.terminal.power_limit_raw == 0
        assert field.image.value(LIMIT) == 0.0
        assert await value_of(client, LIMIT) == 0.0
    assert field.register_writes() == 1


async def test_a_write_that_gets_no_read_back_fails(field):
    from controller.process_image import Quality

    await field.sim.modbus["lct1"].stop()  # the terminal is gone from the network
    await until(lambda: field.image.get(LIMIT).quality is Quality.BAD, timeout=10.0)
    request = CommandRequest(
        target=LIMIT,
        kind=WRITE_SETPOINT,
        reason="test",
        user="otto",
        role="operator",
        token="t-gone",
        armed_at=0.0,
        args={"value": 12.5},
    )
    await field.router.submit(request)  # accepted: journaled and sent
    await until(lambda: field.commands()[-1][3] == "failed", timeout=10.0)
    assert field.history() == ["queued", "sent", "failed"]
    assert field.reason().startswith("write or read-back failed: ")
    assert field.terminal.power_limit_raw == 0
    assert field.image.get(LIMIT).quality is Quality.BAD  # no read-back, no new value


async def test_a_pending_write_is_reconciled_by_read_back(field):
    await field.bus.write_register("lct1", "power_limit", 12.5)  # the device holds 125
    # left `sent` by a previous run: 12.5 kW was written, 20.0 kW was not
    for token, value in (("done", 12.5), ("lost", 20.0)):
        cmd = await field.log.submit(
            WRITE_SETPOINT, LIMIT, {"value": value}, who="otto", why="t", command_id=token
        )
        await field.log.transition(cmd.id, "sent")
    report = await field.log.reconcile(field.setpoints.reread)
    assert report.outcomes == {"confirmed": 1, "failed": 1}
    assert field.log.get("done").state.value == "confirmed"
    assert field.log.get("lost").state.value == "failed"
    assert field.register_writes() == 1  # read back, never re-sent


# -- through the separate server process ----------------------------------------------------
async def test_setpoint_write_through_the_server_process(tmp_path, field):
    server = OpcUaServerProcess(
        make_config(),
        field.image,
        state_dir=tmp_path / "opcua",
        commands=field.router,
        setpoints=field.setpoints.rule,
    )
    await server.start()
    try:
        async with client_for(server, "vera") as client:  # type: ignore[arg-type]
            ns = await ns_of(client)
            assert await access_levels(client, LIMIT) == [READ_WRITE, READ]
            assert await access_levels(client, OUTPUT) == [READ, READ]
            assert await write(client, item(ns, LIMIT, 12.5)) == [SC.BadUserAccessDenied]
        assert field.commands() == []
        async with client_for(server, "otto") as client:  # type: ignore[arg-type]
            ns = await ns_of(client)
            assert await access_levels(client, LIMIT) == [READ_WRITE, READ_WRITE]
            assert await write(client, item(ns, LIMIT, 6553.6)) == [SC.BadOutOfRange]
            assert await write(client, item(ns, LIMIT, 12.5)) == [SC.Good]
            await until(
                lambda: field.commands() and field.commands()[-1][3] == "confirmed", timeout=10.0
            )
            assert field.commands() == [(WRITE_SETPOINT, LIMIT, "otto", "confirmed")]
            assert field.terminal.power_limit_raw == 125  # 12.5 / 0.1
            assert await reads(client, LIMIT, 12.5, 20.0)
    finally:
        await server.stop()


# -- the service: `gridctl run` on the demo config -------------------------------------------
async def _demo_session(endpoint: str, user: str, password: str) -> Client:
    client = Client(endpoint, timeout=10)
    client.set_user(user)
    client.set_password(password)
    return client


async def test_the_demo_service_takes_an_operators_power_limit(tmp_path: Path):
    from ..controller.test_service import Running

    service = Running(tmp_path)
    try:
        endpoint = service.wait_for_line(r"opcua ready: (opc\.tcp://\S+)", timeout=60).group(1)
        assert "opcua: commands accepted for " in service.text()
        assert PREFIX in service.wait_for_line(r"opcua: commands accepted for (.*)").group(1)
        # demo passwords (config/demo.toml): demo-viewer, demo-operator
        async with await _demo_session(endpoint, "viewer", "demo-viewer") as client:
            ns = await ns_of(client)
            await until(lambda: reads_good(client, LIMIT), 30.0)
            # the demo historizes power tags: HistoryRead (bit 2, 4) is in both levels
            assert await access_levels(client, LIMIT) == [READ_WRITE | 4, READ | 4]  # 7, 5
            assert await write(client, item(ns, LIMIT, 12.5)) == [SC.BadUserAccessDenied]
        async with await _demo_session(endpoint, "operator", "demo-operator") as client:
            ns = await ns_of(client)
            assert await access_levels(client, LIMIT) == [READ_WRITE | 4, READ_WRITE | 4]
            assert await write(client, item(ns, OUTPUT, False, VT.Boolean)) == [SC.BadNotWritable]
            assert await write(client, item(ns, LIMIT, 12.5)) == [SC.Good]
            # the simulated terminal holds 125 counts, read back as 12.5 kW
            assert await reads(client, LIMIT, 12.5, 20.0)
    finally:
        service.close()


async def reads_good(client: Client, path: str) -> bool:
    ns = await ns_of(client)
    dv = await client.get_node(nid(ns, path)).read_data_value(raise_on_bad_status=False)
    return dv.StatusCode is not None and bool(dv.StatusCode.is_good())
