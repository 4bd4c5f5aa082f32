"""Events: built field by field, sent from the Server object, kept in history.

asyncua's ``EventGenerator`` derives an event's fields by browsing the type in
the address space for every generator, and mutates one event object per
trigger. Here each event is a fresh :class:`asyncua.common.events.Event` with
an explicit field table, so a retained condition event (which asyncua keeps for
ConditionRefresh) is never changed after it was sent. Field names are the
browse paths joined by ``/`` (``ActiveState/Id``), which is how asyncua maps
the select clauses of a client's EventFilter; ``NodeId`` is the ConditionId
(select clause with the NodeId attribute on ConditionType).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from asyncua import ua
from asyncua.common.events import Event

from opcua_server.ua_values import node_id, status_code

_log = logging.getLogger(__name__)

VT = ua.VariantType
SERVER_NODE = node_id(ua.ObjectIds.Server)

# Base fields every event carries, with their types.
BASE_FIELDS: dict[str, ua.VariantType] = {
    "EventId": VT.ByteString,
    "EventType": VT.NodeId,
    "SourceNode": VT.NodeId,
    "SourceName": VT.String,
    "Time": VT.DateTime,
    "ReceiveTime": VT.DateTime,
    "Message": VT.LocalizedText,
    "Severity": VT.UInt16,
}


def new_event_id() -> bytes:
    return uuid.uuid4().bytes


def make_event(
    event_type: int | ua.NodeId,
    *,
    source_node: ua.NodeId = SERVER_NODE,
    source_name: str = "",
    message: str = "",
    severity: int = 100,
    at: float | None = None,
    fields: dict[str, tuple[Any, ua.VariantType]] | None = None,
    emitting_node: ua.NodeId = SERVER_NODE,
) -> Event:
    now = datetime.now(UTC)
    when = now if at is None else datetime.fromtimestamp(at, UTC)
    ev = Event(emitting_node)
    etype = event_type if isinstance(event_type, ua.NodeId) else node_id(event_type)
    ev.add_property("EventId", new_event_id(), VT.ByteString)
    ev.add_property("EventType", etype, VT.NodeId)
    ev.add_property("SourceNode", source_node, VT.NodeId)
    ev.add_property("SourceName", source_name, VT.String)
    ev.add_property("Time", when, VT.DateTime)
    ev.add_property("ReceiveTime", now, VT.DateTime)
    ev.add_property("Message", ua.LocalizedText(message), VT.LocalizedText)
    ev.add_property("Severity", max(1, min(1000, int(severity))), VT.UInt16)
    for name, (value, vtype) in (fields or {}).items():
        ev.add_property(name, value, vtype)
    return ev


def event_time(ev: Event) -> float:
    t = getattr(ev, "Time", None)
    return t.timestamp() if isinstance(t, datetime) else time.time()


class EventStore(Protocol):
    def record_event(self, event: Event) -> None: ...


class Emitter:
    """Sends events to subscribed clients and records them in the event history."""

    def __init__(
        self,
        trigger: Callable[[Event], Any],
        history: EventStore | None = None,
    ) -> None:
        self._trigger = trigger
        self.history = history
        self.sent = 0
        self.errors = 0

    async def emit(self, event: Event) -> None:
        self.sent += 1
        if self.history is not None:
            try:
                self.history.record_event(event)
            except Exception:
                _log.exception("event history write failed")
        try:
            await self._trigger(event)
        except Exception:
            self.errors += 1
            _log.exception("sending event %s failed", getattr(event, "EventType", "?"))


def audit_method_event(
    *,
    method: str,
    method_id: ua.NodeId,
    source_node: ua.NodeId,
    target: str,
    user: str,
    inputs: list[Any],
    outputs: list[Any],
    status: int,
    message: str,
    server_id: str,
) -> Event:
    """AuditUpdateMethodEventType for one method call (Part 5, 6.4.27)."""
    ok = status_code(status).is_good()
    text = f"{user} called {method} on {target or 'server'}: " + (
        "accepted" if ok else f"{status_code(status).name} {message}".rstrip()
    )
    return make_event(
        ua.ObjectIds.AuditUpdateMethodEventType,
        source_node=source_node,
        source_name="Method/Call",
        message=text,
        severity=100 if ok else 400,
        fields={
            "ActionTimeStamp": (datetime.now(UTC), VT.DateTime),
            "Status": (ok, VT.Boolean),
            "ServerId": (server_id, VT.String),
            "ClientAuditEntryId": ("", VT.String),
            "ClientUserId": (user, VT.String),
            "MethodId": (method_id, VT.NodeId),
            "InputArguments": ([_variant(v) for v in inputs], VT.Variant),
            "OutputArguments": ([_variant(v) for v in outputs], VT.Variant),
            "StatusCodeId": (status_code(status), VT.StatusCode),
        },
    )


def _variant(value: Any) -> ua.Variant:
    if isinstance(value, ua.Variant):
        return value
    if isinstance(value, bool):
        return ua.Variant(value, VT.Boolean)
    if isinstance(value, int):
        return ua.Variant(value, VT.Int64)
    if isinstance(value, float):
        return ua.Variant(value, VT.Double)
    if isinstance(value, list):
        return ua.Variant([str(v) for v in value], VT.String)
    if value is None:
        return ua.Variant(None, VT.Null)
    return ua.Variant(str(value), VT.String)
