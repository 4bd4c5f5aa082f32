"""Streaming deframer against an independent, obviously-correct reference.

The reference scans a complete byte string: at each position it takes a
frame when one starts there (68, six BCD/AA address bytes, 68, C, L, L data
bytes, CS, 16 — all within the string) and otherwise moves on one byte.
Noise is deliberately hostile (0x68, 0x16, 0xFE, truncated frames, frames
with a bad CS or end byte). Noise can, very rarely, form or complete a valid
frame by itself; then the ground truth is ambiguous, so such examples are
discarded with ``assume`` — what is left has exactly one right answer: the
frames we put in, in order, whatever the chunk boundaries.
"""

from __future__ import annotations

import itertools

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from controller import _core_rs as c

KNOWN_FUNCTIONS = [0x03, 0x08, *range(0x11, 0x1E)]


def _meter(address: str) -> bool:
    """A meter's address: the broadcast one takes only time sync and freeze."""
    return address != "999999999999"


def addr_ok(b: int) -> bool:
    return b == 0xAA or (b >> 4 < 10 and b & 0xF < 10)


def reference(stream: bytes) -> tuple[list[bytes], list[tuple[int, int]]]:
    frames: list[bytes] = []
    spans: list[tuple[int, int]] = []
    i, n = 0, len(stream)
    while i + 12 <= n:
        s = stream[i:]
        if s[0] == 0x68 and s[7] == 0x68 and all(addr_ok(b) for b in s[1:7]):
            total = 12 + s[9]
            cs_ok = total <= len(s) and sum(s[: total - 2]) & 0xFF == s[total - 2]
            if cs_ok and s[total - 1] == 0x16:
                frames.append(s[:total])
                spans.append((i, i + total))
                i += total
                continue
        i += 1
    return frames, spans


@st.composite
def frames(draw: st.DrawFn) -> tuple[bytes, int]:
    """A valid frame (without preamble) and the preamble length to send it with."""
    address = draw(st.text("0123456789", min_size=12, max_size=12).filter(_meter))
    fn = draw(st.sampled_from(KNOWN_FUNCTIONS))
    reply = draw(st.booleans())
    control = fn | (0x80 if reply else 0) | (0x40 if reply and draw(st.booleans()) else 0)
    data = draw(st.binary(max_size=40))
    return c.dlt645_encode(address, control, data), draw(st.integers(0, 4))


noise_bytes = st.binary(max_size=12) | st.lists(
    st.sampled_from([0x68, 0x16, 0xFE, 0x33, 0x00, 0x99, 0xAA]), max_size=12
).map(bytes)


@st.composite
def noise(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "truncated", "bad_cs", "bad_end", "lone_68"]))
    if kind == "bytes":
        return draw(noise_bytes)
    if kind == "lone_68":
        return b"\x68"
    f, _ = draw(frames())
    if kind == "truncated":
        return f[: draw(st.integers(1, len(f) - 1))]
    b = bytearray(f)
    if kind == "bad_cs":
        b[-2] ^= draw(st.integers(1, 255))
    else:
        b[-1] = draw(st.integers(0, 255).filter(lambda x: x != 0x16))
    return bytes(b)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    items = draw(st.lists(st.tuples(st.booleans(), frames(), noise()), max_size=12))
    out = bytearray()
    sent: list[bytes] = []
    for is_frame, (f, pre), junk in items:
        if is_frame:
            out += b"\xfe" * pre + f
            sent.append(f)
        else:
            out += junk
    return bytes(out), sent


def chunked(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(stream), *(x % (len(stream) + 1) for x in cuts)})
    return [stream[a:b] for a, b in itertools.pairwise(points)]


def non_fe(b: bytes) -> int:
    return sum(1 for x in b if x != 0xFE)


