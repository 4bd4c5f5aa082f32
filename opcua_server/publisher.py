"""Publisher: process-image changes → address space values → monitored items.

Reads the image's bounded ChangeQueue in batches and replaces each variable's
Value attribute directly (what asyncua's ``write_attribute_value`` does minus
the per-call node lookup, attribute lookup and variant type check, which the
model already guarantees), then hands the value to the variable's monitored
items.

Monitored items are fed in one of two ways:

- **exception-based** (``sampling_interval_s`` 0): every written value goes
  to the variable's data-change callbacks within the same batch;
- **sampled** (``sampling_interval_s`` > 0): the address space still gets every
  value at once (a Read sees the latest), but monitored items are fed once per
  sampling tick with the variable's value *at the tick*. A change superseded
  within one tick is never notified (counted as ``sampled_coalesced``); the
  latest value always is. This is the OPC UA sampling model: a server samples
  at the sampling interval, and a monitored item with queue size 1 delivers
  only the latest value per publishing interval anyway. Keep the interval at
  or below the smallest publishing interval clients use.

asyncua's own data-change callback (``MonitoredItemService.datachange_callback``)
is a chain of three coroutines and a ``deepcopy`` of the DataValue per
monitored item and value. For that callback the publisher runs
:func:`_enqueue_datachange` instead: the same trigger, deadband, monitoring
mode and queue-size rules on asyncua's own structures, synchronously and
without the copy (the publisher builds a new DataValue per write and never
changes one it has handed out). The notifications it queues carry the
DataValue's encoding, made once however many clients watch the variable
(:mod:`opcua_server.publish_encoding` writes them). Any other callback is
awaited as before. This relies on asyncua's internal names; the pinned
version (constraints.txt) is covered by tests/opcua_server/test_sampling.py;
on another asyncua minor (``asyncua_gate``) every value takes the awaited
callback, and anything unexpected falls back to it too.

Its queue holds the image's ``(Tag, TagValue)`` changes, or, in the server
process, the controller feed's rows as they arrived (``rows``): there a value
goes from the channel to the address space without a TagValue of its own.

It never owns state and never blocks a writer: the queue is bounded with
drop-oldest (counted), each step writes at most ``batch_limit`` values and then
yields the loop, and within a step only the newest change of a tag is written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, cast, runtime_checkable

from asyncua import ua
from asyncua.server.monitored_item_service import MonitoredItemService

from controller.process_image import ChangeQueue, Quality, TagValue
from controller.quality_reason import Reason, reason_from_wire
from controller.task_stop import stop_task
from opcua_server.ua_values import status_code

from .asyncua_gate import allow_fallback
from .model import VarEntry
from .publish_encoding import PackedNotification, pack_data_value
from .quality import data_value

_log = logging.getLogger(__name__)

_DATACHANGE = MonitoredItemService.datachange_callback
# Private to asyncua 2.1; another version may not have it (then the awaited
# callback runs: see Publisher.fast_datachange).
_is_data_changed = getattr(MonitoredItemService, "_is_data_changed", None)
_DISABLED = ua.MonitoringMode.Disabled
_STATUS_VALUE = ua.DataChangeTrigger.StatusValue
_GOOD_STATUS = status_code(ua.StatusCodes.Good)
_DOUBLE = ua.VariantType.Double
_DATA_VALUE = ua.DataValue
_new = object.__new__
_fromtimestamp = datetime.fromtimestamp


@dataclass(slots=True)
class PublisherStats:
    published: int = 0  # values written into the address space
    coalesced: int = 0  # older changes of a tag superseded within one batch
    unknown: int = 0  # changes for tags not in the model (defined after start)
    errors: int = 0  # values that could not be converted (written as BadTypeMismatch)
    batches: int = 0
    last_batch_latency_s: float = 0.0  # change → written, for the oldest change in a batch
    last_batch_duration_s: float = 0.0
    notified: int = 0  # values handed to monitored items (one per variable and tick/batch)
    sampled_coalesced: int = 0  # values superseded within one sampling tick, never notified
    samples: int = 0  # sampling ticks that had something to notify


def _enqueue_datachange(
    mis: MonitoredItemService, handle: int, dv: ua.DataValue, packed: bytes
) -> bool:
    """asyncua's ``datachange_callback`` for a good value, without awaits or copies.

    The notification carries ``packed`` (the DataValue's encoding, made once
    for all the items watching the variable) for the publish encoder.
    Returns False (nothing done) when the subscription publishes on demand,
    where asyncua's coroutine must run to trigger the publish.
    """
    isub = mis.isub
    if isub._task is None and isub.data.RevisedPublishingInterval <= 0.0:
        return False
    mid = mis._monitored_datachange[handle]
    mdata = mis._monitored_items[mid]
    if mdata.mode == _DISABLED:
        return True
    mvalue = mdata.mvalue
    mvalue.old_dvalue = mvalue.current_dvalue
    mvalue.current_dvalue = dv
    flt = mdata.filter
    assert _is_data_changed is not None  # fast_datachange is off without it
    if flt:
        passed = _is_data_changed(mvalue, flt.Trigger) and mis._is_deadband_exceeded(mvalue, flt)
    else:
        passed = _is_data_changed(mvalue, _STATUS_VALUE)
    if passed:
        event = PackedNotification(cast(int, mdata.client_handle), dv, packed)
        queue = isub._triggered_datachanges
        items = queue.get(mid)
        if items is None:
            queue[mid] = [event]
        else:
            size = mdata.queue_size
            if size != 0 and len(items) >= size:
                items.pop(0)
            items.append(event)
    return True


@runtime_checkable
class FeedRows(Protocol):
    """A queue source whose changes are the controller feed's rows.

    Rows are ``[id, value, quality, reason, source_time, server_time, code]``; ``names``
    maps a row's id to its tag name, and ``keep`` takes a row for a tag the
    model does not have yet (its current value when the model adds it).
    """

    names: Mapping[int, str]

    def keep(self, row: Sequence[Any]) -> None: ...


class Publisher:
    def __init__(
        self,
        queue: ChangeQueue[Any],
        variables: dict[str, VarEntry],
        *,
        batch_limit: int = 2_000,
        history: Callable[[str, ua.DataValue], None] | None = None,
        historized: set[str] | None = None,
        on_unknown: Callable[[], None] | None = None,
        sampling_interval_s: float = 0.0,
        rows: FeedRows | None = None,
        on_mark: Callable[[Any], Awaitable[None]] | None = None,
    ) -> None:
        """``queue`` holds ``(Tag, TagValue)`` pairs, or feed rows when ``rows`` is given;
        ``on_mark`` runs for each mark of the queue once the changes before it are
        written and handed to monitored items."""
        self.queue = queue
        self.variables = variables
        self.batch_limit = batch_limit
        self.history = history
        self.historized = historized if historized is not None else set()
        self.on_unknown = on_unknown
        self.sampling_interval_s = sampling_interval_s
        self.rows = rows
        self.on_mark = on_mark
        self.stats = PublisherStats()
        # asyncua's private monitored-item structures, only on the version they were read from.
        self.fast_datachange = _is_data_changed is not None and allow_fallback(
            "the synchronous data-change path"
        )
        self._task: asyncio.Task[None] | None = None
        self._sampler: asyncio.Task[None] | None = None
        # Variables written since the last sampling tick that have monitored items.
        self._dirty: dict[Any, Any] = {}
        # Row mode: row id → variable, and the ids of historized variables.
        self._by_id: dict[int, VarEntry] = {}
        self._historized_ids: set[int] = set()

    @property
    def dropped(self) -> int:
        return self.queue.dropped

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="opcua-publisher")
        if self.sampling_interval_s > 0 and self._sampler is None:
            self._sampler = asyncio.create_task(self._sample_loop(), name="opcua-sampler")

    async def stop(self) -> None:
        for name in ("_task", "_sampler"):
            task = getattr(self, name)
            setattr(self, name, None)
            await stop_task(task)

    async def run(self) -> None:
        queue = self.queue
        while True:
            batch = await queue.get_batch(self.batch_limit)
            if batch:
                await self.publish(batch)
            marks = queue.due_marks()
            if marks:
                await self._run_marks(marks)
            # Let the control loop (and client I/O) run between batches.
            await asyncio.sleep(0)

    async def _run_marks(self, marks: list[Any]) -> None:
        if self.sampling_interval_s > 0:
            # What a mark follows must be notified before it, not at the next tick.
            await self.sample()
        for payload in marks:
            if self.on_mark is None:
                continue
            try:
                await self.on_mark(payload)
            except Exception:
                _log.exception("queue mark failed")

    async def publish(self, batch: list[Any]) -> int:
        """Write one batch; returns how many values were written."""
        started = time.perf_counter()
        stats = self.stats
        latest: dict[Any, Sequence[Any]]
        if self.rows is None:
            latest = {
                tag.name: (
                    tag.name,
                    tv.value,
                    tv.quality,
                    tv.reason,
                    tv.source_time,
                    tv.server_time,
                    tv.code,
                )
                for tag, tv in batch
            }
            entries: dict[Any, VarEntry] = self.variables
            historized: set[Any] = self.historized
            oldest = batch[0][1].server_time if batch else time.time()
        else:
            latest = {row[0]: row for row in batch}
            entries = self._by_id
            historized = self._historized_ids
            oldest = batch[0][5] if batch else time.time()
        stats.coalesced += len(batch) - len(latest)
        history = self.history
        sampled = self.sampling_interval_s > 0
        dirty = self._dirty
        written = 0
        for key, (_, value, quality, reason, source_time, server_time, code) in latest.items():
            entry = entries.get(key)
            if entry is None:
                entry = self._resolve(key, latest[key])
                if entry is None:
                    continue
            if not quality and type(value) is float and entry.vtype is _DOUBLE:
                # Most of a plant's values: skip the generic conversion (Variant's
                # type guessing and checks cost more than the rest of a write).
                variant = _new(ua.Variant)
                variant.Value = value
                variant.VariantType = _DOUBLE
                variant.Dimensions = None
                variant.is_array = False
                source = _fromtimestamp(source_time, UTC)
                server = source if server_time == source_time else _fromtimestamp(server_time, UTC)
                # DataValue's own __init__ re-checks the Variant: 2.5x the cost.
                dv: Any = _new(_DATA_VALUE)  # filled field by field below
                dv.Encoding = 0
                dv.Value = variant
                dv.StatusCode = _GOOD_STATUS
                dv.SourceTimestamp = source
                dv.ServerTimestamp = server
                dv.SourcePicoseconds = None
                dv.ServerPicoseconds = None
            else:
                try:
                    dv = data_value(
                        TagValue(
                            value,
                            Quality(quality),
                            reason,
                            source_time,
                            server_time,
                            reason_from_wire(code) if quality else Reason.NONE,
                        ),
                        entry.vtype,
                    )
                except (TypeError, ValueError, OverflowError):
                    stats.errors += 1
                    dv = ua.DataValue(StatusCode=status_code(ua.StatusCodes.BadTypeMismatch))
            attr = entry.attr
            attr.value = dv
            if history is not None and key in historized:
                history(self._name(key), dv)
            if attr.datachange_callbacks:
                if sampled:
                    if key in dirty:
                        stats.sampled_coalesced += 1
                    dirty[key] = attr
                else:
                    await self._notify(key, attr, dv)
            written += 1
        stats.published += written
        stats.batches += 1
        stats.last_batch_duration_s = time.perf_counter() - started
        stats.last_batch_latency_s = max(0.0, time.time() - oldest)
        return written

    def _resolve(self, key: Any, row: Sequence[Any]) -> VarEntry | None:
        """The variable for a key not seen before, or None (counted, model told)."""
        rows = self.rows
        if rows is not None:
            name = rows.names.get(key)
            entry = self.variables.get(name) if name is not None else None
            if entry is not None:
                self._by_id[key] = entry
                if name in self.historized:
                    self._historized_ids.add(key)
                return entry
            rows.keep(row)
        # Defined after the model was built: the server adds it (with its current
        # value from the image) when told.
        self.stats.unknown += 1
        if self.on_unknown is not None:
            self.on_unknown()
        return None

    def _name(self, key: Any) -> str:
        return key if self.rows is None else self.rows.names[key]

    async def sample(self) -> int:
        """Feed monitored items the current value of every variable written since
        the last tick; returns how many variables were notified."""
        dirty, self._dirty = self._dirty, {}
        count = 0
        for key, attr in dirty.items():
            # The value now in the address space: the latest, whatever came before.
            await self._notify(key, attr, attr.value)
            count += 1
            if count % self.batch_limit == 0:
                await asyncio.sleep(0)  # a long tick must not hold up client I/O
        if count:
            self.stats.samples += 1
        return count

    async def _sample_loop(self) -> None:
        interval = self.sampling_interval_s
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            # Absolute deadlines: a slow tick delays the next one, never shifts all.
            deadline = max(deadline + interval, loop.time())
            await asyncio.sleep(deadline - loop.time())
            try:
                await self.sample()
            except Exception:
                _log.exception("sampling tick failed")

    async def _notify(self, key: Any, attr: Any, dv: ua.DataValue) -> None:
        """Run the attribute's data-change callbacks for ``dv``."""
        callbacks = attr.datachange_callbacks
        if not callbacks:
            return
        self.stats.notified += 1
        packed: bytes | None = None
        for handle, callback in list(callbacks.items()):
            try:
                if (
                    self.fast_datachange
                    and getattr(callback, "__func__", None) is _DATACHANGE
                    and type(callback.__self__) is MonitoredItemService
                ):
                    if packed is None:
                        packed = pack_data_value(dv)
                    if _enqueue_datachange(callback.__self__, handle, dv, packed):
                        continue
                await callback(handle, dv)
            except Exception:
                _log.exception("data-change callback failed for %s", self._name(key))
