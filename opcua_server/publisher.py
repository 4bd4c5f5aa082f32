"""Publisher: process-image changes → address space values.

Reads the image's bounded ChangeQueue in batches and replaces each variable's
Value attribute directly, then runs the attribute's data-change callbacks (that
is what feeds monitored items). This is the same thing asyncua's
``write_attribute_value`` does minus the per-call node lookup, attribute lookup
and variant type check, which the model already guarantees.

It never owns state and never blocks a writer: the queue is bounded with
drop-oldest (counted), each step writes at most ``batch_limit`` values and then
yields the loop, and within a step only the newest change of a tag is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from asyncua import ua

from controller.process_image import ChangeQueue, Tag, TagValue

from .model import VarEntry
from .quality import data_value

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class PublisherStats:
    published: int = 0  # values written into the address space
    coalesced: int = 0  # older changes of a tag superseded within one batch
    unknown: int = 0  # changes for tags not in the model (defined after start)
    errors: int = 0  # values that could not be converted (written as BadTypeMismatch)
    batches: int = 0
    last_batch_latency_s: float = 0.0  # change → written, for the oldest change in a batch
    last_batch_duration_s: float = 0.0


class Publisher:
    def __init__(
        self,
        queue: ChangeQueue,
        variables: dict[str, VarEntry],
        *,
        batch_limit: int = 2_000,
        history: Callable[[str, ua.DataValue], None] | None = None,
        historized: set[str] | None = None,
        on_unknown: Callable[[], None] | None = None,
    ) -> None:
        self.queue = queue
        self.variables = variables
        self.batch_limit = batch_limit
        self.history = history
        self.historized = historized if historized is not None else set()
        self.on_unknown = on_unknown
        self.stats = PublisherStats()
        self._task: asyncio.Task[None] | None = None

    @property
    def dropped(self) -> int:
        return self.queue.dropped

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="opcua-publisher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        while True:
            batch = await self.queue.get_batch(self.batch_limit)
            await self.publish(batch)
            # Let the control loop (and client I/O) run between batches.
            await asyncio.sleep(0)

    async def publish(self, batch: list[tuple[Tag, TagValue]]) -> int:
        """Write one batch; returns how many values were written."""
        started = time.perf_counter()
        stats = self.stats
        latest: dict[str, TagValue] = {}
        for tag, value in batch:
            latest[tag.name] = value
        stats.coalesced += len(batch) - len(latest)
        variables = self.variables
        history, historized = self.history, self.historized
        oldest = batch[0][1].server_time if batch else time.time()
        written = 0
        for name, tv in latest.items():
            entry = variables.get(name)
            if entry is None:
                # Defined after the model was built: the server adds it (with its
                # current value from the image) when told.
                stats.unknown += 1
                if self.on_unknown is not None:
                    self.on_unknown()
                continue
            try:
                dv = data_value(tv, entry.vtype)
            except (TypeError, ValueError, OverflowError):
                stats.errors += 1
                dv = ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadTypeMismatch))
            attr = entry.attr
            attr.value = dv
            if history is not None and name in historized:
                history(name, dv)
            callbacks = attr.datachange_callbacks
            if callbacks:
                for handle, callback in list(callbacks.items()):
                    try:
                        await callback(handle, dv)
                    except Exception:
                        _log.exception("data-change callback failed for %s", name)
            written += 1
        stats.published += written
        stats.batches += 1
        stats.last_batch_duration_s = time.perf_counter() - started
        stats.last_batch_latency_s = max(0.0, time.time() - oldest)
        return written
