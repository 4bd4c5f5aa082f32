"""Type stub for the Rust extension ``controller._core_rs``.

The extension is sans-I/O: every function takes bytes or plain values and
returns frames, values or errors. Addresses are the 12-digit strings printed
on the meter (most significant digit first); data identifiers (DI) are
8-hex-digit strings such as ``"00010000"`` (DI3 DI2 DI1 DI0, as written in the
standard) or the equivalent ``int``.
"""

from collections.abc import Sequence
from typing import Final, final

# --------------------------------------------------------------------------
# Exceptions: one hierarchy, all subclasses of ValueError so that bad input
# raised from deep inside the core reads naturally to callers.
# --------------------------------------------------------------------------

class CoreError(ValueError):
    """Base of every error raised by the core."""

class EncodeError(CoreError):
    """Bad argument to an encoder; the message names the field and the allowed range."""

class AddressNotAllowedError(EncodeError):
    """A request (D7 = 0) to the broadcast address ``999999999999`` or an ``AA`` wildcard
    address for a function not allowed there. Only 0x08 broadcast time sync and 0x16
    freeze go to the broadcast address, only 0x13 read address and 0x15 write address
    to wildcards; a read, write or 1C there would reach every meter on the line. Replies
    (D7 = 1) and decoding are not checked."""

class FrameError(CoreError):
    """A byte string is not a valid frame."""

class ChecksumError(FrameError):
    """DL/T 645 CS or Modbus CRC mismatch."""

class FrameLengthError(FrameError):
    """Too short, length field inconsistent with the bytes, or over 255 data bytes."""

class FrameEndError(FrameError):
    """The DL/T 645 end byte 0x16 is missing."""

class AddressError(FrameError):
    """An address that is not 12 BCD digits (``AA`` wildcards allowed where stated)."""

class ValueCodecError(CoreError):
    """Data bytes that do not fit the DI's format (bad BCD, wrong length), or a value out of
    range on encode."""

class SchedulerError(CoreError):
    """Bad scheduler argument: unknown job id, duplicate id, non-positive period."""

# --------------------------------------------------------------------------
# DL/T 645-2007
# --------------------------------------------------------------------------

BROADCAST_ADDRESS: Final[str]  # "999999999999"
WILDCARD_ADDRESS: Final[str]  # "AAAAAAAAAAAA"

# function codes (control code D4..D0)
FN_BROADCAST_TIME: Final[int]  # 0x08
FN_READ: Final[int]  # 0x11
FN_READ_FOLLOWUP: Final[int]  # 0x12
FN_READ_ADDRESS: Final[int]  # 0x13
FN_WRITE: Final[int]  # 0x14
FN_WRITE_ADDRESS: Final[int]  # 0x15
FN_FREEZE: Final[int]  # 0x16
FN_CHANGE_BAUD: Final[int]  # 0x17
FN_CHANGE_PASSWORD: Final[int]  # 0x18
FN_DEMAND_RESET: Final[int]  # 0x19
FN_METER_CLEAR: Final[int]  # 0x1A
FN_EVENT_CLEAR: Final[int]  # 0x1B
FN_CONTROL: Final[int]  # 0x1C
FN_MULTI_OUTPUT: Final[int]  # 0x1D
FN_SECURITY: Final[int]  # 0x03

# 1C control N1 codes
N1_TRIP: Final[int]  # 0x1A
N1_CLOSE_ALLOWED: Final[int]  # 0x1B
N1_DIRECT_CLOSE: Final[int]  # 0x1C
N1_ALARM_ON: Final[int]  # 0x2A
N1_ALARM_OFF: Final[int]  # 0x2B
N1_KEEP_POWER_ON: Final[int]  # 0x3A
N1_KEEP_POWER_OFF: Final[int]  # 0x3B

# exception reply ERR bits
ERR_OTHER: Final[int]  # 0x01
ERR_NO_DATA: Final[int]  # 0x02
ERR_UNAUTHORISED: Final[int]  # 0x04 password error / unauthorised
ERR_BAUD: Final[int]  # 0x08 baud rate cannot change
ERR_TOO_MANY_ZONES: Final[int]  # 0x10
ERR_TOO_MANY_PERIODS: Final[int]  # 0x20
ERR_TOO_MANY_TARIFFS: Final[int]  # 0x40

