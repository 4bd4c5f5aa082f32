"""DL/T 645-2007 on the meter's side of the wire, for the simulator only.

The simulated meters are a witness against the controller's codec, so they do
not share it: this module is written from the standard (frame layout, control
code bits, the +0x33 data offset, the BCD data formats of Appendix A) and
nothing here comes from ``controller``. The names and call signatures match the
ones the simulator used before (``dlt645_reply``, ``encode_value``,
``Dlt645Deframer.feed``, ``FN_*``, ``N1_*``, …) so the simulator code reads the
same with either codec behind it.

Frame (§ 4 of the standard)::

    [FE × 0..4]  68  A0 .. A5  68  C  L  DATA (each byte + 0x33)  CS  16

A0 is the lowest two digits of the printed 12-digit address; CS is the sum mod
256 of every byte from the first 68 to the last data byte.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

_T = TypeVar("_T")

BROADCAST_ADDRESS: Final = "999999999999"
WILDCARD_ADDRESS: Final = "AAAAAAAAAAAA"

# Control code C: D7 direction (1 = meter → master), D6 exception reply,
# D5 more frames follow, D4..D0 the function.
DIR_FROM_METER: Final = 0x80
EXCEPTION_BIT: Final = 0x40
FOLLOWUP_BIT: Final = 0x20
FUNCTION_MASK: Final = 0x1F

FN_SECURITY: Final = 0x03
FN_BROADCAST_TIME: Final = 0x08
FN_READ: Final = 0x11
FN_READ_FOLLOWUP: Final = 0x12
FN_READ_ADDRESS: Final = 0x13
FN_WRITE: Final = 0x14
FN_WRITE_ADDRESS: Final = 0x15
FN_FREEZE: Final = 0x16
FN_CHANGE_BAUD: Final = 0x17
FN_CHANGE_PASSWORD: Final = 0x18
FN_DEMAND_RESET: Final = 0x19
FN_METER_CLEAR: Final = 0x1A
FN_EVENT_CLEAR: Final = 0x1B
FN_CONTROL: Final = 0x1C
FN_MULTI_OUTPUT: Final = 0x1D

FUNCTION_NAMES: Final[dict[int, str]] = {
    FN_SECURITY: "security",
    FN_BROADCAST_TIME: "broadcast_time",
    FN_READ: "read",
    FN_READ_FOLLOWUP: "read_followup",
    FN_READ_ADDRESS: "read_address",
    FN_WRITE: "write",
    FN_WRITE_ADDRESS: "write_address",
    FN_FREEZE: "freeze",
    FN_CHANGE_BAUD: "change_baud",
    FN_CHANGE_PASSWORD: "change_password",
    FN_DEMAND_RESET: "demand_reset",
    FN_METER_CLEAR: "meter_clear",
    FN_EVENT_CLEAR: "event_clear",
    FN_CONTROL: "control",
    FN_MULTI_OUTPUT: "multi_output",
}

# 1C control, N1 byte
N1_TRIP: Final = 0x1A
N1_CLOSE_ALLOWED: Final = 0x1B
N1_DIRECT_CLOSE: Final = 0x1C
N1_ALARM_ON: Final = 0x2A
N1_ALARM_OFF: Final = 0x2B
N1_KEEP_POWER_ON: Final = 0x3A
N1_KEEP_POWER_OFF: Final = 0x3B

N1_NAMES: Final[dict[int, str]] = {
    N1_TRIP: "trip",
    N1_CLOSE_ALLOWED: "close_allowed",
    N1_DIRECT_CLOSE: "direct_close",
    N1_ALARM_ON: "alarm_on",
    N1_ALARM_OFF: "alarm_off",
    N1_KEEP_POWER_ON: "keep_power_on",
    N1_KEEP_POWER_OFF: "keep_power_off",
}

# Exception reply ERR byte, one bit per reason
ERR_OTHER: Final = 0x01
ERR_NO_DATA: Final = 0x02
ERR_UNAUTHORISED: Final = 0x04
ERR_BAUD: Final = 0x08
ERR_TOO_MANY_ZONES: Final = 0x10
ERR_TOO_MANY_PERIODS: Final = 0x20
ERR_TOO_MANY_TARIFFS: Final = 0x40

START: Final = 0x68
END: Final = 0x16
WAKE_UP: Final = 0xFE
DATA_OFFSET: Final = 0x33
HEADER_LEN: Final = 10  # 68 A0..A5 68 C L
MIN_FRAME_LEN: Final = 12  # header + CS + 16, no data
MAX_DATA_LEN: Final = 255
MAX_FRAME_LEN: Final = MIN_FRAME_LEN + MAX_DATA_LEN


class WireError(ValueError):
    """Bad input to this codec; the message names the field and the allowed range."""


class EncodeError(WireError):
    """An argument that cannot be put on the wire."""


class FrameError(WireError):
    """Bytes that are not one valid frame."""


class ChecksumError(FrameError):
    """CS is not the sum mod 256 from the first 68 to the last data byte."""


class ValueCodecError(WireError):
    """Data bytes that do not fit the DI's format, or a value outside its range."""


