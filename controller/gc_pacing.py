"""Garbage collection at the fast task's quiet point.

CPython collects generation 0 whenever net allocations pass a threshold (700
by default), wherever the interpreter happens to be: in a bus reply, in the
fast task's spin a few microseconds before its deadline. A young collection
here takes 0.1–1.5 ms (it walks every object allocated since the last one),
which is most of the fast task's p99.9 budget.

:class:`QuietGc` moves that work to the one moment the loop has the most room:
right after a fast cycle ends (``CycleTask.after_cycle``). It collects the
youngest generation when ``young_threshold`` net allocations are due, escalates
to generations 1 and 2 with CPython's own ratios (every 10th collection of the
one below), and records each pause. CPython's collector is left on with its
thresholds raised to ``backstop`` so memory stays bounded if the fast task
ever stops (and with it the quiet points).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable

from controller.task_stop import stop_task

from .cycle import Series

log = logging.getLogger("gridctl.gc")

# CPython's default ratios between generations (gc.get_threshold()[1:]).
ESCALATE_EVERY = 10
IDLE_RETRY_S = 0.01


class QuietGc:
    def __init__(
        self,
        quiet_point: Callable[[], Awaitable[None]],
        *,
        young_threshold: int = 2_000,
        backstop: int = 100_000,
        window: int = 1024,
    ) -> None:
        if young_threshold >= backstop:
            raise ValueError(
                f"gc_young_threshold ({young_threshold}) must be below "
                f"gc_backstop_threshold ({backstop})"
            )
        self.quiet_point = quiet_point
        self.young_threshold = young_threshold
        self.backstop = backstop
        self.collections = [0, 0, 0]  # per generation, by this pacer
        self.pause = Series(window)  # seconds per collection, all generations
        self._saved: tuple[int, int, int] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is not None:
            return
        self._saved = gc.get_threshold()
        gc.set_threshold(self.backstop, ESCALATE_EVERY, ESCALATE_EVERY)
        self._task = asyncio.get_running_loop().create_task(self.run(), name="gc-quiet")
        log.info(
            "gc: young collections at the fast task's quiet point (every %d net allocations; "
            "backstop %d)",
            self.young_threshold,
            self.backstop,
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            self._saved = None

    async def run(self) -> None:
        while True:
            point = self.quiet_point()
            if isinstance(point, asyncio.Future) and point.done():
                # no cycle to follow (the fast task is stopped): do not spin the loop
                await asyncio.sleep(IDLE_RETRY_S)
            else:
                await point
            self.collect_if_due()

    def collect_if_due(self) -> int | None:
        """Collect now if enough was allocated; returns the generation collected."""
        young, since_young, since_middle = gc.get_count()
        if young < self.young_threshold:
            return None
        generation = 0
        if since_young + 1 >= ESCALATE_EVERY:
            generation = 2 if since_middle + 1 >= ESCALATE_EVERY else 1
        started = time.perf_counter()
        gc.collect(generation)
        self.pause.add(time.perf_counter() - started)
        self.collections[generation] += 1
        return generation
