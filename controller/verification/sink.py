"""Commands for the verification line, as the OPC UA server (or a CLI) hands them over.

The command router sends every request whose target starts with ``line/`` to
:class:`LineCommandSink`. Two kinds:

``start_batch``
    ``args = {"scheme": NAME, "meters": M}`` (OPC UA ``StartBatch(scheme,
    meters, reason)``). ``NAME`` is a scheme's ``name`` (``class1-single-phase``)
    or its file stem under ``scheme_dir`` (``class1_single_phase``). ``M`` is the
    meters, as a list of strings (OPC UA String[]), a JSON array or a comma or
    space separated string: each a barcode, or a 12-digit meter address (then
    also its barcode), or ``{"barcode": ..., "address": ...}``. A count instead
    (an int, or a single item of at most three digits, e.g. ``["12"]``) asks the
    simulated rig for that many demo meters. The id returned is the command id,
    which is also the batch id (``gridctl results export BATCH``).
``abort_batch``
    ``args = {"batch_id": ID}`` (OPC UA ``AbortBatch(batch_id, reason)``; may
    be omitted: the running batch). Sources off, running items recorded as
    interrupted; the batch does not resume by itself.

``args`` may also arrive as a JSON object in a string. Invalid arguments are
refused with a message naming the argument and the allowed values, and change
nothing (nothing is journaled); a valid command the line cannot take now (a
batch is already running, none is running) is journaled as ``refused``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from controller.api import CommandRefused, RefusalReason
from controller.verification.scheme import Scheme
from controller.verification.sequencer import MeterTask

if TYPE_CHECKING:  # pragma: no cover
    from controller.api import CommandRequest

START_BATCH = "start_batch"
ABORT_BATCH = "abort_batch"
KINDS = (START_BATCH, ABORT_BATCH)

BARCODE = re.compile(r"^[A-Za-z0-9_.:-]{1,32}$")
COUNT = re.compile(r"^[0-9]{1,3}$")
ADDRESS = re.compile(r"^[0-9]{12}$")


class Line(Protocol):
    """What the sink needs from the line (``VerificationLineSubsystem``)."""

    @property
    def schemes(self) -> Mapping[str, Scheme]:  # by name and by file stem
        ...

    @property
    def stations(self) -> int: ...

    async def start_batch(self, request: Any, batch_id: str, batch: BatchRequest) -> str: ...

    async def abort_batch(self, request: Any, batch_id: str) -> str: ...

    def command_state(self, command_id: str) -> tuple[str, str] | None: ...


@dataclass(frozen=True, slots=True)
class BatchRequest:
    scheme: Scheme
    meters: list[MeterTask]
    generated: bool  # True: a count was given; the simulated rig brings demo meters

    def args(self, batch_id: str, meter_type: str) -> dict[str, Any]:
        """The command's journaled arguments."""
        return {
            "batch": batch_id,
            "scheme": self.scheme.name,
            "scheme_version": self.scheme.version,
            "meter_type": meter_type,
            "meters": [[m.barcode, m.address] for m in self.meters],
        }


def request_args(request: Any) -> dict[str, Any]:
    """``request.args`` as a dict (a mapping, or a JSON object in a string)."""
    raw = getattr(request, "args", None)
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise CommandRefused(
                RefusalReason.BAD_ARGUMENT, f"args: not a JSON object ({exc})"
            ) from None
    if not isinstance(raw, Mapping):
        raise CommandRefused(
            RefusalReason.BAD_ARGUMENT,
            f"args: must be an object of named arguments (got {type(raw).__name__})",
        )
    return dict(raw)


def address_for(barcode: str) -> str:
    """A stable 12-digit DL/T 645 address for a meter known only by its barcode (simulated rig)."""
    return f"{int.from_bytes(hashlib.sha256(barcode.encode()).digest()[:8], 'big') % 10**12:012d}"


def batch_id_for(request: Any) -> str:
    """The batch id (and command id) of a start request: its time and token, so a retry of
    the same request names the same batch."""
    at = getattr(request, "armed_at", 0.0) or time.time()
    token = getattr(request, "token", "") or uuid.uuid4().hex
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(at))
    return f"VB{stamp}-{hashlib.sha256(token.encode()).hexdigest()[:4]}"


def find_scheme(schemes: Mapping[str, Scheme], value: Any) -> Scheme:
    names = sorted({s.name for s in schemes.values()})
    if not isinstance(value, str) or not value.strip():
        raise CommandRefused(
            RefusalReason.BAD_ARGUMENT,
            f"scheme: required, one of {', '.join(names) or 'none configured'}",
        )
    scheme = schemes.get(value.strip())
    if scheme is None:
        raise CommandRefused(
            RefusalReason.BAD_ARGUMENT,
            f"scheme: unknown {value!r}; one of {', '.join(names) or 'none configured'}",
        )
    return scheme