# ---------------------------------------------------------------------------
# addresses
# ---------------------------------------------------------------------------


def _is_bcd(byte: int) -> bool:
    return (byte >> 4) <= 9 and (byte & 0x0F) <= 9


def address_to_wire(address: str) -> bytes:
    """``"000000000161"`` → ``61 01 00 00 00 00`` (lowest digits first); ``AA`` bytes are wildcards."""
    text = address.upper()
    if len(text) != 12:
        raise EncodeError(f"address: must be 12 digits, got {address!r}")
    try:
        printed = bytes.fromhex(text)
    except ValueError:
        raise EncodeError(
            f"address: must be 12 digits (AA as a wildcard), got {address!r}"
        ) from None
    if not all(_is_bcd(b) or b == 0xAA for b in printed):
        raise EncodeError(f"address: must be 12 digits (AA as a wildcard), got {address!r}")
    return printed[::-1]


def address_from_wire(raw: bytes) -> str:
    return raw[::-1].hex().upper()


def _di_text(di: str | int) -> str:
    if isinstance(di, int):
        if not 0 <= di <= 0xFFFFFFFF:
            raise ValueCodecError(f"di: must be 0..0xFFFFFFFF, got {di}")
        return f"{di:08X}"
    text = di.upper()
    if len(text) != 8 or any(c not in "0123456789ABCDEF" for c in text):
        raise ValueCodecError(f"di: must be 8 hex digits (DI3 DI2 DI1 DI0), got {di!r}")
    return text


def di_to_wire(di: str | int) -> bytes:
    """``"00010000"`` → ``00 00 01 00`` before the offset (DI0 is sent first)."""
    return bytes.fromhex(_di_text(di))[::-1]


# ---------------------------------------------------------------------------
# frames
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Dlt645Frame:
    """One frame. ``data`` is the payload with the 0x33 offset already removed."""

    address: str
    control: int
    data: bytes = b""

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", self.address.upper())
        address_to_wire(self.address)  # validates
        if not 0 <= self.control <= 0xFF:
            raise EncodeError(f"control: must be 0..255, got {self.control}")
        if len(self.data) > MAX_DATA_LEN:
            raise EncodeError(f"data: at most {MAX_DATA_LEN} bytes, got {len(self.data)}")
        object.__setattr__(self, "data", bytes(self.data))

    @property
    def function(self) -> int:
        return self.control & FUNCTION_MASK

    @property
    def function_name(self) -> str:
        return FUNCTION_NAMES.get(self.function, "unknown")

    @property
    def from_meter(self) -> bool:
        return bool(self.control & DIR_FROM_METER)

    @property
    def is_exception(self) -> bool:
        return bool(self.control & EXCEPTION_BIT)

    @property
    def has_followup(self) -> bool:
        return bool(self.control & FOLLOWUP_BIT)

    @property
    def di(self) -> str | None:
        carries_di = self.function in (FN_READ, FN_READ_FOLLOWUP, FN_WRITE)
        if not carries_di or self.is_exception or len(self.data) < 4:
            return None
        return self.data[:4][::-1].hex().upper()

    @property
    def error_code(self) -> int | None:
        if not self.is_exception or not self.data:
            return None
        return self.data[0]

    def encode(self, preamble: int = 0) -> bytes:
        return dlt645_encode(self.address, self.control, self.data, preamble)


