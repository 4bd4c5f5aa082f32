"""Frame codec: round trips, precise decode errors, bad encoder arguments."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller import _core_rs as c

READ_RESP = bytes.fromhex("68 61 01 00 00 00 00 68 91 08 33 33 34 33 59 33 33 33 8a 16")

KNOWN_FUNCTIONS = [0x03, 0x08, *range(0x11, 0x1E)]

# meters' addresses: the broadcast one takes only time sync and freeze (test_dlt645_addressing)
addresses = st.text(alphabet="0123456789", min_size=12, max_size=12).filter(
    lambda a: a != "999999999999"
)


def _meter(address: str) -> bool:
    """A meter's address: the broadcast one takes only time sync and freeze."""
    return address != "999999999999"


@st.composite
def controls(draw: st.DrawFn) -> int:
    fn = draw(st.sampled_from(KNOWN_FUNCTIONS))
    reply = draw(st.booleans())
    exception = reply and draw(st.booleans())
    followup = draw(st.booleans())
    return fn | (0x80 if reply else 0) | (0x40 if exception else 0) | (0x20 if followup else 0)


@given(
    address=addresses,
    control=controls(),
    data=st.binary(max_size=255),
    preamble=st.integers(0, 4),
)
def test_encode_decode_round_trip(address: str, control: int, data: bytes, preamble: int) -> None:
    wire = c.dlt645_encode(address, control, data, preamble)
    assert len(wire) == preamble + 12 + len(data)
    assert wire[:preamble] == b"\xfe" * preamble
    body = wire[preamble:]
    assert body[0] == body[7] == 0x68 and body[-1] == 0x16
    assert body[9] == len(data)
    assert bytes((b - 0x33) & 0xFF for b in body[10:-2]) == data
    assert body[-2] == sum(body[:-2]) & 0xFF
    f = c.dlt645_decode(wire)
    assert (f.address, f.control, f.data) == (address, control, data)
    assert f.function == control & 0x1F
    assert f.from_meter == bool(control & 0x80)
    assert f.is_exception == bool(control & 0x40)
    assert f.has_followup == bool(control & 0x20)
    assert f.encode(preamble) == wire
    assert c.Dlt645Frame(address, control, data) == f
    assert hash(c.Dlt645Frame(address, control, data)) == hash(f)


@given(address=addresses, di=st.integers(0, 0xFFFFFFFF), preamble=st.integers(0, 4))
def test_read_accepts_di_as_str_or_int(address: str, di: int, preamble: int) -> None:
    a = c.dlt645_read(address, di, preamble)
    assert a == c.dlt645_read(address, f"{di:08X}", preamble)
    assert a == c.dlt645_read(address, f"{di:08x}", preamble)
    f = c.dlt645_decode(a)
    assert f.di == f"{di:08X}"
    assert f.function_name == "read"


def test_frame_properties() -> None:
    f = c.dlt645_decode(READ_RESP)
    assert f.function == c.FN_READ
    assert f.function_name == "read"
    assert f.di == "00010000"
    assert f.error_code is None
    assert repr(f).startswith("Dlt645Frame(address='000000000161', control=0x91")
    exc = c.dlt645_decode(c.dlt645_exception("000000000161", c.FN_READ, c.ERR_NO_DATA))
    assert exc.is_exception and exc.error_code == 2 and exc.di is None


def test_unknown_function_name_on_decode() -> None:
    # A reserved function code still decodes: the deframer must not drop it.
    body = bytearray(READ_RESP)
    body[8] = 0x9F
    body[-2] = sum(body[:-2]) & 0xFF
    f = c.dlt645_decode(bytes(body))
    assert f.function_name == "unknown"
    assert f.di is None


