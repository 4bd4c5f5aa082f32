"""Virtual time: an asyncio loop whose clock jumps to the next deadline.

Code under it reads time from ``loop.time()`` and waits with ``asyncio.sleep`` /
``asyncio.wait_for`` exactly as in production; on :class:`VirtualTimeLoop` every
timer wait is instantaneous (or ``scale`` times faster than real time) while
real sockets are still polled, which makes it a discrete-event simulator. The
verification line's virtual clock and the warehouse's runs (tests, benches)
both use this one loop.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class VirtualTimeDeadlock(RuntimeError):
    """Every task waits, no timer is set and nothing external can wake the loop."""


class _VirtualSelector(selectors.BaseSelector):
    """Wraps the real selector: real I/O is still polled, but a wait for a timer
    advances the loop's virtual time instead of blocking (or blocks for
    ``timeout / scale`` real seconds when a scale is set)."""

    def __init__(
        self, loop: VirtualTimeLoop, scale: float | None, idle_limit_s: float | None
    ) -> None:
        self._real = selectors.DefaultSelector()
        self._loop = loop
        self._scale = scale
        self._idle_limit_s = idle_limit_s

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = self._real.select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            # Only a thread or real I/O can wake us (run_in_executor, sockets).
            events = self._real.select(self._idle_limit_s)
            if not events and self._idle_limit_s is not None:
                raise VirtualTimeDeadlock(
                    "virtual time: every task waits and no timer is set "
                    f"(nothing happened for {self._idle_limit_s} s of real time)"
                )
            return events
        if self._scale is None:
            self._loop._vt += timeout
            return []
        start = time.monotonic()
        events = self._real.select(timeout / self._scale)
        if events:
            self._loop._vt += min(timeout, (time.monotonic() - start) * self._scale)
        else:
            self._loop._vt += timeout
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose ``time()`` is virtual (from ``start``) and jumps to the next
    deadline whenever no real I/O is ready. ``idle_limit_s``: how long (real seconds) a
    loop with no timer waits for real I/O before declaring a deadlock; None waits on."""

    def __init__(
        self, scale: float | None = None, idle_limit_s: float | None = 30.0, start: float = 0.0
    ) -> None:
        self._vt = start
        super().__init__(_VirtualSelector(self, scale, idle_limit_s))

    def time(self) -> float:
        return self._vt


def run_virtual(coro: Coroutine[Any, Any, T], start: float = 0.0) -> T:
    """Run ``coro`` to completion in virtual time on a fresh loop (waits for real I/O
    as long as it takes: a simulator in another process may be slow to answer)."""
    loop = VirtualTimeLoop(idle_limit_s=None, start=start)
    try:
        return loop.run_until_complete(coro)
    finally:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
