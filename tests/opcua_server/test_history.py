"""HistoryRead raw for chosen variables and for events, from SQLite, with retention."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from asyncua import ua

from controller.alarms import AlarmEngine

from .conftest import client_for, demo_image, nid, ns_of
from .test_hmi_support import wait_for

SC = ua.StatusCodes
VOLTAGE = "buses/bus1/meters/000000000001/voltage_a"
ENERGY = "buses/bus1/meters/000000000001/energy_forward_active"
CURRENT = "buses/bus1/meters/000000000001/current_a"  # not in the default history set


def at(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


async def test_history_read_raw_in_time_range(start_server, tmp_path):
    image = demo_image(buses=1, meters=1)
    srv = await start_server(image, history_db=tmp_path / "history.db")
    t0 = time.time() - 100.0
    for i in range(10):
        image.write(VOLTAGE, 220.0 + i, source_time=t0 + 10 * i)
        image.write(CURRENT, 1.0 + i, source_time=t0 + 10 * i)
        await wait_for(lambda: srv.stats()["queue_length"] == 0)
    image.write(ENERGY, 1234.5, source_time=t0)
    await wait_for(lambda: srv.stats()["queue_length"] == 0)
    async with client_for(srv) as client:
        ns = await ns_of(client)
        node = client.get_node(nid(ns, VOLTAGE))
        assert await node.read_attribute(ua.AttributeIds.Historizing) is not None
        assert (await node.read_attribute(ua.AttributeIds.Historizing)).Value.Value is True
        access = (await node.read_attribute(ua.AttributeIds.AccessLevel)).Value.Value
        assert access & ua.AccessLevel.HistoryRead.mask

        values = await node.read_raw_history(at(t0 + 15), at(t0 + 55))
        assert [dv.Value.Value for dv in values] == [222.0, 223.0, 224.0, 225.0]
        assert values[0].SourceTimestamp == at(t0 + 20)
        assert all(dv.StatusCode.is_good() for dv in values)
        # Reverse order when start > end; a value limit with a continuation point.
        values = await node.read_raw_history(at(t0 + 55), at(t0 + 15))
        assert [dv.Value.Value for dv in values] == [225.0, 224.0, 223.0, 222.0]
        values = await node.read_raw_history(at(t0 - 1), at(t0 + 1000), numvalues=3)
        assert [dv.Value.Value for dv in values] == [220.0, 221.0, 222.0]
        # asyncua's client follows continuation points when numvalues is 0.
        values = await node.read_raw_history(at(t0 - 1), at(t0 + 1000))
        assert len(values) == 10
        energy = await client.get_node(nid(ns, ENERGY)).read_raw_history(at(t0 - 1), at(t0 + 1))
        assert [dv.Value.Value for dv in energy] == [1234.5]

        # A variable outside the chosen set is not historized, and says so.
        current = client.get_node(nid(ns, CURRENT))
        details = ua.ReadRawModifiedDetails(
            IsReadModified=False, StartTime=at(t0 - 1), EndTime=at(t0 + 1000)
        )
        params = ua.HistoryReadParameters(
            HistoryReadDetails=details,
            TimestampsToReturn=ua.TimestampsToReturn.Both,
            NodesToRead=[ua.HistoryReadValueId(NodeId=current.nodeid)],
        )
        (res,) = await client.uaclient.history_read(params)
        assert res.StatusCode.value == SC.BadHistoryOperationUnsupported


async def test_history_retention(start_server, tmp_path):
    image = demo_image(buses=1, meters=1)
    srv = await start_server(image, history_db=tmp_path / "history.db", history_retention_s=3600.0)
    now = time.time()
    for i, age in enumerate((7200.0, 5000.0, 1800.0, 60.0)):
        image.write(VOLTAGE, 230.0 + i, source_time=now - age)
        await wait_for(lambda: srv.stats()["queue_length"] == 0)
    store = srv.history
    assert store is not None
    assert await store.count() == 4
    await store.prune()
    assert await store.count() == 2
    async with client_for(srv) as client:
        ns = await ns_of(client)
        values = await client.get_node(nid(ns, VOLTAGE)).read_raw_history(at(now - 10_000), at(now))
        assert [dv.Value.Value for dv in values] == [232.0, 233.0]
    # The row cap applies too (oldest first).
    store.max_rows = 1
    await store.prune()
    assert await store.count() == 1


async def test_event_history(start_server, tmp_path):
    engine = AlarmEngine()
    srv = await start_server(alarms=engine, history_db=tmp_path / "history.db", alarm_poll_s=0.05)
    t0 = datetime.now(UTC)
    engine.set("bus_down", "bus/bus2", True, "bus bus2 not connected")
    srv.alarms_changed()
    async with client_for(srv, "otto") as client:
        ns = await ns_of(client)
        await client.get_node(nid(ns, "@alarms")).call_method(
            f"{ns}:Acknowledge", "bus_down:bus/bus2", "seen"
        )
        server = client.get_node(ua.NodeId(ua.ObjectIds.Server))
        notifier = await server.read_attribute(ua.AttributeIds.EventNotifier)
        assert notifier.Value.Value & ua.EventNotifier.HistoryRead.mask

        async def events():
            return await server.read_event_history(t0, datetime.now(UTC))

        await wait_for(lambda: _count(events, 3))
        found = await events()
        messages = [e.Message.Text for e in found]
        assert "bus bus2 not connected" in messages
        assert any("otto called Acknowledge on @alarms" in m for m in messages)
        types = {e.EventType for e in found}
        assert ua.NodeId(ua.ObjectIds.SystemOffNormalAlarmType) in types
        assert ua.NodeId(ua.ObjectIds.AuditUpdateMethodEventType) in types


async def _count(events, n: int) -> bool:
    return len(await events()) >= n
