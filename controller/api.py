"""The command seam: what an operator interface hands the controller, and how it is refused.

Base layer: the controller's subsystems implement these protocols and the
publishers (OPC UA server, HMI) call them; neither side imports the other.

- :class:`CommandRequest` — one command (method call, setpoint write) for a target;
- :class:`CommandSink` — takes a request, journals it, returns its command id;
- :class:`SelectBeforeOperate` — Arm (a journaled ``armed`` command record that
  reserves its target for one user until it expires) and Execute (the same
  user, before the expiry);
- :class:`CommandRefused` — the one refusal, with a :class:`RefusalReason`
  code (publishers map it, e.g. to an OPC UA status code) and a message that
  names the field and, for a bad value, the allowed range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

# CommandRequest.kind of an operator's write to a setpoint (``args = {"value": value}``)
WRITE_SETPOINT = "write_setpoint"


class RefusalReason(StrEnum):
    """Why a command was not accepted; a bounded vocabulary (metric label, status code)."""

    BAD_ARGUMENT = "bad_argument"  # an argument is missing or outside its allowed range
    NOT_PERMITTED = "not_permitted"  # the user's role does not allow it
    NOT_SUPPORTED = "not_supported"  # no subsystem handles this kind of command
    UNKNOWN_TARGET = "unknown_target"  # no such load, line, group, order …
    BUSY = "busy"  # the target is selected (armed) by someone else or a command is running
    INTERLOCK = "interlock"  # a safety interlock forbids it now (keep-power, lock-out)
    INVALID_STATE = "invalid_state"  # the target's state does not allow it (batch running …)
    NOT_ARMED = "not_armed"  # Execute without a selection of this user for this target
    EXPIRED = "expired"  # the selection lapsed before Execute
    SERVICE_STOPPING = "service_stopping"  # intake closed: stopping, or the journal failed
    UNAVAILABLE = "unavailable"  # the controller could not be reached; retry with the same token


class CommandRefused(Exception):
    """A command not accepted, and why: ``reason`` for machines, the message for people."""

    def __init__(self, reason: RefusalReason | str, message: str) -> None:
        super().__init__(message)
        self.reason = RefusalReason(reason)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason.value, self.message))


@dataclass(frozen=True, slots=True)
class CommandRequest:
    """A command as an operator interface hands it to the runtime (which journals it)."""

    target: str  # object path, e.g. "loads/feeder1_l3"
    kind: str  # e.g. "trip"
    reason: str
    user: str
    role: str
    token: str  # request id: unique per command, the idempotency key (the command id)
    armed_at: float  # epoch seconds of the request
    source: str = "opcua"
    args: dict[str, Any] = field(default_factory=dict)  # validated, JSON/msgpack-able


@dataclass(frozen=True, slots=True)
class ArmRequest:
    """Select-before-operate, first half: select ``kind`` on ``target``."""

    target: str
    kind: str
    reason: str
    user: str
    role: str
    source: str = "opcua"


@dataclass(frozen=True, slots=True)
class ExecuteRequest:
    """Select-before-operate, second half: operate the selection ``token`` names."""

    target: str
    token: str
    user: str


@dataclass(frozen=True, slots=True)
class Selection:
    """An armed command: ``token`` is its command id in the journal."""

    token: str
    target: str
    kind: str
    user: str
    armed_at: float  # epoch seconds
    expires_at: float  # epoch seconds; Execute must come before


@runtime_checkable
class CommandSink(Protocol):
    async def submit(self, request: CommandRequest) -> str:
        """Journal and queue the command; return its command id. May raise CommandRefused."""
        ...


@runtime_checkable
class SelectBeforeOperate(Protocol):
    """Optional sink extension: Arm/Execute, the selection kept in the command journal."""

    async def arm(self, request: ArmRequest) -> Selection:
        """Journal an ``armed`` command reserving the target; CommandRefused (busy,
        interlock, bad_argument, …) when it cannot be selected."""
        ...

    async def execute(self, request: ExecuteRequest) -> Selection:
        """Operate an armed command of the same user before it expires (its id is the
        token); CommandRefused (not_armed, expired, interlock, …) otherwise."""
        ...


@runtime_checkable
class CommandStatus(Protocol):
    """Optional sink extension: the current state of a command it accepted."""

    def command_state(self, command_id: str) -> tuple[str, str] | None:
        """(state, reason) of a command, or None when unknown."""
        ...
