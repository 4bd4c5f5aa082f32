"""Stopping a background task: cancel it, wait until it has finished.

Every long-running part (cycle tasks, bus owners, the OPC UA publisher, the
line feed, …) owns background tasks and stops them the same way. The wait
matters: a stop that returns while the task still runs lets it touch what the
caller closes next (a port, a database connection). Wrapping the wait in
``contextlib.suppress(CancelledError)`` would also swallow a cancellation of
the *caller* (a shutdown that gives up on a slow stop); here the task's own
CancelledError is absorbed and the caller's goes on.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def stop_task(task: asyncio.Future[Any] | None) -> None:
    """Cancel ``task`` and wait for it; an exception it had already failed with is raised."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
