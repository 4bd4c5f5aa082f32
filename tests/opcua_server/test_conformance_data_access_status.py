"""Why a value is Bad reaches OPC UA clients as the StatusCode that says so.

The cause is a reason code in the process image, set by the driver that saw
it (``controller.quality_reason.Reason``); the server maps the code, never the
text. Driver tests run a field bus against the simulated meters with the real
fault (no answer, exception reply, corrupt checksum, quarantine, a missing
port); server tests write the image and read the values with a real asyncua
client, inline and through the server process's feed channel.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from asyncua import ua

from controller.process_image import ProcessImage, Quality
from controller.quality_reason import Reason, reason_from_wire
from drivers.plant import FieldPlant
from drivers.sim.control import request
from opcua_server.quality import STATUS_OF_REASON, status_code
from opcua_server.server_process import OpcUaServerProcess
from tests.drivers.conftest import (  # noqa: F401 (running: a fixture)
    dlt645_config,
    free_port,
    lct_config,
    running,
    wait_for,
)
from tests.loads.conftest import ADDR1, rig  # noqa: F401

from .conftest import client_for, make_config, nid, ns_of, until

# The codes of Part 4 / Part 8, typed from the specification, not from asyncua.
BAD = 0x80000000
UNCERTAIN = 0x40000000
BAD_TIMEOUT = 0x800A0000
BAD_NO_COMMUNICATION = 0x80310000
BAD_OUT_OF_SERVICE = 0x808D0000
BAD_DEVICE_FAILURE = 0x808B0000
BAD_COMMUNICATION_ERROR = 0x80050000
BAD_WAITING_FOR_INITIAL_DATA = 0x80320000
UNCERTAIN_LAST_USABLE_VALUE = 0x40900000
BAD_OUT_OF_RANGE = 0x803C0000
BAD_CONFIGURATION_ERROR = 0x80890000

EXPECTED: dict[Reason, tuple[Quality, int]] = {
    Reason.NOT_YET_POLLED: (Quality.BAD, BAD_WAITING_FOR_INITIAL_DATA),
    Reason.NO_ANSWER: (Quality.BAD, BAD_TIMEOUT),
    Reason.LINK_DOWN: (Quality.BAD, BAD_NO_COMMUNICATION),
    Reason.QUARANTINED: (Quality.BAD, BAD_OUT_OF_SERVICE),
    Reason.DEVICE_REFUSED: (Quality.BAD, BAD_DEVICE_FAILURE),
    Reason.UNDECODABLE: (Quality.BAD, BAD_COMMUNICATION_ERROR),
    Reason.STALE: (Quality.UNCERTAIN, UNCERTAIN_LAST_USABLE_VALUE),
    Reason.OUT_OF_RANGE: (Quality.BAD, BAD_OUT_OF_RANGE),
    Reason.CONFIG: (Quality.BAD, BAD_CONFIGURATION_ERROR),
}
METER = "buses/bus1/meters"


# -- the mapping -------------------------------------------------------------------------
def test_every_reason_code_has_its_status_code():
    causes = [r for r in Reason if r is not Reason.NONE]
    assert sorted(STATUS_OF_REASON) == sorted(causes)
    assert sorted(EXPECTED) == sorted(causes)
    for reason, (quality, code) in EXPECTED.items():
        assert status_code(quality, reason).value == code, reason.name


def test_unknown_or_mismatched_codes_are_plain_bad_or_uncertain():
    assert status_code(Quality.BAD, Reason.NONE).value == BAD
    assert status_code(Quality.UNCERTAIN, Reason.NONE).value == UNCERTAIN
    # a code from a newer peer, unknown here
    assert status_code(Quality.BAD, 250).value == BAD
    assert reason_from_wire(250) is Reason.NONE
    assert reason_from_wire(int(Reason.QUARANTINED)) is Reason.QUARANTINED
    # the quality decides the severity: a Bad code never makes an Uncertain value Bad
    assert status_code(Quality.UNCERTAIN, Reason.NO_ANSWER).value == UNCERTAIN
    assert status_code(Quality.BAD, Reason.STALE).value == BAD
    assert status_code(Quality.GOOD, Reason.NO_ANSWER).value == 0


# -- the drivers set the code for the real cause ------------------------------------------
def code_of(image: ProcessImage, address: str, leaf: str = "voltage_a") -> Reason:
    return image.get(f"{METER}/{address}/{leaf}").code


async def test_dlt645_bus_sets_the_code_of_each_fault(tmp_path: Path, running: Any):  # noqa: F811
    extra = (
        '[sim.buses.bus1.meters."000000000002"]\nfaults = ["dead"]\n'
        '[sim.buses.bus1.meters."000000000003"]\nfaults = ["exception"]\n'
        '[sim.buses.bus1.meters."000000000004"]\nfaults = ["bad_checksum"]\n'
    )
    # a long back-off: the first failure's code stays until the end of the test
    config = dlt645_config(tmp_path, meters=4, quarantine_s=300.0, extra=extra)
    _sim, plant, image = await running(config)
    assert await wait_for(lambda: code_of(image, "000000000002") is Reason.NO_ANSWER, 10)
    assert await wait_for(lambda: code_of(image, "000000000003") is Reason.DEVICE_REFUSED, 10)
    assert await wait_for(lambda: code_of(image, "000000000004") is Reason.UNDECODABLE, 10)
    assert image.get(f"{METER}/000000000001/voltage_a").quality is Quality.GOOD
    for address in ("000000000002", "000000000003", "000000000004"):
        assert image.get(f"{METER}/{address}/voltage_a").quality is Quality.BAD
    assert plant.bus("bus1").quarantined("000000000002")


async def test_a_modbus_exception_reply_is_a_device_failure(tmp_path: Path, running: Any):  # noqa: F811
    # the simulated terminal has input registers 0..3: register 500 is refused
    tags = """[
      { name = "power_total", table = "input", address = 0, type = "u32", scale = 0.001 },
      { name = "ghost_power", table = "input", address = 500, type = "u16", scale = 0.1 },
    ]"""
    _sim, _plant, image = await running(lct_config(tmp_path, free_port(), tags))
    prefix = "buses/lct/devices/t1/"
    assert await wait_for(
        lambda: image.get(prefix + "ghost_power").code is Reason.DEVICE_REFUSED, 10
    )
    assert image.get(prefix + "ghost_power").quality is Quality.BAD
    assert await wait_for(lambda: image.get(prefix + "power_total").quality is Quality.GOOD, 10)
    assert image.get(prefix + "power_total").code is Reason.NONE


async def test_tags_are_not_yet_polled_until_the_first_read(tmp_path: Path):
    config = dlt645_config(tmp_path, meters=1)
    image = ProcessImage()
    FieldPlant(config, image)  # defined, never started
    tag = image.get(f"{METER}/000000000001/voltage_a")
    assert (tag.quality, tag.code) == (Quality.BAD, Reason.NOT_YET_POLLED)


async def test_a_meter_still_silent_after_its_probe_is_out_of_service(
    tmp_path: Path,
    running: Any,  # noqa: F811
):
    extra = '[sim.buses.bus1.meters."000000000002"]\nfaults = ["dead"]\n'
    # back-off 0.3 s: the probe after it fails too, and the meter is out of service
    config = dlt645_config(tmp_path, meters=2, quarantine_s=0.3, extra=extra)
    _sim, plant, image = await running(config)
    assert await wait_for(lambda: code_of(image, "000000000002") is Reason.NO_ANSWER, 10)
    assert await wait_for(lambda: code_of(image, "000000000002") is Reason.QUARANTINED, 10)
    assert plant.bus("bus1").quarantined("000000000002")
    # it answers again: Good, no code
    sock = tmp_path / "sim.sock"
    reply = await request(
        sock, {"op": "fault", "meter": "000000000002", "kind": "dead", "on": False}
    )
    assert reply["ok"]
    assert await wait_for(
        lambda: image.get(f"{METER}/000000000002/voltage_a").quality is Quality.GOOD, 10
    )
    assert code_of(image, "000000000002") is Reason.NONE


async def test_a_bus_whose_port_is_missing_is_link_down(tmp_path: Path):
    config = dlt645_config(tmp_path, meters=1, port=str(tmp_path / "no-such-tty"))
    image = ProcessImage()
    plant = FieldPlant(config, image)
    await plant.start()
    try:
        assert await wait_for(lambda: code_of(image, "000000000001") is Reason.LINK_DOWN, 5)
        assert "cannot open" in image.get(f"{METER}/000000000001/voltage_a").reason
    finally:
        await plant.stop()


async def test_a_load_relay_whose_meter_went_silent_keeps_its_last_value_uncertain(
    rig: Any,  # noqa: F811
    tmp_path: Path,
):
    r = await rig(status=0.3, quarantine_s=300.0)
    relay = "loads/l1/relay_open"
    r.executor.mirror()
    assert r.image.get(relay).quality is Quality.GOOD
    last = r.image.get(relay).value
    assert (await request(tmp_path / "sim.sock", {"op": "fault", "meter": ADDR1, "kind": "dead"}))[
        "ok"
    ]
    assert await wait_for(lambda: code_of(r.image, ADDR1, "status_word_3") is Reason.NO_ANSWER, 10)
    r.executor.mirror()
    tag = r.image.get(relay)
    assert (tag.value, tag.quality, tag.code) == (last, Quality.UNCERTAIN, Reason.STALE)


# -- the code reaches a real client ------------------------------------------------------
def cause_image() -> ProcessImage:
    """One tag per cause, plus one never written."""
    image = ProcessImage()
    for reason in EXPECTED:
        image.define(f"{METER}/{int(reason):012d}/voltage_a", "V")
    image.define(f"{METER}/000000000099/voltage_a", "V")
    return image


def write_causes(image: ProcessImage) -> None:
    for reason, (quality, _code) in EXPECTED.items():
        if reason is Reason.NOT_YET_POLLED:
            continue  # as defined
        image.write(f"{METER}/{int(reason):012d}/voltage_a", 230.5, quality, "why", code=reason)


async def read_causes(endpoint: str) -> dict[Reason, ua.DataValue]:
    from asyncua import Client

    async with Client(endpoint, timeout=10) as client:
        ns = await ns_of(client)
        return {
            reason: await client.get_node(
                nid(ns, f"{METER}/{int(reason):012d}/voltage_a")
            ).read_data_value(raise_on_bad_status=False)
            for reason in EXPECTED
        }


def check_causes(got: dict[Reason, ua.DataValue]) -> None:
    for reason, (_quality, code) in EXPECTED.items():
        assert got[reason].StatusCode.value == code, reason.name
    # Uncertain keeps the last usable value; Bad values travel without one
    assert got[Reason.STALE].Value.Value == 230.5
    assert got[Reason.NO_ANSWER].Value.Value is None


async def test_each_code_reaches_a_client_inline(start_server):
    image = cause_image()
    srv = await start_server(image)
    write_causes(image)

    async def arrived() -> bool:
        got = await read_causes(srv.endpoint)
        return got[Reason.QUARANTINED].StatusCode.value == BAD_OUT_OF_SERVICE

    await until(arrived)
    check_causes(await read_causes(srv.endpoint))
    # a subscriber sees the code change too: timeout, then link down
    async with client_for(srv) as client:
        ns = await ns_of(client)
        node = client.get_node(nid(ns, f"{METER}/{int(Reason.NO_ANSWER):012d}/voltage_a"))
        got: asyncio.Queue[ua.DataValue] = asyncio.Queue()

        class Handler:
            def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
                got.put_nowait(data.monitored_item.Value)

        sub = await client.create_subscription(50, Handler())
        await sub.subscribe_data_change(node)
        assert (await asyncio.wait_for(got.get(), 5)).StatusCode.value == BAD_TIMEOUT
        image.invalidate(
            f"{METER}/{int(Reason.NO_ANSWER):012d}/", "bus down", code=Reason.LINK_DOWN
        )
        assert (await asyncio.wait_for(got.get(), 5)).StatusCode.value == BAD_NO_COMMUNICATION
        await sub.delete()


async def test_each_code_crosses_the_feed_channel(tmp_path: Path):
    image = cause_image()
    # written before the server process connects: the definitions carry them
    image.write(
        f"{METER}/{int(Reason.LINK_DOWN):012d}/voltage_a",
        1.0,
        Quality.BAD,
        "bus down",
        code=Reason.LINK_DOWN,
    )
    server = OpcUaServerProcess(make_config(), image, state_dir=tmp_path / "opcua")
    await server.start()
    try:
        first = await read_causes(server.endpoint)
        assert first[Reason.LINK_DOWN].StatusCode.value == BAD_NO_COMMUNICATION
        assert first[Reason.NOT_YET_POLLED].StatusCode.value == BAD_WAITING_FOR_INITIAL_DATA
        # ...and every later change in a changes frame
        write_causes(image)

        async def arrived() -> bool:
            got = await read_causes(server.endpoint)
            return got[Reason.QUARANTINED].StatusCode.value == BAD_OUT_OF_SERVICE

        await until(arrived)
        check_causes(await read_causes(server.endpoint))
    finally:
        await server.stop()