@final
class Dlt645Frame:
    """One decoded DL/T 645 frame. ``data`` is the payload with the 0x33 offset removed."""

    def __new__(cls, address: str, control: int, data: bytes = b"") -> Dlt645Frame: ...
    @property
    def address(self) -> str: ...
    @property
    def control(self) -> int: ...
    @property
    def data(self) -> bytes: ...
    @property
    def function(self) -> int:
        """Control code D4..D0."""
    @property
    def function_name(self) -> str:
        """e.g. ``"read"``, ``"control"``, ``"broadcast_time"``; ``"unknown"`` for reserved
        codes."""
    @property
    def from_meter(self) -> bool:
        """D7: reply direction."""
    @property
    def is_exception(self) -> bool:
        """D6: exception reply; ``data[0]`` is the ERR byte."""
    @property
    def has_followup(self) -> bool:
        """D5: more frames follow (read with 0x12)."""
    @property
    def di(self) -> str | None:
        """The DI as 8 hex digits for read/write/follow-up frames that carry one, else None."""
    @property
    def error_code(self) -> int | None:
        """The ERR byte of an exception reply, else None."""
    def encode(self, preamble: int = 0) -> bytes:
        """Frame bytes with ``preamble`` leading 0xFE (0..4)."""
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...
    def __repr__(self) -> str: ...

def dlt645_encode(address: str, control: int, data: bytes = b"", preamble: int = 0) -> bytes:
    """Encode a frame. ``data`` is plain (the +0x33 offset is applied here).

    Raises EncodeError naming ``address`` (12 digits, or A wildcards), ``control``
    (0..255 with a known function), ``data`` (≤ 255 bytes) or ``preamble`` (0..4);
    AddressNotAllowedError for a request to the broadcast or a wildcard address with a
    function not allowed there (every request encoder and ``Dlt645Frame`` check it)."""

def dlt645_decode(frame: bytes) -> Dlt645Frame:
    """Decode exactly one frame (leading 0xFE allowed, nothing after 0x16).

    Raises ChecksumError, FrameLengthError, FrameEndError, AddressError or FrameError."""

def dlt645_error_names(err: int) -> list[str]:
    """Names of the bits set in an exception ERR byte, e.g. ``["no requested data"]``."""

def dlt645_error_bits(names: Sequence[str]) -> int:
    """The ERR byte for bit names (inverse of dlt645_error_names).

    EncodeError on an unknown name."""

def dlt645_n1_name(n1: int) -> str:
    """``"trip"``, ``"close_allowed"``, ``"direct_close"``, ``"alarm_on"``, ``"alarm_off"``,
    ``"keep_power_on"``, ``"keep_power_off"``, or ``"unknown"``."""

def dlt645_read(address: str, di: str | int, preamble: int = 0) -> bytes:
    """0x11 read request for one DI (block DIs with FF are ordinary DIs here).

    AddressNotAllowedError for the broadcast or a wildcard address."""

def dlt645_read_followup(address: str, di: str | int, seq: int, preamble: int = 0) -> bytes:
    """0x12 read follow-up request, frame sequence number ``seq`` (0..255)."""

def dlt645_read_address(preamble: int = 0) -> bytes:
    """0x13 wildcard read-address request."""

def dlt645_write(
    address: str,
    di: str | int,
    password_level: int,
    password: str,
    operator: str,
    value: bytes,
    preamble: int = 0,
) -> bytes:
    """0x14 write: DI, PA P0 P1 P2 (password: 6 hex digits), operator code (8 hex digits),
    value bytes."""

def dlt645_time_sync(when: tuple[int, int, int, int, int, int], preamble: int = 0) -> bytes:
    """0x08 broadcast time sync; ``when`` = (year, month, day, hour, minute, second)."""

def dlt645_parse_time_sync(data: bytes) -> tuple[int, int, int, int, int, int]:
    """(year, month, day, hour, minute, second) from a time-sync frame's data.

    FrameError when it is not 6 BCD bytes of a real time."""

def dlt645_freeze(address: str, pattern: str = "99999999", preamble: int = 0) -> bytes:
    """0x16 freeze; ``pattern`` mmhhDDMM as 8 digits (99 = every)."""

def dlt645_change_baud(address: str, baud: int, preamble: int = 0) -> bytes:
    """0x17 change baud; ``baud`` one of 1200, 2400, 4800, 9600, 19200 (sent as the feature
    word)."""

def dlt645_control(
    address: str,
    n1: int,
    valid_until: tuple[int, int, int, int, int, int],
    password_level: int = 0,
    password: str = "000000",
    operator: str = "00000000",
    preamble: int = 0,
) -> bytes:
    """0x1C trip/close/alarm/keep-power.

    ``valid_until`` = (year, month, day, hour, minute, second)."""

