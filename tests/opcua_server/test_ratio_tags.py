"""A transformer-operated meter's tags over OPC UA: primary and secondary, each a variable."""

from __future__ import annotations

from pathlib import Path

from controller.process_image import ProcessImage
from drivers.config import FieldConfig
from drivers.plant import FieldPlant
from opcua_server.units import unece_unit_id

from .conftest import client_for, nid, ns_of

METER = "buses/bus1/meters/000000000040"


def ratio_image(tmp: Path) -> ProcessImage:
    """The tags the DL/T 645 bus defines for a meter behind CT 200/5 and PT 10000/100."""
    config = FieldConfig.model_validate(
        {
            "poll_groups": {"g": {"period_s": 1, "items": ["02030000", "00010000", "02060000"]}},
            "buses": [
                {
                    "name": "bus1",
                    "protocol": "dlt645",
                    "port": str(tmp / "tty"),
                    "meters": [
                        {
                            "address": "000000000040",
                            "groups": ["g"],
                            "ct_ratio": "200/5",
                            "pt_ratio": "10000/100",
                        }
                    ],
                }
            ],
        }
    )
    image = ProcessImage()
    FieldPlant(config, image)  # defines the tags; never started
    return image


async def test_primary_and_secondary_tags_are_variables_with_units(start_server, tmp_path):
    image = ratio_image(tmp_path)
    # a poll's values, there before the server builds its model:
    # 0.03 kW at the meter is 0.03 × 40 × 100 = 120 kW primary
    image.write(f"{METER}/power_active_total_secondary", 0.03)
    image.write(f"{METER}/power_active_total", 120.0)
    srv = await start_server(image)
    async with client_for(srv) as client:
        ns = await ns_of(client)
        primary = client.get_node(nid(ns, f"{METER}/power_active_total"))
        secondary = client.get_node(nid(ns, f"{METER}/power_active_total_secondary"))
        for node, value in ((primary, 120.0), (secondary, 0.03)):
            assert await node.read_value() == value
            eu = await (await node.get_child("0:EngineeringUnits")).read_value()
            assert eu.UnitId == unece_unit_id("KWT")
        names = {
            (await c.read_browse_name()).Name
            for c in await client.get_node(nid(ns, METER)).get_children()
        }
        assert {"power_active_total", "power_active_total_secondary"} <= names
        assert "power_factor_total_secondary" not in names
