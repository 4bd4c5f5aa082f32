"""What the pure control state machines emit: switching intents, alarms, journal notes."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True, frozen=True)
class Intent:
    """Switch ``load``; executed by the switching executor (interlocks → journal → wire)."""

    kind: str  # trip, direct_close, close_allowed, alarm_on, alarm_off
    load: str
    why: str
    source: str  # e.g. "demand/g1", "prepaid/acc7"
    dry_run: bool = False


@dataclass(slots=True, frozen=True)
class AlarmNote:
    condition: str
    source: str
    active: bool
    message: str


@dataclass(slots=True)
class StepResult:
    intents: list[Intent] = field(default_factory=list)
    alarms: list[AlarmNote] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # journaled as events
