"""ESAM on the DL/T 645 bus: sealed 0x14 writes to a simulated ESAM meter, and the config."""

from __future__ import annotations

import hashlib
import hmac
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from controller.config import ConfigError, validate_config
from drivers.config import Dlt645BusConfig, FieldConfig, MeterConfig, describe_validation_error
from drivers.errors import MeterUnauthorised
from drivers.esam import make_test_hmac
from drivers.sim.esam_card import EsamCard

from .conftest import dlt645_config

ADDR3 = "000000000003"
KEY = "00112233445566778899AABBCCDDEEFF"
ESAM_METER = f"""
[[buses.meters]]
address = "{ADDR3}"
groups = ["status"]
security = "esam"
"""
SIM_ESAM = f'[sim.buses.bus1.meters."{ADDR3}"]\nrequire_esam = true\nesam_key = "{KEY}"\n'


def field_error(data: dict[str, object]) -> str:
    with pytest.raises(ValidationError) as info:
        FieldConfig.model_validate(data)
    return describe_validation_error(info.value)


# -- the wire contract ------------------------------------------------------------------------


async def test_test_hmac_seal_is_the_documented_layout() -> None:
    adapter = make_test_hmac({"key": KEY})
    session = await adapter.authenticate(MeterConfig(address="123456789012"))
    payload = bytes.fromhex("02000000000000001a00000000010126")  # a 1C data field, 16 bytes
    sealed = await adapter.seal(session, payload)
    # A0..A5 of 123456789012 on the wire, low byte first: 12 90 78 56 34 12
    mac = hmac.new(
        bytes.fromhex(KEY), bytes.fromhex("129078563412") + payload, hashlib.sha256
    ).digest()[:4]
    assert sealed == payload + mac and len(sealed) == 16 + 4
    card = EsamCard("123456789012", bytes.fromhex(KEY))
    assert card.open(sealed) == payload
    assert card.open(payload) is None  # plaintext: its last 4 bytes are no MAC
    assert card.open(sealed[:-1] + bytes([sealed[-1] ^ 1])) is None
    assert (card.accepted, card.refused) == (1, 2)


# -- 0x14 writes on the bus -------------------------------------------------------------------


async def test_write_through_the_adapter_is_accepted(tmp_path, running) -> None:
    extra = SIM_ESAM + f'[esam]\nadapter = "test-hmac"\noptions = {{ key = "{KEY}" }}\n'
    config = dlt645_config(tmp_path, meters=2, extra_bus=ESAM_METER, extra=extra)
    sim, plant, _image = await running(config)
    bus = plant.bus("bus1")
    meter = sim.farms["bus1"].meters[ADDR3]
    await bus.write_item(ADDR3, "04000402", "000000004711")  # meter (asset) number
    assert meter.written["04000402"] == bytes.fromhex("114700000000")  # BCD, low byte first
    assert (await bus.read_now(ADDR3, ["04000402"]))["04000402"] == "000000004711"
    # a per-meter clock set is two 0x14 writes, sealed like any other
    await bus.write_item(ADDR3, "04000101", "2026-12-02")
    await bus.write_item(ADDR3, "04000102", "10:15:00")
    assert (meter.esam_card.accepted, meter.esam_card.refused) == (3, 0)


async def test_write_to_a_plain_meter_is_acknowledged(tmp_path, running) -> None:
    # the 94 reply has L = 0 (DL/T 645-2007): it cannot be matched by the DI written
    config = dlt645_config(tmp_path, meters=2)
    sim, plant, _image = await running(config)
    bus = plant.bus("bus1")
    await bus.write_item("000000000002", "04000402", "000000000815")
    assert sim.farms["bus1"].meters["000000000002"].written["04000402"] == bytes.fromhex(
        "150800000000"
    )
    assert bus.transactions["timeout"] == 0


async def test_plaintext_write_to_an_esam_meter_is_refused(tmp_path, running) -> None:
    config = dlt645_config(tmp_path, meters=2, extra_bus=ESAM_METER, extra=SIM_ESAM)
    sim, plant, _image = await running(config)
    meter = sim.farms["bus1"].meters[ADDR3]
    with pytest.raises(MeterUnauthorised, match=r"refused function 0x14 DI 04000402.*ERR=0x04"):
        await plant.bus("bus1").write_item(ADDR3, "04000402", "000000004711")
    assert "04000402" not in meter.written
    assert (meter.esam_card.accepted, meter.esam_card.refused) == (0, 1)


