"""What the HMI needs: WhoAmI, the alarm list and Shelve, task timing, late tags."""

from __future__ import annotations

import asyncio
import json

from asyncua import ua

from controller.alarms import AlarmEngine
from controller.process_image import Quality
from controller.quality_reason import Reason

from .conftest import client_for, demo_image, nid, ns_of

SC = ua.StatusCodes


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


async def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_whoami_returns_user_and_role(start_server):
    srv = await start_server()
    for user, role in (("vera", "viewer"), ("otto", "operator"), ("ada", "admin")):
        async with client_for(srv, user) as client:
            ns = await ns_of(client)
            root = client.get_node(nid(ns, "@gridctl"))
            assert await root.call_method(f"{ns}:WhoAmI") == [user, role]
    async with client_for(srv) as client:  # anonymous may ask too
        ns = await ns_of(client)
        root = client.get_node(nid(ns, "@gridctl"))
        assert await root.call_method(f"{ns}:WhoAmI") == ["anonymous", "anonymous"]


async def test_alarm_list_updates_and_shelve(start_server):
    clock = Clock()
    engine = AlarmEngine(clock=clock)
    srv = await start_server(alarms=engine, alarm_poll_s=0.05)
    async with client_for(srv, "otto") as client:
        ns = await ns_of(client)
        active = client.get_node(nid(ns, "@alarms/Active"))
        assert json.loads(await active.read_value()) == []

        engine.set("bus_down", "bus/bus1", True, "bus bus1 not connected")
        srv.alarms_changed()

        async def listed():
            return json.loads(await active.read_value())

        await wait_for(lambda: _nonempty(active))
        (item,) = await listed()
        assert item["id"] == "bus_down:bus/bus1"
        assert item["source"] == "bus/bus1"
        assert item["message"] == "bus bus1 not connected"
        assert item["severity"] == 700
        assert (item["active"], item["acknowledged"], item["shelved"]) == (True, False, False)
        assert item["time"].endswith("Z")

        alarms = client.get_node(nid(ns, "@alarms"))
        await alarms.call_method(f"{ns}:Acknowledge", "bus_down:bus/bus1", "crew out")
        await alarms.call_method(
            f"{ns}:Shelve", "bus_down:bus/bus1", ua.Variant(600.0), "known outage"
        )
        await wait_for(lambda: _field(active, "shelved"))
        (item,) = await listed()
        assert item["acknowledged"] is True and item["shelved"] is True
        a = engine.get("bus_down:bus/bus1")
        assert (a.acked_by, a.ack_note, a.shelved_by) == ("otto", "crew out", "otto")

        # Shelve validates its arguments and names them.
        with _raises(SC.BadOutOfRange):
            await alarms.call_method(f"{ns}:Shelve", "bus_down:bus/bus1", -1.0, "x")
        with _raises(SC.BadOutOfRange):
            await alarms.call_method(f"{ns}:Shelve", "bus_down:bus/bus1", 90000.0, "x")
        with _raises(SC.BadInvalidArgument):
            await alarms.call_method(f"{ns}:Shelve", "nope", 60.0, "x")
        with _raises(SC.BadOutOfRange):
            await alarms.call_method(f"{ns}:Shelve", "bus_down:bus/bus1", 60.0, "")
        # A string-only client (the HMI) may send the duration as text.
        await alarms.call_method(f"{ns}:Shelve", "bus_down:bus/bus1", "120", "again")

        # Cleared and acknowledged: off the list.
        engine.set("bus_down", "bus/bus1", False)
        srv.alarms_changed()
        await wait_for(lambda: _empty(active))
    async with client_for(srv, "vera") as viewer:
        alarms = viewer.get_node(nid(ns, "@alarms"))
        with _raises(SC.BadUserAccessDenied):
            await alarms.call_method(f"{ns}:Shelve", "bus_down:bus/bus1", 60.0, "x")


async def _nonempty(node) -> bool:
    return bool(json.loads(await node.read_value()))


async def _empty(node) -> bool:
    return not json.loads(await node.read_value())


async def _field(node, name: str) -> bool:
    items = json.loads(await node.read_value())
    return bool(items) and bool(items[0][name])


class _raises:
    def __init__(self, code: int) -> None:
        self.code = code

    def __enter__(self) -> None:
        return None

    def __exit__(self, et, exc, tb) -> bool:
        assert exc is not None, f"expected {ua.StatusCode(self.code).name}"
        assert isinstance(exc, ua.UaStatusCodeError), exc
        assert exc.code == self.code, ua.StatusCode(exc.code).name
        return True


