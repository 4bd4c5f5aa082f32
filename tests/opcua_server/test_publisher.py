from __future__ import annotations

import asyncio
import time

from asyncua import ua
from asyncua.server.address_space import AttributeValue

from controller.process_image import ChangeQueue, ProcessImage, Quality
from controller.quality_reason import Reason
from opcua_server.model import VarEntry
from opcua_server.publisher import Publisher
from opcua_server.quality import data_value

from .conftest import client_for, nid, ns_of

INTERVAL_MS = 200


class Collector:
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.arrived: dict[ua.NodeId, tuple[float, ua.DataValue]] = {}
        self.done = asyncio.Event()

    def datachange_notification(self, node, val, data):
        self.arrived[node.nodeid] = (time.monotonic(), data.monitored_item.Value)
        if len(self.arrived) >= self.expected:
            self.done.set()


async def test_1000_subscribed_changes_arrive_within_two_publishing_intervals(start_server):
    image = ProcessImage()
    names = [f"buses/bus{m // 100}/meters/{m:012d}/power_active" for m in range(1000)]
    for name in names:
        image.define(name, "kW")
    srv = await start_server(image)
    async with client_for(srv, "vera") as client:
        ns = await ns_of(client)
        nodes = [client.get_node(nid(ns, n)) for n in names]
        # Initial values (Bad, waiting) are delivered first; collect and discard them.
        initial = Collector(len(nodes))
        sub = await client.create_subscription(INTERVAL_MS, initial)
        await sub.subscribe_data_change(nodes, queuesize=1)
        await asyncio.wait_for(initial.done.wait(), 10)
        await asyncio.sleep(INTERVAL_MS / 1000)

        changes = Collector(len(nodes))
        sub._handler = changes  # same subscription, new collector
        written = time.monotonic()
        for i, name in enumerate(names):
            image.write(name, float(i), source_time=1_700_000_000.0)
        await asyncio.wait_for(changes.done.wait(), 10)
        latest = max(t for t, _ in changes.arrived.values())
        assert latest - written <= 2 * INTERVAL_MS / 1000, f"{latest - written:.3f} s"
        values = {
            node.nodeid: dv for node, (_, dv) in zip(nodes, changes.arrived.items(), strict=True)
        }
        assert len(values) == 1000
        dv = changes.arrived[nodes[7].nodeid][1]
        assert dv.Value.Value == 7.0 and dv.StatusCode.is_good()
        await sub.delete()


async def test_quality_change_reaches_subscriber(start_server):
    image = ProcessImage()
    image.define("buses/b/meters/000000000001/voltage_a", "V")
    srv = await start_server(image)
    image.write("buses/b/meters/000000000001/voltage_a", 230.0)
    async with client_for(srv) as client:
        ns = await ns_of(client)
        node = client.get_node(nid(ns, "buses/b/meters/000000000001/voltage_a"))
        got: asyncio.Queue = asyncio.Queue()

        class H:
            def datachange_notification(self, node, val, data):
                got.put_nowait(data.monitored_item.Value)

        sub = await client.create_subscription(50, H())
        await sub.subscribe_data_change(node)
        first = await asyncio.wait_for(got.get(), 5)
        assert first.Value.Value == 230.0
        image.invalidate("buses/b", "bus offline", code=Reason.LINK_DOWN)
        bad = await asyncio.wait_for(got.get(), 5)
        assert bad.StatusCode.value == ua.StatusCodes.BadNoCommunication
        await sub.delete()


async def test_bounded_queue_counts_drops_and_never_blocks_writer(start_server):
    image = ProcessImage()
    for i in range(50):
        image.define(f"m/{i}/p", "kW")
    srv = await start_server(image, config_overrides={"queue_size": 10})
    # A burst larger than the queue, written synchronously (as a control cycle would).
    for rnd in range(3):
        for i in range(50):
            image.write(f"m/{i}/p", float(rnd * 100 + i))
    await asyncio.sleep(0.1)
    stats = srv.stats()
    assert stats["dropped"] == 150 - 10
    # The current value is never what a drop loses.
    await srv.update_diagnostics()
    async with client_for(srv) as client:
        ns = await ns_of(client)
        last = await client.get_node(nid(ns, "m/49/p")).read_value()
        assert last == 249.0
        dropped = await client.get_node(nid(ns, "@diag/Dropped")).read_value()
        assert dropped == 140
        assert await client.get_node(nid(ns, "@diag/QueueLimit")).read_value() == 10


async def test_only_changed_values_are_written(start_server):
    image = ProcessImage()
    image.define("m/1/p", "kW")
    srv = await start_server(image)
    image.write("m/1/p", 1.0)
    image.write("m/1/p", 1.0)  # unchanged: the image does not notify
    image.write("m/1/p", 1.0, Quality.GOOD)
    await asyncio.sleep(0.05)
    assert srv.stats()["published"] == 1


async def test_the_fast_path_writes_the_same_data_value_as_the_generic_one():
    """Good floats skip the generic conversion; what lands must not differ, in
    either queue form (image pairs, or the server process's feed rows)."""
    image = ProcessImage()
    for name in ("a", "b"):
        image.define(name, "kW")
    written = [image.write("a", 230.25, source_time=1_790_000_000.5), image.write("b", 1.5)]
    assert all(written)
    pairs = [(image.tag(n), image.get(n)) for n in ("a", "b")]
    entries = {n: VarEntry(AttributeValue(ua.DataValue()), ua.VariantType.Double) for n in "ab"}
    await Publisher(ChangeQueue("t", 10), entries).publish(pairs)
    for tag, tv in pairs:
        assert entries[tag.name].attr.value == data_value(tv, ua.VariantType.Double)

    class Rows:
        def __init__(self) -> None:
            self.names = {0: "a", 1: "b"}

        def keep(self, row: object) -> None:
            raise AssertionError("both tags are in the model")

    rows = [(i, *tv) for i, (_, tv) in enumerate(pairs)]
    fresh = {n: VarEntry(AttributeValue(ua.DataValue()), ua.VariantType.Double) for n in "ab"}
    await Publisher(ChangeQueue("t", 10), fresh, rows=Rows()).publish(rows)
    for tag, tv in pairs:
        assert fresh[tag.name].attr.value == data_value(tv, ua.VariantType.Double)