def dlt645_encode(address: str, control: int, data: bytes = b"", preamble: int = 0) -> bytes:
    """Frame bytes; ``data`` is plain (the +0x33 offset is applied here)."""
    if not 0 <= control <= 0xFF:
        raise EncodeError(f"control: must be 0..255, got {control}")
    if len(data) > MAX_DATA_LEN:
        raise EncodeError(f"data: at most {MAX_DATA_LEN} bytes, got {len(data)}")
    if not 0 <= preamble <= 4:
        raise EncodeError(f"preamble: must be 0..4 wake-up bytes, got {preamble}")
    body = (
        bytes([START])
        + address_to_wire(address)
        + bytes([START, control, len(data)])
        + bytes((b + DATA_OFFSET) & 0xFF for b in data)
    )
    return bytes([WAKE_UP]) * preamble + body + bytes([sum(body) & 0xFF, END])


def dlt645_reply(address: str, function: int, data: bytes = b"", followup: bool = False) -> bytes:
    """A meter's normal reply: C = function | 0x80, | 0x20 when more frames follow."""
    _check_function(function)
    control = function | DIR_FROM_METER | (FOLLOWUP_BIT if followup else 0)
    return dlt645_encode(address, control, data)


def dlt645_exception(address: str, function: int, err: int) -> bytes:
    """A meter's exception reply: C = function | 0xC0, data = the one ERR byte."""
    _check_function(function)
    if not 0 < err <= 0xFF:
        raise EncodeError(f"err: must be 1..255 (ERR bits), got {err}")
    return dlt645_encode(address, function | DIR_FROM_METER | EXCEPTION_BIT, bytes([err]))


def _check_function(function: int) -> None:
    if not 0 <= function <= FUNCTION_MASK:
        raise EncodeError(f"function: must be 0x00..0x1F (D4..D0), got {function:#x}")


def dlt645_read(address: str, di: str | int, preamble: int = 0) -> bytes:
    """Master's 0x11 read of one DI (for tests that play the master)."""
    return dlt645_encode(address, FN_READ, di_to_wire(di), preamble)


def dlt645_read_followup(address: str, di: str | int, seq: int, preamble: int = 0) -> bytes:
    if not 0 <= seq <= 0xFF:
        raise EncodeError(f"seq: must be 0..255, got {seq}")
    return dlt645_encode(address, FN_READ_FOLLOWUP, di_to_wire(di) + bytes([seq]), preamble)


def dlt645_read_address(preamble: int = 0) -> bytes:
    return dlt645_encode(WILDCARD_ADDRESS, FN_READ_ADDRESS, b"", preamble)


def dlt645_write(
    address: str,
    di: str | int,
    password_level: int,
    password: str,
    operator: str,
    value: bytes,
    preamble: int = 0,
) -> bytes:
    """0x14 write: DI | PA P0 P1 P2 | C0 C1 C2 C3 | value (password and operator low byte first)."""
    data = di_to_wire(di) + _password(password_level, password) + _operator(operator) + value
    return dlt645_encode(address, FN_WRITE, data, preamble)


def dlt645_time_sync(when: tuple[int, int, int, int, int, int], preamble: int = 0) -> bytes:
    """0x08 broadcast time sync; ``when`` = (year, month, day, hour, minute, second)."""
    return dlt645_encode(BROADCAST_ADDRESS, FN_BROADCAST_TIME, time6_to_wire(when), preamble)


def dlt645_control(
    address: str,
    n1: int,
    valid_until: tuple[int, int, int, int, int, int],
    password_level: int = 0,
    password: str = "000000",
    operator: str = "00000000",
    preamble: int = 0,
) -> bytes:
    """0x1C: PA P0 P1 P2 | C0..C3 | N1 | N2 = 00 | ss mm hh DD MM YY (the expiry)."""
    if not 0 <= n1 <= 0xFF:
        raise EncodeError(f"n1: must be 0..255, got {n1}")
    data = (
        _password(password_level, password)
        + _operator(operator)
        + bytes([n1, 0x00])
        + time6_to_wire(valid_until)
    )
    return dlt645_encode(address, FN_CONTROL, data, preamble)