@settings(max_examples=300, deadline=None)
@given(streams(), st.lists(st.integers(0, 10_000), max_size=30))
def test_every_frame_in_order_whatever_the_chunks(
    case: tuple[bytes, list[bytes]], cuts: list[int]
) -> None:
    stream, sent = case
    expected, spans = reference(stream)
    # Noise never formed or swallowed a frame in this example.
    assume(expected == sent)

    d = c.Dlt645Deframer()
    got: list[bytes] = []
    for chunk in chunked(stream, cuts):
        got += [f.encode() for f in d.feed(chunk)]
    assert got == sent
    assert d.frames == len(sent)

    # Every non-FE byte outside a frame is either discarded or still buffered.
    outside = non_fe(stream) - sum(non_fe(stream[a:b]) for a, b in spans)
    tail = stream[len(stream) - d.buffered :] if d.buffered else b""
    assert d.buffered < 267
    assert d.discarded_bytes + non_fe(tail) == outside
    d.reset()
    assert d.buffered == 0
    assert d.discarded_bytes == outside


@settings(max_examples=200, deadline=None)
@given(
    st.lists(frames(), min_size=1, max_size=8),
    st.lists(st.binary(max_size=10).map(lambda b: b.replace(b"\x68", b"")), max_size=8),
    st.lists(st.integers(0, 10_000), max_size=20),
)
def test_noise_without_start_bytes_never_adds_frames(
    fs: list[tuple[bytes, int]], junk: list[bytes], cuts: list[int]
) -> None:
    # No 0x68 in the noise: no ambiguity at all, no assume needed.
    stream = bytearray()
    for i, (f, pre) in enumerate(fs):
        stream += (junk[i] if i < len(junk) else b"") + b"\xfe" * pre + f
    d = c.Dlt645Deframer()
    got = [f.encode() for chunk in chunked(bytes(stream), cuts) for f in d.feed(chunk)]
    assert got == [f for f, _ in fs]


def test_bad_checksum_then_good_frame_inside_it() -> None:
    good = c.dlt645_read("000000000161", "00010000")
    reply = bytearray(c.dlt645_reply("000000000161", 0x11, bytes(30)))
    # A good frame starts in the middle of a frame whose CS is then wrong.
    broken = bytes(reply[:15]) + good
    d = c.Dlt645Deframer()
    out = d.feed(broken + good)
    assert [f.encode() for f in out] == [good, good]
    assert d.checksum_errors == 0  # the broken frame's end byte is not where L says


def test_counts_checksum_errors_and_discards() -> None:
    good = c.dlt645_read("000000000161", "00010000")
    bad = bytearray(good)
    bad[-2] ^= 0x01
    d = c.Dlt645Deframer()
    out = d.feed(b"\x00\x01" + bytes(bad) + b"\xfe\xfe" + good)
    assert [f.encode() for f in out] == [good]
    assert d.checksum_errors == 1
    assert d.discarded_bytes == 2 + len(bad)
    assert d.frames == 1


def test_truncated_frame_does_not_hold_back_the_next() -> None:
    good = c.dlt645_reply("000000000161", 0x11, bytes(8))
    truncated = good[:9]  # the L byte is lost: the next byte (FE) is read as L = 254
    d = c.Dlt645Deframer()
    out = d.feed(truncated + b"\xfe\xfe" + good)
    assert [f.encode() for f in out] == [good]
    assert d.buffered == 0


def test_partial_frame_kept_between_feeds() -> None:
    good = c.dlt645_read("000000000161", "00010000")
    d = c.Dlt645Deframer()
    for b in good[:-1]:
        assert d.feed(bytes([b])) == []
    assert d.buffered == len(good) - 1
    assert [f.encode() for f in d.feed(good[-1:])] == [good]
    assert d.buffered == 0


def test_reset_drops_partial_frame() -> None:
    good = c.dlt645_read("000000000161", "00010000")
    d = c.Dlt645Deframer()
    d.feed(good[:10])
    d.reset()
    assert d.buffered == 0
    assert d.discarded_bytes == 10
    assert d.feed(good[10:]) == []


def test_bounded_buffer_with_large_feeds() -> None:
    good = c.dlt645_read("000000000161", "00010000")
    d = c.Dlt645Deframer(max_buffer=267)
    d.feed(good[:5])
    big = bytes(range(256)) * 40 + good * 200
    out = d.feed(big)
    assert len(out) == 200
    assert d.buffered < 267


def test_accepts_bytearray() -> None:
    good = c.dlt645_read("000000000161", "00010000")
    d = c.Dlt645Deframer()
    assert [f.encode() for f in d.feed(bytearray(good))] == [good]
