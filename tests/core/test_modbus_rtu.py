"""Modbus RTU through the binding: CRC, framing, timing and the deframer."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller import _core_rs as core

# The design documents' vectors/modbus_rtu.json, kept beside the tests so they
# read it relative to the repository.
VECTORS: dict[str, str] = {
    f["name"]: f["hex"]
    for f in json.loads((Path(__file__).parent / "data" / "modbus_rtu.json").read_text())["frames"]
}

FRAMES = {name: bytes.fromhex(h) for name, h in VECTORS.items()}
# fc05/fc06 replies echo the request, so those vectors are valid in both roles.
ECHOED = {"fc05_coil_on", "fc06_req"}
REQUESTS = [f for n, f in FRAMES.items() if n.endswith("_req") or n in ECHOED]
RESPONSES = [
    f for n, f in FRAMES.items() if n.endswith("_resp") or n.startswith("exception") or n in ECHOED
]


def test_crc_check_value() -> None:
    assert core.modbus_crc16(b"123456789") == 0x4B37
    assert core.modbus_crc16(b"") == 0xFFFF


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_vector_crc(name: str) -> None:
    frame = FRAMES[name]
    assert core.modbus_rtu_check(frame)
    assert core.modbus_rtu_frame(frame[:-2]) == frame
    assert core.modbus_crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


def test_check_rejects_short_and_corrupt() -> None:
    assert not core.modbus_rtu_check(b"")
    assert not core.modbus_rtu_check(b"\x01\x02\x03")
    assert not core.modbus_rtu_check(FRAMES["fc03_req"][:-1] + b"\x00")


@pytest.mark.parametrize("adu", [b"", b"\x01", bytes(255)])
def test_frame_bad_length(adu: bytes) -> None:
    with pytest.raises(core.EncodeError, match=r"adu_without_crc must be 2\.\.254"):
        core.modbus_rtu_frame(adu)


@given(st.binary(min_size=2, max_size=254), st.data())
def test_crc_detects_every_single_bit_error(adu: bytes, data: st.DataObject) -> None:
    frame = core.modbus_rtu_frame(adu)
    assert core.modbus_rtu_check(frame)
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    corrupt = bytearray(frame)
    corrupt[bit // 8] ^= 1 << (bit % 8)
    assert not core.modbus_rtu_check(bytes(corrupt))


def test_timing_9600_8e1() -> None:
    t15, t35 = core.modbus_rtu_timing(9600)
    assert t15 == pytest.approx(1.72e-3, abs=5e-6)
    assert t35 == pytest.approx(4.01e-3, abs=5e-6)


def test_timing_scales_below_19200() -> None:
    t15, t35 = core.modbus_rtu_timing(19200, 11)
    assert t35 == pytest.approx(3.5 * 11 / 19200)
    assert t15 == pytest.approx(1.5 * 11 / 19200)
    assert core.modbus_rtu_timing(9600, 10)[1] == pytest.approx(3.5 * 10 / 9600)


@pytest.mark.parametrize("baud", [38400, 57600, 115200])
def test_timing_fixed_above_19200(baud: int) -> None:
    assert core.modbus_rtu_timing(baud) == (pytest.approx(0.75e-3), pytest.approx(1.75e-3))


@pytest.mark.parametrize(
    ("baud", "bits", "field"),
    [(0, 11, "baud"), (-9600, 11, "baud"), (9600, 8, "bits_per_char"), (9600, 13, "bits_per_char")],
)
def test_timing_bad_args(baud: int, bits: int, field: str) -> None:
    with pytest.raises(core.EncodeError, match=field):
        core.modbus_rtu_timing(baud, bits)


def test_deframer_bad_args() -> None:
    with pytest.raises(core.EncodeError, match="role must be"):
        core.ModbusRtuDeframer("master")
    with pytest.raises(core.EncodeError, match=r"max_buffer must be 256\.\."):
        core.ModbusRtuDeframer("response", 100)
    with pytest.raises(core.EncodeError, match="max_buffer"):
        core.ModbusRtuDeframer("response", -1)


def _split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    return [stream[a:b] for a, b in itertools.pairwise(points)]


@pytest.mark.parametrize(("role", "frames"), [("request", REQUESTS), ("response", RESPONSES)])
def test_deframer_splits_clean_stream_byte_by_byte(role: str, frames: list[bytes]) -> None:
    d = core.ModbusRtuDeframer(role)
    got = [f for b in b"".join(frames) for f in d.feed(bytes([b]))]
    assert got == frames
    assert (d.frames, d.discarded_bytes, d.crc_errors, d.buffered) == (len(frames), 0, 0, 0)
    assert d.role == role


# A noise burst can, once in 65536 candidates, carry a matching CRC: that is a
# property of RTU without silence timing, not a bug. Derandomised, so a run
# that passes once always passes.
@settings(derandomize=True, max_examples=300)
@given(
    role=st.sampled_from(["request", "response"]),
    data=st.data(),
)
def test_deframer_property_noise_and_chunks(role: str, data: st.DataObject) -> None:
    pool = REQUESTS if role == "request" else RESPONSES
    frames = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=12))
    noises = data.draw(st.lists(st.binary(max_size=12), min_size=len(frames), max_size=len(frames)))
    stream = b"".join(n + f for n, f in zip(noises, frames, strict=True))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    d = core.ModbusRtuDeframer(role)
    got = [f for chunk in _split(stream, cuts) for f in d.feed(chunk)]
    assert got == frames
    assert d.frames == len(frames)
    assert d.buffered == 0
    assert d.discarded_bytes == sum(len(n) for n in noises)


def test_deframer_wrong_role_finds_nothing_valid() -> None:
    # fc03 requests carry no byte count a response parser would accept.
    d = core.ModbusRtuDeframer("response")
    assert d.feed(FRAMES["fc03_req"] + FRAMES["fc04_req"]) == []


def test_tail_frame_not_held_back_by_bogus_header() -> None:
    # "01 03 FA" announces a 255-byte reply; the real reply arrives right after.
    d = core.ModbusRtuDeframer("response")
    reply = FRAMES["fc03_resp"]
    assert d.feed(b"\x01\x03\xfa\x00") == []
    assert d.feed(reply) == [reply]
    assert d.buffered == 0
    assert d.discarded_bytes == 4


def test_crc_error_then_good_frame() -> None:
    good = FRAMES["fc16_resp"]
    bad = good[:-1] + bytes([good[-1] ^ 0xFF])
    d = core.ModbusRtuDeframer("response")
    assert d.feed(bad + good) == [good]
    assert d.crc_errors >= 1
    assert d.discarded_bytes == len(bad)


def test_reset_counts_partial() -> None:
    d = core.ModbusRtuDeframer("request")
    assert d.feed(FRAMES["fc16_req"][:5]) == []
    assert d.buffered == 5
    d.reset()
    assert (d.buffered, d.discarded_bytes) == (0, 5)
    assert d.feed(FRAMES["fc16_req"]) == [FRAMES["fc16_req"]]


def test_buffer_stays_bounded_under_noise() -> None:
    rng = random.Random(7)
    d = core.ModbusRtuDeframer("response", 256)
    for _ in range(200):
        d.feed(rng.randbytes(rng.randint(1, 64)))
        assert d.buffered <= 256


@pytest.mark.parametrize(
    ("role", "adu"),
    [
        ("request", "11 0f 00 13 00 0a 02 cd 01"),  # write 10 coils
        ("request", "11 17 00 03 00 06 00 0e 00 03 06 00 ff 00 ff 00 ff"),
        ("response", "11 17 0c 00 fe 0a cd 00 01 00 03 00 0d 00 ff"),
        ("response", "11 01 01 cd"),
        ("response", "11 0f 00 13 00 0a"),
        ("request", "11 16 00 04 00 f2 00 25"),  # mask write
        ("response", "11 07 6d"),
        ("request", "11 11"),
    ],
)
def test_other_function_codes(role: str, adu: str) -> None:
    frame = core.modbus_rtu_frame(bytes.fromhex(adu))
    d = core.ModbusRtuDeframer(role)
    assert d.feed(b"\xff" + frame) == [frame]
