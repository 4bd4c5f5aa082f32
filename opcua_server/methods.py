"""OPC UA methods: argument validation, role checks and the seams to the runtime.

The runtime provides a ``controller.api.CommandSink`` (journal-then-send command
records, select-before-operate kept in its journal) and an :class:`AlarmSource`;
the server only decodes and validates arguments, checks roles, hands over, and
maps a ``CommandRefused`` reason code to the status code (:data:`REFUSAL_STATUS`). Later methods (verification batches,
warehouse orders) plug in with :class:`MethodSpec` the same way.

Result codes:
- wrong argument count → BadArgumentsMissing / BadTooManyArguments;
- wrong argument type → BadInvalidArgument (BadTypeMismatch in that argument's slot);
- a value outside its allowed set → BadInvalidArgument, outside its range or
  length → BadOutOfRange; the argument's slot carries the same code and a
  diagnostic text naming the argument and the allowed values;
- caller's role too low → BadUserAccessDenied, and nothing reaches the sink;
- refused by the controller → the status code of its reason (busy → BadLocked,
  interlock → BadInvalidState, not_armed → BadNoEntryExists, expired → BadTimeout …).
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol, cast, runtime_checkable

from asyncua import ua

from controller.api import WRITE_SETPOINT as WRITE_SETPOINT
from controller.api import (
    ArmRequest,
    CommandRefused,
    CommandRequest,
    CommandSink,
    ExecuteRequest,
    RefusalReason,
    SelectBeforeOperate,
)
from opcua_server.ua_values import status_code

from .config import Role
from .nodes import DT_DATETIME, DT_DOUBLE, DT_STRING, DT_UINT32, argument
from .users import ANONYMOUS, GridUser, current_user

_log = logging.getLogger(__name__)
SC = ua.StatusCodes


# -- the alarm seam (commands: controller.api) ---------------------------------------
@dataclass(frozen=True, slots=True)
class AlarmInfo:
    alarm_id: str
    source: str
    message: str
    severity: int  # 1..1000 as in OPC UA
    active: bool
    acknowledged: bool
    shelved: bool = False
    time: float | None = None  # epoch seconds of the last state change
    condition: str = ""  # e.g. "over_temperature"; picks the A&C event type
    acked_by: str = ""
    comment: str = ""


@runtime_checkable
class AlarmSource(Protocol):
    def active_alarms(self) -> Sequence[AlarmInfo]:
        """Every alarm an operator must see: active or not yet acknowledged (shelved included)."""
        ...

    async def acknowledge(self, alarm_id: str, user: str, comment: str) -> None:
        """Acknowledge; raises KeyError for an unknown alarm id (ValueError: nothing to ack)."""
        ...


@runtime_checkable
class AlarmShelving(Protocol):
    """Optional AlarmSource extension."""

    async def shelve(self, alarm_id: str, user: str, duration_s: float, comment: str) -> None:
        """Shelve for ``duration_s``; KeyError for an unknown id, ValueError when refused."""
        ...


# -- argument validation ---------------------------------------------------------
class MethodError(Exception):
    """A refused call: overall status, and optionally the argument it is about."""

    def __init__(self, code: int, message: str, arg_index: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.arg_index = arg_index


class ArgType(StrEnum):
    STRING = "String"
    DOUBLE = "Double"
    UINT32 = "UInt32"
    STRINGS = "String[]"


_ARG_DATATYPE = {
    ArgType.STRING: DT_STRING,
    ArgType.DOUBLE: DT_DOUBLE,
    ArgType.UINT32: DT_UINT32,
    ArgType.STRINGS: DT_STRING,
}


@dataclass(frozen=True, slots=True)
class Arg:
    """One input argument: its OPC UA type and what values it allows.

    Numbers also arrive as numeric Strings (clients that only send strings,
    e.g. a simple HMI); anything else of the wrong type is BadInvalidArgument.
    """

    name: str
    description: str
    choices: tuple[str, ...] = ()
    min_len: int = 0
    max_len: int = 256
    type: ArgType = ArgType.STRING
    minimum: float | None = None  # numbers: inclusive range
    maximum: float | None = None
    exclusive_minimum: bool = False
    unit: str = ""
    pattern: str = ""  # strings and string items: full match
    min_items: int = 1  # arrays
    max_items: int = 1000

    def _fail(self, code: int, text: str, index: int) -> MethodError:
        return MethodError(code, f"argument {self.name!r}: {text}", index)

    def check(self, index: int, variant: Any) -> Any:
        value = variant.Value if isinstance(variant, ua.Variant) else variant
        if self.type is ArgType.STRING:
            return self._string(index, value)
        if self.type is ArgType.STRINGS:
            return self._strings(index, value)
        return self._number(index, value)

    def _string(self, index: int, value: Any, what: str = "") -> str:
        if not isinstance(value, str):
            raise self._fail(
                SC.BadInvalidArgument,
                f"{what}expected a String, got {type(value).__name__}",
                index,
            )
        if self.choices and value not in self.choices:
            raise self._fail(
                SC.BadInvalidArgument,
                f"{what}{value!r} is not one of {', '.join(self.choices)}",
                index,
            )
        if not self.min_len <= len(value) <= self.max_len:
            raise self._fail(
                SC.BadOutOfRange,
                f"{what}length {len(value)} outside {self.min_len}..{self.max_len} characters",
                index,
            )
        if self.pattern and not re.fullmatch(self.pattern, value):
            raise self._fail(
                SC.BadInvalidArgument, f"{what}{value!r} does not match {self.pattern}", index
            )
        return value

    def _strings(self, index: int, value: Any) -> list[str]:
        if isinstance(value, str):  # a string-only client: comma separated
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise self._fail(
                SC.BadInvalidArgument,
                f"expected an array of String, got {type(value).__name__}",
                index,
            )
        if not self.min_items <= len(value) <= self.max_items:
            raise self._fail(
                SC.BadOutOfRange,
                f"{len(value)} items outside {self.min_items}..{self.max_items}",
                index,
            )
        out = [self._string(index, v, f"item {i}: ") for i, v in enumerate(value)]
        seen: set[str] = set()
        for v in out:
            if v in seen:
                raise self._fail(SC.BadInvalidArgument, f"{v!r} is listed twice", index)
            seen.add(v)
        return out

    def _number(self, index: int, value: Any) -> float | int:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise self._fail(
                    SC.BadInvalidArgument, f"{value!r} is not a number", index
                ) from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(
                SC.BadInvalidArgument,
                f"expected a {self.type.value}, got {type(value).__name__}",
                index,
            )
        if not math.isfinite(value):
            raise self._fail(SC.BadInvalidArgument, f"{value} is not a finite number", index)
        if self.type is ArgType.UINT32:
            if value != int(value):
                raise self._fail(SC.BadInvalidArgument, f"{value} is not a whole number", index)
            value = int(value)
        lo, hi = self.minimum, self.maximum
        low_bad = lo is not None and (value <= lo if self.exclusive_minimum else value < lo)
        if low_bad or (hi is not None and value > hi):
            raise self._fail(SC.BadOutOfRange, f"{value:g} outside {self.range_text()}", index)
        return value

    def range_text(self) -> str:
        lo = "" if self.minimum is None else f"{self.minimum:g}"
        hi = "" if self.maximum is None else f"{self.maximum:g}"
        text = f"{'>' if self.exclusive_minimum else ''}{lo}..{hi}"
        return f"{text} {self.unit}".rstrip()

    def ua_argument(self) -> ua.Argument:
        desc = self.description
        if self.choices:
            desc += f" (one of: {', '.join(self.choices)})"
        if self.type in (ArgType.DOUBLE, ArgType.UINT32):
            desc += f" (range {self.range_text()})"
        arg = argument(self.name, _ARG_DATATYPE[self.type], desc)
        if self.type is ArgType.STRINGS:
            arg.ValueRank = 1
            arg.ArrayDimensions = [0]
        return arg


Handler = Callable[[str, GridUser, list[Any]], Awaitable[list[ua.Variant]]]
# (method name, target, user, arguments, status code, message, outputs) after every call
AuditHook = Callable[[str, str, GridUser | None, list[Any], int, str, list[Any]], Awaitable[None]]


@dataclass(slots=True)
class MethodSpec:
    name: str
    description: str
    role: Role | None  # None: any session, anonymous included
    inputs: tuple[Arg, ...]
    outputs: tuple[ua.Argument, ...]
    handler: Handler
    calls: int = 0
    refused: int = 0
    audited: bool = True  # read-only methods (WhoAmI) are not audited


def _result(code: int, n_args: int, err: MethodError | None = None) -> ua.CallMethodResult:
    res = ua.CallMethodResult()
    res.StatusCode = status_code(code)
    res.InputArgumentResults = [ua.StatusCode() for _ in range(n_args)]
    if err is not None and err.arg_index is not None and err.arg_index < n_args:
        res.InputArgumentResults[err.arg_index] = status_code(err.code)
        infos = [ua.DiagnosticInfo() for _ in range(n_args)]
        infos[err.arg_index] = ua.DiagnosticInfo(AdditionalInfo=cast(ua.String, err.message))
        res.InputArgumentDiagnosticInfos = infos
    elif err is not None and n_args:
        # A refusal of the whole call (e.g. busy: who holds the load, until when) has no
        # other place in a CallMethodResult: its text rides on the first argument's
        # diagnostic while that argument's own result stays Good.
        infos = [ua.DiagnosticInfo() for _ in range(n_args)]
        infos[0] = ua.DiagnosticInfo(AdditionalInfo=cast(ua.String, err.message))
        res.InputArgumentDiagnosticInfos = infos
    return res


def bind(
    spec: MethodSpec, target: str, audit: AuditHook | None = None
) -> Callable[..., Awaitable[ua.CallMethodResult]]:
    """The asyncua callback for ``spec`` on the object at path ``target``."""

    async def call(_parent: ua.NodeId, *args: Any) -> ua.CallMethodResult:
        spec.calls += 1
        user = current_user.get()
        who = str(user) if user else "anonymous"
        n = len(args)
        raw = [a.Value if isinstance(a, ua.Variant) else a for a in args]
        try:
            if spec.role is not None and (user is None or not user.allows(spec.role)):
                raise MethodError(
                    SC.BadUserAccessDenied, f"{spec.name} needs role {spec.role.value}"
                )
            if n < len(spec.inputs):
                raise MethodError(
                    SC.BadArgumentsMissing,
                    f"{spec.name} takes {len(spec.inputs)} arguments "
                    f"({', '.join(a.name for a in spec.inputs)}), got {n}",
                )
            if n > len(spec.inputs):
                raise MethodError(SC.BadTooManyArguments, f"{spec.name}: too many arguments ({n})")
            values = [a.check(i, v) for i, (a, v) in enumerate(zip(spec.inputs, args, strict=True))]
            outputs = await spec.handler(target, user or ANONYMOUS, values)
        except MethodError as err:
            spec.refused += 1
            _log.warning("OPC UA %s on %s by %s refused: %s", spec.name, target, who, err.message)
            if audit is not None and spec.audited:
                await audit(spec.name, target, user, raw, err.code, err.message, [])
            return _result(err.code, n, err)
        _log.info("OPC UA %s on %s by %s", spec.name, target, who)
        if audit is not None and spec.audited:
            await audit(spec.name, target, user, raw, SC.Good, "", [o.Value for o in outputs])
        res = _result(SC.Good, n)
        res.OutputArguments = outputs
        return res

    return call


# -- select-before-operate ------------------------------------------------------------
# The selection is the controller's (an ``armed`` command record in its journal);
# this side checks the role per kind and maps the refusal.
LOAD_KINDS: dict[str, Role] = {
    "trip": Role.OPERATOR,
    "close_allowed": Role.OPERATOR,
    "close_direct": Role.OPERATOR,
    "alarm_on": Role.OPERATOR,
    "alarm_off": Role.OPERATOR,
    # keep-power blocks every automatic trip: an engineering decision.
    "keep_power_on": Role.ENGINEER,
    "keep_power_off": Role.ENGINEER,
}

# A refusal's reason code → the method's status code.
REFUSAL_STATUS: dict[RefusalReason, int] = {
    RefusalReason.BAD_ARGUMENT: SC.BadInvalidArgument,
    RefusalReason.NOT_PERMITTED: SC.BadUserAccessDenied,
    RefusalReason.NOT_SUPPORTED: SC.BadNotSupported,
    RefusalReason.UNKNOWN_TARGET: SC.BadNotFound,
    RefusalReason.BUSY: SC.BadLocked,
    RefusalReason.INTERLOCK: SC.BadInvalidState,
    RefusalReason.INVALID_STATE: SC.BadInvalidState,
    RefusalReason.NOT_ARMED: SC.BadNoEntryExists,
    RefusalReason.EXPIRED: SC.BadTimeout,
    RefusalReason.SERVICE_STOPPING: SC.BadShutdown,
    RefusalReason.UNAVAILABLE: SC.BadResourceUnavailable,
}


def refused(exc: CommandRefused, arg_index: int | None = None) -> MethodError:
    """The method error of a refusal: its reason's status code, its message."""
    return MethodError(
        REFUSAL_STATUS[exc.reason], f"refused ({exc.reason.value}): {exc.message}", arg_index
    )


