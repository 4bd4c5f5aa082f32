"""A command's ``confirmed`` never reaches a client ahead of the relay state it confirms.

The controller writes the relay's read-back into the image, then confirms the
command. A client subscribed to both must get the relay state in an earlier
Publish than ``LastCommandState = confirmed``, or in the same one, even when
the publisher is working through a backlog of other changes. Real parts: a
SQLite command log, the OPC UA server (inline and in its own process), a real
asyncua client whose PublishResponses are recorded as they arrive.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua

from controller.commands import CommandLog
from controller.journal import Journal
from controller.process_image import ProcessImage
from opcua_server.adapters import CommandLogSink
from opcua_server.server_process import OpcUaServerProcess
from tests.loads.conftest import rig  # noqa: F401 (a fixture)

from .conftest import client_for, demo_image, make_config, nid, ns_of, until

LOAD = "loads/feeder1_l1"
# Changes queued ahead of the relay's: the publisher needs well over one
# diagnostics period (when command states are polled) to write them.
BACKLOG = 200_000
OVERRIDES = {"queue_size": 1_000_000, "publish_batch": 500}


class Publishes:
    """The relay and command-state notifications of one subscription, by Publish.

    A PublishResponse is handed to the subscription as a whole; recording it
    there (the session's callback for the subscription) keeps its boundaries,
    which the per-notification handler does not show.
    """

    def __init__(self) -> None:
        self.seq = 0
        self.relay: list[tuple[int, Any]] = []  # (publish number, relay_open)
        self.state: list[tuple[int, Any]] = []  # (publish number, LastCommandState)

    def wrap(self, client: Client, subscription_id: int) -> None:
        callbacks = client.uaclient._subscription_callbacks
        inner = callbacks[subscription_id]

        async def record(result: ua.PublishResult) -> None:
            self.seq += 1
            for data in result.NotificationMessage.NotificationData or []:
                if not isinstance(data, ua.DataChangeNotification):
                    continue
                for item in data.MonitoredItems:
                    value = item.Value.Value.Value if item.Value.Value is not None else None
                    # relay_open is a Boolean, LastCommandState a String
                    if isinstance(value, bool):
                        self.relay.append((self.seq, value))
                    elif isinstance(value, str):
                        self.state.append((self.seq, value))
            out = inner(result)
            if asyncio.iscoroutine(out):
                await out

        callbacks[subscription_id] = record

    def first(self, seen: list[tuple[int, Any]], value: Any) -> int | None:
        return next((seq for seq, v in seen if v == value), None)


class Quiet:
    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        pass


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[CommandLog]:
    journal = Journal(tmp_path / "journal.sqlite")
    journal.open()
    try:
        yield CommandLog(journal)
    finally:
        journal.close()


def backlog_image() -> ProcessImage:
    # 2 buses x 30 meters x 5 tags = 300 tags to spread the backlog over
    image = demo_image(buses=2, meters=30)
    return image


async def trip_and_confirm(client: Client, image: ProcessImage, log: CommandLog) -> Publishes:
    ns = await ns_of(client)
    load = client.get_node(nid(ns, LOAD))
    token, _ = await load.call_method(f"{ns}:Arm", "trip", "overdraft")
    command_id = await load.call_method(f"{ns}:Execute", token)
    seen = Publishes()
    sub = await client.create_subscription(20, Quiet())
    seen.wrap(client, sub.subscription_id)
    await sub.subscribe_data_change(
        [
            client.get_node(nid(ns, f"{LOAD}/relay_open")),
            client.get_node(nid(ns, f"{LOAD}/LastCommandState")),
        ]
    )
    await log.transition(command_id, "sent", reason="feeder f1")
    await until(lambda: seen.first(seen.state, "sent") is not None, timeout=60.0)
    assert seen.first(seen.relay, True) is None

    # The executor's order: the read-back lands in the image, then the command
    # is confirmed; other values changed just before (the backlog).
    volts = [t.name for t in image.tags("buses/") if t.name.endswith("/voltage_a")]
    for i in range(BACKLOG):
        image.write(volts[i % len(volts)], 200.0 + i % 7)
    image.write(f"{LOAD}/relay_open", True)
    await log.transition(command_id, "confirmed", reason="read back open")

    await until(
        lambda: (
            seen.first(seen.state, "confirmed") is not None
            and seen.first(seen.relay, True) is not None
        ),
        timeout=60.0,
    )
    await sub.delete()
    return seen


def assert_relay_first(seen: Publishes) -> None:
    relay = seen.first(seen.relay, True)
    confirmed = seen.first(seen.state, "confirmed")
    assert relay is not None and confirmed is not None
    assert relay <= confirmed, (
        f"confirmed arrived in Publish {confirmed}, the relay state only in {relay}"
    )


async def test_confirmed_never_ahead_of_the_relay_state_inline(start_server, log: CommandLog):
    image = backlog_image()
    # command states polled every 50 ms, while the backlog takes far longer
    srv = await start_server(
        image, commands=log, diagnostics_period_s=0.05, config_overrides=OVERRIDES
    )
    async with client_for(srv, "otto") as client:
        seen = await trip_and_confirm(client, image, log)
    assert_relay_first(seen)


async def test_confirmed_never_ahead_of_the_relay_state_over_the_channel(
    tmp_path: Path, log: CommandLog
):
    image = backlog_image()
    server = OpcUaServerProcess(
        make_config(**OVERRIDES),
        image,
        state_dir=tmp_path / "opcua",
        commands=CommandLogSink(log),
    )
    await server.start()
    try:
        async with client_for(server, "otto") as client:  # type: ignore[arg-type]
            seen = await trip_and_confirm(client, image, log)
        assert_relay_first(seen)
    finally:
        await server.stop()


async def test_the_feed_sends_a_command_state_behind_the_changes_before_it(
    tmp_path: Path, log: CommandLog
):
    """On the channel: the frame with ``confirmed`` follows the one with the relay row,
    even when the changes before it take several frames (batch_limit) to go out."""
    import time

    from opcua_server.channel import FrameDecoder, encode
    from opcua_server.feed import ImageFeed

    image = backlog_image()
    path = tmp_path / "feed.sock"
    # states polled at every step; three tags' worth of frames ahead of the relay
    # (expected_pid=None: this test reads the channel itself, no spawned child)
    feed = ImageFeed(
        image,
        path,
        hello={},
        expected_pid=None,
        commands=CommandLogSink(log),
        batch_limit=100,
        flush_interval_s=0.1,
        status_period_s=0.0,
    )
    await feed.start()
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 22)
    decoder = FrameDecoder()
    frames: list[dict[str, Any]] = []

    async def read_until(done: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + 30
        while not done():
            assert loop.time() < end, "the frames did not arrive within 30 s"
            data = await asyncio.wait_for(reader.read(1 << 20), 30)
            assert data, "the feed closed the channel"
            frames.extend(decoder.feed(data))

    def states(frame: dict[str, Any]) -> dict[str, Any]:
        return frame.get("states") or frame.get("commands") or {}

    try:
        await read_until(lambda: any(f["t"] == "synced" for f in frames))
        ids = {row[1]: row[0] for f in frames if f["t"] == "tags" for row in f["defs"]}
        relay_id = ids[f"{LOAD}/relay_open"]
        request = {
            "target": LOAD,
            "kind": "trip",
            "reason": "overdraft",
            "user": "otto",
            "role": "operator",
            "token": "t-1",
            "armed_at": time.time(),
        }
        writer.write(encode({"t": "request", "id": 1, "op": "submit", "request": request}))
        await read_until(lambda: any(f["t"] == "reply" for f in frames))
        (reply,) = [f for f in frames if f["t"] == "reply"]
        assert reply["ok"], reply
        command_id = reply["result"]["command_id"]
        await log.transition(command_id, "sent", reason="feeder f1")
        await read_until(lambda: any(states(f).get(command_id, [""])[0] == "sent" for f in frames))
        frames.clear()

        # 300 other tags changed, then the relay read back, then the confirmation
        volts = [t.name for t in image.tags("buses/")]
        for name in volts:
            image.write(name, 1.0)
        image.write(f"{LOAD}/relay_open", True)
        await log.transition(command_id, "confirmed", reason="read back open")

        def index(match: Callable[[dict[str, Any]], bool]) -> int | None:
            return next((i for i, f in enumerate(frames) if match(f)), None)

        def relay_frame(f: dict[str, Any]) -> bool:
            return f["t"] == "changes" and any(
                row[0] == relay_id and row[1] is True for row in f["c"]
            )

        def confirmed_frame(f: dict[str, Any]) -> bool:
            return states(f).get(command_id, [""])[0] == "confirmed"

        await read_until(
            lambda: index(relay_frame) is not None and index(confirmed_frame) is not None
        )
        relay_at, confirmed_at = index(relay_frame), index(confirmed_frame)
        assert relay_at is not None and confirmed_at is not None
        assert relay_at < confirmed_at, [f["t"] for f in frames]
    finally:
        writer.close()
        await feed.stop()


async def test_the_executor_writes_the_load_relay_before_it_confirms(rig: Any):  # noqa: F811
    """Against simulated meters: the load's relay tag shows the read-back in the
    image before the command is confirmed (its last_outcome written after that),
    not only at the next control cycle."""
    from controller.commands import CommandState

    r = await rig()
    r.executor.mirror()
    assert r.image.value("loads/l1/relay_open") is False
    changes = r.image.subscribe("order")
    cmd = await r.executor.run("trip", "l1", who="otto", why="order test")
    assert cmd.state is CommandState.CONFIRMED, cmd.reason
    seen = [(tag.name, tv.value) for tag, tv in changes.drain()]
    relay = seen.index(("loads/l1/relay_open", True))
    outcome = next(
        i
        for i, (name, value) in enumerate(seen)
        if name == "loads/l1/last_outcome" and str(value).startswith("confirmed")
    )
    assert relay < outcome, seen