def _password(level: int, password: str) -> bytes:
    if not 0 <= level <= 0xFF:
        raise EncodeError(f"password_level: must be 0..255, got {level}")
    if len(password) != 6 or not _is_hex(password):
        raise EncodeError(f"password: must be 6 hex digits, got {password!r}")
    return bytes([level]) + bytes.fromhex(password)[::-1]


def _operator(operator: str) -> bytes:
    if len(operator) != 8 or not _is_hex(operator):
        raise EncodeError(f"operator: must be 8 hex digits, got {operator!r}")
    return bytes.fromhex(operator)[::-1]


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def dlt645_error_names(err: int) -> list[str]:
    names = [
        (ERR_OTHER, "other error"),
        (ERR_NO_DATA, "no requested data"),
        (ERR_UNAUTHORISED, "password error / unauthorised"),
        (ERR_BAUD, "baud rate cannot change"),
        (ERR_TOO_MANY_ZONES, "too many time zones"),
        (ERR_TOO_MANY_PERIODS, "too many periods"),
        (ERR_TOO_MANY_TARIFFS, "too many tariffs"),
    ]
    return [name for bit, name in names if err & bit]


def dlt645_n1_name(n1: int) -> str:
    return N1_NAMES.get(n1, "unknown")


# ---------------------------------------------------------------------------
# one frame, and a stream of them
# ---------------------------------------------------------------------------

# what a candidate starting at a 0x68 turned out to be
_VALID, _INVALID, _BAD_CS, _INCOMPLETE = range(4)


def _examine(buf: bytes | bytearray, i: int) -> tuple[int, int]:
    """(verdict, frame length) for the candidate frame starting at ``buf[i] == 0x68``."""
    have = len(buf) - i
    if have < HEADER_LEN:
        # judge what has come so far: a second 68 where it cannot be is enough to give up
        if have > 7 and buf[i + 7] != START:
            return _INVALID, 0
        if not all(_is_bcd(b) or b == 0xAA for b in buf[i + 1 : i + min(have, 7)]):
            return _INVALID, 0
        return _INCOMPLETE, 0
    if buf[i + 7] != START or not all(_is_bcd(b) or b == 0xAA for b in buf[i + 1 : i + 7]):
        return _INVALID, 0
    length = MIN_FRAME_LEN + buf[i + 9]
    if have < length:
        return _INCOMPLETE, length
    if buf[i + length - 1] != END:
        return _INVALID, length
    if sum(buf[i : i + length - 2]) & 0xFF != buf[i + length - 2]:
        return _BAD_CS, length
    return _VALID, length


def _frame_at(buf: bytes | bytearray, i: int, length: int) -> Dlt645Frame:
    data = bytes((b - DATA_OFFSET) & 0xFF for b in buf[i + 10 : i + length - 2])
    return Dlt645Frame(address_from_wire(bytes(buf[i + 1 : i + 7])), buf[i + 8], data)


def dlt645_decode(frame: bytes) -> Dlt645Frame:
    """Exactly one frame (leading FE allowed, nothing after the 16)."""
    i = 0
    while i < len(frame) and frame[i] == WAKE_UP:
        i += 1
    if len(frame) - i < MIN_FRAME_LEN:
        raise FrameError(f"frame: at least {MIN_FRAME_LEN} bytes, got {len(frame) - i}")
    if frame[i] != START:
        raise FrameError(f"frame: must start with 68 (after FE), got {frame[i]:02X}")
    verdict, length = _examine(frame, i)
    if verdict == _BAD_CS:
        raise ChecksumError("frame: CS does not match the sum of 68 .. last data byte")
    if verdict == _INCOMPLETE or (verdict == _VALID and i + length != len(frame)):
        raise FrameError(f"frame: L says {length} bytes, got {len(frame) - i}")
    if verdict != _VALID:
        raise FrameError("frame: not 68 A0..A5 68 C L DATA CS 16")
    return _frame_at(frame, i, length)


