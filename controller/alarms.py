"""The alarm engine: conditions, states, acknowledgement, shelving.

An alarm is one condition on one source (``bus_down`` on ``bus1``,
``over_temperature`` on ``line/station07``); its key is ``condition:source``.
Control logic reports conditions (``set`` or the ``check_*`` helpers, usually
from the 1 s control task); the engine keeps the state machine (ISA-18.2 style):

====================  ========  =========  ==========================
state                 active    acked      meaning
====================  ========  =========  ==========================
``normal``            no        yes        nothing to do
``unacked``           yes       no         new alarm, annunciated
``acked``             yes       yes        operator knows, still active
``rtn_unacked``       no        no         returned to normal, not yet acked
====================  ========  =========  ==========================

Raising an alarm that is active again resets ``acked``. Acknowledgement
records who, when and a note. Shelving suppresses annunciation for a bounded
time (the state machine keeps running underneath) and records who.

Every change is persisted (the ``alarms`` row, full state, idempotent) and
recorded as an event in the journal, and emitted to subscribers (OPC UA A&C,
HMI) through bounded queues with drop counters.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

import msgpack

from controller.journal import Journal

log = logging.getLogger("gridctl.alarms")


class Severity(IntEnum):
    """OPC UA severities (1..1000)."""

    LOW = 250
    MEDIUM = 500
    HIGH = 700
    CRITICAL = 900


# condition -> default severity; the set is a bounded vocabulary (it is a metric label)
CONDITIONS: dict[str, Severity] = {
    "meter_offline": Severity.MEDIUM,
    "bus_down": Severity.HIGH,
    "clock_drift": Severity.LOW,
    # a meter's clock cannot be kept from here (ignored syncs, too far off): a site visit
    "clock_sync_failed": Severity.MEDIUM,
    "relay_mismatch": Severity.HIGH,
    "over_temperature": Severity.CRITICAL,
    "crane_fault": Severity.HIGH,
    "conveyor_fault": Severity.HIGH,
    "cycle_overrun": Severity.MEDIUM,
    "journal_backlog": Severity.MEDIUM,
    # nothing written after the failure is known to be on disk: commands are refused
    "journal_failed": Severity.CRITICAL,
    # the separate OPC UA server process is down (restarting): SCADA sees nothing
    "publisher_down": Severity.HIGH,
}

MAX_SHELVE_S = 24 * 3600.0


class AlarmState(StrEnum):
    NORMAL = "normal"
    UNACKED = "unacked"
    ACKED = "acked"
    RTN_UNACKED = "rtn_unacked"


class AlarmError(ValueError):
    """Unknown alarm or condition, or an operation the alarm's state does not allow."""


@dataclass(slots=True)
class Alarm:
    key: str
    condition: str
    source: str
    severity: int
    active: bool = False
    acked: bool = True
    message: str = ""
    raised_at: float | None = None
    cleared_at: float | None = None
    acked_at: float | None = None
    acked_by: str | None = None
    ack_note: str | None = None
    shelved_until: float | None = None
    shelved_by: str | None = None
    updated: float = 0.0

    @property
    def state(self) -> AlarmState:
        if self.active:
            return AlarmState.ACKED if self.acked else AlarmState.UNACKED
        return AlarmState.NORMAL if self.acked else AlarmState.RTN_UNACKED

    def shelved(self, now: float) -> bool:
        return self.shelved_until is not None and now < self.shelved_until


@dataclass(slots=True, frozen=True)
class AlarmEvent:
    at: float
    action: str  # raised, cleared, acknowledged, shelved, unshelved
    key: str
    condition: str
    source: str
    severity: int
    state: AlarmState
    message: str
    who: str


class EventQueue:
    """Bounded queue of alarm events for one subscriber; drops the oldest and counts."""

    def __init__(self, name: str, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"{name}: queue maxsize must be >= 1, got {maxsize}")
        self.name = name
        self.maxsize = maxsize
        self.dropped = 0
        self._items: deque[AlarmEvent] = deque()

    def put(self, event: AlarmEvent) -> None:
        if len(self._items) >= self.maxsize:
            self._items.popleft()
            self.dropped += 1
        self._items.append(event)

    def drain(self) -> list[AlarmEvent]:
        out = list(self._items)
        self._items.clear()
        return out

    def __len__(self) -> int:
        return len(self._items)


