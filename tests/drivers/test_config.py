from __future__ import annotations

import pytest
from pydantic import ValidationError

from drivers.config import (
    ConfigFileError,
    FieldConfig,
    describe_validation_error,
    load_field_config,
)


def base(**bus: object) -> dict:
    b = {
        "name": "bus1",
        "protocol": "dlt645",
        "port": "/dev/ttyUSB0",
        "meters": [{"address": "000000000001"}],
    }
    b.update(bus)
    return {"buses": [b], "poll_groups": {"instant": {"period_s": 15, "items": ["0201FF00"]}}}


def error_of(data: dict) -> str:
    with pytest.raises(ValidationError) as info:
        FieldConfig.model_validate(data)
    return describe_validation_error(info.value)


def test_valid_config_loads_with_defaults() -> None:
    cfg = FieldConfig.model_validate(base())
    bus = cfg.buses[0]
    assert bus.baud == 2400 and bus.parity == "E" and bus.bits_per_char == 11
    assert abs(bus.char_time_s - 11 / 2400) < 1e-12
    assert cfg.poll_groups["instant"].items[0].di == "0201FF00"


def test_unknown_parity_names_field_and_choices() -> None:
    msg = error_of(base(parity="X"))
    assert "buses[0].parity" in msg and "N, E, O" in msg and "'X'" in msg


def test_baud_zero_names_field_and_allowed_values() -> None:
    msg = error_of(base(baud=0))
    assert "buses[0].baud" in msg and "2400" in msg and "got 0" in msg


def test_duplicate_meter_address_on_a_bus() -> None:
    msg = error_of(base(meters=[{"address": "000000000001"}, {"address": "000000000001"}]))
    assert "meters[1].address 000000000001 is a duplicate" in msg and "bus1" in msg


def test_duplicate_address_from_meter_block() -> None:
    msg = error_of(base(meter_block={"first_address": "000000000001", "count": 3}))
    assert "duplicate" in msg


def test_unknown_di_without_format() -> None:
    data = base()
    data["poll_groups"]["custom"] = {"period_s": 60, "items": ["04A00101"]}
    msg = error_of(data)
    assert "poll_groups.custom.items[0]" in msg and "04A00101" in msg and "format" in msg


def test_unknown_di_with_format_is_accepted() -> None:
    data = base()
    data["poll_groups"]["custom"] = {
        "period_s": 60,
        "items": [
            {"di": "04A00101", "name": "pulse_const", "format": {"length": 3, "unit": "imp/kWh"}}
        ],
    }
    cfg = FieldConfig.model_validate(data)
    assert cfg.poll_groups["custom"].items[0].format is not None


def test_bad_di_text() -> None:
    data = base()
    data["poll_groups"]["instant"]["items"] = ["0201FF"]
    assert "8 hex digits" in error_of(data)


def test_unknown_key_is_rejected() -> None:
    msg = error_of(base(bauds=2400))
    assert "bauds" in msg


def test_unknown_group_reference() -> None:
    msg = error_of(base(meters=[{"address": "000000000001", "groups": ["nope"]}]))
    assert "buses[0].meters[0].groups" in msg and "'nope'" in msg


def test_ranges_named() -> None:
    assert "preamble must be 0..4" in error_of(base(preamble=9))
    assert "response_timeout_s must be" in error_of(base(response_timeout_s=0))
    assert "address must be 12 decimal digits" in error_of(base(meters=[{"address": "12"}]))
    assert "stop_bits must be 1 or 2" in error_of(base(stop_bits=3))


def test_two_buses_on_one_port_rejected() -> None:
    data = base()
    data["buses"].append({"name": "bus2", "protocol": "dlt645", "port": "/dev/ttyUSB0"})
    assert "exactly one bus owns a physical wire" in error_of(data)


def test_modbus_tag_type_must_fit_table() -> None:
    data = {
        "buses": [
            {
                "name": "lct",
                "protocol": "modbus_tcp",
                "port": "tcp://127.0.0.1:5020",
                "devices": [
                    {
                        "name": "t1",
                        "tags": [{"name": "x", "table": "coil", "address": 0, "type": "u16"}],
                    }
                ],
            }
        ]
    }
    assert "does not fit table" in error_of(data)


def test_load_field_config_reports_file_and_field(tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[buses]]\nname = "b"\nprotocol = "dlt645"\nport = "/dev/ttyS0"\nbaud = 0\n')
    with pytest.raises(ConfigFileError) as info:
        load_field_config(path)
    message = str(info.value)
    assert (
        str(path) in message and "buses[0]." in message and ".baud: baud must be one of" in message
    )


def test_demo_config_is_valid() -> None:
    from pathlib import Path

    demo = Path(__file__).resolve().parents[2] / "config" / "demo.toml"
    cfg = load_field_config(demo)
    assert len([b for b in cfg.buses if b.protocol == "dlt645"]) == 8