def test_helpers_build_expected_payloads() -> None:
    a = "000000000161"
    f = c.dlt645_decode(c.dlt645_read_followup(a, "04000101", 3))
    assert (f.control, f.data) == (0x12, bytes([1, 1, 0, 4, 3]))
    f = c.dlt645_decode(c.dlt645_write(a, "04000401", 2, "123456", "AABBCCDD", b"\x01\x02"))
    assert f.control == 0x14
    assert f.di == "04000401"
    assert f.data == bytes([1, 4, 0, 4, 2, 0x56, 0x34, 0x12, 0xDD, 0xCC, 0xBB, 0xAA, 1, 2])
    f = c.dlt645_decode(c.dlt645_freeze(a))
    assert (f.control, f.data) == (0x16, b"\x99\x99\x99\x99")
    f = c.dlt645_decode(c.dlt645_freeze(a, "30120599"))
    assert f.data == bytes([0x30, 0x12, 0x05, 0x99])
    for baud, word in [(1200, 0x04), (2400, 0x08), (4800, 0x10), (9600, 0x20), (19200, 0x40)]:
        f = c.dlt645_decode(c.dlt645_change_baud(a, baud))
        assert (f.control, f.data) == (0x17, bytes([word]))
    f = c.dlt645_decode(c.dlt645_reply(a, c.FN_READ, b"\x00\x00\x01\x00", followup=True))
    assert f.control == 0xB1 and f.has_followup
    f = c.dlt645_decode(
        c.dlt645_control(
            a,
            c.N1_KEEP_POWER_ON,
            (2030, 1, 2, 3, 4, 5),
            password_level=2,
            password="123456",
            operator="00001234",
        )
    )
    cmd = c.dlt645_parse_control(f.data)
    assert (cmd.n1_name, cmd.password_level, cmd.password, cmd.operator) == (
        "keep_power_on",
        2,
        "123456",
        "00001234",
    )
    assert cmd.valid_until == (2030, 1, 2, 3, 4, 5)
    assert c.dlt645_read_address(preamble=0).hex() == "68aaaaaaaaaaaa681300df16"


def test_error_bits_by_name() -> None:
    assert c.dlt645_error_names(0) == []
    assert c.dlt645_error_names(0x06) == ["no requested data", "password error or unauthorised"]
    assert c.dlt645_error_bits(["no requested data", "too many tariffs"]) == 0x42
    for bit in range(7):
        assert c.dlt645_error_bits(c.dlt645_error_names(1 << bit)) == 1 << bit
    with pytest.raises(c.EncodeError, match="err: unknown bit name 'nope'"):
        c.dlt645_error_bits(["nope"])
    assert c.dlt645_n1_name(0x1A) == "trip"
    assert c.dlt645_n1_name(0x99) == "unknown"


# --- decode errors -----------------------------------------------------------


def corrupt(index: int, value: int, fix_cs: bool = True) -> bytes:
    b = bytearray(READ_RESP)
    b[index] = value
    if fix_cs:
        b[-2] = sum(b[:-2]) & 0xFF
    return bytes(b)


def test_bad_checksum() -> None:
    with pytest.raises(c.ChecksumError, match=r"cs: expected 0x8A .* got 0x8B"):
        c.dlt645_decode(corrupt(18, 0x8B, fix_cs=False))


def test_bad_length() -> None:
    with pytest.raises(c.FrameLengthError, match=r"length: L = 8 means 20 bytes"):
        c.dlt645_decode(READ_RESP[:-1])
    with pytest.raises(c.FrameLengthError):
        c.dlt645_decode(READ_RESP + b"\x00")
    with pytest.raises(c.FrameLengthError, match="at least 12 bytes"):
        c.dlt645_decode(b"\x68\x16")


def test_missing_end() -> None:
    with pytest.raises(c.FrameEndError, match="end: expected 0x16, got 0x17"):
        c.dlt645_decode(corrupt(19, 0x17))


def test_bad_bcd_address() -> None:
    with pytest.raises(c.AddressError, match=r"address: byte A0 = 0x6A"):
        c.dlt645_decode(corrupt(1, 0x6A))


def test_not_a_frame() -> None:
    with pytest.raises(c.FrameError, match="start: expected the second 0x68"):
        c.dlt645_decode(corrupt(7, 0x00))
    with pytest.raises(c.FrameError, match="start: expected 0x68"):
        c.dlt645_decode(b"\x00" * 12)


def test_exception_hierarchy() -> None:
    for exc in (c.ChecksumError, c.FrameLengthError, c.FrameEndError, c.AddressError):
        assert issubclass(exc, c.FrameError)
        assert exc.__module__ == "controller._core_rs"
    assert issubclass(c.FrameError, c.CoreError)
    assert issubclass(c.EncodeError, c.CoreError)
    assert issubclass(c.CoreError, ValueError)