def load_methods(sink: CommandSink | None) -> list[MethodSpec]:
    """Arm/Execute on LoadType instances (select-before-operate, kept by the controller)."""

    def selecting() -> SelectBeforeOperate:
        if sink is None or not isinstance(sink, SelectBeforeOperate):
            raise MethodError(SC.BadNotSupported, "commands are not available on this server")
        return sink

    async def arm(target: str, user: GridUser, values: list[Any]) -> list[ua.Variant]:
        kind, reason = values
        needed = LOAD_KINDS[kind]
        if not user.allows(needed):
            raise MethodError(SC.BadUserAccessDenied, f"{kind} needs role {needed.value}")
        request = ArmRequest(
            target=target,
            kind=kind,
            reason=reason,
            user=user.name or "",
            role=user.grid_role.value if user.grid_role else "",
        )
        try:
            selection = await selecting().arm(request)
        except CommandRefused as exc:
            raise refused(exc) from None
        return [
            ua.Variant(selection.token, ua.VariantType.String),
            ua.Variant(datetime.fromtimestamp(selection.expires_at, UTC), ua.VariantType.DateTime),
        ]

    async def execute(target: str, user: GridUser, values: list[Any]) -> list[ua.Variant]:
        request = ExecuteRequest(target=target, token=values[0], user=user.name or "")
        try:
            selection = await selecting().execute(request)
        except CommandRefused as exc:
            token_slot = exc.reason in (RefusalReason.NOT_ARMED, RefusalReason.EXPIRED)
            raise refused(exc, 0 if token_slot else None) from None
        return [ua.Variant(selection.token, ua.VariantType.String)]

    return [
        MethodSpec(
            "Arm",
            "select a command: reserves the load for you until the returned expiry",
            Role.OPERATOR,
            (
                Arg("kind", "command", choices=tuple(LOAD_KINDS)),
                Arg("reason", "why (audited)", min_len=1, max_len=200),
            ),
            (
                argument("token", DT_STRING, "arm token for Execute"),
                argument("expires", DT_DATETIME, "Execute must come before this time"),
            ),
            arm,
        ),
        MethodSpec(
            "Execute",
            "operate the command selected by Arm (the same user, before it expires)",
            Role.OPERATOR,
            (Arg("token", "token returned by Arm", min_len=1, max_len=64),),
            (argument("command_id", DT_STRING, "id of the journalled command record"),),
            execute,
        ),
    ]