# -- config -----------------------------------------------------------------------------------


def test_bad_adapter_is_a_config_error_naming_the_field() -> None:
    msg = field_error({"esam": {"adapter": "no_such_module:factory"}})
    assert msg.startswith("esam.adapter: cannot import module 'no_such_module'")
    msg = field_error({"esam": {"adapter": "drivers.esam:no_such_factory"}})
    assert msg == (
        "esam.adapter: module 'drivers.esam' has no 'no_such_factory' "
        "(from 'drivers.esam:no_such_factory')"
    )
    msg = field_error({"esam": {"adapter": "drivers.esam:ENTRY_POINT_GROUP"}})
    assert msg == (
        "esam.adapter: 'drivers.esam:ENTRY_POINT_GROUP' is not callable: "
        "it must be a factory(options) -> adapter"
    )
    msg = field_error({"esam": {"adapter": "crypto-box"}})
    assert msg.startswith(
        "esam.adapter: no ESAM adapter 'crypto-box': give a built-in or an entry point "
        "in group gridctl.esam_adapters (plaintext, test-hmac"
    )
    # the root loader says the same, with the file
    with pytest.raises(ConfigError) as info:
        validate_config({"esam": {"adapter": "crypto-box"}}, "site.toml")
    assert str(info.value).startswith("site.toml: esam.adapter: no ESAM adapter 'crypto-box'")


def test_bad_adapter_options_and_sim_keys_are_config_errors() -> None:
    msg = field_error({"esam": {"adapter": "test-hmac", "options": {"key": "xyz"}}})
    assert msg == (
        "esam.options: options for adapter 'test-hmac': "
        "key must be 2..128 hex digits (whole bytes), got 'xyz'"
    )
    msg = field_error({"esam": {"adapter": "test-hmac"}})
    assert msg == (
        "esam.options: options for adapter 'test-hmac': "
        "key must be 2..128 hex digits (whole bytes), got None"
    )
    msg = field_error({"esam": {"options": {"key": KEY}}})
    assert msg == (
        "esam.options: options for adapter 'plaintext': "
        "the plaintext adapter takes no options, got ['key']"
    )
    msg = field_error({"esam": {"timeout_s": 0.0}})
    assert msg == "esam.timeout_s: timeout_s must be 0.1..60 s, got 0.0"
    sim = {"buses": {"b": {"meters": {ADDR3: {"require_esam": True}}}}}
    with pytest.raises(ValidationError) as info:
        FieldConfig.model_validate({"sim": sim})
    # (the bus-name cross-check is not reached: the meter's own table fails first)
    assert describe_validation_error(info.value) == (
        f"sim.buses.b.meters.{ADDR3}: esam_key: required when require_esam = true "
        "(2..128 hex digits)"
    )
    msg = field_error(
        {
            "buses": [
                {
                    "name": "b",
                    "protocol": "dlt645",
                    "port": "/dev/x",
                    "meters": [{"address": ADDR3, "security": "aes"}],
                }
            ]
        }
    )
    assert msg == "buses[0].meters[0].security: Input should be 'plaintext' or 'esam'"


def test_adapter_from_an_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a distribution on sys.path that declares two adapters in the group
    dist = tmp_path / "crypto_box-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: crypto-box\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[gridctl.esam_adapters]\n"
        "crypto-box = drivers.esam:make_test_hmac\n"
        "broken = crypto_box_missing:factory\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert str(tmp_path) in sys.path
    config = FieldConfig.model_validate(
        {"esam": {"adapter": "crypto-box", "options": {"key": KEY}}}
    )
    assert config.esam.adapter == "crypto-box"
    msg = field_error({"esam": {"adapter": "broken"}})
    assert msg.startswith(
        "esam.adapter: entry point 'broken' (crypto_box_missing:factory) does not load:"
    )
    msg = field_error({"esam": {"adapter": "crypto-box"}})
    assert msg.startswith("esam.options: options for adapter 'crypto-box': key must be")


def test_meter_block_carries_security() -> None:
    bus = {
        "name": "b",
        "protocol": "dlt645",
        "port": "/dev/x",
        "meter_block": {"first_address": "000000000010", "count": 2, "security": "esam"},
    }
    built = FieldConfig.model_validate({"buses": [bus]}).buses[0]
    assert isinstance(built, Dlt645BusConfig)
    assert [m.security for m in built.meters] == ["esam", "esam"]
    assert MeterConfig(address=ADDR3).security == "plaintext"
