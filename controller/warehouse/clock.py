"""Injectable time: the real clock, or virtual time on a discrete-event asyncio loop.

Everything in the warehouse reads time from ``loop.time()`` and waits with
``asyncio.sleep`` / ``asyncio.wait_for``. Running the same code on
:class:`VirtualTimeLoop` makes every sleep deterministic and instantaneous: the
loop jumps straight to the next scheduled callback whenever no socket is ready,
which is exactly a discrete-event simulator, so hours of crane work run in
seconds without a special code path.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):
    """Polls real sockets without blocking, and advances virtual time instead of waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            # nothing scheduled: only real I/O can wake us, so block for it
            return super().select(None)
        assert self.loop is not None
        self.loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose ``time()`` is virtual and jumps to the next deadline."""

    def __init__(self, start: float = 0.0) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self._virtual_now = start

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self._virtual_now += seconds


def run_virtual(coro: Coroutine[Any, Any, T], start: float = 0.0) -> T:
    """Run ``coro`` to completion in virtual time (a fresh loop each call)."""
    loop = VirtualTimeLoop(start)
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


def now() -> float:
    """The running loop's clock (virtual under :class:`VirtualTimeLoop`)."""
    return asyncio.get_running_loop().time()
