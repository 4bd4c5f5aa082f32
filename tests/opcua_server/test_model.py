from __future__ import annotations

import asyncio

import pytest
from asyncua import ua

from controller.process_image import ProcessImage, Quality
from controller.quality_reason import Reason
from opcua_server.model import ModelError
from opcua_server.quality import status_code
from opcua_server.units import eu_information, unece_unit_id

from .conftest import client_for, demo_image, nid, ns_of

SC = ua.StatusCodes
METER = "buses/bus1/meters/000000000002"


def test_unece_codes():
    assert unece_unit_id("VLT") == 0x564C54
    assert eu_information("kWh").UnitId == unece_unit_id("KWH")
    assert eu_information("kvar").UnitId == unece_unit_id("KVR")
    assert eu_information("Hz").UnitId == unece_unit_id("HTZ")
    assert eu_information("°C").UnitId == unece_unit_id("CEL")
    yuan = eu_information("yuan")
    assert yuan.UnitId == -1 and yuan.DisplayName.Text == "yuan"
    assert eu_information("") is None


@pytest.mark.parametrize(
    ("quality", "reason", "code"),
    [
        (Quality.GOOD, Reason.NONE, SC.Good),
        (Quality.UNCERTAIN, Reason.STALE, SC.UncertainLastUsableValue),
        (Quality.BAD, Reason.NOT_YET_POLLED, SC.BadWaitingForInitialData),
        (Quality.BAD, Reason.QUARANTINED, SC.BadOutOfService),
        (Quality.BAD, Reason.LINK_DOWN, SC.BadNoCommunication),
        (Quality.BAD, Reason.NO_ANSWER, SC.BadTimeout),
        (Quality.BAD, Reason.NONE, SC.Bad),
    ],
)
def test_status_mapping(quality, reason, code):
    assert status_code(quality, reason).value == code


async def test_conflicting_tags_are_named(start_server):
    image = ProcessImage()
    image.define("a/b", "V")
    image.define("a/b/c", "V")
    with pytest.raises(ModelError, match="'a/b'"):
        await start_server(image)


async def test_types_and_instances_browse(start_server):
    srv = await start_server()
    async with client_for(srv) as client:
        ns = await ns_of(client)
        base = client.get_node(ua.NodeId(ua.ObjectIds.BaseObjectType))
        subtypes = {
            (await n.read_browse_name()).Name
            for n in await base.get_children(refs=ua.ObjectIds.HasSubtype)
        }
        assert {"BusType", "MeterType", "LoadType"} <= subtypes
        meter_type = await base.get_child(f"{ns}:MeterType")
        volt_decl = await meter_type.get_child(f"{ns}:voltage_a")
        rules = await volt_decl.get_referenced_nodes(refs=ua.ObjectIds.HasModellingRule)
        assert rules[0].nodeid == ua.NodeId(ua.ObjectIds.ModellingRule_Optional)

        meter = await client.nodes.objects.get_child(
            [f"{ns}:gridctl", f"{ns}:Buses", f"{ns}:bus1", f"{ns}:Meters", f"{ns}:000000000002"]
        )
        assert meter.nodeid == nid(ns, METER)
        assert (await meter.read_type_definition()) == meter_type.nodeid
        names = {(await c.read_browse_name()).Name for c in await meter.get_children()}
        assert names == {
            "voltage_a",
            "current_a",
            "power_factor",
            "energy_forward_active",
            "balance",
        }
        buses = await client.nodes.objects.get_child([f"{ns}:gridctl", f"{ns}:Buses"])
        assert (await buses.read_type_definition()) == ua.NodeId(ua.ObjectIds.FolderType)
        load = await client.nodes.objects.get_child(
            [f"{ns}:gridctl", f"{ns}:Loads", f"{ns}:feeder1_l1"]
        )
        assert (await load.read_type_definition()) == (
            await base.get_child(f"{ns}:LoadType")
        ).nodeid


