"""Demand-limit control for one group (after Q/GDW 1373 / 1376.1 power control).

A pure state machine stepped by the ``control`` cycle with the time as an
argument (virtual-time tests step it minutes at a time):

- the group's total active power (its members' signed readings: incoming
  minus outgoing) goes into a sliding window (``window_min``); its average is
  the controlled value (the demand);
- a member without a Good reading makes the group's quality Bad: the
  ``demand_quality_bad`` alarm is raised and nothing is shed or restored
  until every member reads again;
- above the limit (the time-of-day schedule's, else the group's) and above the
  security value (保安定值): raise ``demand_over_limit`` and wait the next
  round's alarm time; still above → trip the next enabled round's closed
  loads, recording each one's power just before the trip; the next round gets
  its own alarm time; repeat. A round whose trip would take the group's power
  below the security value is not tripped, and shedding stops there;
- at or below the limit the alarm clears and shedding stops;
- the last round shed comes back when ``demand + the power it shed <= limit −
  hysteresis`` has held for ``restore_delay_s``: its loads one every
  ``restore_stagger_s`` (``restore_mode``: close-allowed or direct close);
  then the next round must hold that condition afresh. A close-allowed load
  whose customer has not closed yet counts with its shed power, since it may
  come back at any moment; a shed load someone else closed is no longer the
  group's. Alarm times and the
  restore delay span at least one window (the config checks it), so each
  decision sees the last switching in full: a steady overload is shed until
  it fits and then held, not tripped and restored in turn;
- minimum on/off times hold a load in its state; keep-power blocks every
  trip (the load is skipped, the skip journaled); loads the group did not
  trip are never closed by it;
- ``dry_run``: intents are marked dry-run (journaled as "would trip",
  nothing switched) and the machine proceeds as if they had been done.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import deque
from dataclasses import dataclass

from controller.loads.config import GroupConfig
from controller.loads.intents import AlarmNote, Intent, StepResult

CONDITION = "demand_over_limit"
# a member without a Good reading: the group's demand is unknown
QUALITY_CONDITION = "demand_quality_bad"
# the same bound the config puts on limit_kw
MAX_LIMIT_KW = 1e7


@dataclass(slots=True, frozen=True)
class LoadView:
    closed: bool | None  # None: unknown
    keep_power: bool | None
    power_kw: float | None = None  # the load's own meter; None: no Good reading


class DemandGroup:
    def __init__(self, cfg: GroupConfig) -> None:
        self.cfg = cfg
        self.source = f"demand/{cfg.name}"
        self.window: deque[tuple[float, float]] = deque()
        self.average_kw: float | None = None
        self.power_kw: float | None = None  # the latest signed total
        self.bad_reason = ""  # why the group's demand is not Good ('' when it is)
        self.quality_alarmed = False  # the demand_quality_bad alarm is raised
        self.first_step: float | None = None
        self.limit_kw = cfg.limit_kw
        # an engineer's SetDemandLimit: replaces the configured limit and the
        # time-of-day schedule until cleared; the runtime keeps it in the journal
        # (ld_demand_overrides) so a restart does not silently fall back
        self.override_kw: float | None = None
        self.override_note = ""  # who set it and why, for the limit_source tag
        self.alarm_since: float | None = None
        self.below_since: float | None = None
        self.next_restore_at = 0.0
        self.shed: list[int] = []  # round indices, in the order they were shed
        self.tripped: dict[str, int] = {}  # load -> round index, loads this group opened
        # load -> its power just before this group tripped it (None: it had no reading)
        self.shed_kw: dict[str, float | None] = {}
        self.restoring_round: int | None = None
        self.restoring: list[str] = []  # that round's loads still to close, next first
        # close-allowed loads whose customer has not closed yet → their power at trip
        # time: it may come back any moment, so it counts as demand for later restores
        self.allowed: dict[str, float] = {}
        self.restore_why = ""
        self.pending: set[str] = set()  # intents not yet resolved
        self.last_change: dict[str, float] = {}
        self.held_at_security = False  # shedding stopped at the security value (noted once)
        self.noted_unknown: set[int] = set()  # rounds noted as "shed power unknown"
        self.trips = 0
        self.restores = 0

    # -- inputs ---------------------------------------------------------------------------
    def limit_at(self, local: dt.datetime) -> float:
        if self.override_kw is not None:
            return self.override_kw
        for p in self.cfg.schedule:
            if p.contains(local):
                return p.limit_kw
        return self.cfg.limit_kw

    def limit_source(self, local: dt.datetime) -> str:
        """Where the limit in force comes from: an override, a schedule period, the config."""
        if self.override_kw is not None:
            return f"override {self.override_kw:g} kW" + (
                f" ({self.override_note})" if self.override_note else ""
            )
        for p in self.cfg.schedule:
            if p.contains(local):
                return f"schedule {p.start}-{p.end}"
        return "configured"

    def check_override(self, limit_kw: float) -> None:
        """ValueError naming ``limit_kw`` and its allowed range when it cannot be a limit."""
        low = self.cfg.hysteresis_kw
        if not (math.isfinite(limit_kw) and low < limit_kw <= MAX_LIMIT_KW):
            raise ValueError(
                f"limit_kw: must be > {low:g} (group {self.cfg.name}'s hysteresis_kw) "
                f"and <= {MAX_LIMIT_KW:g} kW (got {limit_kw:g})"
            )
        if limit_kw < self.cfg.security_kw:
            raise ValueError(
                f"limit_kw: must be >= {self.cfg.security_kw:g} kW (group {self.cfg.name}'s "
                f"security_kw, the supply the site always keeps) and <= {MAX_LIMIT_KW:g} kW "
                f"(got {limit_kw:g})"
            )

    def shed_power(self, round_index: int | None = None) -> float | None:
        """kW this group took off (of one round, or all), as read just before each trip.

        None when a load had no reading then: how much would come back is unknown."""
        total = 0.0
        for name, r in self.tripped.items():
            if round_index is not None and r != round_index:
                continue
            kw = self.shed_kw.get(name)
            if kw is None:
                return None
            total += kw
        return total

    def _sample(self, now: float, power_kw: float) -> None:
        horizon = now - self.cfg.window_min * 60.0
        while self.window and self.window[0][0] <= horizon:
            self.window.popleft()
        self.window.append((now, power_kw))
        # ≤ 3600 samples once a second: summing afresh keeps it exact (no drift)
        self.average_kw = sum(p for _, p in self.window) / len(self.window)

    def result(self, intent: Intent, ok: bool, now: float) -> None:
        """Feedback from the executor (or immediate for dry-run intents)."""
        self.pending.discard(intent.load)
        if ok:
            self.last_change[intent.load] = now
            if intent.kind != "trip":
                self.tripped.pop(intent.load, None)
                kw = self.shed_kw.pop(intent.load, None)
                if intent.kind == "close_allowed" and kw:
                    self.allowed[intent.load] = kw
        elif intent.kind == "trip":
            # still closed: not ours to restore
            self.tripped.pop(intent.load, None)
            self.shed_kw.pop(intent.load, None)

    # -- the step -------------------------------------------------------------------------
    def step(
        self,
        now: float,
        local: dt.datetime,
        power_kw: float | None,
        loads: dict[str, LoadView],
        bad_reason: str = "",
        awaiting_first: bool = False,
    ) -> StepResult:
        """One cycle; ``power_kw`` None (or a ``bad_reason``): the group's demand is Bad.

        ``awaiting_first``: every member without a reading has not been polled yet
        since start; the group is Bad (no switching) but raises no alarm for one
        averaging window, the time a start-up's first polls may take."""
        out = StepResult()
        if not self.cfg.enabled:
            return out
        if self.first_step is None:
            self.first_step = now
        self.limit_kw = limit = self.limit_at(local)
        if power_kw is None or bad_reason:
            # the window keeps its Good samples; nothing is decided on a guess
            why = bad_reason or "no power reading"
            starting = awaiting_first and now - self.first_step < self.cfg.window_min * 60.0
            if not self.quality_alarmed and not starting:
                self.quality_alarmed = True
                out.alarms.append(
                    AlarmNote(
                        QUALITY_CONDITION,
                        self.source,
                        True,
                        f"group demand Bad ({why}): no shedding or restoring until it reads again",
                    )
                )
            self.bad_reason = why
            self.power_kw = None
            self.below_since = None
            return out
        if self.bad_reason:
            self.bad_reason = ""
            if self.quality_alarmed:
                self.quality_alarmed = False
                out.alarms.append(
                    AlarmNote(QUALITY_CONDITION, self.source, False, "group demand Good again")
                )
            if self.alarm_since is not None:
                self.alarm_since = now  # the alarm time counts on Good readings only
        self.power_kw = power_kw
        self._sample(now, power_kw)
        self._forget_closed(loads)
        avg = self.average_kw
        assert avg is not None
        over = avg > limit and avg > self.cfg.security_kw
        if over:
            self.below_since = None
            if self.alarm_since is None:
                self.alarm_since = now
                out.alarms.append(
                    AlarmNote(
                        CONDITION,
                        self.source,
                        True,
                        f"average {avg:.1f} kW over limit {limit:g} kW",
                    )
                )
        else:
            self.held_at_security = False
            if self.alarm_since is not None:
                self.alarm_since = None
                out.alarms.append(
                    AlarmNote(
                        CONDITION, self.source, False, f"average {avg:.1f} kW within {limit:g} kW"
                    )
                )
        if self.restoring_round is not None:
            # a round decided to come back comes back whole: shedding waits for it
            self._continue_restore(now, out)
        elif over:
            self._shed(now, avg, limit, loads, out)
        else:
            self._restore(now, avg, limit, out)
        return out

    def _forget_closed(self, loads: dict[str, LoadView]) -> None:
        """Loads closed since: a tripped one was closed by someone else (not ours any
        more); a close-allowed one by its customer (its power is in the demand now)."""
        for name in list(self.allowed):
            if loads.get(name, LoadView(None, None)).closed is True:
                del self.allowed[name]
        if self.cfg.dry_run:
            return  # nothing was really opened
        for name in list(self.tripped):
            if name not in self.pending and loads.get(name, LoadView(None, None)).closed is True:
                self.tripped.pop(name)
                self.shed_kw.pop(name, None)

    def _next_round(self) -> int | None:
        for i, r in enumerate(self.cfg.rounds):
            if r.enabled and i not in self.shed:
                return i
        return None

    def _shed(
        self, now: float, avg: float, limit: float, loads: dict[str, LoadView], out: StepResult
    ) -> None:
        assert self.alarm_since is not None
        i = self._next_round()
        if i is None or self.pending:
            return
        rnd = self.cfg.rounds[i]
        if now - self.alarm_since < rnd.alarm_s:
            return
        to_trip: list[str] = []
        for name in rnd.loads:
            view = loads.get(name, LoadView(None, None))
            if view.keep_power:
                out.notes.append(
                    f"round {rnd.name}: {name} not tripped, keep-power active (blocks every trip)"
                )
                continue
            if view.closed is False:
                continue  # already open (not by us): nothing to shed, nothing to restore
            since = self.last_change.get(name)
            if since is not None and now - since < self.cfg.min_on_s:
                return  # minimum on time: wait, the round trips as a whole
            to_trip.append(name)
        security = self.cfg.security_kw
        if security > 0.0 and to_trip:
            unknown = [n for n in to_trip if loads.get(n, LoadView(None, None)).power_kw is None]
            assert self.power_kw is not None
            left = self.power_kw - sum(
                loads[n].power_kw or 0.0 for n in to_trip if n not in unknown
            )
            if unknown or left < security:
                # checked again every cycle (the rest of the load may grow), journaled once
                if not self.held_at_security:
                    why = (
                        f"{', '.join(unknown)} without a power reading"
                        if unknown
                        else f"{self.power_kw:.1f} kW would fall to {left:.1f} kW"
                    )
                    out.notes.append(
                        f"demand limit {self.cfg.name}: round {rnd.name} not tripped, shedding "
                        f"stops at the security value {security:g} kW ({why})"
                    )
                self.held_at_security = True
                return
        self.shed.append(i)
        self.alarm_since = now  # the next round gets its own alarm time
        why = f"demand limit {self.cfg.name}: average {avg:.1f} kW > {limit:g} kW, round {rnd.name}"
        if not to_trip:
            out.notes.append(f"round {rnd.name}: nothing to trip")
        for name in to_trip:
            self.tripped[name] = i
            self.shed_kw[name] = loads.get(name, LoadView(None, None)).power_kw
            self.pending.add(name)
            self.trips += 1
            out.intents.append(Intent("trip", name, why, self.source, self.cfg.dry_run))

    def _restore(self, now: float, avg: float, limit: float, out: StepResult) -> None:
        while self.shed and not any(r == self.shed[-1] for r in self.tripped.values()):
            self.noted_unknown.discard(self.shed.pop())  # nothing of ours left in it
        if not self.shed or self.pending:
            self.below_since = None
            return
        i = self.shed[-1]
        rnd = self.cfg.rounds[i]
        back = self.shed_power(i)
        if back is None:
            if i not in self.noted_unknown:
                self.noted_unknown.add(i)
                out.notes.append(
                    f"demand limit {self.cfg.name}: round {rnd.name} is not restored "
                    "automatically: a load had no power reading when it was tripped, so what "
                    "would come back is unknown; close it by hand"
                )
            self.below_since = None
            return
        target = limit - self.cfg.hysteresis_kw
        promised = sum(self.allowed.values())
        if avg + promised + back > target:
            self.below_since = None
            return
        if self.below_since is None:
            self.below_since = now
        if now - self.below_since < self.cfg.restore_delay_s:
            return
        self.restoring_round = i
        # within a round, close back in reverse order too
        self.restoring = [n for n in reversed(rnd.loads) if self.tripped.get(n) == i]
        self.next_restore_at = now
        waiting = f" + {promised:.1f} kW close-allowed" if promised else ""
        self.restore_why = (
            f"demand limit {self.cfg.name}: average {avg:.1f} kW{waiting} + round {rnd.name}'s "
            f"{back:.1f} kW <= {target:g} kW for {self.cfg.restore_delay_s:g} s, "
            f"restoring round {rnd.name}"
        )
        self._continue_restore(now, out)

    def _continue_restore(self, now: float, out: StepResult) -> None:
        i = self.restoring_round
        assert i is not None
        if self.pending or now < self.next_restore_at:
            return
        while self.restoring:
            name = self.restoring[0]
            if self.tripped.get(name) != i:
                self.restoring.pop(0)  # no longer ours
                continue
            since = self.last_change.get(name)
            if since is not None and now - since < self.cfg.min_off_s:
                return  # minimum off time
            self.restoring.pop(0)
            self.pending.add(name)
            self.restores += 1
            self.next_restore_at = now + self.cfg.restore_stagger_s
            out.intents.append(
                Intent(self.cfg.restore_mode, name, self.restore_why, self.source, self.cfg.dry_run)
            )
            return
        # the round is back (a load that failed to close stays shed and is tried again
        # once the condition has held afresh); the next round starts its delay now
        self.restoring_round = None
        self.below_since = None
        if not any(r == i for r in self.tripped.values()) and i in self.shed:
            self.shed.remove(i)
            self.noted_unknown.discard(i)

    def status(self) -> str:
        if self.alarm_since is not None:
            return "over_limit"
        if self.shed:
            waiting = self.below_since is not None or self.restoring_round is not None
            return "restoring" if waiting else "shed"
        return "normal"
