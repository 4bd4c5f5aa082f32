from __future__ import annotations

from asyncua import ua

from controller.bus_stats import BusSnapshot

from .conftest import client_for, nid, ns_of


async def test_bus_and_service_diagnostics(start_server):
    snaps = {
        "bus1": BusSnapshot(
            "bus1",
            "dlt645",
            True,
            3,
            1,
            {"ok": 90, "timeout": 7, "checksum": 2},
            busy_s=5.0,
            uptime_s=10.0,
        ),
        "bus9": BusSnapshot("bus9", "modbus_tcp", False, 0, 0),  # no tags: object created
    }
    srv = await start_server(bus_snapshots=lambda: list(snaps.values()))
    await srv.update_diagnostics()
    snaps["bus1"] = BusSnapshot(
        "bus1",
        "dlt645",
        True,
        3,
        1,
        {"ok": 99, "timeout": 8},
        busy_s=6.0,
        uptime_s=20.0,
        checksum_errors=4,
    )
    await srv.update_diagnostics()
    async with client_for(srv) as client:
        ns = await ns_of(client)
        diag = await client.nodes.objects.get_child(
            [f"{ns}:gridctl", f"{ns}:Buses", f"{ns}:bus1", f"{ns}:Diagnostics"]
        )
        values = {(await c.read_browse_name()).Name: c for c in await diag.get_children()}
        # utilisation over the last period: (6 - 5) / (20 - 10)
        assert await values["Utilisation"].read_value() == 10.0
        assert await values["Timeouts"].read_value() == 8
        assert await values["MetersQuarantined"].read_value() == 1
        eu = await (await values["Utilisation"].get_child("0:EngineeringUnits")).read_value()
        assert eu.DisplayName.Text == "%"
        bus9 = await client.nodes.objects.get_child([f"{ns}:gridctl", f"{ns}:Buses", f"{ns}:bus9"])
        assert (await bus9.read_type_definition()).Identifier == "@types/BusType"
        connected = client.get_node(nid(ns, "buses/bus9/@diag/Connected"))
        assert await connected.read_value() is False
        assert await client.get_node(nid(ns, "@diag/Uptime")).read_value() > 0.0
        assert await client.get_node(nid(ns, "@diag/ModelNodes")).read_value() > 50
        build = await client.get_node(
            ua.NodeId(ua.ObjectIds.Server_ServerStatus_BuildInfo)
        ).read_value()
        assert build.ProductName == "gridctl" and build.ProductUri == "urn:gridctl"
        assert build.SoftwareVersion
