"""`gridctl frame` under random input: an exit status and a clear message, never a traceback.

The CLI is driven in-process (``controller.cli.main``) for the hypothesis
examples, so hundreds of inputs take seconds; a few subprocess runs check the
same through the real entry point, where a traceback would reach the user.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller import _core_rs as c
from controller import cli

FUZZ = settings(
    derandomize=True,
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _meter(address: str) -> bool:
    """A meter's address: the broadcast one takes only time sync and freeze."""
    return address != "999999999999"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(["frame", *argv])
        except SystemExit as exc:  # argparse usage errors: status 2 and a usage line
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def assert_clean(code: int, out: str, err: str, *, decode: bool = True) -> None:
    assert code in (0, 1, 2), code
    assert "Traceback" not in err
    if code == 2:
        assert "error" in err, err  # a usage error says what was wrong
    for line in out.splitlines():
        if not line.strip():
            continue
        if decode:
            json.loads(line)  # decode output stays machine-readable
        else:
            bytes.fromhex(line)  # encode prints one frame in hex


@FUZZ
@given(st.binary(min_size=1, max_size=400))
def test_decode_random_bytes(data: bytes) -> None:
    code, out, err = run("decode", data.hex(" "))
    assert_clean(code, out, err)
    assert code in (0, 1)
    # every byte is accounted for: in a frame or in a garbage run, with offsets in order
    lines = [json.loads(x) for x in out.splitlines()]
    offsets = [x["offset"] for x in lines]
    assert offsets == sorted(offsets) and all(0 <= o < len(data) for o in offsets)
    assert "frame(s)" in err


@st.composite
def noisy_with_frames(draw: st.DrawFn) -> tuple[bytes, int]:
    parts: list[bytes] = []
    frames = 0
    for _ in range(draw(st.integers(1, 4))):
        parts.append(draw(st.binary(max_size=40)).replace(b"\x68", b""))
        di = draw(st.sampled_from([i.di for i in c.di_table()]))
        address = draw(st.text("0123456789", min_size=12, max_size=12).filter(_meter))
        kind = draw(st.sampled_from(["read", "reply", "exception", "control", "time"]))
        if kind == "read":
            f = c.dlt645_read(address, di)
        elif kind == "reply":
            # random value bytes: the tool reports value errors per frame, never dies
            f = c.dlt645_reply(
                address, 0x11, bytes.fromhex(di)[::-1] + draw(st.binary(max_size=30))
            )
        elif kind == "exception":
            f = c.dlt645_exception(address, 0x11, draw(st.integers(0, 255)))
        elif kind == "control":
            # a 1C with a random payload: parsed or reported as a payload error
            f = c.dlt645_encode(address, 0x1C, draw(st.binary(max_size=20)))
        else:
            f = c.dlt645_encode("999999999999", 0x08, draw(st.binary(max_size=8)))
        parts.append(f)
        frames += 1
    return b"".join(parts), frames


@FUZZ
@given(noisy_with_frames())
def test_decode_frames_with_random_payloads(case: tuple[bytes, int]) -> None:
    data, frames = case
    code, out, err = run("decode", data.hex())
    assert_clean(code, out, err)
    assert code == 0
    assert sum(1 for x in out.splitlines() if "address" in json.loads(x)) == frames


separators = st.sampled_from([" ", ":", ",", "-", "", "  ", "\t"])


@FUZZ
@given(st.lists(st.text(max_size=30), min_size=1, max_size=5))
def test_decode_arbitrary_text_arguments(args: list[str]) -> None:
    # hex digits mixed with anything a terminal can paste
    assert_clean(*run("decode", *args))


@FUZZ
@given(
    st.sampled_from(["read", "read-address", "time-sync", "control", "raw"]),
    st.lists(
        st.sampled_from(
            [
                "--address",
                "--di",
                "--time",
                "--kind",
                "--valid-until",
                "--password-level",
                "--password",
                "--operator",
                "--control",
                "--data",
                "--preamble",
            ]
        )
        | st.text(max_size=16)
        | st.sampled_from(["000000000161", "AAAAAAAAAAAA", "0x11", "trip", "now", "-1", "99"]),
        max_size=10,
    ),
)
def test_encode_arbitrary_arguments(what: str, args: list[str]) -> None:
    assert_clean(*run("encode", what, *args), decode=False)


def test_subprocess_garbage_exit_status_and_no_traceback() -> None:
    # one of each outcome (the in-process examples above cover the rest): each
    # subprocess pays the interpreter start-up
    cases = [
        (["decode", "zz"], 2),
        (["decode", "68" * 200], 1),
        (
            [
                "encode",
                "control",
                "--address",
                "000000000161",
                "--kind",
                "trip",
                "--valid-until",
                "x",
            ],
            2,
        ),
    ]
    for argv, status in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "controller", "frame", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == status, (argv, proc.stderr)
        assert "Traceback" not in proc.stderr, (argv, proc.stderr)
        if status == 2:
            assert "error" in proc.stderr
