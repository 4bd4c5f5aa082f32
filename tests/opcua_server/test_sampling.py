"""Feeding monitored items: sampling ticks, asyncua's queue and filter rules, counters.

Real asyncua clients against the real server: the publisher's own path to
monitored items must keep what asyncua's callback does (deadband, queue size,
the latest value last), and the counters the server process reports over the
channel must count what reached the address space.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from controller.process_image import ProcessImage
from opcua_server.channel import FrameDecoder
from opcua_server.feed import ImageFeed
from opcua_server.server_process import OpcUaServerProcess

from .conftest import client_for, make_config, nid, ns_of

TAG = "buses/b/meters/000000000001/power_active"


class Values:
    """Every notified value, in arrival order."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.changed = asyncio.Event()

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.values.append(val)
        self.changed.set()

    async def until(self, check: Any, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while not check(self.values):
            self.changed.clear()
            left = end - time.monotonic()
            assert left > 0, f"not seen within {timeout} s: {self.values}"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)


def one_tag() -> ProcessImage:
    image = ProcessImage()
    image.define(TAG, "kW")
    image.write(TAG, 0.0)
    return image


async def separate_batches(image: ProcessImage, values: list[float]) -> None:
    """Write each value in its own publisher batch (the publisher runs in between)."""
    for v in values:
        image.write(TAG, v)
        for _ in range(3):
            await asyncio.sleep(0)


async def test_a_sampling_tick_notifies_the_latest_value_and_counts_the_rest(start_server):
    image = one_tag()
    srv = await start_server(image, config_overrides={"sampling_interval_ms": 200.0})
    async with client_for(srv) as client:
        ns = await ns_of(client)
        seen = Values()
        sub = await client.create_subscription(50, seen)
        # queue size 10: asyncua itself would keep all of them; the tick keeps the latest
        await sub.subscribe_data_change(client.get_node(nid(ns, TAG)), queuesize=10)
        await seen.until(lambda v: v == [0.0])
        await separate_batches(image, [1.0, 2.0, 3.0])
        # The address space has every value at once; a Read sees the latest.
        assert await client.get_node(nid(ns, TAG)).read_value() == 3.0
        await seen.until(lambda v: v[-1] == 3.0)
        await asyncio.sleep(0.5)
        assert seen.values[-1] == 3.0
        # three writes within (at most two) ticks: at most two notifications
        assert len([v for v in seen.values if v in (1.0, 2.0, 3.0)]) <= 2, seen.values
        stats = srv.stats()
        assert stats["published"] == 3  # 0.0 was in the image when the model was built
        assert stats["sampled_coalesced"] >= 1, stats
        await sub.delete()


@pytest.mark.parametrize("fast", [True, False], ids=["synchronous-path", "asyncua-callback"])
async def test_every_change_keeps_asyncua_queue_and_deadband_rules(start_server, fast):
    image = one_tag()
    srv = await start_server(image, config_overrides={"sampling_interval_ms": 0.0})
    # The fallback (another asyncua minor) awaits asyncua's own callback: same values.
    assert srv._publisher.fast_datachange
    srv._publisher.fast_datachange = fast
    async with client_for(srv) as client:
        ns = await ns_of(client)
        node = client.get_node(nid(ns, TAG))
        queued, latest, banded = Values(), Values(), Values()
        # A long publishing interval: the three writes land in one publish.
        sub_q = await client.create_subscription(1000, queued)
        await sub_q.subscribe_data_change(node, queuesize=5)
        sub_l = await client.create_subscription(1000, latest)
        await sub_l.subscribe_data_change(node, queuesize=1)
        sub_d = await client.create_subscription(50, banded)
        await sub_d.deadband_monitor(node, 1.0, queuesize=5)
        for seen in (queued, latest, banded):
            await seen.until(lambda v: v == [0.0])

        await asyncio.sleep(1.1)  # just after a publish of the 1 s subscriptions
        await separate_batches(image, [1.0, 2.0, 3.0])
        await queued.until(lambda v: v[-1] == 3.0)
        await latest.until(lambda v: v[-1] == 3.0)
        assert queued.values == [0.0, 1.0, 2.0, 3.0]  # queue size 5 keeps all three
        assert latest.values == [0.0, 3.0]  # queue size 1 keeps the latest

        # Absolute deadband 1.0, as asyncua applies it: against the previous value.
        # 1.0, 2.0, 3.0 each moved by exactly 1.0: none passed.
        await separate_batches(image, [3.5, 5.0, 5.5, 7.0])
        await banded.until(lambda v: v[-1] == 7.0)
        await asyncio.sleep(0.2)
        assert banded.values == [0.0, 5.0, 7.0], banded.values
        assert srv.stats()["notified"] >= 5
        for sub in (sub_q, sub_l, sub_d):
            await sub.delete()


