"""`gridctl frame` as a field engineer runs it: a subprocess, JSON lines out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from controller import frame_tool

VECTORS = json.loads(
    (Path(__file__).parents[1] / "core" / "data" / "dlt645_2007.json").read_text()
)["frames"]
BY_NAME = {v["name"]: v for v in VECTORS}


def gridctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller", "frame", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_decode_every_vector_in_one_stream() -> None:
    proc = gridctl("decode", *[v["hex"] for v in VECTORS])
    assert proc.returncode == 0, proc.stderr
    got = lines(proc.stdout)
    assert len(got) == len(VECTORS)
    for line, v in zip(got, VECTORS, strict=True):
        exp = v["expect"]
        raw = bytes.fromhex(v["hex"])
        assert bytes.fromhex(line["hex"]) == raw.lstrip(b"\xfe"), v["name"]
        assert line["address"] == exp["address"]
        assert line["control"] == exp["control"]
        assert line["control_hex"] == f"0x{exp['control']:02X}"
        assert line["direction"] == ("from_meter" if exp["control"] & 0x80 else "to_meter")
        if "di" in exp:
            assert line["di"].upper() == exp["di"].upper()
            assert line["di_name"]
        if "value" in exp:
            key = "time" if exp["control"] == 0x08 else "value"
            assert line[key] == exp["value"], v["name"]
        if "unit" in exp:
            assert line["unit"] == exp["unit"]
        if "meter_address" in exp:
            assert line["meter_address"] == exp["meter_address"]
        if "error" in exp:
            assert line["exception"] is True
            assert line["error"] == exp["error"]
            assert line["errors"] == [exp["error_name"]]
        if "n1" in exp:
            assert line["n1"] == exp["n1"]
            assert line["n1_name"] == exp["n1_name"]
            assert line["password_level"] == exp["password_level"]
            assert line["operator"] == exp["operator"]
            assert line["valid_until"] == exp["valid_until"]
    assert "20 frame(s)" in proc.stderr


ENCODE_CASES = [
    ("read_fwd_active_total_req", ["read", "--address", "000000000161", "--di", "00010000"]),
    ("read_ua_req", ["read", "--address", "000000000161", "--di", "02010100"]),
    ("read_address_wildcard_req", ["read-address", "--preamble", "4"]),
    ("broadcast_time_sync", ["time-sync", "--time", "2017-06-05T10:22:51"]),
    (
        "trip_command",
        [
            "control",
            "--address",
            "111111111111",
            "--kind",
            "trip",
            "--valid-until",
            "2018-05-12T15:41:24",
            "--password-level",
            "0",
            "--password",
            "000000",
            "--operator",
            "00000000",
        ],
    ),
    ("trip_ack", ["raw", "--address", "111111111111", "--control", "0x9c"]),
    (
        "exception_no_data",
        ["raw", "--address", "980799600051", "--control", "0xd1", "--data", "02"],
    ),
]


@pytest.mark.parametrize(("name", "args"), ENCODE_CASES, ids=[n for n, _ in ENCODE_CASES])
def test_encode_reproduces_vector(name: str, args: list[str]) -> None:
    proc = gridctl("encode", *args)
    assert proc.returncode == 0, proc.stderr
    assert bytes.fromhex(proc.stdout) == bytes.fromhex(BY_NAME[name]["hex"])


def test_garbage_is_reported_in_order_and_not_fatal() -> None:
    good = BY_NAME["read_fwd_active_total_resp"]["hex"]
    proc = gridctl("decode", "00 68 16", "fe fe", good, "aa:bb")
    assert proc.returncode == 0
    got = lines(proc.stdout)
    assert got[0] == {"garbage": "00 68 16", "offset": 0}
    assert got[1]["offset"] == 5 and got[1]["value"] == 0.26
    assert got[2] == {"garbage": "aa bb", "offset": 25}
    assert "5 garbage byte(s)" in proc.stderr


def test_no_frame_exits_1() -> None:
    proc = gridctl("decode", "00 11 22")
    assert proc.returncode == 1
    assert lines(proc.stdout) == [{"garbage": "00 11 22", "offset": 0}]


@pytest.mark.parametrize("bad", ["zz", "123", "68 6g"])
def test_bad_hex_exits_2(bad: str) -> None:
    proc = gridctl("decode", bad)
    assert proc.returncode == 2
    assert "HEX:" in proc.stderr
    assert proc.stdout == ""


def test_bad_encode_argument_names_the_field() -> None:
    proc = gridctl("encode", "read", "--address", "12345", "--di", "00010000")
    assert proc.returncode == 2
    assert "address: expected 12 decimal digits" in proc.stderr
    proc = gridctl(
        "encode", "control", "--address", "000000000161", "--kind", "x", "--valid-until", "now"
    )
    assert proc.returncode == 2
    assert "--kind: expected one of trip" in proc.stderr
    proc = gridctl("encode", "time-sync", "--time", "yesterday")
    assert proc.returncode == 2
    assert "--time: expected an ISO time" in proc.stderr


def test_in_process_helpers(capsys: pytest.CaptureFixture[str]) -> None:
    assert frame_tool.parse_hex(["0x68 0x16", "fe:FE"]) == b"\x68\x16\xfe\xfe"
    assert frame_tool.json_safe((1.0, b"\x01\x02", [None])) == [1.0, "01 02", [None]]
    from controller.cli import main

    assert main(["frame", "encode", "read", "--address", "000000000161", "--di", "0x00010000"]) == 2
    assert "di: expected 8 hex digits" in capsys.readouterr().err
    assert main(["frame", "decode", BY_NAME["read_time_resp"]["hex"]]) == 0
    (line,) = lines(capsys.readouterr().out)
    assert line["value"] == "21:53:55"
    assert line["di_name"] == "time"


def test_time_sync_with_an_offset_is_sent_in_the_meters_zone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from controller.cli import main

    # 02:22:51 UTC is 10:22:51 Beijing time (UTC + 8 h): the same frame as the
    # vector's naive 2017-06-05T10:22:51
    want = dict(ENCODE_CASES)["broadcast_time_sync"]
    assert main(["frame", "encode", *want]) == 0
    expected = capsys.readouterr().out
    argv = ["frame", "encode", "time-sync", "--time", "2017-06-05T02:22:51+00:00"]
    assert main([*argv, "--timezone", "Asia/Shanghai"]) == 0
    assert capsys.readouterr().out == expected
    assert main([*argv, "--timezone", "Mars/Base"]) == 2
    assert "--timezone: must be an IANA time zone name" in capsys.readouterr().err
