"""OPC UA methods: argument validation, role checks and the seams to the runtime.

The runtime provides a :class:`CommandSink` (journal-then-send command records)
and an :class:`AlarmSource`; the server only validates, checks roles, enforces
select-before-operate and hands over. Later methods (verification batches,
warehouse orders) plug in with :class:`MethodSpec` the same way.

Result codes:
- wrong argument count → BadArgumentsMissing / BadTooManyArguments;
- wrong argument type → BadInvalidArgument (BadTypeMismatch in that argument's slot);
- a value outside its allowed set → BadInvalidArgument, outside its range or
  length → BadOutOfRange; the argument's slot carries the same code and a
  diagnostic text naming the argument and the allowed values;
- caller's role too low → BadUserAccessDenied, and nothing reaches the sink.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from asyncua import ua

from .config import Role
from .nodes import DT_DATETIME, DT_STRING, argument
from .users import GridUser, current_user

_log = logging.getLogger(__name__)
SC = ua.StatusCodes


# -- seams to the runtime ------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CommandRequest:
    """A command as the OPC UA server hands it to the runtime (which journals it)."""

    target: str  # object path, e.g. "loads/feeder1_l3"
    kind: str  # e.g. "trip"
    reason: str
    user: str
    role: str
    token: str  # the arm token: unique per command, usable as idempotency key
    armed_at: float  # epoch seconds
    source: str = "opcua"


class CommandRefused(Exception):
    """Raised by a sink when an interlock or the runtime refuses a command."""


@runtime_checkable
class CommandSink(Protocol):
    async def submit(self, request: CommandRequest) -> str:
        """Journal and queue the command; return its command id. May raise CommandRefused."""
        ...


@dataclass(frozen=True, slots=True)
class AlarmInfo:
    alarm_id: str
    source: str
    message: str
    severity: int  # 1..1000 as in OPC UA
    active: bool
    acknowledged: bool


@runtime_checkable
class AlarmSource(Protocol):
    def active_alarms(self) -> Sequence[AlarmInfo]: ...

    async def acknowledge(self, alarm_id: str, user: str, comment: str) -> None:
        """Acknowledge; raises KeyError for an unknown alarm id."""
        ...


# -- argument validation ---------------------------------------------------------
class MethodError(Exception):
    """A refused call: overall status, and optionally the argument it is about."""

    def __init__(self, code: int, message: str, arg_index: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.arg_index = arg_index


@dataclass(frozen=True, slots=True)
class Arg:
    name: str
    description: str
    choices: tuple[str, ...] = ()
    min_len: int = 0
    max_len: int = 256

    def check(self, index: int, variant: Any) -> str:
        value = variant.Value if isinstance(variant, ua.Variant) else variant
        if not isinstance(value, str):
            raise MethodError(
                SC.BadInvalidArgument,
                f"argument {self.name!r}: expected a String, got {type(value).__name__}",
                index,
            )
        if self.choices and value not in self.choices:
            raise MethodError(
                SC.BadInvalidArgument,
                f"argument {self.name!r}: {value!r} is not one of {', '.join(self.choices)}",
                index,
            )
        if not self.min_len <= len(value) <= self.max_len:
            raise MethodError(
                SC.BadOutOfRange,
                f"argument {self.name!r}: length {len(value)} outside "
                f"{self.min_len}..{self.max_len} characters",
                index,
            )
        return value

    def ua_argument(self) -> ua.Argument:
        desc = self.description
        if self.choices:
            desc += f" (one of: {', '.join(self.choices)})"
        return argument(self.name, DT_STRING, desc)


Handler = Callable[[str, GridUser, list[str]], Awaitable[list[ua.Variant]]]


@dataclass(slots=True)
class MethodSpec:
    name: str
    description: str
    role: Role
    inputs: tuple[Arg, ...]
    outputs: tuple[ua.Argument, ...]
    handler: Handler
    calls: int = 0
    refused: int = 0


def _result(code: int, n_args: int, err: MethodError | None = None) -> ua.CallMethodResult:
    res = ua.CallMethodResult()
    res.StatusCode = ua.StatusCode(code)
    res.InputArgumentResults = [ua.StatusCode() for _ in range(n_args)]
    if err is not None and err.arg_index is not None and err.arg_index < n_args:
        res.InputArgumentResults[err.arg_index] = ua.StatusCode(err.code)
        infos = [ua.DiagnosticInfo() for _ in range(n_args)]
        infos[err.arg_index] = ua.DiagnosticInfo(AdditionalInfo=err.message)
        res.InputArgumentDiagnosticInfos = infos
    return res


def bind(spec: MethodSpec, target: str) -> Callable[..., Awaitable[ua.CallMethodResult]]:
    """The asyncua callback for ``spec`` on the object at path ``target``."""

    async def call(_parent: ua.NodeId, *args: Any) -> ua.CallMethodResult:
        spec.calls += 1
        user = current_user.get()
        who = str(user) if user else "anonymous"
        n = len(args)
        try:
            if user is None or not user.allows(spec.role):
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
            outputs = await spec.handler(target, user, values)
        except MethodError as err:
            spec.refused += 1
            _log.warning("OPC UA %s on %s by %s refused: %s", spec.name, target, who, err.message)
            return _result(err.code, n, err)
        _log.info("OPC UA %s on %s by %s", spec.name, target, who)
        res = _result(SC.Good, n)
        res.OutputArguments = outputs
        return res

    return call


# -- select-before-operate ------------------------------------------------------------
@dataclass(slots=True)
class ArmToken:
    token: str
    target: str
    kind: str
    reason: str
    user: str
    role: str
    armed_at: float  # wall clock
    deadline: float  # monotonic
    used: bool = False


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


@dataclass(slots=True)
class ArmRegistry:
    """Arm tokens: single use, expire after ``timeout_s``, bound to user and target."""

    timeout_s: float
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    max_tokens: int = 10_000
    tokens: dict[str, ArmToken] = field(default_factory=dict)

    def arm(self, target: str, kind: str, reason: str, user: GridUser) -> ArmToken:
        now = self.clock()
        self._purge(now)
        if len(self.tokens) >= self.max_tokens:
            raise MethodError(SC.BadTooManyOperations, "too many armed commands pending")
        tok = ArmToken(
            token=secrets.token_urlsafe(16),
            target=target,
            kind=kind,
            reason=reason,
            user=user.name or "",
            role=user.grid_role.value if user.grid_role else "",
            armed_at=self.wall(),
            deadline=now + self.timeout_s,
        )
        self.tokens[tok.token] = tok
        return tok

    def take(self, token: str, target: str, user: GridUser, index: int = 0) -> ArmToken:
        now = self.clock()
        tok = self.tokens.get(token)
        if tok is None:
            raise MethodError(SC.BadInvalidArgument, "argument 'token': unknown arm token", index)
        if tok.used:
            raise MethodError(SC.BadInvalidState, "argument 'token': already executed", index)
        if tok.target != target:
            raise MethodError(
                SC.BadInvalidArgument,
                f"argument 'token': armed for {tok.target}, not {target}",
                index,
            )
        if tok.user != (user.name or ""):
            raise MethodError(
                SC.BadUserAccessDenied, "argument 'token': armed by another user", index
            )
        if now > tok.deadline:
            del self.tokens[token]
            raise MethodError(
                SC.BadTimeout,
                f"argument 'token': expired (armed {self.timeout_s:g} s limit)",
                index,
            )
        tok.used = True
        return tok

    def _purge(self, now: float) -> None:
        # Used tokens are kept until their deadline so a replay reads "already executed".
        for key in [k for k, t in self.tokens.items() if now > t.deadline]:
            del self.tokens[key]


def load_methods(sink: CommandSink | None, arms: ArmRegistry) -> list[MethodSpec]:
    """Arm/Execute on LoadType instances (select-before-operate)."""

    async def arm(target: str, user: GridUser, values: list[str]) -> list[ua.Variant]:
        kind, reason = values
        needed = LOAD_KINDS[kind]
        if not user.allows(needed):
            raise MethodError(SC.BadUserAccessDenied, f"{kind} needs role {needed.value}")
        if sink is None:
            raise MethodError(SC.BadNotSupported, "commands are not available on this server")
        tok = arms.arm(target, kind, reason, user)
        expires = datetime.fromtimestamp(tok.armed_at + arms.timeout_s, UTC)
        return [
            ua.Variant(tok.token, ua.VariantType.String),
            ua.Variant(expires, ua.VariantType.DateTime),
        ]

    async def execute(target: str, user: GridUser, values: list[str]) -> list[ua.Variant]:
        if sink is None:
            raise MethodError(SC.BadNotSupported, "commands are not available on this server")
        tok = arms.take(values[0], target, user)
        request = CommandRequest(
            target=target,
            kind=tok.kind,
            reason=tok.reason,
            user=tok.user,
            role=tok.role,
            token=tok.token,
            armed_at=tok.armed_at,
        )
        try:
            command_id = await sink.submit(request)
        except CommandRefused as exc:
            raise MethodError(SC.BadInvalidState, f"refused: {exc}") from None
        return [ua.Variant(str(command_id), ua.VariantType.String)]

    return [
        MethodSpec(
            "Arm",
            "select a command; returns a single-use token to Execute before it expires",
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
            "operate the command selected by Arm",
            Role.OPERATOR,
            (Arg("token", "token returned by Arm", min_len=1, max_len=64),),
            (argument("command_id", DT_STRING, "id of the journalled command record"),),
            execute,
        ),
    ]


def alarm_methods(alarms: AlarmSource) -> list[MethodSpec]:
    async def acknowledge(_target: str, user: GridUser, values: list[str]) -> list[ua.Variant]:
        alarm_id, comment = values
        try:
            await alarms.acknowledge(alarm_id, user.name or "", comment)
        except KeyError:
            raise MethodError(
                SC.BadInvalidArgument, f"argument 'alarm_id': no alarm {alarm_id!r}", 0
            ) from None
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
        )
    ]
