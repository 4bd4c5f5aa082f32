"""Subscription Basic (Part 4 §5.13.2): the server revises the publishing interval."""

from __future__ import annotations

import asyncio
import math

import pytest
from asyncua import ua

from opcua_server.subscription_limits import revised_interval

from .conftest import client_for, demo_image, nid, ns_of

VOLT = "buses/bus1/meters/000000000001/voltage_a"


class Changes:
    def __init__(self) -> None:
        self.values: list[float] = []
        self.arrived = asyncio.Event()

    def datachange_notification(self, node, value, data) -> None:
        self.values.append(value)
        self.arrived.set()


@pytest.mark.parametrize("requested", [0.0, -5.0, 1.0, math.nan])
async def test_a_too_small_publishing_interval_is_revised_to_the_minimum(start_server, requested):
    image = demo_image()
    srv = await start_server(image, config_overrides={"min_publishing_interval_ms": 150.0})
    image.write(VOLT, 230.0)
    async with client_for(srv, "vera") as client:
        ns = await ns_of(client)
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=requested,
            RequestedLifetimeCount=600,
            RequestedMaxKeepAliveCount=20,
            PublishingEnabled=True,
        )
        handler = Changes()
        sub = await client.create_subscription(params, handler)
        # The configured minimum, 150 ms, whatever was asked: the client was
        # told so (asyncua's client adopts the revised value) and the server runs it.
        assert sub.parameters.RequestedPublishingInterval == 150.0
        subs = srv.server.iserver.subscription_service.subscriptions.values()
        assert [s.data.RevisedPublishingInterval for s in subs] == [150.0]
        await sub.subscribe_data_change(client.get_node(nid(ns, VOLT)))
        await asyncio.wait_for(handler.arrived.wait(), 10)
        # A burst of changes goes out as data, not as BadInternalError.
        for i in range(200):
            image.write(VOLT, 231.0 + i)
        async with asyncio.timeout(10):
            while 430.0 not in handler.values:  # 231 + 199
                handler.arrived.clear()
                await handler.arrived.wait()
        await sub.delete()


def test_revised_interval_by_hand():
    # [min, max] = [100, 3 600 000] ms
    assert revised_interval(0.0, 100.0, 3_600_000.0) == 100.0
    assert revised_interval(99.9, 100.0, 3_600_000.0) == 100.0
    assert revised_interval(250.0, 100.0, 3_600_000.0) == 250.0
    assert revised_interval(1e12, 100.0, 3_600_000.0) == 3_600_000.0
    assert revised_interval(math.inf, 100.0, 3_600_000.0) == 100.0


def test_the_minimum_refuses_another_asyncua(monkeypatch):
    import asyncua

    from opcua_server.asyncua_gate import AsyncuaVersionError
    from opcua_server.subscription_limits import limit_publishing_interval

    monkeypatch.setattr(asyncua, "__version__", "2.2.0")
    with pytest.raises(AsyncuaVersionError):
        limit_publishing_interval(object(), 100.0)
