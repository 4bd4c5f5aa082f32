"""The wire contract between the controller and the warehouse PLC: its Modbus register map.

Holding registers only, device id 1. The controller (``controller.warehouse``)
and the simulated PLC (``drivers.sim.warehouse``) both take every address, size,
bit meaning and word encoding from here, so the two sides of the wire can only
disagree about behaviour, never about where a value is or how it is packed.

Crane block (one per aisle, base ``crane_base(aisle)``), read side:
  +0 state (CraneState)      +1 x position, cm       +2 y position, cm
  +3 fork load sensor 0/1    +4..+11 barcode at fork (16 ASCII chars)
  +12 fault code (Fault)     +13 done seq            +14 done result (Result)
  +15 aisle door / light curtain open 0/1            +16 accepted seq
Command side: +20 op (Op), +21 row, +22 bay, +23 level, +24 seq — written in
one block; the PLC latches a command when the seq changes, so a repeated write
of the same block (a retry) is idempotent. A target with row 0 is an aisle's
transfer station: bay carries the aisle, level ``STATION_IN`` or ``STATION_OUT``.

Conveyor block (two per aisle: inbound then outbound, base ``conveyor_base``):
  +0 zones  +1 photo-eye bitmap (bit i = zone i blocked)  +2 motor bitmap (actual)
  +3 reader count (increments on each read at the induct)  +4..+11 last barcode read
  +20 motor command bitmap (bit i = run zone i)   +21 re-read trigger (write any value)

Rack scan window (the rack's inventory reader): write row, bay, level at
``SCAN_BASE``+0..2, then read +3 occupied and +4..+11 barcode.

Line return hand-over (the verification line's boxing out-feed pushes a box
onto an aisle's inbound induct), base ``HANDOVER_BASE``: write +0 aisle,
+1..+8 barcode, +9 seq in one block; the PLC latches it when the seq changes
(a rewrite is a retry) and ignores a barcode already in the plant. Read +10
accepted seq.

Barcodes are 16 ASCII characters, two per register, high byte first, padded
with NUL; positions are unsigned centimetres, clamped to 0..65535.
"""

from __future__ import annotations

from enum import IntEnum

CRANE_BASE = 100
CRANE_STRIDE = 50
CONV_BASE = 400
CONV_STRIDE = 40
SCAN_BASE = 900
SCAN_OCCUPIED, SCAN_CODE = 3, 4
HANDOVER_BASE = 950
H_AISLE, H_CODE, H_SEQ, H_ACK_SEQ = 0, 1, 9, 10
REGISTER_COUNT = 1000
CODE_REGS = 8  # 16 chars, two per register

C_STATE, C_X, C_Y, C_FORK, C_CODE, C_FAULT, C_DONE_SEQ, C_DONE_RESULT, C_DOOR, C_ACK_SEQ = (
    0,
    1,
    2,
    3,
    4,
    12,
    13,
    14,
    15,
    16,
)
C_STATUS_REGS = C_ACK_SEQ + 1
C_CMD = 20
C_CMD_REGS = 5  # op, row, bay, level, seq
V_ZONES, V_EYES, V_MOTORS, V_READ_COUNT, V_READ_CODE = 0, 1, 2, 3, 4
V_MOTOR_CMD, V_REREAD = 20, 21
NOREAD = "NOREAD"  # what the induct reader reports for a box it could not read

# crane targets: row 0 is a transfer station, bay = aisle, level = which station
STATION_ROW = 0
STATION_IN = 1
STATION_OUT = 2

POSITION_UNITS_PER_M = 100  # position registers count centimetres


class CraneState(IntEnum):
    IDLE = 0
    MOVING = 1
    FORKING = 2
    FAULT = 3
    STOPPED = 4  # aisle door open or light curtain broken


class Op(IntEnum):
    PICK = 1
    PUT = 2
    MOVE = 3
    RESET = 4


class Result(IntEnum):
    OK = 0
    REFUSED_OCCUPIED = 1  # put: the fork's occupancy check found the target full
    REFUSED_EMPTY = 2  # pick: nothing there
    REFUSED_FORK = 3  # pick with a loaded fork, or put with an empty one
    ABORTED = 4  # fault, door or light curtain during the command
    BAD_TARGET = 5
    REFUSED_NOT_READY = 6  # command while in fault / stopped


class Fault(IntEnum):
    NONE = 0
    DRIVE = 1
    DOOR = 4


def crane_base(aisle: int) -> int:
    return CRANE_BASE + CRANE_STRIDE * (aisle - 1)


def conveyor_base(aisle: int, outbound: bool) -> int:
    return CONV_BASE + CONV_STRIDE * (2 * (aisle - 1) + (1 if outbound else 0))


def encode_code(text: str) -> list[int]:
    raw = text.encode("ascii", "replace")[: 2 * CODE_REGS].ljust(2 * CODE_REGS, b"\0")
    return [(raw[i] << 8) | raw[i + 1] for i in range(0, len(raw), 2)]


def decode_code(regs: list[int]) -> str:
    raw = b"".join(bytes(((r >> 8) & 0xFF, r & 0xFF)) for r in regs)
    return raw.rstrip(b"\0").decode("ascii", "replace")


def encode_position(metres: float) -> int:
    return max(0, min(0xFFFF, round(metres * POSITION_UNITS_PER_M)))


def decode_position(register: int) -> float:
    return register / POSITION_UNITS_PER_M
