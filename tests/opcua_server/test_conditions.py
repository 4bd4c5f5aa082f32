"""Alarms & Conditions: condition events, Acknowledge/Confirm, ConditionRefresh."""

from __future__ import annotations

import asyncio

import pytest
from asyncua import Client, ua

from controller.alarms import AlarmEngine

from .conftest import client_for, ns_of
from .test_hmi_support import wait_for

SC = ua.StatusCodes
O = ua.ObjectIds  # noqa: E741


class Events:
    def __init__(self) -> None:
        self.items: list = []

    def event_notification(self, event) -> None:
        self.items.append(event)

    def of(self, alarm_id: str) -> list:
        return [e for e in self.items if getattr(e, "SourceName", None) and _cid(e, alarm_id)]


def _cid(event, alarm_id: str) -> bool:
    node = getattr(event, "NodeId", None)
    return node is not None and node.Identifier == f"@alarms/{alarm_id}"


async def subscribe(
    client: Client, handler: Events, etypes: tuple[int, ...] = (O.AlarmConditionType,)
):
    sub = await client.create_subscription(20, handler)
    server = client.get_node(ua.NodeId(O.Server))
    types = [client.get_node(ua.NodeId(t)) for t in etypes]
    await sub.subscribe_events(server, types, queuesize=100)
    return sub


def field(event, name: str):
    return getattr(event, name)


async def call(client: Client, obj: ua.NodeId, method: int, *args: ua.Variant) -> ua.StatusCode:
    req = ua.CallMethodRequest(ObjectId=obj, MethodId=ua.NodeId(method), InputArguments=list(args))
    (res,) = await client.uaclient.call([req])
    return res.StatusCode


def ack_args(event, comment: str) -> tuple[ua.Variant, ua.Variant]:
    return (
        ua.Variant(field(event, "EventId"), ua.VariantType.ByteString),
        ua.Variant(ua.LocalizedText(comment), ua.VariantType.LocalizedText),
    )


@pytest.fixture
async def alarm_server(start_server):
    engine = AlarmEngine()
    srv = await start_server(alarms=engine, alarm_poll_s=0.05, alarm_confirm=True)
    return srv, engine


async def test_raised_alarm_arrives_as_condition_event(alarm_server):
    srv, engine = alarm_server
    handler = Events()
    async with client_for(srv, "otto") as client:
        ns = await ns_of(client)
        # Select the limit alarm's fields (HighLimit, LimitState) as well.
        await subscribe(client, handler, (O.AlarmConditionType, O.ExclusiveLevelAlarmType))
        engine.set("over_temperature", "line/stations/07", True, "71.5 > 65")
        srv.alarms_changed()
        alarm_id = "over_temperature:line/stations/07"
        await wait_for(lambda: handler.of(alarm_id))
        ev = handler.of(alarm_id)[-1]
        assert field(ev, "EventType") == ua.NodeId(O.ExclusiveLevelAlarmType)
        assert field(ev, "ActiveState/Id") is True
        assert field(ev, "ActiveState").Text == "Active"
        assert field(ev, "AckedState/Id") is False
        assert field(ev, "ConfirmedState/Id") is True
        assert field(ev, "EnabledState/Id") is True
        assert field(ev, "Retain") is True
        assert field(ev, "Severity") == 900
        assert field(ev, "Message").Text == "71.5 > 65"
        assert field(ev, "ConditionName") == "over_temperature"
        assert field(ev, "ConditionClassId") == ua.NodeId(O.ProcessConditionClassType)
        assert field(ev, "SourceName") == "line/stations/07"
        assert field(ev, "HighLimit") == 65.0
        assert field(ev, "LimitState/CurrentState").Text == "High"
        cond = field(ev, "NodeId")
        assert cond == ua.NodeId(f"@alarms/{alarm_id}", ns)
        # The condition is a node of its type (so Acknowledge can be called on it).
        assert (await client.get_node(cond).read_type_definition()) == ua.NodeId(
            O.ExclusiveLevelAlarmType
        )

        # Acknowledge with the EventId: recorded with the user and comment.
        status = await call(
            client, cond, O.AcknowledgeableConditionType_Acknowledge, *ack_args(ev, "on it")
        )
        assert status.is_good(), status
        a = engine.get(alarm_id)
        assert (a.acked, a.acked_by, a.ack_note) == (True, "otto", "on it")
        await wait_for(lambda: field(handler.of(alarm_id)[-1], "AckedState/Id"))
        acked = handler.of(alarm_id)[-1]
        assert field(acked, "ClientUserId") == "otto"
        assert field(acked, "Comment").Text == "on it"
        assert field(acked, "ConfirmedState/Id") is False  # confirmation enabled
        # Acknowledging twice, or with an old EventId, is refused.
        status = await call(
            client, cond, O.AcknowledgeableConditionType_Acknowledge, *ack_args(acked, "again")
        )
        assert status.value == SC.BadConditionBranchAlreadyAcked
        status = await call(
            client, cond, O.AcknowledgeableConditionType_Acknowledge, *ack_args(ev, "old")
        )
        assert status.value == SC.BadEventIdUnknown

        # Cleared, then confirmed: no longer retained.
        engine.set("over_temperature", "line/stations/07", False, "60 back within 65")
        srv.alarms_changed()
        await wait_for(lambda: not field(handler.of(alarm_id)[-1], "ActiveState/Id"))
        cleared = handler.of(alarm_id)[-1]
        assert field(cleared, "Retain") is True  # still waits for Confirm
        status = await call(
            client, cond, O.AcknowledgeableConditionType_Confirm, *ack_args(cleared, "checked")
        )
        assert status.is_good(), status
        await wait_for(lambda: field(handler.of(alarm_id)[-1], "ConfirmedState/Id"))
        assert field(handler.of(alarm_id)[-1], "Retain") is False