class Dlt645Deframer:
    """Frames out of a byte stream that arrives in arbitrary pieces.

    A real RS-485 line carries wake-up FE bytes, noise, 68 bytes inside data,
    split reads and corrupted frames. The deframer resynchronises on the next
    68 after anything that is not a frame (dropping only that 68, so a frame
    that starts inside a bad one is still found), keeps a partial frame
    between feeds, and lets a complete good frame that arrived behind a
    partial one win over it: a false header announcing a long frame must not
    hold back the real request behind it.
    """

    def __init__(self, max_buffer: int = 4096) -> None:
        if max_buffer < MAX_FRAME_LEN:
            raise EncodeError(f"max_buffer: at least {MAX_FRAME_LEN} (one frame), got {max_buffer}")
        self.max_buffer = max_buffer
        self._buf = bytearray()
        self.frames = 0
        self.discarded_bytes = 0
        self.checksum_errors = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def reset(self) -> Dlt645Deframer:
        """Forget a partial frame (a new link, a timeout)."""
        self._discard(len(self._buf))
        return self

    def feed(self, chunk: bytes | bytearray) -> list[Dlt645Frame]:
        out: list[Dlt645Frame] = []
        # bounded work per step: a flood of noise is handled one buffer-full at a time
        step = self.max_buffer - MAX_FRAME_LEN + 1
        for k in range(0, len(chunk), step):
            self._buf += chunk[k : k + step]
            self._drain(out)
        return out

    def _drain(self, out: list[Dlt645Frame]) -> None:
        buf = self._buf
        while buf:
            start = buf.find(START)
            if start < 0:
                self._discard(len(buf))
                return
            self._discard(start)
            verdict, length = _examine(buf, 0)
            if verdict == _VALID:
                out.append(_frame_at(buf, 0, length))
                self.frames += 1
                del buf[:length]
            elif verdict in (_INVALID, _BAD_CS):
                self.checksum_errors += verdict == _BAD_CS
                self._discard(1)
            else:
                later = self._complete_frame_after(0)
                if later is None:
                    return  # wait for the rest
                self._discard(later)

    def _complete_frame_after(self, first: int) -> int | None:
        buf = self._buf
        i = buf.find(START, first + 1)
        while i >= 0:
            if _examine(buf, i)[0] == _VALID:
                return i
            i = buf.find(START, i + 1)
        return None

    def _discard(self, n: int) -> None:
        if n <= 0:
            return
        # FE bytes are the wake-up preamble, part of normal traffic
        self.discarded_bytes += sum(1 for b in self._buf[:n] if b != WAKE_UP)
        del self._buf[:n]


# ---------------------------------------------------------------------------
# time fields
# ---------------------------------------------------------------------------


