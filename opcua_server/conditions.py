"""Alarms & Conditions: the alarm engine's alarms as OPC UA condition events.

asyncua has no A&C server model, so this module provides what SCADA alarm
clients use (Part 9):

- one condition per alarm id, ConditionId ``ns=<gridctl>;s=@alarms/<id>`` (an
  object of the condition's type under ``@alarms``, created when the alarm
  first appears; alarms are a bounded set of condition × source);
- event types per condition: OffNormalAlarmType for discrete process faults,
  SystemOffNormalAlarmType for the service's own conditions,
  ExclusiveLevelAlarmType (LimitState High, HighLimit when known) for limit
  alarms, AlarmConditionType otherwise;
- an event on every change with EventId, ConditionName, ConditionClass,
  ActiveState, AckedState, ConfirmedState, EnabledState, ShelvingState,
  SuppressedOrShelved, Severity, LastSeverity, Message, SourceNode/Name,
  Comment, ClientUserId, Retain, Quality and the ConditionId;
- Acknowledge / Confirm (the standard AcknowledgeableConditionType methods,
  called with the condition as object and the EventId being acknowledged);
- ConditionRefresh / ConditionRefresh2: asyncua's, which replays the retained
  events this module sends (Retain = active, or unacknowledged, or — when
  confirmation is enabled — unconfirmed), between RefreshStart and RefreshEnd.

The alarm engine stays the single source of truth: this module polls the
:class:`AlarmSource` (cheap: only alarms that are not normal) and sends an
event for each alarm whose state differs from the last one sent, so missed
notifications cannot desynchronise anything. The same snapshot feeds the
``@alarms/Active`` JSON list for the HMI.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from asyncua import ua
from asyncua.common.events import Event

from opcua_server.ua_values import node_id, status_code

from .config import Role
from .events import VT, Emitter, make_event
from .methods import AlarmInfo, AlarmSource
from .nodes import Made, NodeFactory
from .users import current_user

_log = logging.getLogger(__name__)
SC = ua.StatusCodes
O = ua.ObjectIds  # noqa: E741

OFF_NORMAL = O.OffNormalAlarmType
SYSTEM_OFF_NORMAL = O.SystemOffNormalAlarmType
LEVEL = O.ExclusiveLevelAlarmType

# condition -> (event type, condition class)
CONDITION_TYPES: dict[str, tuple[int, int]] = {
    "over_temperature": (LEVEL, O.ProcessConditionClassType),
    "relay_mismatch": (OFF_NORMAL, O.ProcessConditionClassType),
    "crane_fault": (OFF_NORMAL, O.ProcessConditionClassType),
    "conveyor_fault": (OFF_NORMAL, O.ProcessConditionClassType),
    "bus_down": (SYSTEM_OFF_NORMAL, O.SystemConditionClassType),
    "meter_offline": (SYSTEM_OFF_NORMAL, O.SystemConditionClassType),
    "clock_drift": (OFF_NORMAL, O.MaintenanceConditionClassType),
    "cycle_overrun": (SYSTEM_OFF_NORMAL, O.SystemConditionClassType),
    "journal_backlog": (SYSTEM_OFF_NORMAL, O.SystemConditionClassType),
}
CLASS_NAMES = {
    O.ProcessConditionClassType: "Process",
    O.SystemConditionClassType: "System",
    O.MaintenanceConditionClassType: "Maintenance",
    O.BaseConditionClassType: "Base",
}
_LIMIT = re.compile(r">\s*(-?\d+(?:\.\d+)?)")


def condition_of(info: AlarmInfo) -> str:
    return info.condition or info.alarm_id.split(":", 1)[0]


def type_of(info: AlarmInfo) -> tuple[int, int]:
    return CONDITION_TYPES.get(condition_of(info), (O.AlarmConditionType, O.BaseConditionClassType))


@dataclass(slots=True)
class _Sent:
    """What the last event of a condition said."""

    info: AlarmInfo
    event_id: bytes
    confirmed: bool
    retain: bool


def _key(info: AlarmInfo) -> tuple[Any, ...]:
    return (
        info.active,
        info.acknowledged,
        info.shelved,
        info.severity,
        info.message,
        info.time,
    )


def _iso(t: float | None) -> str:
    if t is None:
        return ""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alarm_list_json(alarms: Sequence[AlarmInfo]) -> str:
    """The ``@alarms/Active`` value: newest first."""
    items = sorted(alarms, key=lambda a: -(a.time or 0.0))
    return json.dumps(
        [
            {
                "id": a.alarm_id,
                "source": a.source,
                "message": a.message,
                "severity": a.severity,
                "active": a.active,
                "acknowledged": a.acknowledged,
                "shelved": a.shelved,
                "time": _iso(a.time),
            }
            for a in items
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    )


class AlarmConditions:
    def __init__(
        self,
        source: AlarmSource,
        emitter: Emitter,
        factory: NodeFactory,
        folder: Made,
        *,
        resolve_source: Callable[[str], ua.NodeId],
        set_list: Callable[[str], Any],
        confirm: bool = False,
        audit: Callable[..., Awaitable[None]] | None = None,
    ) -> None:
        self.source = source
        self.emitter = emitter
        self.f = factory
        self.folder = folder
        self.resolve_source = resolve_source
        self.set_list = set_list
        self.confirm_enabled = confirm
        self.audit = audit
        self._sent: dict[str, _Sent] = {}
        self._nodes: dict[ua.NodeId, str] = {}  # ConditionId -> alarm id
        self._list = ""
        self.polls = 0

    # -- ids ---------------------------------------------------------------------------
    def condition_id(self, alarm_id: str) -> ua.NodeId:
        return self.f.nid(f"@alarms/{alarm_id}")

    def _ensure_node(self, info: AlarmInfo) -> ua.NodeId:
        nodeid = self.condition_id(info.alarm_id)
        if nodeid not in self.f.aspace:
            etype, _cls = type_of(info)
            self.f.obj(
                f"@alarms/{info.alarm_id}",
                info.alarm_id,
                self.folder,
                typedef=node_id(etype),
                description=f"condition {condition_of(info)} on {info.source}",
            )
        self._nodes[nodeid] = info.alarm_id
        return nodeid

    # -- polling ---------------------------------------------------------------------------
    async def poll(self) -> int:
        """Compare the source's alarms with what was sent; send an event per change."""
        self.polls += 1
        current = {a.alarm_id: a for a in self.source.active_alarms()}
        sent = 0
        for alarm_id, info in current.items():
            prev = self._sent.get(alarm_id)
            if prev is None or _key(prev.info) != _key(info):
                await self._send(info, prev)
                sent += 1
        for alarm_id, prev in list(self._sent.items()):
            if alarm_id in current:
                continue
            if not prev.retain:
                del self._sent[alarm_id]
                continue
            # Gone from the source: back to normal and acknowledged.
            if prev.info.active or not prev.info.acknowledged:
                normal = replace(prev.info, active=False, acknowledged=True, shelved=False)
                await self._send(normal, prev)
                sent += 1
        listed = alarm_list_json(list(current.values()))
        if listed != self._list:
            self._list = listed
            await self.set_list(listed)
        return sent

    async def _send(self, info: AlarmInfo, prev: _Sent | None, comment: str = "") -> _Sent:
        confirmed = True
        if self.confirm_enabled and prev is not None:
            confirmed = prev.confirmed
            if info.acknowledged and not prev.info.acknowledged:
                confirmed = False  # acknowledged: now waits for Confirm
            if info.active and not prev.info.active:
                confirmed = True  # a new activation starts over
        elif self.confirm_enabled and info.acknowledged and not info.active:
            confirmed = False
        retain = info.active or not info.acknowledged or not confirmed
        ev = self.build_event(info, confirmed=confirmed, retain=retain, prev=prev, comment=comment)
        state = _Sent(info, getattr(ev, "EventId"), confirmed, retain)  # noqa: B009
        self._sent[info.alarm_id] = state
        await self.emitter.emit(ev)
        return state

    def build_event(
        self,
        info: AlarmInfo,
        *,
        confirmed: bool,
        retain: bool,
        prev: _Sent | None = None,
        comment: str = "",
    ) -> Event:
        etype, cls = type_of(info)
        cond_id = self._ensure_node(info)
        last_severity = prev.info.severity if prev is not None else info.severity
        fields: dict[str, tuple[Any, ua.VariantType]] = {
            "ConditionClassId": (node_id(cls), VT.NodeId),
            "ConditionClassName": (
                ua.LocalizedText(CLASS_NAMES.get(cls, "Base")),
                VT.LocalizedText,
            ),
            "ConditionName": (condition_of(info), VT.String),
            "BranchId": (ua.NodeId(), VT.NodeId),
            "Retain": (retain, VT.Boolean),
            "EnabledState": (ua.LocalizedText("Enabled"), VT.LocalizedText),
            "EnabledState/Id": (True, VT.Boolean),
            "Quality": (status_code(SC.Good), VT.StatusCode),
            "LastSeverity": (last_severity, VT.UInt16),
            "Comment": (ua.LocalizedText(comment or info.comment), VT.LocalizedText),
            "ClientUserId": (info.acked_by, VT.String),
            "AckedState": (
                ua.LocalizedText("Acknowledged" if info.acknowledged else "Unacknowledged"),
                VT.LocalizedText,
            ),
            "AckedState/Id": (info.acknowledged, VT.Boolean),
            "ConfirmedState": (
                ua.LocalizedText("Confirmed" if confirmed else "Unconfirmed"),
                VT.LocalizedText,
            ),
            "ConfirmedState/Id": (confirmed, VT.Boolean),
            "ActiveState": (
                ua.LocalizedText("Active" if info.active else "Inactive"),
                VT.LocalizedText,
            ),
            "ActiveState/Id": (info.active, VT.Boolean),
            "ActiveState/EffectiveDisplayName": (
                ua.LocalizedText("Active" if info.active else "Inactive"),
                VT.LocalizedText,
            ),
            "InputNode": (ua.NodeId(), VT.NodeId),
            "SuppressedOrShelved": (info.shelved, VT.Boolean),
            "ShelvingState/CurrentState": (
                ua.LocalizedText("TimedShelved" if info.shelved else "Unshelved"),
                VT.LocalizedText,
            ),
            "ShelvingState/CurrentState/Id": (
                node_id(
                    O.ShelvedStateMachineType_TimedShelved
                    if info.shelved
                    else O.ShelvedStateMachineType_Unshelved
                ),
                VT.NodeId,
            ),
            "NodeId": (cond_id, VT.NodeId),  # the ConditionId
            "ConditionId": (cond_id, VT.NodeId),
        }
        if etype == LEVEL:
            fields["LimitState/CurrentState"] = (
                ua.LocalizedText("High" if info.active else ""),
                VT.LocalizedText,
            )
            fields["LimitState/CurrentState/Id"] = (
                node_id(O.ExclusiveLimitStateMachineType_High) if info.active else ua.NodeId(),
                VT.NodeId,
            )
            m = _LIMIT.search(info.message)
            if m is not None:
                fields["HighLimit"] = (float(m.group(1)), VT.Double)
        return make_event(
            etype,
            source_node=self.resolve_source(info.source),
            source_name=info.source,
            message=info.message or condition_of(info),
            severity=info.severity,
            at=info.time,
            fields=fields,
        )

    # -- A&C methods -------------------------------------------------------------------------
    def _caller(self) -> tuple[str, int | None]:
        user = current_user.get()
        if user is None or not user.allows(Role.OPERATOR):
            return (user.name if user else "anonymous") or "anonymous", SC.BadUserAccessDenied
        return user.name or "", None

    def _lookup(self, object_id: ua.NodeId, event_id: Any) -> tuple[str, _Sent] | int:
        alarm_id = self._nodes.get(object_id)
        if alarm_id is None:
            return SC.BadNodeIdUnknown
        state = self._sent.get(alarm_id)
        if state is None:
            return SC.BadConditionBranchAlreadyAcked
        if bytes(event_id or b"") != state.event_id:
            return SC.BadEventIdUnknown
        return alarm_id, state

    async def acknowledge_method(
        self, parent: ua.NodeId, event_id: ua.Variant, comment: ua.Variant
    ) -> ua.StatusCode:
        """AcknowledgeableConditionType.Acknowledge(EventId, Comment)."""
        who, denied = self._caller()
        code, alarm_id = await self._acknowledge(parent, event_id, comment, who, denied)
        if self.audit is not None:
            await self.audit(
                "Acknowledge", alarm_id or str(parent.Identifier), code, _text(comment)
            )
        return status_code(code)

    async def _acknowledge(
        self, parent: ua.NodeId, event_id: Any, comment: Any, who: str, denied: int | None
    ) -> tuple[int, str]:
        if denied is not None:
            return denied, ""
        found = self._lookup(parent, _value(event_id))
        if isinstance(found, int):
            return found, ""
        alarm_id, state = found
        if state.info.acknowledged:
            return SC.BadConditionBranchAlreadyAcked, alarm_id
        text = _text(comment)
        try:
            await self.source.acknowledge(alarm_id, who, text)
        except KeyError:
            return SC.BadNodeIdUnknown, alarm_id
        except ValueError:
            return SC.BadConditionBranchAlreadyAcked, alarm_id
        await self.poll()
        return SC.Good, alarm_id

    async def confirm_method(
        self, parent: ua.NodeId, event_id: ua.Variant, comment: ua.Variant
    ) -> ua.StatusCode:
        """AcknowledgeableConditionType.Confirm(EventId, Comment)."""
        who, denied = self._caller()
        code, alarm_id = await self._confirm(parent, event_id, comment, who, denied)
        if self.audit is not None:
            await self.audit("Confirm", alarm_id or str(parent.Identifier), code, _text(comment))
        return status_code(code)

    async def _confirm(
        self, parent: ua.NodeId, event_id: Any, comment: Any, who: str, denied: int | None
    ) -> tuple[int, str]:
        if denied is not None:
            return denied, ""
        if not self.confirm_enabled:
            return SC.BadNotSupported, ""
        found = self._lookup(parent, _value(event_id))
        if isinstance(found, int):
            return found, ""
        alarm_id, state = found
        if state.confirmed:
            return SC.BadConditionBranchAlreadyConfirmed, alarm_id
        if not state.info.acknowledged:
            return SC.BadInvalidState, alarm_id
        info = replace(state.info, acked_by=who, comment=_text(comment))
        retain = info.active or not info.acknowledged
        ev = self.build_event(info, confirmed=True, retain=retain, prev=state)
        self._sent[alarm_id] = _Sent(info, getattr(ev, "EventId"), True, retain)  # noqa: B009
        await self.emitter.emit(ev)
        return SC.Good, alarm_id

    def bind(self, aspace: Any) -> None:
        """Attach Acknowledge/Confirm to the standard method nodes."""
        aspace[node_id(O.AcknowledgeableConditionType_Acknowledge)].call = self.acknowledge_method
        aspace[node_id(O.AcknowledgeableConditionType_Confirm)].call = self.confirm_method


def _value(v: Any) -> Any:
    return v.Value if isinstance(v, ua.Variant) else v


def _text(v: Any) -> str:
    v = _value(v)
    if isinstance(v, ua.LocalizedText):
        return v.Text or ""
    return "" if v is None else str(v)
