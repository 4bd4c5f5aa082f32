"""A second, independent meter: the PyPI ``dlt645`` package's meter server over TCP.

Its frames, BCD and data model are another author's; values set in its data
model must arrive in the process image through a normal gridctl bus (TCP
transport) with the right units. It has no block DIs (``0201FF00`` is ERR=02
there), so it also exercises the fall-back to single DIs. It has no 1C (remote
control): a trip is refused with ERR=01, and nothing is reported as switched.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import dlt645
import pytest

from controller import _core_rs as core
from controller.process_image import ProcessImage, Quality
from drivers.config import FieldConfig
from drivers.dlt645_bus import Dlt645Bus
from drivers.errors import MeterException
from drivers.plant import FieldPlant
from tests.drivers.conftest import wait_for

ADDRESS = "000000000161"
PREFIX = f"buses/peer/meters/{ADDRESS}/"

# what the peer's data model holds (set below), and what the image must show
EXPECTED: dict[str, tuple[float, str]] = {
    "voltage_a": (230.1, "V"),
    "voltage_b": (229.8, "V"),
    "voltage_c": (231.4, "V"),
    "current_a": (5.123, "A"),
    "current_b": (4.987, "A"),
    "current_c": (0.5, "A"),
    "power_active_total": (2.3456, "kW"),
    "power_factor_total": (0.987, ""),
    "frequency": (49.98, "Hz"),
    # total and tariffs 1-4 (3000.01 + 4000.02 + 5000.03 + 345.61 = 12345.67)
    "energy_fwd_active_total": (12345.67, "kWh"),
    "energy_fwd_active_t1": (3000.01, "kWh"),
    "energy_fwd_active_t2": (4000.02, "kWh"),
    "energy_fwd_active_t3": (5000.03, "kWh"),
    "energy_fwd_active_t4": (345.61, "kWh"),
    "energy_combined_active_total": (12000.5, "kWh"),
}


@pytest.fixture(scope="module")
def peer() -> Iterator[Any]:
    """The peer meter listening on an ephemeral port of 127.0.0.1 (one per module: its
    data model takes seconds to build)."""
    server = dlt645.MeterServerService.new_tcp_server("127.0.0.1", 0, 1.0)
    # the peer compares the address bytes as they come off the wire (A0 first)
    server.set_address(bytes.fromhex(ADDRESS)[::-1])
    for di, value in (
        (0x02010100, 230.1),
        (0x02010200, 229.8),
        (0x02010300, 231.4),
        (0x02020100, 5.123),
        (0x02020200, 4.987),
        (0x02020300, 0.5),
        (0x02030000, 2.3456),
        (0x02060000, 0.987),
        (0x02800002, 49.98),
    ):
        assert server.set_02(di, value), hex(di)
    for di, value in (
        (0x00010000, 12345.67),
        (0x00010100, 3000.01),
        (0x00010200, 4000.02),
        (0x00010300, 5000.03),
        (0x00010400, 345.61),
        (0x00000000, 12000.5),
    ):
        assert server.set_00(di, value), hex(di)
    # status word 3 = 0x0050: bit4 relay open, bit6 commanded open
    assert server.set_04(0x04000503, "0050")
    assert server.start()
    try:
        yield server
    finally:
        server.stop()


def bus_config(port: int) -> FieldConfig:
    return FieldConfig.model_validate(
        {
            "poll_groups": {
                "instant": {
                    "period_s": 0.3,
                    "items": ["0201FF00", "0202FF00", "02030000", "02060000", "02800002"],
                },
                "energy": {"period_s": 0.3, "items": ["0001FF00", "00000000"]},
                "status": {"period_s": 0.3, "items": ["04000503"]},
            },
            "buses": [
                {
                    "name": "peer",
                    "protocol": "dlt645",
                    "port": f"tcp://127.0.0.1:{port}",
                    "baud": 9600,
                    "response_timeout_s": 1.0,
                    "send_interval_s": 0.0,
                    "meters": [{"address": ADDRESS, "groups": ["instant", "energy", "status"]}],
                }
            ],
        }
    )


async def test_values_set_in_the_peer_arrive_in_the_image_with_units(peer: Any) -> None:
    image = ProcessImage()
    plant = FieldPlant(bus_config(peer.server.port), image)
    await plant.start()
    try:
        bus = plant.bus("peer")
        assert isinstance(bus, Dlt645Bus)
        names = [*EXPECTED, "status_word_3"]
        assert await wait_for(
            lambda: all(image.get(PREFIX + n).quality is Quality.GOOD for n in names), 10
        ), {n: image.get(PREFIX + n) for n in names}
        for name, (value, unit) in EXPECTED.items():
            assert image.value(PREFIX + name) == pytest.approx(value, abs=1e-9), name
            assert image.tag(PREFIX + name).unit == unit, name
        assert image.value(PREFIX + "status_word_3") == 0x0050
        assert image.value(PREFIX + "relay_open") is True
        assert image.value(PREFIX + "relay_commanded_open") is True
        assert image.value(PREFIX + "keep_power") is False
        assert image.value(PREFIX + "online") is True
        # the peer has no block DIs: each was refused once (ERR=02), then read singly
        assert bus.refused == {ADDRESS: {"0201FF00", "0202FF00", "0001FF00"}}

        # a value changed in the peer shows up at the next poll
        assert peer.set_02(0x02010100, 198.7)
        assert await wait_for(lambda: image.value(PREFIX + "voltage_a") == 198.7, 5)
    finally:
        await plant.stop()


async def test_the_peer_has_no_remote_control_and_nothing_is_switched(peer: Any) -> None:
    """The peer answers 1C with ERR=01 (other error): a refusal, never a confirmation."""
    image = ProcessImage()
    plant = FieldPlant(bus_config(peer.server.port), image)
    await plant.start()
    try:
        bus = plant.bus("peer")
        assert isinstance(bus, Dlt645Bus)
        until = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
        with pytest.raises(MeterException) as info:
            await bus.control(ADDRESS, core.N1_DIRECT_CLOSE, valid_until=until)
        assert info.value.err_bits == 0x01 and info.value.function == core.FN_CONTROL
        # the relay is still reported as the peer's status word says: open
        status = await bus.read_relay_status(ADDRESS)
        assert (status.word, status.relay_open) == (0x0050, True)
    finally:
        await plant.stop()