def _bcd_byte(value: int, field: str) -> int:
    if not 0 <= value <= 99:
        raise ValueCodecError(f"{field}: must be 0..99 for one BCD byte, got {value}")
    return (value // 10) << 4 | value % 10


def _from_bcd_byte(byte: int, field: str) -> int:
    if not _is_bcd(byte):
        raise ValueCodecError(f"{field}: {byte:02X} is not BCD")
    return (byte >> 4) * 10 + (byte & 0x0F)


def _year2(year: int) -> int:
    if not 2000 <= year <= 2099:
        raise ValueCodecError(f"year: must be 2000..2099 (two BCD digits on the wire), got {year}")
    return year - 2000


def time6_to_wire(when: tuple[int, int, int, int, int, int]) -> bytes:
    """(year, month, day, hour, minute, second) → ss mm hh DD MM YY."""
    year, month, day, hour, minute, second = when
    try:
        dt.datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise EncodeError(f"when: not a real time {when!r} ({exc})") from None
    fields = (second, minute, hour, day, month, _year2(year))
    return bytes(_bcd_byte(v, "when") for v in fields)


def parse_time6(data: bytes) -> dt.datetime | None:
    """ss mm hh DD MM YY (BCD) → a naive datetime in the meter's clock; None when not a time."""
    if len(data) != 6 or not all(_is_bcd(b) for b in data):
        return None
    ss, mm, hh, day, month, yy = (_from_bcd_byte(b, "time") for b in data)
    try:
        return dt.datetime(2000 + yy, month, day, hh, mm, ss)
    except ValueError:
        return None


def dlt645_parse_time_sync(data: bytes) -> tuple[int, int, int, int, int, int]:
    """(year, month, day, hour, minute, second) from 0x08 data; FrameError when not a time."""
    when = parse_time6(data)
    if when is None:
        raise FrameError(
            f"data: must be 6 BCD bytes ss mm hh DD MM YY of a real time, got {data.hex()}"
        )
    return (when.year, when.month, when.day, when.hour, when.minute, when.second)


# ---------------------------------------------------------------------------
# values (Appendix A data formats)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DataFormat:
    """How one DI's value sits in the data bytes after the DI."""

    kind: str  # number, date, time, datetime, address, status
    length: int  # bytes of one element
    decimals: int = 0
    signed: bool = False  # top bit of the most significant byte is the sign
    block: int = 0  # elements of an FF block read; 0 for a single item
    unit: str = ""

    @property
    def picture(self) -> str:
        digits = "X" * (2 * self.length - self.decimals)
        return digits + ("." + "X" * self.decimals if self.decimals else "")


def _n(
    length: int, decimals: int, unit: str, *, signed: bool = False, block: int = 0
) -> DataFormat:
    return DataFormat("number", length, decimals, signed, block, unit)


# Variables (DI3 = 02): (DI2, DI1 values allowed, format); FF in DI1 is the block.
_PHASES = (0x01, 0x02, 0x03)
_TOTAL_AND_PHASES = (0x00, 0x01, 0x02, 0x03)
_VARIABLES: dict[int, tuple[tuple[int, ...], DataFormat]] = {
    0x01: (_PHASES, _n(2, 1, "V")),  # voltage XXX.X
    0x02: (_PHASES, _n(3, 3, "A", signed=True)),  # current XXX.XXX
    0x03: (_TOTAL_AND_PHASES, _n(3, 4, "kW", signed=True)),  # active power XX.XXXX
    0x04: (_TOTAL_AND_PHASES, _n(3, 4, "kvar", signed=True)),  # reactive power XX.XXXX
    0x05: (_TOTAL_AND_PHASES, _n(3, 4, "kVA", signed=True)),  # apparent power XX.XXXX
    0x06: (_TOTAL_AND_PHASES, _n(2, 3, "", signed=True)),  # power factor X.XXX
    0x07: (_PHASES, _n(2, 1, "°")),  # phase angle XXX.X
}
_VARIABLES_80: dict[int, DataFormat] = {
    0x01: _n(3, 3, "A", signed=True),  # neutral current XXX.XXX
    0x02: _n(2, 2, "Hz"),  # frequency XX.XX
    0x03: _n(3, 4, "kW", signed=True),  # one-minute average active power
    0x04: _n(3, 4, "kW", signed=True),  # present active demand
    0x05: _n(3, 4, "kvar", signed=True),  # present reactive demand
    0x06: _n(3, 4, "kVA", signed=True),  # present apparent demand
    0x07: _n(2, 1, "°C", signed=True),  # meter temperature XXX.X
    0x08: _n(2, 2, "V"),  # clock battery XX.XX
    0x0B: _n(4, 4, "yuan"),  # present price XXXX.XXXX
}
_PARAMETERS: dict[str, DataFormat] = {
    "04000101": DataFormat("date", 4),  # YYMMDDWW
    "04000102": DataFormat("time", 3),  # hhmmss
    "0400010C": DataFormat("datetime", 7),  # YYMMDDWWhhmmss
    "04000401": DataFormat("address", 6),  # communication address
    "04000402": DataFormat("address", 6),  # meter number
    **{f"0400050{k}": DataFormat("status", 2) for k in range(1, 8)},  # status words 1..7
    "00900100": _n(4, 2, "kWh"),  # remaining energy XXXXXX.XX
    "00900101": _n(4, 2, "kWh"),  # overdraft energy
    "00900200": _n(4, 2, "yuan"),  # remaining money XXXXXX.XX
    "00900201": _n(4, 2, "yuan"),  # overdraft money
}
# energy (DI3 = 00) by DI2; combined active and combined reactive 1/2 carry a sign
_ENERGY_UNITS = {
    0x00: "kWh",
    0x01: "kWh",
    0x02: "kWh",
    0x03: "kvarh",
    0x04: "kvarh",
    0x05: "kvarh",
    0x06: "kvarh",
    0x07: "kvarh",
    0x08: "kvarh",
    0x09: "kVAh",
    0x0A: "kVAh",
}
_SIGNED_ENERGY = (0x00, 0x03, 0x04)
ENERGY_BLOCK_ELEMENTS = 5  # total, T1..T4


def data_format(di: str | int) -> DataFormat | None:
    """The format of a DI this codec knows, else None (its bytes are passed through as they are)."""
    text = _di_text(di)
    if text in _PARAMETERS:
        return _PARAMETERS[text]
    di3, di2, di1, di0 = bytes.fromhex(text)
    if di3 == 0x00 and di2 in _ENERGY_UNITS and (di1 <= 0x3F or di1 == 0xFF) and di0 <= 0x0C:
        block = ENERGY_BLOCK_ELEMENTS if di1 == 0xFF else 0
        return _n(4, 2, _ENERGY_UNITS[di2], signed=di2 in _SIGNED_ENERGY, block=block)
    if di3 == 0x02 and di2 in _VARIABLES and di0 == 0x00:
        allowed, fmt = _VARIABLES[di2]
        if di1 in allowed:
            return fmt
        if di1 == 0xFF:
            return DataFormat(
                fmt.kind, fmt.length, fmt.decimals, fmt.signed, len(allowed), fmt.unit
            )
    if di3 == 0x02 and di2 == 0x80 and di1 == 0x00 and di0 in _VARIABLES_80:
        return _VARIABLES_80[di0]
    return None


Value = float | int | str | bytes | None | list[float | None]


def encode_value(di: str | int, value: Value | Sequence[float | None] | dt.date) -> bytes:
    """Data bytes (before the +0x33 offset, without the DI) for a value of a DI.

    ``bytes`` pass through for any DI; None is "not present" (all FF); a block
    DI takes a list (any number of elements: meters with more tariffs send more).
    """
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    text = _di_text(di)
    fmt = data_format(text)
    if fmt is None:
        raise ValueCodecError(f"value: DI {text} has no known format; pass the raw bytes")
    if fmt.block:
        if isinstance(value, str) or not isinstance(value, Sequence) or not value:
            raise ValueCodecError(f"value: DI {text} is a block; expects a non-empty list")
        return b"".join(_encode_one(text, fmt, v, i) for i, v in enumerate(value))
    return _encode_one(text, fmt, value, 0)


def _encode_one(di: str, fmt: DataFormat, value: object, index: int) -> bytes:
    where = f"DI {di}" + (f" element {index}" if fmt.block else "")
    if value is None and fmt.kind == "number":
        return b"\xff" * fmt.length
    if fmt.kind == "number":
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueCodecError(f"value: {where} expects a number or None, got {value!r}")
        return _encode_number(where, fmt, float(value))
    if fmt.kind == "status":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise ValueCodecError(f"value: {where} expects a status word 0..0xFFFF, got {value!r}")
        return value.to_bytes(2, "little")
    if fmt.kind == "address":
        if not isinstance(value, str) or len(value) != 12 or not value.isdigit():
            raise ValueCodecError(f"value: {where} expects 12 digits, got {value!r}")
        return bytes.fromhex(value)[::-1]
    if fmt.kind == "date":
        day = _as_date(where, value)
        weekday = day.isoweekday() % 7  # the standard counts 0 = Sunday
        return bytes(_bcd_byte(v, "date") for v in (weekday, day.day, day.month, _year2(day.year)))
    if fmt.kind == "time":
        t = _as_time(where, value)
        return bytes(_bcd_byte(v, "time") for v in (t.second, t.minute, t.hour))
    if fmt.kind == "datetime":
        when = _as_datetime(where, value)
        weekday = when.isoweekday() % 7
        fields = (when.second, when.minute, when.hour, weekday, when.day, when.month)
        return bytes(_bcd_byte(v, "datetime") for v in fields) + bytes(
            [_bcd_byte(_year2(when.year), "datetime")]
        )
    raise ValueCodecError(f"value: {where} has kind {fmt.kind!r}, which cannot be encoded")


def _encode_number(where: str, fmt: DataFormat, value: float) -> bytes:
    digits = 2 * fmt.length
    # the sign takes the top bit of the most significant byte: its digit can then be 0..7
    limit = 8 * 10 ** (digits - 1) - 1 if fmt.signed else 10**digits - 1
    scaled = math.floor(abs(value) * 10**fmt.decimals + 0.5)  # half away from zero
    if (value < 0 and not fmt.signed) or scaled > limit:
        low = -limit / 10**fmt.decimals if fmt.signed else 0
        high = limit / 10**fmt.decimals
        raise ValueCodecError(
            f"value: {where} must be within {low}..{high} ({fmt.picture}), got {value}"
        )
    raw = bytearray(_bcd_byte(scaled // 100**k % 100, "value") for k in range(fmt.length))
    if value < 0 and scaled:
        raw[-1] |= 0x80
    return bytes(raw)


def _as_date(where: str, value: object) -> dt.date:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise ValueCodecError(f"value: {where} expects a date 'YYYY-MM-DD', got {value!r}")


def _as_time(where: str, value: object) -> dt.time:
    if isinstance(value, dt.time):
        return value
    if isinstance(value, str) and len(value) == 8:
        try:
            return dt.time.fromisoformat(value)
        except ValueError:
            pass
    raise ValueCodecError(f"value: {where} expects a time 'HH:MM:SS', got {value!r}")


def _as_datetime(where: str, value: object) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, str) and len(value) == 19:
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            pass
    raise ValueCodecError(
        f"value: {where} expects a date and time 'YYYY-MM-DDTHH:MM:SS', got {value!r}"
    )


def decode_value(di: str | int, data: bytes) -> Value:
    """The value in a reply's data bytes (after the DI, offset removed).

    numbers → float (None when all FF: not present), blocks → list, date →
    "YYYY-MM-DD", time → "HH:MM:SS", date and time → "YYYY-MM-DDTHH:MM:SS",
    status → int, address → 12 digits; a DI without a known format → the raw bytes.
    """
    text = _di_text(di)
    fmt = data_format(text)
    if fmt is None:
        return bytes(data)
    if fmt.block:
        if not data or len(data) % fmt.length:
            raise ValueCodecError(
                f"data: DI {text} expects a whole number of {fmt.length}-byte elements, "
                f"got {len(data)} bytes"
            )
        return [
            _decode_number(text, fmt, data[i : i + fmt.length])
            for i in range(0, len(data), fmt.length)
        ]
    if len(data) != fmt.length:
        raise ValueCodecError(f"data: DI {text} expects {fmt.length} bytes, got {len(data)}")
    if fmt.kind == "number":
        return _decode_number(text, fmt, data)
    if fmt.kind == "status":
        return int.from_bytes(data, "little")
    field = f"DI {text}"
    if fmt.kind == "address":
        for b in data:
            _from_bcd_byte(b, field)
        return bytes(data)[::-1].hex()
    if fmt.kind == "date":
        _ww, day, month, yy = (_from_bcd_byte(b, field) for b in data)
        return _real(field, lambda: dt.date(2000 + yy, month, day)).isoformat()
    if fmt.kind == "time":
        ss, mm, hh = (_from_bcd_byte(b, field) for b in data)
        return _real(field, lambda: dt.time(hh, mm, ss)).isoformat()
    ss, mm, hh, _ww, day, month, yy = (_from_bcd_byte(b, field) for b in data)
    when = _real(field, lambda: dt.datetime(2000 + yy, month, day, hh, mm, ss))
    return when.isoformat()


def _real(field: str, make: Callable[[], _T]) -> _T:
    try:
        return make()
    except ValueError as exc:
        raise ValueCodecError(f"data: {field}: {exc}") from None


def _decode_number(di: str, fmt: DataFormat, data: bytes) -> float | None:
    if all(b == 0xFF for b in data):
        return None  # FF…FF: this item (a phase, a tariff) is not present
    raw = bytearray(data)
    negative = fmt.signed and bool(raw[-1] & 0x80)
    if fmt.signed:
        raw[-1] &= 0x7F
    magnitude = 0
    for b in reversed(raw):
        magnitude = magnitude * 100 + _from_bcd_byte(b, f"DI {di}")
    value = magnitude / 10**fmt.decimals
    return -value if negative and magnitude else value
