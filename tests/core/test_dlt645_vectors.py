"""Every shared DL/T 645-2007 vector decodes to its stated meaning and is
rebuilt byte-identically from that meaning with the public helpers."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from controller import _core_rs as c

VECTORS = json.loads((Path(__file__).parent / "data" / "dlt645_2007.json").read_text())["frames"]
IDS = [v["name"] for v in VECTORS]


def raw(v: dict[str, Any]) -> bytes:
    return bytes.fromhex(v["hex"])


def preamble_of(b: bytes) -> int:
    return len(b) - len(b.lstrip(b"\xfe"))


def when(iso: str) -> tuple[int, int, int, int, int, int]:
    t = datetime.fromisoformat(iso)
    return (t.year, t.month, t.day, t.hour, t.minute, t.second)


def di_bytes(di: str) -> bytes:
    return int(di, 16).to_bytes(4, "little")


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_decodes_to_stated_meaning(v: dict[str, Any]) -> None:
    exp = v["expect"]
    f = c.dlt645_decode(raw(v))
    assert f.address == exp["address"]
    assert f.control == exp["control"]
    assert f.from_meter == bool(exp["control"] & 0x80)
    if "di" in exp:
        assert f.di is not None
        assert f.di.upper() == exp["di"].upper()
    if "value" in exp and f.di is not None:
        value = c.decode_value(f.di, f.data[4:])
        assert value == exp["value"]
        info = c.di_info(f.di)
        assert info is not None
        assert info.unit == exp.get("unit", "")
    if "weekday" in exp:
        assert c.weekday_of(f.data[4:]) == exp["weekday"]
        assert c.weekday_of(f.data) == exp["weekday"]
    if "meter_address" in exp:
        assert f.function_name == "read_address"
        assert c.decode_value("04000401", f.data) == exp["meter_address"]
    if "error" in exp:
        assert f.is_exception
        assert f.error_code == exp["error"]
        assert c.dlt645_error_names(exp["error"]) == [exp["error_name"]]
    if exp["control"] == c.FN_BROADCAST_TIME:
        assert f.function_name == "broadcast_time"
        assert c.dlt645_parse_time_sync(f.data) == when(exp["value"])
    if "n1" in exp:
        cmd = c.dlt645_parse_control(f.data)
        assert cmd.n1 == exp["n1"]
        assert cmd.n1_name == exp["n1_name"]
        assert cmd.password_level == exp["password_level"]
        assert cmd.password == exp["password"]
        assert cmd.operator == exp["operator"]
        assert cmd.valid_until == when(exp["valid_until"])


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_frame_reencodes_identically(v: dict[str, Any]) -> None:
    b = raw(v)
    f = c.dlt645_decode(b)
    assert f.encode(preamble_of(b)) == b
    assert c.dlt645_encode(f.address, f.control, f.data, preamble_of(b)) == b
    assert c.Dlt645Frame(f.address, f.control, f.data) == f


def rebuild(v: dict[str, Any]) -> bytes:
    """The frame built from the vector's stated meaning only."""
    exp = v["expect"]
    addr, ctl = exp["address"], exp["control"]
    pre = preamble_of(raw(v))
    if ctl == c.FN_READ:
        return c.dlt645_read(addr, exp["di"], preamble=pre)
    if ctl == c.FN_READ | 0x80:
        body = di_bytes(exp["di"]) + c.encode_value(exp["di"], exp["value"])
        return c.dlt645_reply(addr, c.FN_READ, body)
    if ctl == c.FN_READ_ADDRESS:
        assert addr == c.WILDCARD_ADDRESS
        return c.dlt645_read_address(preamble=pre)
    if ctl == c.FN_READ_ADDRESS | 0x80:
        meter = c.encode_value(0x04000401, exp["meter_address"])
        return c.dlt645_reply(addr, c.FN_READ_ADDRESS, meter)
    if ctl & 0xC0 == 0xC0:
        return c.dlt645_exception(addr, ctl & 0x1F, exp["error"])
    if ctl == c.FN_BROADCAST_TIME:
        assert addr == c.BROADCAST_ADDRESS
        return c.dlt645_time_sync(when(exp["value"]))
    if ctl == c.FN_CONTROL:
        return c.dlt645_control(
            addr,
            exp["n1"],
            when(exp["valid_until"]),
            password_level=exp["password_level"],
            password=exp["password"],
            operator=exp["operator"],
        )
    if ctl == c.FN_CONTROL | 0x80:
        return c.dlt645_reply(addr, c.FN_CONTROL)
    raise AssertionError(f"no builder for control {ctl:#x}")


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_rebuilt_from_meaning(v: dict[str, Any]) -> None:
    assert rebuild(v) == raw(v)


def test_whole_vector_file_through_deframer() -> None:
    stream = b"".join(raw(v) for v in VECTORS)
    d = c.Dlt645Deframer()
    frames = []
    for i in range(0, len(stream), 7):
        frames += d.feed(stream[i : i + 7])
    assert [f.encode(preamble_of(raw(v))) for f, v in zip(frames, VECTORS, strict=True)] == [
        raw(v) for v in VECTORS
    ]
    assert d.frames == len(VECTORS)
    assert d.discarded_bytes == 0
    assert d.checksum_errors == 0
    assert d.buffered == 0
