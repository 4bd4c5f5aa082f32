"""Publishing intervals a client may ask for (Part 4 §5.13.2: the server revises them).

asyncua 2.1 takes RequestedPublishingInterval as it comes. Zero makes a
subscription publish on demand, which under a stream of changes recursed
into a RecursionError (BadInternalError, thousands of log lines); a tiny
positive value turns one client into a busy loop on the server. The server
revises the request into ``[min_ms, max_ms]``: the client then sees the
interval it really gets, as the specification wants.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

from asyncua import ua

from .asyncua_gate import require_pinned

MAX_PUBLISHING_INTERVAL_MS = 3_600_000.0  # one hour


def revised_interval(requested: float, min_ms: float, max_ms: float) -> float:
    """The interval the server grants for a requested one (NaN, ≤ 0 or too small → min)."""
    if not math.isfinite(requested) or requested < min_ms:
        return min_ms
    return min(requested, max_ms)


def limit_publishing_interval(
    iserver: Any, min_ms: float, max_ms: float = MAX_PUBLISHING_INTERVAL_MS
) -> None:
    """Revise every new subscription's publishing interval into [min_ms, max_ms].

    CreateSubscription reaches ``iserver.subscription_service.create_subscription``
    (asyncua 2.1's call path; ModifySubscription keeps the created values), so the
    instance's method is wrapped there.
    """
    require_pinned("the minimum publishing interval")
    service = iserver.subscription_service
    create: Callable[..., Awaitable[ua.CreateSubscriptionResult]] = service.create_subscription
    if getattr(create, "gridctl_limited", False):
        return

    async def create_subscription(
        params: ua.CreateSubscriptionParameters, *args: Any, **kwargs: Any
    ) -> ua.CreateSubscriptionResult:
        params.RequestedPublishingInterval = revised_interval(
            float(params.RequestedPublishingInterval), min_ms, max_ms
        )
        return await create(params, *args, **kwargs)

    create_subscription.gridctl_limited = True  # type: ignore[attr-defined]
    service.create_subscription = create_subscription