def test_another_asyncua_minor_keeps_asyncua_data_change_callback(monkeypatch, caplog):
    import asyncua

    from controller.process_image import ChangeQueue
    from opcua_server.publisher import Publisher

    monkeypatch.setattr(asyncua, "__version__", "2.2.0")
    publisher = Publisher(ChangeQueue("t", 10), {})
    assert publisher.fast_datachange is False
    assert "synchronous data-change path falls back" in caplog.text


async def test_the_server_process_reports_what_reached_its_address_space(tmp_path: Path):
    image = one_tag()
    server = OpcUaServerProcess(make_config(), image, state_dir=tmp_path / "opcua")
    info = await server.start()
    try:
        assert info["model_nodes"] > 0 and info["model_rss_bytes"] > 0
        for i in range(1, 101):
            image.write(TAG, float(i))
            await asyncio.sleep(0.001)
        end = time.monotonic() + 20
        while server.feed.server_stats.get("applied", 0) < 101 and time.monotonic() < end:
            await asyncio.sleep(0.1)
        stats = server.feed.server_stats
        # 100 changes plus the value defined with the tag; none dropped.
        assert stats["applied"] == 101, stats
        assert 1 <= stats["published"] <= 101 and stats["dropped"] == 0, stats
        async with client_for(server) as client:  # type: ignore[arg-type]
            ns = await ns_of(client)
            assert await client.get_node(nid(ns, TAG)).read_value() == 100.0
    finally:
        await server.stop()


async def test_a_backlog_goes_out_frame_after_frame_not_one_per_flush_interval(tmp_path: Path):
    image = ProcessImage()
    names = [f"m/{i:04d}/p" for i in range(1000)]
    for name in names:
        image.define(name, "kW")
    path = tmp_path / "feed.sock"
    # One frame of 10 changes per flush of 1 s would take 100 s for this backlog.
    # expected_pid=None: this test reads the channel itself, not through a spawned child.
    feed = ImageFeed(image, path, hello={}, expected_pid=None, batch_limit=10, flush_interval_s=1.0)
    await feed.start()
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 20)
    try:
        decoder = FrameDecoder()
        ids: dict[int, str] = {}
        latest: dict[str, Any] = {}
        synced = False
        while not synced:
            for message in decoder.feed(await asyncio.wait_for(reader.read(1 << 20), 10)):
                if message["t"] == "tags":
                    ids.update({row[0]: row[1] for row in message["defs"]})
                synced = synced or message["t"] == "synced"
        for i, name in enumerate(names):
            image.write(name, float(i))
        started = time.monotonic()
        while len(latest) < len(names):
            data = await asyncio.wait_for(reader.read(1 << 20), 10)
            for message in decoder.feed(data):
                if message["t"] == "changes":
                    assert len(message["c"]) <= 10
                    latest.update({ids[row[0]]: row[1] for row in message["c"]})
        assert latest[names[-1]] == 999.0
        assert time.monotonic() - started < 10, "the backlog waited a flush interval per frame"
    finally:
        writer.close()
        await feed.stop()
