"""Injectable clocks: real time for the plant, virtual time for tests and benches.

The sequencer and the simulated rig only ever call ``clock.now()``,
``clock.monotonic()`` and ``await clock.sleep(...)``; with a
:class:`VirtualClock` those run on an asyncio loop whose time advances
straight to the next timer instead of waiting, so an hour-long verification
batch runs in well under a second of wall time, deterministically (the order
of events depends only on timer deadlines, never on the host's speed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

from controller.virtual_time import VirtualTimeLoop

T = TypeVar("T")


class Clock(Protocol):
    def now(self) -> float:
        """Epoch seconds, for records (result start/end times)."""

    def monotonic(self) -> float:
        """Seconds on the event loop's clock, for deadlines."""

    async def sleep(self, seconds: float) -> None: ...

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until ``monotonic() >= deadline`` (absolute deadlines do not drift)."""


class RealClock:
    """The plant's clock: epoch time for records, the running loop's clock for deadlines."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - self.monotonic()))


class ScaledClock:
    """Real time sped up ``scale`` times, for a *simulated* rig on the service's loop.

    ``monotonic()`` and the sleeps run ``scale`` times faster than the loop's
    clock, so the rig's physics and the sequencer's timing see rig time.
    ``now()`` stays the real wall clock: records are stamped with the time they
    were really written, never with a scaled time that would look real.
    """

    def __init__(self, scale: float, timeout_slack_s: float = 0.5) -> None:
        if not scale >= 1.0:
            raise ValueError(f"scale: must be >= 1 (got {scale})")
        self.scale = scale
        # A timeout of rig time shrinks by ``scale`` on the loop; a long loop step
        # (an OPC UA publish, a scrape) must not be mistaken for a dead meter.
        self.timeout_slack_s = timeout_slack_s

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time() * self.scale

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.scale)

    async def sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - self.monotonic()) / self.scale)


def loop_seconds(clock: object, seconds: float) -> float:
    """``seconds`` of the clock's time as seconds of the running loop (for timers)."""
    return seconds / getattr(clock, "scale", 1.0)


def loop_timeout(clock: object, seconds: float) -> float:
    """A timeout of ``seconds`` of the clock's time, on the running loop, with the
    clock's real-time slack (scaled clocks only)."""
    return seconds / getattr(clock, "scale", 1.0) + getattr(clock, "timeout_slack_s", 0.0)


class VirtualClock:
    """Virtual time on its own loop; ``scale=None`` runs as fast as possible,
    ``scale=k`` runs k times faster than real time (for crash tests that need a
    process to be killed part-way through)."""

    def __init__(
        self, start_epoch: float = 1_767_225_600.0, scale: float | None = None
    ) -> None:  # default start: 2026-01-01T00:00:00Z
        self.start_epoch = start_epoch
        self.loop = VirtualTimeLoop(scale)

    def now(self) -> float:
        return self.start_epoch + self.loop.time()

    def monotonic(self) -> float:
        return self.loop.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - self.loop.time()))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine to completion in virtual time."""
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.loop.close()
