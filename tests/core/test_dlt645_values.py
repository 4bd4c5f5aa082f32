"""DI table and value codec."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller import _core_rs as c

# Every DI named in DESIGN §5 and the families the brief lists.
REQUIRED = {
    "00000000": ("kWh", 2, True, 4, 1, "number"),
    "00010000": ("kWh", 2, False, 4, 1, "number"),
    "0001FF00": ("kWh", 2, False, 4, 5, "number"),
    "00020400": ("kWh", 2, False, 4, 1, "number"),
    "00030000": ("kvarh", 2, True, 4, 1, "number"),
    "0004FF00": ("kvarh", 2, True, 4, 5, "number"),
    "01010000": ("kW", 4, False, 8, 1, "demand"),
    "0101FF00": ("kW", 4, False, 8, 5, "demand"),
    "02010100": ("V", 1, False, 2, 1, "number"),
    "02010300": ("V", 1, False, 2, 1, "number"),
    "0201FF00": ("V", 1, False, 2, 3, "number"),
    "02020100": ("A", 3, True, 3, 1, "number"),
    "0202FF00": ("A", 3, True, 3, 3, "number"),
    "02030000": ("kW", 4, True, 3, 1, "number"),
    "02030300": ("kW", 4, True, 3, 1, "number"),
    "0203FF00": ("kW", 4, True, 3, 4, "number"),
    "02040000": ("kvar", 4, True, 3, 1, "number"),
    "0204FF00": ("kvar", 4, True, 3, 4, "number"),
    "02060000": ("", 3, True, 2, 1, "number"),
    "0206FF00": ("", 3, True, 2, 4, "number"),
    "02800002": ("Hz", 2, False, 2, 1, "number"),
    "04000101": ("", 0, False, 4, 1, "date"),
    "04000102": ("", 0, False, 3, 1, "time"),
    "04000401": ("", 0, False, 6, 1, "address"),
    "04000501": ("", 0, False, 2, 1, "status"),
    "04000503": ("", 0, False, 2, 1, "status"),
    "04000507": ("", 0, False, 2, 1, "status"),
    "00900200": ("yuan", 2, False, 4, 1, "number"),
    "00900201": ("yuan", 2, False, 4, 1, "number"),
}


@pytest.mark.parametrize("di", sorted(REQUIRED))
def test_required_dis(di: str) -> None:
    info = c.di_info(di)
    assert info is not None
    assert info.di == di
    assert info.name
    got = (info.unit, info.decimals, info.signed, info.length, info.count, info.kind)
    assert got == REQUIRED[di]
    assert c.di_info(int(di, 16)).di == di  # type: ignore[union-attr]
    assert c.di_info(di.lower()).di == di  # type: ignore[union-attr]


def test_table_is_consistent() -> None:
    table = c.di_table()
    dis = [i.di for i in table]
    assert len(dis) == len(set(dis))
    assert set(REQUIRED) <= set(dis)
    for i in table:
        j = c.di_info(i.di)
        assert j is not None and j.name == i.name
    assert c.di_info("12345678") is None
    assert "DiInfo(di='00010000'" in repr(c.di_info("00010000"))


def test_decode_examples() -> None:
    assert c.decode_value("02060000", b"\x01\x05") == 0.501
    assert c.decode_value("02020100", b"\x99\x49\x80") == -4.999
    assert c.decode_value("02030000", b"\xff\xff\xff") is None
    assert c.decode_value("0201FF00", bytes.fromhex("5622ffffffff")) == [225.6, None, None]
    # A meter with 8 tariffs sends 9 elements.
    assert c.decode_value("0001FF00", bytes(36)) == [0.0] * 9
    assert c.decode_value("04000101", bytes.fromhex("01110116")) == "2016-01-11"
    assert c.decode_value("04000102", bytes.fromhex("555321")) == "21:53:55"
    assert c.decode_value("0400010C", bytes.fromhex("58592302291124")) == "2024-11-29T23:59:58"
    assert c.decode_value("04000503", b"\x10\x00") == 0x0010
    assert c.decode_value("04000503", b"\xff\xff") == 0xFFFF  # a bit field, not "absent"
    assert c.decode_value("01010000", bytes.fromhex("563412 4115120518")) == (
        12.3456,
        "2018-05-12T15:41",
    )
    assert c.decode_value("01010000", bytes(8)) == (0.0, None)
    assert c.decode_value("12345678", b"\x01\x02") == b"\x01\x02"
    assert c.decode_value(0x00900200, bytes.fromhex("56980100")) == 198.56


@pytest.mark.parametrize(
    ("di", "data", "message"),
    [
        ("02010100", b"\x01", "data: DI 02010100 (voltage phase A) expects 2 bytes (XXX.X), got 1"),
        ("02010100", b"\x1a\x22", "element 0 is not BCD XXX.X: 1A 22"),
        ("0201FF00", b"\x00\x00\x00", "expects a multiple of 2 bytes"),
        ("04000101", bytes.fromhex("01320116"), "day: expected 1..=31"),
        ("04000401", bytes.fromhex("0a0000000000"), "expects 12 BCD digits"),
        ("xyz", b"", "di: expected 8 hex digits"),
    ],
)
def test_decode_errors(di: str, data: bytes, message: str) -> None:
    with pytest.raises(c.ValueCodecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        c.decode_value(di, data)


@pytest.mark.parametrize(
    ("di", "value", "message"),
    [
        ("02010100", 1000.0, "element 0 must be within 0..=999.9 (XXX.X), got 1000"),
        ("00010000", -1.0, "must be within 0..=999999.99"),
        ("02020100", 800.0, "must be within -799.999..=799.999"),
        ("02010100", "220", "expects a number or None, got str"),
        ("02010100", True, "expects a number or None, got bool"),
        ("0201FF00", 220.0, "expects a list"),
        ("04000101", "2016-13-01", "month: expected 1..=12"),
        ("04000101", "11/01/2016", "expected YYYY-MM-DD"),
        ("04000503", 70000, "expects an int 0..=65535, got 70000"),
        ("04000401", "AAAAAAAAAAAA", "no wildcards"),
        ("01010000", 1.0, "expects (value, 'YYYY-MM-DDTHH:MM' or None)"),
        ("12345678", 1.0, "DI not in the table; pass the raw bytes"),
    ],
)
def test_encode_errors(di: str, value: object, message: str) -> None:
    with pytest.raises(c.ValueCodecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        c.encode_value(di, value)  # type: ignore[arg-type]


def test_encode_examples() -> None:
    assert c.encode_value("02060000", 0.501) == b"\x01\x05"
    assert c.encode_value("02020100", -4.999) == b"\x99\x49\x80"
    assert c.encode_value("0201FF00", [225.6, None, None]) == bytes.fromhex("5622ffffffff")
    assert c.encode_value("04000101", "2016-01-11") == bytes.fromhex("01110116")
    assert c.encode_value("12345678", b"\x01") == b"\x01"
    assert c.encode_value("01010000", (None, None)) == bytes.fromhex("ffffff0000000000")


numeric = [i for i in c.di_table() if i.kind == "number"]


@given(st.sampled_from(numeric), st.data())
def test_number_round_trip(info: c.DiInfo, data: st.DataObject) -> None:
    digits = 2 * info.length
    top = 10**digits - 1 - (2 * 10 ** (digits - 1) if info.signed else 0)
    lo = -top if info.signed else 0
    n = info.count
    ints = data.draw(st.lists(st.integers(lo, top) | st.none(), min_size=n, max_size=n))
    values = [None if i is None else i / 10**info.decimals for i in ints]
    value: object = values if n > 1 else values[0]
    raw = c.encode_value(info.di, value)  # type: ignore[arg-type]
    assert len(raw) == info.length * n
    back = c.decode_value(info.di, raw)
    assert back == value
    if n == 1 and value is not None:
        assert isinstance(back, float) and math.isfinite(back)


@given(
    st.datetimes(
        min_value=dt.datetime(2000, 1, 1),
        max_value=dt.datetime(2099, 12, 31, 23, 59, 59),
    )
)
def test_calendar_round_trip(t: dt.datetime) -> None:
    date = t.strftime("%Y-%m-%d")
    raw = c.encode_value("04000101", date)
    assert c.decode_value("04000101", raw) == date
    assert c.weekday_of(raw) == (t.weekday() + 1) % 7
    tm = t.strftime("%H:%M:%S")
    assert c.decode_value("04000102", c.encode_value("04000102", tm)) == tm
    iso = t.strftime("%Y-%m-%dT%H:%M:%S")
    assert c.decode_value("0400010C", c.encode_value("0400010C", iso)) == iso
    sync = c.dlt645_time_sync((t.year, t.month, t.day, t.hour, t.minute, t.second))
    f = c.dlt645_decode(sync)
    assert c.dlt645_parse_time_sync(f.data) == (t.year, t.month, t.day, t.hour, t.minute, t.second)


def test_weekday_of_bad_input() -> None:
    assert c.weekday_of(b"\x07\x01\x01\x16") is None
    assert c.weekday_of(b"\x01") is None