async def submit(sink: CommandSink, request: CommandRequest) -> str:
    """Hand a validated, role-checked request to the sink; map its refusals to status codes."""
    try:
        command_id = await sink.submit(request)
    except CommandRefused as exc:
        raise refused(exc) from None
    return str(command_id)


REASON = Arg("reason", "why (audited with the user and time)", min_len=1, max_len=200)
COMMAND_ID_OUT = argument("command_id", DT_STRING, "id of the journalled command record")
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.:-]*"

# Warehouse order kinds (DESIGN §6 Warehouse).
ORDER_KINDS = (
    "inbound",
    "outbound_verification",
    "qualified_return",
    "distribution_outbound",
    "rejected_outbound",
    "inventory_count",
    "relocation",
)


@dataclass(frozen=True, slots=True)
class CommandMethod:
    """A method that validates its arguments and hands one command to the sink."""

    name: str
    kind: str  # CommandRequest.kind
    description: str
    role: Role
    inputs: tuple[Arg, ...]  # the last one is always REASON


COMMAND_METHODS: dict[str, tuple[CommandMethod, ...]] = {
    "GroupType": (
        CommandMethod(
            "SetDemandLimit",
            "set_demand_limit",
            "set the group's demand limit (sliding-window average active power)",
            Role.ENGINEER,
            (
                Arg(
                    "limit_kw",
                    "demand limit",
                    type=ArgType.DOUBLE,
                    minimum=0.0,
                    maximum=1_000_000.0,
                    exclusive_minimum=True,
                    unit="kW",
                ),
                REASON,
            ),
        ),
        CommandMethod(
            "ClearDemandLimit",
            "clear_demand_limit",
            "end a SetDemandLimit override: the time-of-day or configured limit applies again",
            Role.ENGINEER,
            (REASON,),
        ),
    ),
    "LoadType": (
        CommandMethod(
            "Recharge",
            "recharge",
            "record a prepaid purchase for this load's customer",
            Role.OPERATOR,
            (
                Arg(
                    "amount",
                    "purchase amount",
                    type=ArgType.DOUBLE,
                    minimum=0.0,
                    maximum=100_000.0,
                    exclusive_minimum=True,
                    unit="yuan",
                ),
                REASON,
            ),
        ),
    ),
    "VerificationLineType": (
        CommandMethod(
            "StartBatch",
            "start_batch",
            "start a verification batch of the given meters with a test scheme",
            Role.OPERATOR,
            (
                Arg("scheme", "test scheme name", min_len=1, max_len=64, pattern=ID_PATTERN),
                Arg(
                    "meters",
                    "meter addresses or barcodes",
                    type=ArgType.STRINGS,
                    min_len=1,
                    max_len=32,
                    pattern=ID_PATTERN,
                    min_items=1,
                    max_items=1000,
                ),
                REASON,
            ),
        ),
        CommandMethod(
            "AbortBatch",
            "abort_batch",
            "abort a running verification batch (stations go to their safe state)",
            Role.OPERATOR,
            (
                Arg("batch_id", "id of the batch", min_len=1, max_len=64, pattern=ID_PATTERN),
                REASON,
            ),
        ),
    ),
    "WarehouseType": (
        CommandMethod(
            "CreateOrder",
            "create_order",
            "create a warehouse order",
            Role.OPERATOR,
            (
                Arg("kind", "order kind", choices=ORDER_KINDS),
                Arg(
                    "items",
                    "meter barcodes, box ids or slots the order covers",
                    type=ArgType.STRINGS,
                    min_len=1,
                    max_len=64,
                    pattern=ID_PATTERN,
                    min_items=1,
                    max_items=5000,
                ),
                REASON,
            ),
        ),
        CommandMethod(
            "CancelOrder",
            "cancel_order",
            "cancel a warehouse order that has not completed",
            Role.OPERATOR,
            (
                Arg("order_id", "id of the order", min_len=1, max_len=64, pattern=ID_PATTERN),
                REASON,
            ),
        ),
    ),
}