# --- bad encoder arguments ------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: c.dlt645_read("12345", "00010000"),
            "address: expected 12 decimal digits (AA pairs allowed as wildcards), got '12345'",
        ),
        (lambda: c.dlt645_read("00000000016x", 0), "address: expected 12 decimal digits"),
        (lambda: c.dlt645_read("0000000001610", 0), "address: expected 12 decimal digits"),
        (lambda: c.dlt645_encode("000000000161", 0x11, bytes(256)), "data: expected at most 255"),
        (lambda: c.dlt645_encode("000000000161", 0x1F), "control: function 0x1F"),
        (lambda: c.dlt645_encode("000000000161", 0x00), "control: function 0x00"),
        (lambda: c.dlt645_encode("000000000161", 300), "control: expected 0..=255, got 300"),
        (lambda: c.dlt645_encode("000000000161", 0x51), "control: 0x51 sets D6"),
        (lambda: c.dlt645_read("000000000161", 0, preamble=5), "preamble: expected 0..=4"),
        (lambda: c.dlt645_read("000000000161", "0001000"), "di: expected 8 hex digits"),
        (lambda: c.dlt645_read("000000000161", "0001000G"), "di: expected 8 hex digits"),
        (lambda: c.dlt645_read("000000000161", -1), "di: expected an int 0..=0xFFFFFFFF"),
        (
            lambda: c.dlt645_read("000000000161", 1.5),  # type: ignore[arg-type]
            "di: expected 8 hex digits (str) or an int",
        ),
        (lambda: c.dlt645_read_followup("000000000161", 0, 256), "seq: expected 0..=255"),
        (lambda: c.dlt645_change_baud("000000000161", 2401), "baud: expected one of 1200"),
        (lambda: c.dlt645_freeze("000000000161", "6099999"), "pattern: expected 8 digits"),
        (lambda: c.dlt645_freeze("000000000161", "60999999"), "pattern: expected 8 digits"),
        (
            lambda: c.dlt645_control("000000000161", 0x77, (2020, 1, 1, 0, 0, 0)),
            "n1: expected 0x1A trip",
        ),
        (
            lambda: c.dlt645_control("000000000161", 0x1A, (2019, 2, 29, 0, 0, 0)),
            "valid_until: day: expected 1..=28 for 2019-02, got 29",
        ),
        (
            lambda: c.dlt645_control("000000000161", 0x1A, (1999, 1, 1, 0, 0, 0)),
            "valid_until: year: expected 2000..=2099",
        ),
        (
            lambda: c.dlt645_control("000000000161", 0x1A, (2020, 1, 1, 0, 0, 0), password="12345"),
            "password: expected 6 hex digits, got '12345'",
        ),
        (
            lambda: c.dlt645_write("000000000161", 0, 0, "000000", "0000000Z", b""),
            "operator: expected 8 hex digits",
        ),
        (
            lambda: c.dlt645_write("000000000161", 0, 0, "000000", "00000000", bytes(244)),
            "value: expected at most 243 bytes",
        ),
        (lambda: c.dlt645_time_sync((2020, 13, 1, 0, 0, 0)), "when: month: expected 1..=12"),
        (lambda: c.dlt645_reply("000000000161", 0x91), "function: expected a DL/T 645-2007"),
        (lambda: c.dlt645_exception("000000000161", 0x11, 256), "err: expected 0..=255"),
        (lambda: c.Dlt645Frame("000000000161", 0x11, bytes(300)), "data: expected at most 255"),
        (lambda: c.Dlt645Deframer(100), "max_buffer: expected at least 267"),
    ],
)
def test_bad_arguments_name_the_field(call: object, message: str) -> None:
    with pytest.raises(c.EncodeError, match=re.escape(message)):
        call()  # type: ignore[operator]


def test_wildcard_addresses() -> None:
    # AA pairs round-trip where a wildcard is legal (read address); a read there is
    # refused (test_dlt645_addressing)
    f = c.dlt645_decode(c.dlt645_encode("AAAAAAAA0161", c.FN_READ_ADDRESS))
    assert f.address == "AAAAAAAA0161"
    with pytest.raises(c.AddressNotAllowedError):
        c.dlt645_read("AAAAAAAA0161", "00010000")
    assert c.WILDCARD_ADDRESS == "AAAAAAAAAAAA"
    assert c.BROADCAST_ADDRESS == "999999999999"