@final
class Dlt645Control:
    """The 16-byte payload of a 1C command: PA P0..P2 | C0..C3 | N1 | N2 | ss mm hh DD MM YY."""

    @property
    def password_level(self) -> int: ...
    @property
    def password(self) -> str:
        """6 hex digits, most significant first (P2 P1 P0)."""
    @property
    def operator(self) -> str:
        """8 hex digits, most significant first (C3..C0)."""
    @property
    def n1(self) -> int: ...
    @property
    def n1_name(self) -> str: ...
    @property
    def n2(self) -> int: ...
    @property
    def valid_until(self) -> tuple[int, int, int, int, int, int]: ...

def dlt645_parse_control(data: bytes) -> Dlt645Control:
    """Parse a 1C frame's data (0x33 removed); FrameLengthError / FrameError when malformed."""

def dlt645_reply(address: str, function: int, data: bytes = b"", followup: bool = False) -> bytes:
    """Normal reply (C = function | 0x80, | 0x20 with follow-up) — for simulators."""

def dlt645_exception(address: str, function: int, err: int) -> bytes:
    """Exception reply (C = function | 0xC0) with one ERR byte — for simulators."""

@final
class Dlt645Deframer:
    """Streaming deframer: feed any chunks, get every complete valid frame in order.

    Skips 0xFE preamble and noise, resynchronises after a false 0x68, a bad
    checksum or a truncated frame, keeps a partial frame between feeds. On a
    bad frame only its first 0x68 is dropped, so a good frame starting inside
    it is still found; a complete valid frame inside a pending partial one
    wins, so a truncated frame never holds back the reply behind it.
    ``max_buffer`` (≥ 267, one maximal frame) bounds the bytes held while a
    feed is processed; between feeds at most one partial frame is kept."""

    def __new__(cls, max_buffer: int = 4096) -> Dlt645Deframer: ...
    def feed(self, chunk: bytes | bytearray) -> list[Dlt645Frame]: ...
    def reset(self) -> Dlt645Deframer:
        """Drop any partial frame (e.g. after a timeout); counted as discarded bytes."""
    @property
    def frames(self) -> int: ...
    @property
    def discarded_bytes(self) -> int:
        """Bytes that were not part of a frame (0xFE wake-up bytes are never counted)."""
    @property
    def checksum_errors(self) -> int: ...
    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""

# value codec