def parse_meters(value: Any, stations: int, batch_id: str) -> tuple[list[MeterTask], bool]:
    """The ``meters`` argument: a count or barcodes. Returns (meters, generated)."""
    allowed = f"a count 1..{stations} or 1..{stations} barcodes"
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise CommandRefused(RefusalReason.BAD_ARGUMENT, f"meters: required, {allowed}")
        if COUNT.match(text):
            value = int(text)
        elif text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise CommandRefused(
                    RefusalReason.BAD_ARGUMENT, f"meters: not a JSON array ({exc}); {allowed}"
                ) from None
        else:
            value = [part for part in re.split(r"[\s,;]+", text) if part]
    if (
        isinstance(value, list)
        and len(value) == 1
        and isinstance(value[0], str)
        and COUNT.match(value[0].strip())
    ):
        value = int(value[0])  # OPC UA String[] ["12"]: a count
    if isinstance(value, bool) or value is None:
        raise CommandRefused(
            RefusalReason.BAD_ARGUMENT, f"meters: required, {allowed} (got {value!r})"
        )
    if isinstance(value, int):
        if not 1 <= value <= stations:
            raise CommandRefused(
                RefusalReason.BAD_ARGUMENT,
                f"meters: {value} meters, but the line has {stations} stations (allowed 1..{stations})",
            )
        return [
            MeterTask(code, address_for(code))
            for code in (f"{batch_id}-{n:02d}" for n in range(1, value + 1))
        ], True
    if not isinstance(value, list):
        raise CommandRefused(
            RefusalReason.BAD_ARGUMENT, f"meters: {allowed} (got {type(value).__name__})"
        )
    if not 1 <= len(value) <= stations:
        raise CommandRefused(
            RefusalReason.BAD_ARGUMENT,
            f"meters: {len(value)} barcodes, but the line has {stations} stations "
            f"(allowed 1..{stations})",
        )
    out: list[MeterTask] = []
    seen: set[str] = set()
    for n, item in enumerate(value):
        if isinstance(item, Mapping):
            barcode, address = item.get("barcode"), item.get("address")
        else:
            barcode, address = item, None
        if not isinstance(barcode, str) or not BARCODE.match(barcode):
            raise CommandRefused(
                RefusalReason.BAD_ARGUMENT,
                f"meters[{n}]: barcode must be 1..32 characters of A-Z a-z 0-9 _ . : - "
                f"(got {barcode!r})",
            )
        if barcode in seen:
            raise CommandRefused(
                RefusalReason.BAD_ARGUMENT, f"meters[{n}]: barcode {barcode!r} appears twice"
            )
        seen.add(barcode)
        if address is None:
            address = barcode if ADDRESS.match(barcode) else address_for(barcode)
        elif not isinstance(address, str) or not ADDRESS.match(address):
            raise CommandRefused(
                RefusalReason.BAD_ARGUMENT,
                f"meters[{n}].address: must be 12 digits (got {address!r})",
            )
        out.append(MeterTask(barcode, address))
    return out, False


class LineCommandSink:
    """The ``line/`` branch's command sink (see the module docstring for the arguments)."""

    def __init__(self, line: Line) -> None:
        self.line = line

    async def submit(self, request: CommandRequest) -> str:
        if request.kind == START_BATCH:
            args = request_args(request)
            unknown = sorted(set(args) - {"scheme", "meters"})
            if unknown:
                raise CommandRefused(
                    RefusalReason.BAD_ARGUMENT,
                    f"args: unknown {', '.join(unknown)}; StartBatch takes scheme and meters",
                )
            batch_id = batch_id_for(request)
            scheme = find_scheme(self.line.schemes, args.get("scheme"))
            meters, generated = parse_meters(args.get("meters"), self.line.stations, batch_id)
            return await self.line.start_batch(
                request, batch_id, BatchRequest(scheme, meters, generated)
            )
        if request.kind == ABORT_BATCH:
            args = request_args(request)
            unknown = sorted(set(args) - {"batch_id"})
            if unknown:
                raise CommandRefused(
                    RefusalReason.BAD_ARGUMENT,
                    f"args: unknown {', '.join(unknown)}; AbortBatch takes batch_id",
                )
            batch = args.get("batch_id", "")
            if not isinstance(batch, str):
                raise CommandRefused(
                    RefusalReason.BAD_ARGUMENT,
                    f"batch_id: must be a batch id string (got {batch!r})",
                )
            return await self.line.abort_batch(request, batch)
        raise CommandRefused(
            RefusalReason.BAD_ARGUMENT,
            f"kind: the verification line takes {' or '.join(KINDS)} (got {request.kind!r})",
        )

    def command_state(self, command_id: str) -> tuple[str, str] | None:
        return self.line.command_state(command_id)