def command_methods(
    sink: CommandSink | None, type_name: str, clock: Callable[[], float] = time.time
) -> list[MethodSpec]:
    """The sink-backed methods of instances of ``type_name`` (none for other types)."""
    specs = []
    for cm in COMMAND_METHODS.get(type_name, ()):

        async def handler(
            target: str, user: GridUser, values: list[Any], cm: CommandMethod = cm
        ) -> list[ua.Variant]:
            if sink is None:
                raise MethodError(SC.BadNotSupported, "commands are not available on this server")
            *args, reason = values
            request = CommandRequest(
                target=target,
                kind=cm.kind,
                reason=reason,
                user=user.name or "",
                role=user.grid_role.value if user.grid_role else "",
                token=secrets.token_urlsafe(16),
                armed_at=clock(),
                args={a.name: v for a, v in zip(cm.inputs, args, strict=False)},
            )
            return [ua.Variant(await submit(sink, request), ua.VariantType.String)]

        specs.append(
            MethodSpec(
                cm.name,
                cm.description,
                cm.role,
                cm.inputs,
                (COMMAND_ID_OUT,),
                handler,
            )
        )
    return specs


def setpoint_writer(
    sink: CommandSink, clock: Callable[[], float] = time.time
) -> Callable[[str, Any, GridUser], Awaitable[None]]:
    """OPC UA Writes to setpoints as command records: ``args = {"value": value}``.

    The address space is not changed: the device's read-back reaches it
    through the process image. Refusals raise MethodError (status codes as for
    methods)."""

    async def write(target: str, value: Any, user: GridUser) -> None:
        request = CommandRequest(
            target=target,
            kind=WRITE_SETPOINT,
            reason="OPC UA Write",
            user=user.name or "",
            role=user.grid_role.value if user.grid_role else "",
            token=secrets.token_urlsafe(16),
            armed_at=clock(),
            args={"value": value},
        )
        await submit(sink, request)

    return write