@final
class DiInfo:
    @property
    def di(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def unit(self) -> str:
        """Engineering unit (``"kWh"``, ``"V"``, ``"A"``, ``"kW"``, ``"kvar"``, ``"Hz"``,
        ``"yuan"``, ``""``)."""
    @property
    def decimals(self) -> int:
        """Digits after the decimal point (value = BCD integer / 10**decimals)."""
    @property
    def signed(self) -> bool: ...
    @property
    def length(self) -> int:
        """Bytes of one element."""
    @property
    def count(self) -> int:
        """Elements in the reply (>1 for FF block DIs)."""
    @property
    def kind(self) -> str:
        """``"number"``, ``"date"``, ``"time"``, ``"datetime"``, ``"demand"``, ``"status"``,
        ``"address"``, ``"raw"``."""

def di_info(di: str | int) -> DiInfo | None:
    """The table entry for a DI, or None when the DI is not in the table."""

def di_table() -> list[DiInfo]:
    """Every concrete DI the codec knows (block DIs included)."""

DecodedValue = (
    float
    | int
    | str
    | bytes
    | None
    | list[float | None]
    | tuple[float | None, str | None]
    | list[tuple[float | None, str | None]]
)

def decode_value(di: str | int, data: bytes) -> DecodedValue:
    """Decode a reply's value bytes (after the 4 DI bytes, 0x33 already removed).

    numbers → float (None when the bytes are all FF: not present); block DIs → list;
    date → "YYYY-MM-DD"; time → "HH:MM:SS"; datetime → "YYYY-MM-DDTHH:MM:SS";
    demand → (value, "YYYY-MM-DDTHH:MM") (time None when no demand was recorded),
    demand blocks → list of those; status words → int; address → 12-digit str;
    unknown DI → the raw bytes. Block DIs accept any whole number of elements
    (meters with more tariffs send more). Raises ValueCodecError on bad BCD or
    wrong length."""

def encode_value(di: str | int, value: DecodedValue) -> bytes:
    """The inverse of decode_value (for simulators and writes); ValueCodecError when out of range.

    ``bytes`` are passed through unchanged for any DI; None encodes as all FF."""

def weekday_of(data: bytes) -> int | None:
    """The WW byte of a 04000101 date reply (0 = Sunday).

    ``data`` is the 4 value bytes, or the 8 bytes with the DI in front."""

# --------------------------------------------------------------------------
# Modbus RTU
# --------------------------------------------------------------------------

def modbus_crc16(data: bytes) -> int:
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF)."""

def modbus_rtu_frame(adu_without_crc: bytes) -> bytes:
    """Append the CRC, low byte first. EncodeError unless 2..254 bytes."""

def modbus_rtu_check(frame: bytes) -> bool:
    """True when the last two bytes are the CRC of the rest."""

def modbus_rtu_timing(baud: int, bits_per_char: int = 11) -> tuple[float, float]:
    """(t1.5, t3.5) in seconds; fixed 0.75 ms / 1.75 ms above 19200 baud.

    Raises EncodeError naming ``baud`` (50..10000000) or ``bits_per_char`` (10..12)."""

@final
class ModbusRtuDeframer:
    """Finds frame ends by function code and length fields.

    ``role="response"`` parses replies from a slave (what a master hears);
    ``role="request"`` parses requests (what a slave hears). A candidate whose
    CRC fails costs one byte and scanning resumes at the next, so a good frame
    behind garbage is never lost; when the newest bytes already form a good
    frame it is delivered at once, even behind a plausible-looking header.
    Unknown function codes resync byte by byte. Raises EncodeError naming
    ``role`` or ``max_buffer`` (256..1048576)."""

    def __new__(cls, role: str = "response", max_buffer: int = 512) -> ModbusRtuDeframer: ...
    def feed(self, chunk: bytes) -> list[bytes]:
        """Complete frames (CRC included and verified), in order."""
    def reset(self) -> None:
        """Drop any partial frame (e.g. after a timeout); counted as discarded bytes."""
    @property
    def role(self) -> str: ...
    @property
    def frames(self) -> int: ...
    @property
    def discarded_bytes(self) -> int: ...
    @property
    def crc_errors(self) -> int:
        """Candidates whose length fields fit but whose CRC did not match."""
    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""

# --------------------------------------------------------------------------
# Poll scheduler and capacity planner
# --------------------------------------------------------------------------

LANE_CONTROL: Final[int]  # 0
LANE_OPERATOR: Final[int]  # 1
LANE_EVENT: Final[int]  # 2
LANE_CYCLIC: Final[int]  # 3

@final
class JobStats:
    @property
    def runs(self) -> int:
        """Completed runs (complete() calls), failures included."""
    @property
    def failures(self) -> int: ...
    @property
    def skipped(self) -> int:
        """Release slots missed because the job ran late (counted, never run in a burst)."""
    @property
    def lane(self) -> int: ...
    @property
    def lateness_max_s(self) -> float: ...
    @property
    def lateness_mean_s(self) -> float: ...
    @property
    def duration_mean_s(self) -> float: ...
    @property
    def period_s(self) -> float:
        """Configured period."""
    @property
    def effective_period_s(self) -> float:
        """Period after stretching on an overloaded bus (≥ period_s); 0 for one-shot jobs."""

@final
class BusStats:
    @property
    def runs(self) -> int: ...
    @property
    def failures(self) -> int: ...
    @property
    def skipped(self) -> int:
        """Σ skipped slots over every job that has run on the bus."""
    @property
    def busy_s(self) -> float:
        """Sum of transaction durations reported via complete()."""
    @property
    def lateness_max_s(self) -> float: ...
    @property
    def lateness_mean_s(self) -> float: ...
    @property
    def stretch(self) -> float:
        """Current stretch factor applied to cyclic periods (1.0 = none)."""
    @property
    def demand(self) -> float:
        """Estimated bus demand: Σ duration_mean / period over periodic jobs (>1 = overloaded)."""

@final
class PollScheduler:
    """Per-bus scheduler: earliest deadline first within priority lanes.

    Time is whatever monotonic seconds the caller passes in (virtual time in tests).
    Periodic jobs are released at ``t0 + k·period`` (no drift); their deadline is
    the release time. Among released jobs the lowest lane wins, then the earliest
    deadline. When the bus demand exceeds ``max_utilisation`` the periods of
    LANE_CYCLIC jobs are stretched by a common factor so every job still runs.

    A periodic job taken late is re-released at its first slot not before the
    ``now`` passed to complete(); missed slots are counted in ``skipped``.
    Demand uses ``expected_duration_s`` until complete() reports real
    durations, then an EWMA of them. Bad arguments (unknown or duplicate
    ``job_id``, ``period_s`` ≤ 0, ``lane`` outside 0..3, NaN or infinite times,
    negative durations, ``max_utilisation`` outside (0, 1]) raise
    SchedulerError naming the field and the allowed range, and change nothing."""

    def __new__(cls, max_utilisation: float = 0.95) -> PollScheduler: ...
    @property
    def max_utilisation(self) -> float: ...
    def add_job(
        self,
        job_id: int,
        period_s: float,
        lane: int = 3,
        first_release: float = 0.0,
        expected_duration_s: float = 0.0,
    ) -> None:
        """A periodic job released at ``first_release + k·period_s``.

        ``first_release`` is on the caller's clock: with a monotonic clock pass
        ``now`` plus a stagger, since a release in the past runs at once and
        counts as lateness."""
    def remove_job(self, job_id: int) -> None:
        """Forget a job at once, whatever its state; complete() for it then raises."""
    def submit(self, job_id: int, lane: int, release: float) -> None:
        """A one-shot job (command, operator read, event read); runs once.

        Its id is free again (and job_stats() for it raises) once it completes."""
    def next_job(self, now: float) -> tuple[int, float] | None:
        """Take the next released job as (job_id, lateness_s), or None when nothing is due."""
    def next_release(self) -> float | None:
        """Earliest time at which a job is or becomes due (for sleeping)."""
    def complete(self, job_id: int, now: float, duration_s: float, ok: bool) -> None:
        """Report a taken job's outcome; periodic jobs are re-released at their next slot."""
    def postpone(self, job_id: int, release: float) -> None:
        """Move a periodic job's next release (quarantine back-off).

        Its slot grid restarts at ``release``. On a running job it applies when
        the job completes; a waiting one-shot job is simply moved."""
    def job_stats(self, job_id: int) -> JobStats: ...
    def bus_stats(self) -> BusStats: ...
    def __len__(self) -> int: ...
    def __contains__(self, job_id: object, /) -> bool: ...

