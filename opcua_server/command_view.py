"""Command records as seen from OPC UA: a bounded ring of recent commands,
per-target LastCommandId / LastCommandState, and a CommandEventType event on
every state change.

The ring is ``@commands/Recent/00`` … ``NN`` (fixed nodes, reused oldest
first), each with CommandId, Kind, Target, User, State, Reason, Updated: no
node is ever added per command, so the address space cannot grow with use.
States come from the sink (``CommandStatus.command_state``) and are polled
for commands not yet in a terminal state. A state found by polling (or pushed
by the controller over the channel) is applied only when the publisher has
written every tag change queued before it was seen (a queue mark, see
``ChangeQueue.mark``): a client never sees ``confirmed`` ahead of the relay
state that confirmed it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from asyncua import ua

from controller.api import (
    ArmRequest,
    CommandRefused,
    CommandRequest,
    CommandSink,
    CommandStatus,
    ExecuteRequest,
    RefusalReason,
    SelectBeforeOperate,
    Selection,
)
from opcua_server.ua_values import status_code

from . import nodes as N
from .events import VT, Emitter, make_event
from .model import VarEntry
from .nodes import Made, NodeFactory

_log = logging.getLogger(__name__)

TERMINAL = frozenset({"confirmed", "failed", "expired", "refused"})
SLOT_FIELDS: tuple[tuple[str, ua.NodeId, str], ...] = (
    ("CommandId", N.DT_STRING, "id of the journalled command record"),
    ("Kind", N.DT_STRING, "command kind, e.g. trip, start_batch"),
    ("Target", N.DT_STRING, "object path the command is for"),
    ("User", N.DT_STRING, "who issued it"),
    ("State", N.DT_STRING, "queued, sent, confirmed, failed, expired or refused"),
    ("Reason", N.DT_STRING, "failure or refusal reason; the operator's reason when queued"),
    ("Updated", N.DT_DATETIME, "time of the last state change"),
)
EVENT_FIELDS: tuple[tuple[str, ua.NodeId, str], ...] = (
    ("CommandId", N.DT_STRING, "id of the command record"),
    ("Kind", N.DT_STRING, "command kind"),
    ("Target", N.DT_STRING, "object path the command is for"),
    ("User", N.DT_STRING, "who issued it"),
    ("State", N.DT_STRING, "the state the command reached"),
    ("Reason", N.DT_STRING, "reason of the state"),
)
Setter = Callable[[VarEntry, Any], Awaitable[None]]
# command id → (state, reason)
CommandStates = Mapping[str, Sequence[str]]


@runtime_checkable
class CommandStatePush(Protocol):
    """A sink whose command states are pushed to it (the server process's channel
    sink); it takes them when the tracker applies them, in order with the tags."""

    def update(self, states: CommandStates) -> None: ...


@dataclass(slots=True)
class Tracked:
    command_id: str
    kind: str
    target: str
    user: str
    state: str
    reason: str
    slot: int


def build_event_type(factory: NodeFactory, base: Made) -> Made:
    etype = factory.object_type(
        "@types/CommandEventType",
        "CommandEventType",
        "a gridctl command record changed state (accepted, sent, confirmed, failed…)",
        base,
    )
    for name, dtype, desc in EVENT_FIELDS:
        p = factory.variable(
            f"@types/CommandEventType/{name}",
            name,
            etype,
            ua.DataValue(),
            dtype,
            typedef=N.PROPERTY_TYPE,
            reftype=N.REF_HAS_PROPERTY,
            description=desc,
            own_property=True,
        )
        factory.modelling_rule(p, N.MODELLING_MANDATORY)
    return etype


class CommandTracker:
    def __init__(
        self,
        factory: NodeFactory,
        root: Made,
        *,
        size: int,
        emitter: Emitter,
        event_type: ua.NodeId,
        setter: Setter,
        resolve: Callable[[str], ua.NodeId],
    ) -> None:
        self.f = factory
        self.size = size
        self.emitter = emitter
        self.event_type = event_type
        self._set = setter
        self.resolve = resolve
        self.status: CommandStatus | None = None
        self._slots: list[dict[str, VarEntry]] = []
        self._by_id: dict[str, Tracked] = {}
        # the last state poll() handed out per command, so a slow publisher is not
        # given the same state again every poll
        self._polled: dict[str, tuple[str, str]] = {}
        self._targets: dict[str, tuple[VarEntry, VarEntry]] = {}
        self._next = 0
        self.accepted_count = 0
        obj = factory.obj("@commands", "Commands", root, description="command records")
        recent = factory.folder(
            "@commands/Recent",
            "Recent",
            obj,
            description=f"the last {size} commands issued through OPC UA (ring, oldest reused)",
        )
        self.last_slot = self._var(
            "@commands/LastSlot", "LastSlot", obj, N.DT_UINT32, "slot of the newest command"
        )
        for i in range(size):
            ident = f"@commands/Recent/{i:02d}"
            slot = factory.obj(ident, f"{i:02d}", recent)
            self._slots.append(
                {
                    name: self._var(f"{ident}/{name}", name, slot, dtype, desc)
                    for name, dtype, desc in SLOT_FIELDS
                }
            )

    def _var(self, ident: str, name: str, parent: Made, dtype: ua.NodeId, desc: str) -> VarEntry:
        initial = ua.DataValue(StatusCode=status_code(ua.StatusCodes.BadWaitingForInitialData))
        var = self.f.variable(ident, name, parent, initial, dtype, description=desc)
        return VarEntry(var.data.attributes[ua.AttributeIds.Value], N.VARIANT_FOR_DATATYPE[dtype])

    def add_target(self, path: str, parent: Made) -> None:
        """LastCommandId / LastCommandState on an object that takes commands."""
        if path in self._targets:
            return
        ident = self._var(
            f"{path}/LastCommandId", "LastCommandId", parent, N.DT_STRING, "last command's id"
        )
        state = self._var(
            f"{path}/LastCommandState",
            "LastCommandState",
            parent,
            N.DT_STRING,
            "last command's state",
        )
        self._targets[path] = (ident, state)

    def wrap(self, sink: CommandSink) -> CommandSink:
        tracker = self
        if isinstance(sink, CommandStatus):
            self.status = sink

        class TrackingSink:
            async def submit(self, request: CommandRequest) -> str:
                command_id = await sink.submit(request)
                await tracker.accepted(request.kind, request.target, request.user, command_id)
                return command_id

            async def arm(self, request: ArmRequest) -> Selection:
                if not isinstance(sink, SelectBeforeOperate):
                    raise CommandRefused(
                        RefusalReason.NOT_SUPPORTED,
                        "this controller keeps no select-before-operate",
                    )
                return await sink.arm(request)

            async def execute(self, request: ExecuteRequest) -> Selection:
                if not isinstance(sink, SelectBeforeOperate):
                    raise CommandRefused(
                        RefusalReason.NOT_SUPPORTED,
                        "this controller keeps no select-before-operate",
                    )
                selection = await sink.execute(request)
                await tracker.accepted(
                    selection.kind, selection.target, selection.user, selection.token
                )
                return selection

        return TrackingSink()

    async def accepted(self, kind: str, target: str, user: str, command_id: str) -> None:
        self.accepted_count += 1
        state, reason = "queued", ""
        if self.status is not None:
            found = self.status.command_state(command_id)
            if found is not None:
                state, reason = found
        old = self._by_id.get(command_id)
        slot = old.slot if old is not None else self._next
        if old is None:
            self._next = (self._next + 1) % self.size
            for cid in [c for c, t in self._by_id.items() if t.slot == slot]:
                del self._by_id[cid]
                self._polled.pop(cid, None)
        t = Tracked(command_id, kind, target, user, state, reason, slot)
        self._by_id[command_id] = t
        entries = self._slots[slot]
        for name, value in (
            ("CommandId", command_id),
            ("Kind", kind),
            ("Target", target),
            ("User", user),
        ):
            await self._set(entries[name], value)
        await self._set(self.last_slot, slot)
        target_vars = self._targets.get(target)
        if target_vars is not None:
            await self._set(target_vars[0], command_id)
        await self._state(t, state, reason)

    async def _state(self, t: Tracked, state: str, reason: str) -> None:
        t.state, t.reason = state, reason
        entries = self._slots[t.slot]
        await self._set(entries["State"], state)
        await self._set(entries["Reason"], reason)
        await self._set(entries["Updated"], datetime.now(UTC))
        target = self._targets.get(t.target)
        if target is not None:
            await self._set(target[1], state)
        text = f"command {t.kind} on {t.target} by {t.user}: {state}" + (
            f" ({reason})" if reason and state != "queued" else ""
        )
        await self.emitter.emit(
            make_event(
                self.event_type,
                source_node=self.resolve(t.target),
                source_name=t.target,
                message=text,
                severity=500 if state in ("failed", "expired", "refused") else 200,
                fields={
                    "CommandId": (t.command_id, VT.String),
                    "Kind": (t.kind, VT.String),
                    "Target": (t.target, VT.String),
                    "User": (t.user, VT.String),
                    "State": (state, VT.String),
                    "Reason": (reason, VT.String),
                },
            )
        )

    def poll(self) -> dict[str, tuple[str, str]]:
        """States of commands not yet terminal that changed and were not polled before;
        the caller applies them (:meth:`apply`) behind the tag changes queued by now."""
        if self.status is None:
            return {}
        found_states: dict[str, tuple[str, str]] = {}
        for t in list(self._by_id.values()):
            if t.state in TERMINAL:
                continue
            found = self.status.command_state(t.command_id)
            if found is None:
                continue
            found = (found[0], found[1])
            if found in ((t.state, t.reason), self._polled.get(t.command_id)):
                continue
            self._polled[t.command_id] = found
            found_states[t.command_id] = found
        return found_states

    async def apply(self, states: CommandStates) -> int:
        """Publish these states of tracked commands; returns how many changed."""
        changed = 0
        for command_id, (state, reason) in states.items():
            t = self._by_id.get(command_id)
            if t is None or (state, reason) == (t.state, t.reason):
                continue
            await self._state(t, state, reason)
            changed += 1
        return changed

    async def refresh(self) -> int:
        """Poll and apply at once (nothing else to keep order with); returns how many changed."""
        return await self.apply(self.poll())

    def state_of(self, command_id: str) -> str | None:
        t = self._by_id.get(command_id)
        return t.state if t is not None else None
