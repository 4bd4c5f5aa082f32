"""DL/T 645 framing throughput: gridctl's Rust core vs the pure-Python `dlt645` package.

Both sides do the same work in the same run:

- encode: address + control + plain data → wire bytes (+0x33, CS, 16)
  (gridctl `dlt645_encode` / `dlt645_read` vs `DLT645Protocol.build_frame`);
- decode: one complete frame → frame object with plain data
  (`dlt645_decode` vs `DLT645Protocol.deserialize`);
- deframe: a 10 000-frame stream with FE preambles, noise, truncated frames and
  bad checksums, read in 64-byte chunks as from a serial port
  (`Dlt645Deframer.feed` vs a buffer loop around `deserialize_with_remaining`).

Run: `.venv/bin/python bench/framing.py` (needs `pip install dlt645==3.2.0`).
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable

from controller import _core_rs as core

try:
    from dlt645 import DLT645Protocol
except ImportError:  # pragma: no cover - the peer is a bench-only dependency
    sys.exit("bench/framing.py needs the peer: .venv/bin/pip install -c constraints.txt dlt645")

N = 10_000
CHUNK = 64
REPEATS = 5
TARGETS = {"encode": 5.0, "decode": 5.0, "deframe": 20.0}


def best_of(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    """Best wall time of `repeats` runs (the least disturbed by other work on the box)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def make_jobs(rng: random.Random) -> list[tuple[str, bytes, int, bytes]]:
    """(address, wire address, control, plain data) for a realistic mix of frames."""
    jobs = []
    for _ in range(N):
        address = f"{rng.randrange(10**12):012d}"
        wire_addr = bytes.fromhex(address)[::-1]
        kind = rng.random()
        if kind < 0.4:
            control, data = (
                0x11,
                rng.choice([0x00010000, 0x02010100, 0x0201FF00]).to_bytes(4, "little"),
            )
        elif kind < 0.8:
            control = 0x91
            data = (0x00010000).to_bytes(4, "little") + core.encode_value(
                0x00010000, rng.randrange(10**6) / 100
            )
        else:
            control = 0x91
            data = (0x0001FF00).to_bytes(4, "little") + core.encode_value(
                0x0001FF00, [rng.randrange(10**6) / 100 for _ in range(5)]
            )
        jobs.append((address, wire_addr, control, data))
    return jobs


def noisy_stream(frames: list[bytes], rng: random.Random) -> bytes:
    """Frames with preambles, line noise, truncated frames and bad checksums between them."""
    out = bytearray()
    for i, f in enumerate(frames):
        r = rng.random()
        if r < 0.2:
            out += bytes(
                rng.choice([b for b in range(256) if b != 0x68]) for _ in range(rng.randrange(1, 6))
            )
        elif r < 0.22:
            out += frames[i - 1][: rng.randrange(3, len(frames[i - 1]))]  # truncated
        elif r < 0.24:
            bad = bytearray(frames[i - 1])
            bad[-2] ^= 0x5A  # bad checksum
            out += bad
        elif r < 0.25:
            out += b"\x68"
        out += b"\xfe" * rng.choice([0, 0, 2, 4]) + f
    return bytes(out)


def chunks(stream: bytes) -> list[bytes]:
    return [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]


def peer_deframe(pieces: list[bytes]) -> int:
    """The peer's own streaming loop: append, parse until it asks for more."""
    buf = b""
    n = 0
    for piece in pieces:
        buf += piece
        while True:
            buf, frame = DLT645Protocol.deserialize_with_remaining(buf)
            if frame is None:
                break
            n += 1
    return n


def ours_deframe(pieces: list[bytes]) -> int:
    d = core.Dlt645Deframer()
    n = 0
    for piece in pieces:
        n += len(d.feed(piece))
    return n


def main() -> int:
    rng = random.Random(645)
    jobs = make_jobs(rng)
    frames = [core.dlt645_encode(a, c, d) for a, _, c, d in jobs]
    build = DLT645Protocol.build_frame
    assert all(
        bytes(build(w, c, d, preamble_count=0)) == f
        for (_, w, c, d), f in zip(jobs, frames, strict=True)
    ), "the peer encodes differently"
    reads = [(a, int.from_bytes(d[:4], "little")) for a, _, c, d in jobs if c == 0x11]

    stream = noisy_stream(frames, rng)
    pieces = chunks(stream)
    got_ours, got_peer = ours_deframe(pieces), peer_deframe(pieces)

    enc = core.dlt645_encode
    dec = core.dlt645_decode
    read = core.dlt645_read
    deser = DLT645Protocol.deserialize

    rows = [
        (
            "encode",
            N,
            lambda: [enc(a, c, d) for a, _, c, d in jobs],
            lambda: [build(w, c, d, preamble_count=0) for _, w, c, d in jobs],
        ),
        (
            "encode read request",
            len(reads),
            lambda: [read(a, di) for a, di in reads],
            lambda: [
                build(bytes.fromhex(a)[::-1], 0x11, di.to_bytes(4, "little"), 0) for a, di in reads
            ],
        ),
        (
            "decode",
            N,
            lambda: [dec(f) for f in frames],
            lambda: [deser(f) for f in frames],
        ),
        (
            f"deframe ({CHUNK} B chunks)",
            N,
            lambda: ours_deframe(pieces),
            lambda: peer_deframe(pieces),
        ),
        (
            "deframe (one feed)",
            N,
            lambda: core.Dlt645Deframer(max_buffer=1 << 20).feed(stream),
            None,
        ),
    ]

    print(f"DL/T 645 framing, {N} frames; stream {len(stream)} bytes with noise", file=sys.stdout)
    print(f"frames found in the noisy stream: gridctl {got_ours}, dlt645 {got_peer} (sent {N})")
    print()
    header = f"{'workload':<24}{'gridctl frames/s':>18}{'dlt645 frames/s':>18}{'ratio':>9}  target"
    print(header)
    print("-" * len(header))
    missed = []
    for name, count, ours, peer in rows:
        t_ours = best_of(ours)
        ours_rate = count / t_ours
        if peer is None:
            print(f"{name:<24}{ours_rate:>18,.0f}{'-':>18}{'-':>9}")
            continue
        t_peer = best_of(peer, repeats=3)
        peer_rate = count / t_peer
        ratio = ours_rate / peer_rate
        key = name.split()[0]
        target = TARGETS.get(key) if name in ("encode", "decode") or key == "deframe" else None
        mark = ""
        if target is not None:
            ok = ratio >= target
            mark = f"≥{target:.0f}× {'ok' if ok else 'MISSED'}"
            if not ok:
                missed.append(name)
        print(f"{name:<24}{ours_rate:>18,.0f}{peer_rate:>18,.0f}{ratio:>8.1f}×  {mark}")
    print()
    if missed:
        print(f"below target: {', '.join(missed)}")
    else:
        print("all targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