@final
class PlanJob:
    def __new__(
        cls,
        name: str,
        request_bytes: int,
        response_bytes: int,
        period_s: float,
        response_delay_s: float,
        count: int = 1,
        gap_s: float = 0.0,
    ) -> PlanJob: ...
    @property
    def name(self) -> str: ...
    @property
    def request_bytes(self) -> int: ...
    @property
    def response_bytes(self) -> int: ...
    @property
    def period_s(self) -> float: ...
    @property
    def response_delay_s(self) -> float: ...
    @property
    def count(self) -> int:
        """Transactions of this kind per period (e.g. meters on the bus); 0..1000000."""
    @property
    def gap_s(self) -> float: ...

@final
class PlanJobResult:
    @property
    def name(self) -> str: ...
    @property
    def transaction_s(self) -> float: ...
    @property
    def utilisation(self) -> float: ...

@final
class BusPlan:
    @property
    def utilisation(self) -> float:
        """Fraction of wire time needed (>1 = cannot meet the periods)."""
    @property
    def worst_case_cycle_s(self) -> float:
        """Time to run every job once back to back."""
    @property
    def max_transactions_per_s(self) -> float:
        """Wire limit for the mix of jobs."""
    @property
    def feasible(self) -> bool: ...
    @property
    def jobs(self) -> list[PlanJobResult]: ...

def plan_bus(baud: int, bits_per_char: int, jobs: Sequence[PlanJob]) -> BusPlan:
    """Predict utilisation and worst-case cycle of one bus from wire timing.

    Bad arguments (``baud`` outside 50..10000000, ``bits_per_char`` outside
    7..12, and PlanJob fields) raise SchedulerError naming the field."""

def transaction_time(
    baud: int,
    bits_per_char: int,
    request_bytes: int,
    response_bytes: int,
    response_delay_s: float,
    gap_s: float = 0.0,
) -> float:
    """Seconds for one request/response on the wire: (req + resp) × bits/baud + delay + gap.

    SchedulerError names ``baud`` (50..10000000), ``bits_per_char`` (7..12),
    ``request_bytes``/``response_bytes`` (0..65535) or a negative/NaN time."""