def whoami_method() -> MethodSpec:
    async def whoami(_target: str, user: GridUser, _values: list[Any]) -> list[ua.Variant]:
        role = user.grid_role.value if user.grid_role else "anonymous"
        return [
            ua.Variant(user.name or "anonymous", ua.VariantType.String),
            ua.Variant(role, ua.VariantType.String),
        ]

    return MethodSpec(
        "WhoAmI",
        "the calling session's user and role",
        None,
        (),
        (
            argument("user", DT_STRING, "user name (anonymous for anonymous sessions)"),
            argument("role", DT_STRING, "viewer, operator, engineer, admin or anonymous"),
        ),
        whoami,
        audited=False,
    )


MAX_SHELVE_S = 24 * 3600.0


def alarm_methods(alarms: AlarmSource) -> list[MethodSpec]:
    async def acknowledge(_target: str, user: GridUser, values: list[Any]) -> list[ua.Variant]:
        alarm_id, comment = values
        try:
            await alarms.acknowledge(alarm_id, user.name or "", comment)
        except KeyError:
            raise MethodError(
                SC.BadInvalidArgument, f"argument 'alarm_id': no alarm {alarm_id!r}", 0
            ) from None
        except ValueError as exc:
            raise MethodError(SC.BadInvalidState, f"alarm {alarm_id!r}: {exc}") from None
        return []

    async def shelve(_target: str, user: GridUser, values: list[Any]) -> list[ua.Variant]:
        alarm_id, duration_s, comment = values
        if not isinstance(alarms, AlarmShelving):
            raise MethodError(SC.BadNotSupported, "shelving is not available on this server")
        try:
            await alarms.shelve(alarm_id, user.name or "", float(duration_s), comment)
        except KeyError:
            raise MethodError(
                SC.BadInvalidArgument, f"argument 'alarm_id': no alarm {alarm_id!r}", 0
            ) from None
        except ValueError as exc:
            raise MethodError(SC.BadInvalidState, f"alarm {alarm_id!r}: {exc}") from None
        return []

    return [
        MethodSpec(
            "Acknowledge",
            "acknowledge an alarm with a comment (audited)",
            Role.OPERATOR,
            (
                Arg("alarm_id", "id of the alarm", min_len=1, max_len=128),
                Arg("comment", "operator comment", min_len=0, max_len=500),
            ),
            (),
            acknowledge,
        ),
        MethodSpec(
            "Shelve",
            "suppress an alarm's annunciation for a time (audited; it keeps being evaluated)",
            Role.OPERATOR,
            (
                Arg("alarm_id", "id of the alarm", min_len=1, max_len=128),
                Arg(
                    "duration_s",
                    "how long",
                    type=ArgType.DOUBLE,
                    minimum=0.0,
                    maximum=MAX_SHELVE_S,
                    exclusive_minimum=True,
                    unit="s",
                ),
                Arg("comment", "why (required)", min_len=1, max_len=500),
            ),
            (),
            shelve,
        ),
    ]
