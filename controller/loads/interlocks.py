"""Interlocks, enforced in the controller (never only in the HMI or the OPC UA layer).

- keep-power (保电) blocks every trip, operator or automatic: turning it off
  is a separate, audited command (engineer role on OPC UA) that automation
  may never issue (it cannot override keep-power);
- automation may not trip a load whose keep-power state it cannot read
  (it would switch something it cannot reason about);
- a load under maintenance lock-out cannot be closed;
- one command at a time per load (a second one is refused, not queued
  behind: the operator sees at once that the load is busy);
- mass switching is rate limited per feeder (token bucket), so rounds and
  restores cannot cause inrush.

All pure: state in, verdict out; the clock is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TRIP_KINDS = frozenset({"trip"})
CLOSE_KINDS = frozenset({"close_allowed", "direct_close"})


@dataclass(slots=True, frozen=True)
class Lockout:
    load: str
    who: str
    why: str
    since: float


@dataclass(slots=True, frozen=True)
class LoadFacts:
    """What the controller knows about a load when a command is checked."""

    keep_power: bool | None  # None: unknown (status word not read / Bad)
    locked_out: Lockout | None = None
    busy_with: str | None = None  # id of the command in progress on this load


def check(kind: str, facts: LoadFacts, *, automation: bool) -> str:
    """The refusal reason for ``kind`` on a load with ``facts``; '' when allowed."""
    if facts.busy_with is not None:
        return f"interlock: command {facts.busy_with} in progress on this load"
    if kind in TRIP_KINDS:
        if facts.keep_power:
            return "interlock: keep-power active (trips are blocked)"
        if automation and facts.keep_power is None:
            return "interlock: keep-power state unknown (automation does not trip blind)"
    if kind == "keep_power_off" and automation:
        return "interlock: keep-power is removed by a person only, never by automation"
    if kind in CLOSE_KINDS and facts.locked_out is not None:
        lo = facts.locked_out
        return f"interlock: maintenance lock-out by {lo.who} ({lo.why})"
    return ""


@dataclass(slots=True)
class RateLimiter:
    """Token bucket per feeder: ``rate`` relays per second, ``burst`` at once.

    ``reserve`` books the next free slot and returns how long to wait for it,
    so concurrent commands on one feeder are spread out in booking order.
    """

    rate: float
    burst: int = 1
    _next: dict[str, float] = field(default_factory=dict)

    def reserve(self, feeder: str, now: float) -> float:
        # GCRA: the theoretical arrival time advances one interval per booking
        interval = 1.0 / self.rate
        tat = max(self._next.get(feeder, now), now)
        wait = max(0.0, tat - (self.burst - 1) * interval - now)
        self._next[feeder] = tat + interval
        return wait

    def release(self, feeder: str, now: float) -> None:
        """Give back a booked slot that was not used (the command ended before sending)."""
        tat = self._next.get(feeder)
        if tat is not None:
            self._next[feeder] = max(now, tat - 1.0 / self.rate)