async def test_units_and_ranges(start_server):
    srv = await start_server()
    async with client_for(srv) as client:
        ns = await ns_of(client)
        volt = client.get_node(nid(ns, f"{METER}/voltage_a"))
        assert (await volt.read_type_definition()) == ua.NodeId(ua.ObjectIds.BaseAnalogType)
        eu = await (await volt.get_child("0:EngineeringUnits")).read_value()
        assert eu.UnitId == unece_unit_id("VLT")
        assert eu.NamespaceUri == "http://www.opcfoundation.org/UA/units/un/cefact"
        assert await volt.read_data_type() == ua.NodeId(ua.ObjectIds.Double)
        pf = client.get_node(nid(ns, f"{METER}/power_factor"))
        assert (await pf.read_type_definition()) == ua.NodeId(ua.ObjectIds.AnalogItemType)
        rng = await (await pf.get_child("0:EURange")).read_value()
        assert (rng.Low, rng.High) == (-1.0, 1.0)
        money = await (
            await client.get_node(nid(ns, f"{METER}/balance")).get_child("0:EngineeringUnits")
        ).read_value()
        assert money.UnitId == -1 and money.DisplayName.Text == "yuan"
        relay = client.get_node(nid(ns, "loads/feeder1_l1/relay_open"))
        assert await relay.read_data_type() == ua.NodeId(ua.ObjectIds.Boolean)


async def test_values_with_status_and_timestamps(start_server):
    image = demo_image()
    srv = await start_server(image)
    image.write(f"{METER}/voltage_a", 231.4, source_time=1_700_000_000.5)
    image.write(f"{METER}/current_a", 5.0, Quality.BAD, "bus down", code=Reason.LINK_DOWN)
    image.write(f"{METER}/power_factor", 0.93, Quality.UNCERTAIN, "stale", code=Reason.STALE)
    image.write(
        f"{METER}/energy_forward_active", 10, Quality.BAD, "checksum", code=Reason.UNDECODABLE
    )
    await asyncio.sleep(0.05)
    async with client_for(srv) as client:
        ns = await ns_of(client)

        async def read(leaf):
            return await client.get_node(nid(ns, f"{METER}/{leaf}")).read_data_value(
                raise_on_bad_status=False
            )

        good = await read("voltage_a")
        assert good.StatusCode.is_good() and good.Value.Value == 231.4
        assert good.SourceTimestamp.timestamp() == pytest.approx(1_700_000_000.5)
        assert good.ServerTimestamp is not None
        assert (await read("current_a")).StatusCode.value == SC.BadNoCommunication
        unc = await read("power_factor")
        assert unc.StatusCode.value == SC.UncertainLastUsableValue and unc.Value.Value == 0.93
        assert (await read("energy_forward_active")).StatusCode.value == SC.BadCommunicationError
        never = await client.get_node(
            nid(ns, "buses/bus2/meters/000000000001/voltage_a")
        ).read_data_value(raise_on_bad_status=False)
        assert never.StatusCode.value == SC.BadWaitingForInitialData
        assert never.Value.Value is None


async def test_large_collections_split_into_range_folders(start_server):
    image = ProcessImage()
    for m in range(25):
        image.define(f"buses/b/meters/{m:012d}/voltage_a", "V")
    srv = await start_server(image, config_overrides={"max_children": 10})
    async with client_for(srv) as client:
        ns = await ns_of(client)
        meters = await client.nodes.objects.get_child(
            [f"{ns}:gridctl", f"{ns}:Buses", f"{ns}:b", f"{ns}:Meters"]
        )
        groups = await meters.get_children()
        assert len(groups) == 3
        first = await groups[0].get_children()
        assert len(first) == 10
        # NodeIds stay the tag paths, whatever the browse grouping.
        v = client.get_node(nid(ns, "buses/b/meters/000000000024/voltage_a"))
        assert (await v.read_browse_name()).Name == "voltage_a"
