"""Demand-limit control for one group (after Q/GDW 1373 / 1376.1 power control).

A pure state machine stepped by the ``control`` cycle with the time as an
argument (virtual-time tests step it minutes at a time):

- the group's total active power goes into a sliding window (``window_min``);
  its average is the controlled value;
- above the limit (the time-of-day schedule's, else the group's) and above the
  security value (保安定值): raise ``demand_over_limit`` and wait the next
  round's alarm time; still above → trip the next enabled round's closed
  loads; the next round gets its own alarm time; repeat;
- at or below the limit the alarm clears and shedding stops;
- at or below ``limit − hysteresis`` for ``restore_delay_s`` → close the shed
  loads back, last round first, one load every ``restore_stagger_s``;
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
# the same bound the config puts on limit_kw
MAX_LIMIT_KW = 1e7


@dataclass(slots=True, frozen=True)
class LoadView:
    closed: bool | None  # None: unknown
    keep_power: bool | None


class DemandGroup:
    def __init__(self, cfg: GroupConfig) -> None:
        self.cfg = cfg
        self.source = f"demand/{cfg.name}"
        self.window: deque[tuple[float, float]] = deque()
        self.average_kw: float | None = None
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
        self.pending: set[str] = set()  # intents not yet resolved
        self.last_change: dict[str, float] = {}
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

    def _sample(self, now: float, power_kw: float | None) -> None:
        horizon = now - self.cfg.window_min * 60.0
        while self.window and self.window[0][0] <= horizon:
            self.window.popleft()
        if power_kw is not None:
            self.window.append((now, power_kw))
        # ≤ 3600 samples once a second: summing afresh keeps it exact (no drift)
        self.average_kw = sum(p for _, p in self.window) / len(self.window) if self.window else None

    def result(self, intent: Intent, ok: bool, now: float) -> None:
        """Feedback from the executor (or immediate for dry-run intents)."""
        self.pending.discard(intent.load)
        if ok:
            self.last_change[intent.load] = now
            if intent.kind != "trip":
                self.tripped.pop(intent.load, None)
        elif intent.kind == "trip":
            self.tripped.pop(intent.load, None)  # still closed: not ours to restore

    # -- the step -------------------------------------------------------------------------
    def step(
        self,
        now: float,
        local: dt.datetime,
        power_kw: float | None,
        loads: dict[str, LoadView],
    ) -> StepResult:
        out = StepResult()
        if not self.cfg.enabled:
            return out
        self._sample(now, power_kw)
        self.limit_kw = limit = self.limit_at(local)
        avg = self.average_kw
        if avg is None:
            return out  # no trustworthy reading: hold
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
            self._shed(now, avg, limit, loads, out)
            return out
        if self.alarm_since is not None:
            self.alarm_since = None
            out.alarms.append(
                AlarmNote(
                    CONDITION, self.source, False, f"average {avg:.1f} kW within {limit:g} kW"
                )
            )
        if avg > limit - self.cfg.hysteresis_kw or not self.shed:
            self.below_since = None
            return out
        if self.below_since is None:
            self.below_since = now
        if now - self.below_since >= self.cfg.restore_delay_s and now >= self.next_restore_at:
            self._restore(now, avg, loads, out)
        return out

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
        self.shed.append(i)
        self.alarm_since = now  # the next round gets its own alarm time
        why = f"demand limit {self.cfg.name}: average {avg:.1f} kW > {limit:g} kW, round {rnd.name}"
        if not to_trip:
            out.notes.append(f"round {rnd.name}: nothing to trip")
        for name in to_trip:
            self.tripped[name] = i
            self.pending.add(name)
            self.trips += 1
            out.intents.append(Intent("trip", name, why, self.source, self.cfg.dry_run))

    def _restore(self, now: float, avg: float, loads: dict[str, LoadView], out: StepResult) -> None:
        if self.pending:
            return
        while self.shed:
            i = self.shed[-1]
            mine = [n for n, r in self.tripped.items() if r == i]
            if not mine:
                self.shed.pop()
                continue
            # within a round, close back in reverse order too
            order = [n for n in reversed(self.cfg.rounds[i].loads) if n in mine]
            for name in order:
                since = self.last_change.get(name)
                if since is not None and now - since < self.cfg.min_off_s:
                    return  # minimum off time
                self.pending.add(name)
                self.restores += 1
                self.next_restore_at = now + self.cfg.restore_stagger_s
                why = (
                    f"demand limit {self.cfg.name}: average {avg:.1f} kW below "
                    f"{self.limit_kw - self.cfg.hysteresis_kw:g} kW for "
                    f"{self.cfg.restore_delay_s:g} s, restoring round {self.cfg.rounds[i].name}"
                )
                out.intents.append(Intent("direct_close", name, why, self.source, self.cfg.dry_run))
                return
        # everything restored
        self.below_since = None

    def status(self) -> str:
        if self.alarm_since is not None:
            return "over_limit"
        if self.shed:
            return "restoring" if self.below_since is not None else "shed"
        return "normal"
