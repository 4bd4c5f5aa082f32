"""The values the screens watch: monitored items in one subscription per
connection, re-created on every connect, and the cache ``values`` they fill.

Notifications are coalesced per node and handed to listeners at most every
flush interval, so 10 000 values changing at 1 Hz cost one UI update per
flush, not one per value."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from asyncua import Client, ua
from asyncua.common.subscription import DataChangeEvent, StatusChangeEvent, Subscription

from .values import Reading, read_params, string_node

_log = logging.getLogger(__name__)

ChangeListener = Callable[[set[str]], None]


class Subscriptions:
    def __init__(self) -> None:
        self.values: dict[str, Reading] = {}
        self.stats = {"notifications": 0, "flushes": 0, "items": 0}
        # Notifications since the last flush, newest per path.
        self.pending: dict[str, Reading] = {}
        self._wanted: set[str] = set()
        self._handles: dict[int, str] = {}
        self._by_path: dict[str, int] = {}
        self._missing: set[str] = set()
        self._next_handle = 1_000_000
        self._listeners: list[ChangeListener] = []
        self._lock = asyncio.Lock()
        self._sub: Subscription | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._ns = 0
        self._epoch = 0

    def on_change(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def missing(self, path: str) -> bool:
        """True when the server answered that this node does not exist."""
        return path in self._missing

    @property
    def subscribed(self) -> bool:
        return self._sub is not None

    def broken(self) -> str | None:
        if self._consumer is not None and self._consumer.done():
            return "subscription lost"
        return None

    # -- per connection ---------------------------------------------------------
    async def attach(
        self, client: Client, ns: int, epoch: int, publishing_interval_ms: float
    ) -> None:
        """A new subscription on a new connection (items come with :meth:`resubscribe`)."""
        self._ns, self._epoch = ns, epoch
        self._handles.clear()
        self._by_path.clear()
        self._missing.clear()
        sub = await client.create_subscription(publishing_interval_ms, None, queue_maxsize=500_000)
        self._sub = sub
        self._consumer = asyncio.create_task(self._consume(sub), name="hmi-opcua-consume")

    async def resubscribe(self) -> None:
        await self._create_items(set(self._wanted))

    async def detach(self) -> None:
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._consumer
            self._consumer = None
        self._sub = None

    # -- what the screens watch -------------------------------------------------------
    async def watch(self, paths: Iterable[str], connected: bool) -> None:
        new = set(paths) - self._wanted
        if not new:
            return
        self._wanted |= new
        if self._sub is not None and connected:
            try:
                await self._create_items(new)
            except Exception as exc:  # the supervisor notices a dead session
                _log.warning("subscribing %d items failed: %s", len(new), exc)

    async def unwatch(self, paths: Iterable[str]) -> None:
        gone = set(paths) & self._wanted
        self._wanted -= gone
        sub = self._sub
        handles = [self._by_path.pop(p) for p in gone if p in self._by_path]
        for p in gone:
            self.values.pop(p, None)
        self.stats["items"] = len(self._by_path)
        if sub is None or not handles:
            return
        server_ids = []
        for h in handles:
            self._handles.pop(h, None)
            data = sub._monitored_items.get(h)
            if data is not None and data.server_handle is not None:
                server_ids.append(data.server_handle)
        with contextlib.suppress(Exception):
            await sub.unsubscribe(server_ids)

    async def _create_items(self, paths: set[str], chunk: int = 500) -> None:
        # Chunks of 500: creating an item costs the server a read and a callback;
        # one request of thousands is a loop step of seconds there, holding up
        # every client's publishing (and our own session probes) meanwhile.
        sub = self._sub
        if sub is None:
            return
        ns = self._ns
        todo = sorted(p for p in paths if p not in self._by_path)
        async with self._lock:
            for start in range(0, len(todo), chunk):
                part = todo[start : start + chunk]
                requests = []
                for path in part:
                    self._next_handle += 1
                    handle = self._next_handle
                    self._handles[handle] = path
                    self._by_path[path] = handle
                    requests.append(_item_request(string_node(path, ns), handle))
                results = await sub.create_monitored_items(requests)
                for path, res in zip(part, results, strict=True):
                    if isinstance(res, ua.StatusCode):
                        handle = self._by_path.pop(path)
                        self._handles.pop(handle, None)
                        self._missing.add(path)
                        self.pending[path] = Reading(
                            None, res.value, None, self._epoch, time.monotonic()
                        )
        self.stats["items"] = len(self._by_path)

    async def read(self, client: Client, paths: Iterable[str], chunk: int = 2000) -> None:
        """Read the current value of ``paths`` once into the cache (listeners are told)."""
        ns = self._ns
        todo = list(paths)
        if not todo:
            return
        epoch = self._epoch
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            results = await client.uaclient.read(read_params(part, ns, ua.AttributeIds.Value))
            now = time.monotonic()
            pending = self.pending
            for path, dv in zip(part, results, strict=True):
                if path in pending:
                    continue  # a notification newer than this read is waiting for the flush
                status = dv.StatusCode.value if dv.StatusCode is not None else 0
                value = dv.Value.Value if dv.Value is not None else None
                self.values[path] = Reading(value, status, dv.SourceTimestamp, epoch, now)
        self.notify(set(todo))

    async def _consume(self, sub: Subscription) -> None:
        handles = self._handles
        pending = self.pending
        async for event in sub:
            if isinstance(event, DataChangeEvent):
                item = event.data.monitored_item
                path = handles.get(item.ClientHandle)
                if path is None:
                    continue
                dv = item.Value
                status = dv.StatusCode.value if dv.StatusCode is not None else 0
                value = dv.Value.Value if dv.Value is not None else None
                pending[path] = Reading(
                    value, status, dv.SourceTimestamp, self._epoch, time.monotonic()
                )
                self.stats["notifications"] += 1
            elif isinstance(event, StatusChangeEvent):
                code = event.notification.Status
                _log.warning("subscription status change: %s", code)
                return

    # -- to the screens ---------------------------------------------------------------
    async def flush_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.flush()

    def flush(self) -> None:
        """Apply coalesced notifications to the cache and tell the listeners once."""
        if not self.pending:
            return
        batch = self.pending.copy()  # the consumer holds a reference: clear in place
        self.pending.clear()
        self.values.update(batch)
        self.stats["flushes"] += 1
        self.notify(set(batch))

    def notify(self, changed: set[str]) -> None:
        for listener in list(self._listeners):
            try:
                listener(changed)
            except Exception:
                _log.exception("change listener failed")


def _item_request(nodeid: ua.NodeId, handle: int) -> ua.MonitoredItemCreateRequest:
    rv = ua.ReadValueId()
    rv.NodeId = nodeid
    rv.AttributeId = ua.AttributeIds.Value
    params = ua.MonitoringParameters()
    params.ClientHandle = handle
    params.SamplingInterval = 0.0
    params.QueueSize = 1
    params.DiscardOldest = True
    mir = ua.MonitoredItemCreateRequest()
    mir.ItemToMonitor = rv
    mir.MonitoringMode = ua.MonitoringMode.Reporting
    mir.RequestedParameters = params
    return mir
