"""A clock and sleeper for CycleTask tests (injected; nothing really waits)."""

from __future__ import annotations

import asyncio


class VirtualTime:
    """A clock and sleeper for tests: sleeping advances time, nothing really waits.

    ``sleep(d)`` advances by ``d + oversleep`` (a loop timer firing late);
    ``sleep(0)`` (one yield-spin step) advances by ``spin_step``.
    """

    def __init__(
        self, start: float = 1000.0, *, oversleep: float = 0.0, spin_step: float = 1e-5
    ) -> None:
        self.now = start
        self.oversleep = oversleep
        self.spin_step = spin_step
        self.sleeps = 0
        self.spins = 0
        self.holds = 0

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        if delay > 0:
            self.sleeps += 1
            self.now += delay + self.oversleep
        else:
            self.spins += 1
            self.now += self.spin_step
        await asyncio.sleep(0)

    def busy_wait(self, until: float) -> None:
        """A hold: time passes to ``until`` without the loop running anything else."""
        self.holds += 1
        self.now = max(self.now, until)

    def advance(self, dt: float) -> None:
        """Simulate work taking ``dt`` (call from a program)."""
        self.now += dt
