"""Per-device back-off after repeated failures.

Field practice: three retries, then stop asking for a while. A dead meter
must not eat the bus: while quarantined its jobs are postponed, and when the
back-off ends a single probe (no retries) decides. So a dead meter costs the
bus at most one response timeout per back-off period, and a meter that
answers again recovers by itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.config import Quarantine


@dataclass(slots=True)
class QuarantineState:
    policy: Quarantine
    until: float = 0.0  # quarantined while now < until
    backoff_s: float = 0.0
    episodes: int = 0
    reason: str = ""
    probing: bool = False  # back-off ended; next transaction is a single probe

    def active(self, now: float) -> bool:
        return now < self.until

    @property
    def suspect(self) -> bool:
        """In quarantine or probing: the next exchange gets no retries."""
        return self.backoff_s > 0.0

    def fail(self, now: float, reason: str) -> float:
        """Enter (or extend) quarantine; returns the time it ends."""
        if self.backoff_s <= 0.0:
            self.backoff_s = self.policy.initial_s
        else:
            self.backoff_s = min(self.backoff_s * self.policy.factor, self.policy.max_s)
        self.until = now + self.backoff_s
        self.episodes += 1
        self.reason = reason
        return self.until

    def recover(self) -> bool:
        """The device answered; returns True when it was quarantined or probing."""
        was = self.backoff_s > 0.0
        self.backoff_s = 0.0
        self.until = 0.0
        self.reason = ""
        return was
