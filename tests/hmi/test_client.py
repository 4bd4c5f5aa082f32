"""The client layer on its own: coalescing, quality, refusal."""

from __future__ import annotations

import time

from asyncua import ua

from hmi.client import Conn, GridClient, Quality, Reading

from .plant import PASSWORDS


def test_notifications_coalesce_into_one_flush():
    client = GridClient("opc.tcp://127.0.0.1:1/x")
    calls: list[set[str]] = []
    client.on_change(calls.append)
    for i in range(100):
        client._pending[f"m{i % 10}"] = Reading(float(i), 0, None, 0, time.monotonic())
    client.flush()
    client.flush()  # nothing pending: no call
    assert len(calls) == 1 and len(calls[0]) == 10
    assert client.values["m3"].value == 93.0


def test_quality_from_status():
    assert Reading(1.0, 0, None, 0, 0).quality is Quality.GOOD
    bad = Reading(None, ua.StatusCodes.BadNoCommunication, None, 0, 0)
    assert bad.quality is Quality.BAD and bad.status_text == "NoComm"
    unc = Reading(1.0, ua.StatusCodes.UncertainLastUsableValue, None, 0, 0)
    assert unc.quality is Quality.UNCERTAIN


async def test_live_subscription_and_stale_after_stop(plant):
    client = GridClient(plant.url, "otto", PASSWORDS["otto"], security="none", flush_interval=0.05)
    await client.start()
    try:
        await client.wait_connected(10)
        path = "buses/bus2/meters/020000000001/power_active_total"
        await client.watch([path, "buses/bus9/meters/x/power_active_total"])
        plant.image.write(path, 3.25)
        t0 = time.monotonic()
        while (r := client.get(path)) is None or r.value != 3.25:
            assert time.monotonic() - t0 < 2.0
            await __import__("asyncio").sleep(0.02)
        assert not client.is_stale(r)
        assert client.missing("buses/bus9/meters/x/power_active_total")
    finally:
        await client.stop()
    assert client.state is Conn.STOPPED and client.is_stale(r)


async def test_wrong_password_is_not_retried(plant):
    client = GridClient(plant.url, "otto", "wrong", security="none")
    await client.start()
    try:
        for _ in range(100):
            if client.state is Conn.LOGIN_FAILED:
                break
            await __import__("asyncio").sleep(0.05)
        assert client.state is Conn.LOGIN_FAILED
        assert client.attempts == 1
    finally:
        await client.stop()