class AlarmEngine:
    def __init__(
        self,
        journal: Journal | None = None,
        *,
        clock: Callable[[], float] = time.time,
        conditions: dict[str, Severity] | None = None,
    ) -> None:
        self.journal = journal
        self._clock = clock
        self.conditions = dict(CONDITIONS if conditions is None else conditions)
        self._alarms: dict[str, Alarm] = {}
        self._subscribers: list[EventQueue] = []
        self.events = 0

    # -- persistence ------------------------------------------------------------------------
    def load(self) -> int:
        """Restore alarm states from the journal (at start-up)."""
        if self.journal is None:
            return 0
        for row in self.journal.query("SELECT * FROM alarms"):
            a = Alarm(
                row["key"],
                row["condition"],
                row["source"],
                row["severity"],
                bool(row["active"]),
                bool(row["acked"]),
                row["message"],
                row["raised_at"],
                row["cleared_at"],
                row["acked_at"],
                row["acked_by"],
                row["ack_note"],
                row["shelved_until"],
                row["shelved_by"],
                row["updated"],
            )
            self._alarms[a.key] = a
        return len(self._alarms)

    def _persist(self, a: Alarm, ev: AlarmEvent) -> None:
        for q in self._subscribers:
            q.put(ev)
        self.events += 1
        if self.journal is None or not self.journal.is_open:
            return
        self.journal.post(
            [
                (
                    "INSERT OR REPLACE INTO alarms(key, condition, source, severity, active, acked, "
                    "shelved_until, shelved_by, message, raised_at, cleared_at, acked_at, acked_by, "
                    "ack_note, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        a.key,
                        a.condition,
                        a.source,
                        a.severity,
                        int(a.active),
                        int(a.acked),
                        a.shelved_until,
                        a.shelved_by,
                        a.message,
                        a.raised_at,
                        a.cleared_at,
                        a.acked_at,
                        a.acked_by,
                        a.ack_note,
                        a.updated,
                    ),
                ),
                (
                    "INSERT INTO events(at, kind, source, severity, message, data) "
                    "VALUES (?, 'alarm', ?, ?, ?, ?)",
                    (
                        ev.at,
                        a.source,
                        a.severity,
                        f"{a.condition} {ev.action}: {ev.message}".rstrip(": "),
                        msgpack.packb(
                            {
                                "key": a.key,
                                "action": ev.action,
                                "state": ev.state.value,
                                "who": ev.who,
                            }
                        ),
                    ),
                ),
            ]
        )

    def _emit(self, a: Alarm, action: str, who: str) -> AlarmEvent:
        ev = AlarmEvent(
            a.updated, action, a.key, a.condition, a.source, a.severity, a.state, a.message, who
        )
        self._persist(a, ev)
        level = logging.WARNING if action == "raised" else logging.INFO
        log.log(level, "alarm %s %s (%s) %s", a.key, action, a.state.value, a.message)
        return ev

    # -- subscribers ------------------------------------------------------------------------
    def subscribe(self, name: str, maxsize: int = 1000) -> EventQueue:
        q = EventQueue(name, maxsize)
        self._subscribers.append(q)
        return q

    @property
    def subscribers(self) -> tuple[EventQueue, ...]:
        return tuple(self._subscribers)

    # -- queries ----------------------------------------------------------------------------
    def get(self, key: str) -> Alarm:
        try:
            return self._alarms[key]
        except KeyError:
            raise AlarmError(f"unknown alarm {key!r}") from None

    def __iter__(self) -> Iterator[Alarm]:
        return iter(self._alarms.values())

    def annunciated(self, now: float | None = None) -> list[Alarm]:
        """Alarms an operator must see: not normal and not shelved."""
        now = self._clock() if now is None else now
        return [
            a
            for a in self._alarms.values()
            if a.state is not AlarmState.NORMAL and not a.shelved(now)
        ]

    def counts(self, now: float | None = None) -> dict[str, Any]:
        """Per severity name: active and unacknowledged (not shelved); plus shelved total."""
        now = self._clock() if now is None else now
        out: dict[str, Any] = {s.name.lower(): {"active": 0, "unacked": 0} for s in Severity}
        shelved = 0
        for a in self._alarms.values():
            if a.shelved(now):
                shelved += a.state is not AlarmState.NORMAL
                continue
            name = _severity_name(a.severity)
            out[name]["active"] += a.active
            out[name]["unacked"] += not a.acked
        out["shelved"] = shelved
        return out

    # -- conditions -------------------------------------------------------------------------
    def set(
        self,
        condition: str,
        source: str,
        active: bool,
        message: str = "",
        *,
        severity: int | None = None,
    ) -> AlarmEvent | None:
        """Report a condition's current truth; returns the event when the alarm changed."""
        if condition not in self.conditions:
            raise AlarmError(
                f"condition: must be one of {', '.join(sorted(self.conditions))} (got {condition!r})"
            )
        key = f"{condition}:{source}"
        a = self._alarms.get(key)
        if a is None:
            if not active:
                return None
            a = Alarm(key, condition, source, int(severity or self.conditions[condition]))
            self._alarms[key] = a
        if active == a.active:
            return None
        now = self._clock()
        a.active = active
        a.updated = now
        if active:
            a.acked = False
            a.raised_at = now
            a.cleared_at = None
            a.acked_at = a.acked_by = a.ack_note = None
            if severity is not None:
                a.severity = int(severity)
            a.message = message
            return self._emit(a, "raised", "system")
        a.cleared_at = now
        if message:
            a.message = message
        return self._emit(a, "cleared", "system")

    def acknowledge(self, key: str, who: str, note: str = "") -> AlarmEvent:
        if not who:
            raise AlarmError("who: required (acknowledgements are audited)")
        a = self.get(key)
        if a.acked:
            raise AlarmError(f"alarm {key!r} is {a.state.value}: nothing to acknowledge")
        now = self._clock()
        a.acked, a.acked_at, a.acked_by, a.ack_note, a.updated = True, now, who, note, now
        return self._emit(a, "acknowledged", who)

    def shelve(self, key: str, who: str, duration_s: float, reason: str) -> AlarmEvent:
        if not who or not reason:
            raise AlarmError("who and reason: required to shelve an alarm")
        if not 0 < duration_s <= MAX_SHELVE_S:
            raise AlarmError(
                f"duration_s: must be between 0 and {MAX_SHELVE_S:g} (got {duration_s})"
            )
        a = self.get(key)
        now = self._clock()
        a.shelved_until, a.shelved_by, a.updated = now + duration_s, who, now
        return self._emit(a, "shelved", who)

    def unshelve(self, key: str, who: str) -> AlarmEvent:
        a = self.get(key)
        if a.shelved_until is None:
            raise AlarmError(f"alarm {key!r} is not shelved")
        a.shelved_until = a.shelved_by = None
        a.updated = self._clock()
        return self._emit(a, "unshelved", who)

    def tick(self, now: float | None = None) -> list[AlarmEvent]:
        """Unshelve alarms whose shelving ran out (call from the control task)."""
        now = self._clock() if now is None else now
        out = []
        for a in self._alarms.values():
            if a.shelved_until is not None and now >= a.shelved_until:
                a.shelved_until = a.shelved_by = None
                a.updated = now
                out.append(self._emit(a, "unshelved", "system"))
        return out

    # -- rule helpers -----------------------------------------------------------------------
    def check_bus(self, snap: Any) -> None:
        """From a controller.bus_stats.BusSnapshot: bus down when not connected."""
        self.set(
            "bus_down", f"bus/{snap.name}", not snap.connected, f"bus {snap.name} not connected"
        )

    def check_meter(self, bus: str, address: str, online: bool, reason: str = "") -> None:
        self.set("meter_offline", f"bus/{bus}/meter/{address}", not online, reason or "quarantined")

    def check_clock(self, bus: str, address: str, fault: str) -> None:
        """From ``FieldPlant.clock_faults``: raised while the fault text is non-empty."""
        self.check_fault("clock_sync_failed", f"bus/{bus}/meter/{address}", fault)

    def check_high(
        self, condition: str, source: str, value: float, limit: float, hysteresis: float = 0.0
    ) -> None:
        """Raise when ``value > limit``; clear only when ``value <= limit - hysteresis``."""
        a = self._alarms.get(f"{condition}:{source}")
        was = a is not None and a.active
        if value > limit:
            self.set(condition, source, True, f"{value:g} > {limit:g}")
        elif not was or value <= limit - hysteresis:
            self.set(condition, source, False, f"{value:g} back within {limit:g}")

    def check_relay(self, source: str, commanded_open: bool, actual_open: bool) -> None:
        self.set(
            "relay_mismatch",
            source,
            commanded_open != actual_open,
            f"commanded {'open' if commanded_open else 'closed'}, reads "
            f"{'open' if actual_open else 'closed'}",
        )

    def check_fault(self, condition: str, source: str, fault: str | None) -> None:
        self.set(condition, source, bool(fault), fault or "")


def _severity_name(severity: int) -> str:
    for s in sorted(Severity, reverse=True):
        if severity >= s:
            return s.name.lower()
    return Severity.LOW.name.lower()
