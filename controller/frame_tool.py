"""`gridctl frame`: decode and encode DL/T 645 frames for field engineers.

`decode` takes hex as captured by a serial sniffer (any mix of spaces and
colons, split over several arguments) and prints one JSON object per line
for every frame, plus a line for every run of bytes that was not a frame, so
that a capture with line noise still reads in order.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from controller import _core_rs as core
from drivers.site_time import host_timezone_name, zone

_SEPARATORS = re.compile(r"[\s:,\-]+")

# N1 names accepted by `encode control --kind` (underscores or hyphens).
KINDS: dict[str, int] = {
    name: n1 for n1 in range(256) if (name := core.dlt645_n1_name(n1)) != "unknown"
}

Json = dict[str, Any]


class UsageError(Exception):
    """Bad command-line input: reported on stderr with exit status 2."""


def parse_hex(parts: list[str]) -> bytes:
    """Concatenate hex arguments; separators are spaces, colons, commas and hyphens."""
    tokens = [t for p in parts for t in _SEPARATORS.split(p) if t]
    text = "".join(t[2:] if t[:2] in ("0x", "0X") else t for t in tokens)
    if not text:
        raise UsageError("HEX: no bytes given")
    bad = re.search(r"[^0-9a-fA-F]", text)
    if bad:
        raise UsageError(f"HEX: {bad.group()!r} is not a hex digit")
    if len(text) % 2:
        raise UsageError(f"HEX: odd number of hex digits ({len(text)})")
    return bytes.fromhex(text)


def _hex(b: bytes) -> str:
    return b.hex(" ")


def json_safe(value: object) -> object:
    """Decoded values as JSON: bytes become hex, tuples become lists."""
    if isinstance(value, bytes):
        return _hex(value)
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _iso(t: tuple[int, int, int, int, int, int]) -> str:
    return datetime(*t).isoformat()


def _value(out: Json, di: str, raw: bytes) -> None:
    info = core.di_info(di)
    if info is not None:
        out["di_name"] = info.name
        out["unit"] = info.unit
    try:
        out["value"] = json_safe(core.decode_value(di, raw))
    except core.ValueCodecError as e:
        out["value_hex"] = _hex(raw)
        out["value_error"] = str(e)


def describe(frame: core.Dlt645Frame) -> Json:
    """Everything an engineer wants to know about one frame, JSON-ready."""
    data = frame.data
    out: Json = {
        "address": frame.address,
        "control": frame.control,
        "control_hex": f"0x{frame.control:02X}",
        "direction": "from_meter" if frame.from_meter else "to_meter",
        "exception": frame.is_exception,
        "followup": frame.has_followup,
        "function": frame.function,
        "function_name": frame.function_name,
        "data": _hex(data),
    }
    fn = frame.function
    if frame.is_exception:
        err = frame.error_code
        out["error"] = err
        out["errors"] = core.dlt645_error_names(err) if err is not None else []
        return out
    if frame.di is not None:
        out["di"] = frame.di
        if fn == core.FN_READ and frame.from_meter:
            _value(out, frame.di, data[4:])
        elif fn == core.FN_READ_FOLLOWUP:
            # Request: DI SEQ; reply: DI value SEQ (clause 7.2.2).
            out["seq"] = data[-1] if len(data) > 4 else None
            if frame.from_meter:
                _value(out, frame.di, data[4:-1])
        elif fn == core.FN_WRITE and not frame.from_meter and len(data) >= 12:
            out["password_level"] = data[4]
            out["operator"] = data[11:7:-1].hex().upper()
            _value(out, frame.di, data[12:])
        elif "di_name" not in out and (info := core.di_info(frame.di)) is not None:
            out["di_name"] = info.name
            out["unit"] = info.unit
    if fn == core.FN_CONTROL and not frame.from_meter:
        try:
            cmd = core.dlt645_parse_control(data)
        except core.FrameError as e:
            out["payload_error"] = str(e)
        else:
            out["n1"] = cmd.n1
            out["n1_name"] = cmd.n1_name
            out["password_level"] = cmd.password_level
            out["operator"] = cmd.operator
            out["valid_until"] = _iso(cmd.valid_until)
    elif fn == core.FN_BROADCAST_TIME:
        try:
            out["time"] = _iso(core.dlt645_parse_time_sync(data))
        except core.FrameError as e:
            out["payload_error"] = str(e)
    elif fn == core.FN_READ_ADDRESS and frame.from_meter:
        try:
            out["meter_address"] = core.decode_value(0x04000401, data)
        except core.ValueCodecError as e:
            out["payload_error"] = str(e)
    elif fn == core.FN_CHANGE_BAUD and len(data) == 1:
        baud = {0x04: 1200, 0x08: 2400, 0x10: 4800, 0x20: 9600, 0x40: 19200}.get(data[0])
        out["baud"] = baud
    return out


def scan(stream: bytes) -> tuple[list[Json], core.Dlt645Deframer]:
    """Frames and garbage runs in stream order, each with its offset."""
    deframer = core.Dlt645Deframer()
    frames = deframer.feed(stream)
    lines: list[Json] = []
    pos = 0
    for frame in frames:
        wire = frame.encode()
        start = stream.find(wire, pos)
        lines.extend(_garbage(stream, pos, start))
        lines.append({"offset": start, **describe(frame), "hex": _hex(wire)})
        pos = start + len(wire)
    lines.extend(_garbage(stream, pos, len(stream)))
    return lines, deframer


def _garbage(stream: bytes, start: int, end: int) -> Iterator[Json]:
    gap = stream[start:end]
    # FE bytes right before a frame are its wake-up preamble, not garbage.
    gap = gap.rstrip(b"\xfe") if end < len(stream) else gap
    if gap and gap.strip(b"\xfe"):
        yield {"garbage": _hex(gap), "offset": start}


def cmd_decode(args: argparse.Namespace) -> int:
    try:
        stream = parse_hex(args.hex)
    except UsageError as e:
        print(f"gridctl frame decode: error: {e}", file=sys.stderr)
        return 2
    lines, deframer = scan(stream)
    for line in lines:
        print(json.dumps(line, ensure_ascii=False))
    garbage = sum(len(x["garbage"].split()) for x in lines if "garbage" in x)
    print(
        f"{deframer.frames} frame(s), {garbage} garbage byte(s), "
        f"{deframer.checksum_errors} checksum error(s)",
        file=sys.stderr,
    )
    return 0 if deframer.frames else 1


def _time(text: str, field: str, zone_name: str) -> tuple[int, int, int, int, int, int]:
    """A frame time as the meter's wall clock: 'now' and times with an offset are
    converted to ``zone_name`` (the meters' zone); a time without one is sent as written."""
    try:
        tz = zone(zone_name)
    except ValueError as exc:
        raise UsageError(f"--timezone: {exc}") from None
    if text == "now":
        t = datetime.now(tz)
    else:
        try:
            t = datetime.fromisoformat(text)
        except ValueError:
            raise UsageError(
                f"{field}: expected an ISO time such as 2018-05-12T15:41:24, got {text!r}"
            ) from None
        if t.tzinfo is not None:
            t = t.astimezone(tz)
    return (t.year, t.month, t.day, t.hour, t.minute, t.second)


def encode(args: argparse.Namespace) -> bytes:
    what = args.what
    pre = args.preamble
    if what == "read":
        return core.dlt645_read(args.address, args.di, pre)
    if what == "read-address":
        return core.dlt645_read_address(pre)
    if what == "time-sync":
        return core.dlt645_time_sync(_time(args.time, "--time", args.timezone), pre)
    if what == "control":
        kind = args.kind.replace("-", "_")
        if kind not in KINDS:
            raise UsageError(f"--kind: expected one of {', '.join(KINDS)}, got {args.kind!r}")
        return core.dlt645_control(
            args.address,
            KINDS[kind],
            _time(args.valid_until, "--valid-until", args.timezone),
            password_level=args.password_level,
            password=args.password,
            operator=args.operator,
            preamble=pre,
        )
    if what == "raw":
        return core.dlt645_encode(
            args.address, args.control, parse_hex([args.data]) if args.data else b"", pre
        )
    raise UsageError(f"unknown frame type {what!r}")


def cmd_encode(args: argparse.Namespace) -> int:
    try:
        frame = encode(args)
    except (UsageError, core.CoreError) as e:
        print(f"gridctl frame encode {args.what}: error: {e}", file=sys.stderr)
        return 2
    print(_hex(frame))
    return 0


TZ_HELP = (
    "IANA zone of the meter's clock, for 'now' and times with an offset "
    "(default: this host's zone; Beijing-time meters: Asia/Shanghai)"
)


def _int(text: str) -> int:
    return int(text, 0)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("frame", help="decode or encode DL/T 645-2007 frames")
    p.set_defaults(func=lambda _a: p.print_help())
    fsub = p.add_subparsers(dest="frame_command", metavar="ACTION")

    d = fsub.add_parser(
        "decode",
        help="decode captured bytes: one JSON line per frame (and per run of garbage)",
        description="Decode a captured DL/T 645 byte stream. Arguments are concatenated; "
        "spaces, colons, commas and hyphens are ignored. Exit status 1 when no frame is found.",
    )
    d.add_argument("hex", nargs="+", metavar="HEX", help="bytes in hex, e.g. '68 61 01 ...'")
    d.set_defaults(func=cmd_decode)

    e = fsub.add_parser("encode", help="print a request frame as hex")
    e.set_defaults(func=lambda _a: e.print_help())
    esub = e.add_subparsers(dest="what", metavar="FRAME")

    def frame_parser(name: str, help_text: str, address: bool = True) -> argparse.ArgumentParser:
        q = esub.add_parser(name, help=help_text)
        if address:
            q.add_argument(
                "--address", required=True, help="12-digit meter address (AA = wildcard)"
            )
        q.add_argument("--preamble", type=int, default=0, help="leading FE bytes, 0..4 (default 0)")
        q.set_defaults(func=cmd_encode)
        return q

    r = frame_parser("read", "0x11 read one DI")
    r.add_argument("--di", required=True, help="8 hex digits, e.g. 00010000 (FF = block)")

    frame_parser("read-address", "0x13 wildcard read-address", address=False)

    t = frame_parser("time-sync", "0x08 broadcast time sync", address=False)
    t.add_argument("--time", required=True, help="ISO local time, or 'now'")
    t.add_argument("--timezone", default=host_timezone_name(), help=TZ_HELP)

    ctl = frame_parser("control", "0x1C trip / close / alarm / keep-power")
    ctl.add_argument("--kind", required=True, help=f"one of: {', '.join(KINDS)}")
    ctl.add_argument("--valid-until", required=True, help="ISO time the command expires")
    ctl.add_argument("--timezone", default=host_timezone_name(), help=TZ_HELP)
    ctl.add_argument("--password-level", type=_int, default=0, help="PA (default 0)")
    ctl.add_argument("--password", default="000000", help="6 hex digits (default 000000)")
    ctl.add_argument("--operator", default="00000000", help="8 hex digits (default 00000000)")

    raw = frame_parser("raw", "any frame from a control code and plain data")
    raw.add_argument("--control", type=_int, required=True, help="control code, e.g. 0x11")
    raw.add_argument("--data", default="", help="plain data in hex (the +0x33 is applied)")