async def test_acknowledge_needs_operator(alarm_server):
    srv, engine = alarm_server
    handler = Events()
    engine.set("bus_down", "bus/bus1", True, "bus bus1 not connected")
    srv.alarms_changed()
    async with client_for(srv, "vera") as client:
        sub = await subscribe(client, handler)
        await call(
            client,
            ua.NodeId(O.ConditionType),
            O.ConditionType_ConditionRefresh,
            ua.Variant(sub.subscription_id, ua.VariantType.UInt32),
        )
        await wait_for(lambda: handler.of("bus_down:bus/bus1"))
        ev = handler.of("bus_down:bus/bus1")[-1]
        assert field(ev, "EventType") == ua.NodeId(O.SystemOffNormalAlarmType)
        # The alarm's source maps onto the plant object.
        assert field(ev, "SourceNode").Identifier == "buses/bus1"
        status = await call(
            client,
            field(ev, "NodeId"),
            O.AcknowledgeableConditionType_Acknowledge,
            *ack_args(ev, "x"),
        )
        assert status.value == SC.BadUserAccessDenied
    assert engine.get("bus_down:bus/bus1").acked is False


async def test_condition_refresh_replays_active_alarms_to_late_client(alarm_server):
    srv, engine = alarm_server
    engine.set("bus_down", "bus/bus2", True, "bus bus2 not connected")
    engine.set("relay_mismatch", "loads/feeder1_l1", True, "commanded open, reads closed")
    engine.set("clock_drift", "bus/bus1/meter/000000000001", True, "drift 12 s")
    engine.acknowledge("clock_drift:bus/bus1/meter/000000000001", "emma", "later")
    engine.set("clock_drift", "bus/bus1/meter/000000000001", False)  # normal: not replayed
    srv.alarms_changed()
    await asyncio.sleep(0.3)  # the server has sent its events before this client exists

    handler = Events()
    async with client_for(srv) as client:  # anonymous, read-only: may refresh
        sub = await subscribe(client, handler)
        await asyncio.sleep(0.2)
        assert handler.items == []  # nothing new happened since subscribing
        status = await call(
            client,
            ua.NodeId(O.ConditionType),
            O.ConditionType_ConditionRefresh,
            ua.Variant(sub.subscription_id, ua.VariantType.UInt32),
        )
        assert status.is_good(), status
        await wait_for(lambda: len(handler.items) >= 2)
        await asyncio.sleep(0.2)
        ids = {field(e, "NodeId").Identifier for e in handler.items}
        assert ids == {"@alarms/bus_down:bus/bus2", "@alarms/relay_mismatch:loads/feeder1_l1"}
        assert all(field(e, "Retain") for e in handler.items)
        relay = handler.of("relay_mismatch:loads/feeder1_l1")[-1]
        assert field(relay, "EventType") == ua.NodeId(O.OffNormalAlarmType)
        assert field(relay, "SourceNode").Identifier == "loads/feeder1_l1"
        # Anonymous sessions still cannot acknowledge (the Call's item is refused).
        status = await call(
            client,
            field(relay, "NodeId"),
            O.AcknowledgeableConditionType_Acknowledge,
            *ack_args(relay, "x"),
        )
        assert status.value == SC.BadUserAccessDenied