async def test_task_stats_published(start_server):
    stats = {
        "fast": {
            "latency_p50_s": 0.00002,
            "latency_p99_s": 0.0004,
            "latency_max_s": 0.002,
            "overruns": 3,
        },
        "control": {
            "latency_p50_s": 0.0001,
            "latency_p99_s": 0.001,
            "latency_max_s": 0.004,
            "overruns": 0,
        },
    }
    srv = await start_server(task_stats=lambda: stats)
    await srv.update_diagnostics()
    async with client_for(srv) as client:
        ns = await ns_of(client)
        fast = await client.nodes.objects.get_child(
            [f"{ns}:gridctl", f"{ns}:Diagnostics", f"{ns}:Tasks", f"{ns}:fast"]
        )
        assert fast.nodeid == nid(ns, "tasks/fast")
        p99 = client.get_node(nid(ns, "tasks/fast/latency_p99"))
        assert await p99.read_value() == 0.0004
        assert await client.get_node(nid(ns, "tasks/fast/overruns")).read_value() == 3
        eu = await (await p99.get_child("0:EngineeringUnits")).read_value()
        assert eu.DisplayName.Text == "s"
        names = {(await c.read_browse_name()).Name for c in await fast.get_children()}
        assert names == {"latency_p50", "latency_p99", "latency_max", "overruns"}
        stats["fast"]["overruns"] = 4
        await srv.update_diagnostics()
        assert await client.get_node(nid(ns, "tasks/fast/overruns")).read_value() == 4


async def test_late_tags_appear_with_line_and_warehouse_types(start_server):
    image = demo_image(buses=1, meters=1)
    srv = await start_server(image)
    async with client_for(srv) as client:
        ns = await ns_of(client)
        # Not there before the subsystems start: the HMI must not offer their screens.
        with _raises(SC.BadNodeIdUnknown):
            await client.get_node(nid(ns, "line")).read_node_class()

        image.define("line/batch/state", "", "created/running/aborted/done")
        image.define("line/stations/01/temperature", "°C", "current-terminal temperature")
        image.define("warehouse/cranes/c1/position_x", "m")
        image.define("warehouse/conveyors/in1/zone_count", "", initial=0)
        image.define("buses/bus1/meters/000000000002/voltage_a", "V")
        image.write("line/stations/01/temperature", 41.5)
        await wait_for(lambda: srv.stats()["late_tags"] == 5)

        line = client.get_node(nid(ns, "line"))
        assert (await line.read_type_definition()).Identifier == "@types/VerificationLineType"
        assert (await line.read_display_name()).Text == "VerificationLine"
        station = client.get_node(nid(ns, "line/stations/01"))
        assert (await station.read_type_definition()).Identifier == "@types/StationType"
        temp = client.get_node(nid(ns, "line/stations/01/temperature"))
        assert await temp.read_value() == 41.5
        crane = client.get_node(nid(ns, "warehouse/cranes/c1"))
        assert (await crane.read_type_definition()).Identifier == "@types/StackerCraneType"
        conveyor = client.get_node(nid(ns, "warehouse/conveyors/in1"))
        assert (await conveyor.read_type_definition()).Identifier == "@types/ConveyorType"
        wh = client.get_node(nid(ns, "warehouse"))
        assert (await wh.read_type_definition()).Identifier == "@types/WarehouseType"
        # A new meter on an existing bus joins the existing folder.
        meter = await client.nodes.objects.get_child(
            [f"{ns}:gridctl", f"{ns}:Buses", f"{ns}:bus1", f"{ns}:Meters", f"{ns}:000000000002"]
        )
        assert (await meter.read_type_definition()).Identifier == "@types/MeterType"

        # Later writes are published to the new variables (subscribed as usual).
        image.write("line/batch/state", "running")
        state = client.get_node(nid(ns, "line/batch/state"))
        await wait_for(lambda: _equals(state, "running"))
        image.write(
            "line/batch/state", "bad", Quality.BAD, "not yet read", code=Reason.NOT_YET_POLLED
        )
        await wait_for(lambda: _status(state, SC.BadWaitingForInitialData))
        # Methods of the new objects appear with them.
        await line.get_child(f"{ns}:StartBatch")
        await wh.get_child(f"{ns}:CreateOrder")


async def _equals(node, value) -> bool:
    return await node.read_value() == value


async def _status(node, code: int) -> bool:
    dv = await node.read_data_value(raise_on_bad_status=False)
    return dv.StatusCode.value == code


async def test_start_from_service(tmp_path):
    """The service seam: everything taken from the service object, state under state_dir."""
    from types import SimpleNamespace

    from controller.commands import CommandLog
    from controller.config import GridConfig
    from controller.cycle import CycleTask
    from controller.journal import Journal
    from opcua_server.adapters import CommandLogSink, EngineAlarmSource
    from opcua_server.server import start

    from .conftest import free_port

    config = GridConfig.model_validate(
        {
            "service": {"state_dir": str(tmp_path)},
            "opcua": {"endpoint": f"opc.tcp://127.0.0.1:{free_port()}/gridctl"},
        }
    )
    journal = Journal(tmp_path / "journal.db")
    journal.open()
    service = SimpleNamespace(
        config=config,
        image=demo_image(buses=1, meters=1),
        commands=CommandLog(journal),
        alarms=AlarmEngine(),
        tasks=(CycleTask("fast", 0.01), CycleTask("control", 1.0)),
        bus_snapshots=lambda: [],
    )
    srv = await start(service)
    try:
        assert isinstance(srv.alarms, EngineAlarmSource)
        assert isinstance(srv.commands, CommandLogSink)
        assert (tmp_path / "opcua" / "pki" / "own" / "cert.der").exists()
        await srv.update_diagnostics()
        aspace = srv.server.iserver.aspace
        assert ua.NodeId("tasks/control/latency_p99", srv.namespace_index) in aspace
        assert srv.history is not None and srv.history.path == tmp_path / "opcua" / "history.db"
    finally:
        await srv.stop()
        journal.close()
