"""The packed PublishResponse encoder: asyncua's bytes exactly, and real clients decode them.

asyncua's own encoder (``struct_to_binary``) is the reference: for any mix of
packed notifications, notifications asyncua queued itself, events and status
changes, the packed encoder must produce the same bytes.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from asyncua import ua
from asyncua.server.uaprocessor import UaProcessor
from asyncua.ua.ua_binary import struct_to_binary
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.process_image import Quality
from controller.quality_reason import Reason
from opcua_server import publish_encoding
from opcua_server.publish_encoding import (
    PackedNotification,
    encode_publish_response,
    pack_data_value,
)

from .conftest import client_for, nid, ns_of
from .test_sampling import TAG, Values, one_tag, separate_batches

EPOCH = datetime(2026, 11, 23, tzinfo=UTC)

timestamps = st.one_of(
    st.none(),
    st.floats(min_value=0, max_value=4e9).map(lambda s: EPOCH + timedelta(seconds=s - 2e9)),
    st.sampled_from(
        [
            datetime(1601, 1, 1, tzinfo=UTC),  # the OPC UA epoch: encoded 0
            datetime(1500, 1, 1, tzinfo=UTC),  # before it: clamped to 0
            datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),  # clamped to the maximum
        ]
    ),
)
variants = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(
        lambda v: ua.Variant(v, ua.VariantType.Double)
    ),
    st.text(max_size=8).map(lambda v: ua.Variant(v, ua.VariantType.String)),
    st.booleans().map(lambda v: ua.Variant(v, ua.VariantType.Boolean)),
    st.integers(-(2**63), 2**63 - 1).map(lambda v: ua.Variant(v, ua.VariantType.Int64)),
    st.just(ua.Variant(None, ua.VariantType.Null)),
    st.lists(st.floats(allow_nan=False), max_size=3).map(
        lambda v: ua.Variant(v, ua.VariantType.Double)
    ),
)
status_codes = st.sampled_from(
    [
        ua.StatusCodes.Good,
        ua.StatusCodes.UncertainLastUsableValue,
        ua.StatusCodes.BadNoCommunication,
        ua.StatusCodes.BadWaitingForInitialData,
    ]
).map(ua.StatusCode)


@st.composite
def data_values(draw: Any) -> ua.DataValue:
    source = draw(timestamps)
    same = draw(st.booleans())
    dv = ua.DataValue(
        draw(variants),
        draw(st.one_of(st.none(), status_codes)),
        SourceTimestamp=source,
        ServerTimestamp=source if same else draw(timestamps),
    )
    if draw(st.integers(0, 9)) == 0:
        dv.SourcePicoseconds = draw(st.integers(0, 9999))
    return dv


@st.composite
def notifications(draw: Any) -> Any:
    dv = draw(data_values())
    handle = draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        return PackedNotification(handle, dv, pack_data_value(dv))
    return ua.MonitoredItemNotification(ClientHandle=handle, Value=dv)


@st.composite
def responses(draw: Any) -> ua.PublishResponse:
    response = ua.PublishResponse()
    response.ResponseHeader.RequestHandle = draw(st.integers(0, 2**32 - 1))
    result = response.Parameters
    result.SubscriptionId = draw(st.integers(0, 2**32 - 1))
    result.AvailableSequenceNumbers = draw(st.lists(st.integers(0, 2**32 - 1), max_size=4))
    result.MoreNotifications = draw(st.booleans())
    result.Results = [ua.StatusCode(ua.StatusCodes.Good)] * draw(st.integers(0, 3))
    message = result.NotificationMessage
    message.SequenceNumber = draw(st.integers(0, 2**32 - 1))
    data: list[Any] = []
    for kind in draw(st.lists(st.sampled_from(["changes", "status", "events"]), max_size=3)):
        if kind == "changes":
            items = draw(st.lists(notifications(), max_size=6))
            data.append(ua.DataChangeNotification(MonitoredItems=items))
        elif kind == "status":
            data.append(ua.StatusChangeNotification(Status=draw(status_codes)))
        else:
            fields = ua.EventFieldList(ClientHandle=7, EventFields=[ua.Variant("alarm")])
            data.append(ua.EventNotificationList(Events=[fields]))
    message.NotificationData = data
    return response


@settings(max_examples=300, deadline=None)
@given(data_values())
def test_a_packed_data_value_is_what_asyncua_encodes(dv: ua.DataValue):
    assert pack_data_value(dv) == struct_to_binary(dv)


@settings(max_examples=300, deadline=None)
@given(responses())
def test_a_publish_response_is_byte_for_byte_what_asyncua_encodes(response: ua.PublishResponse):
    assert encode_publish_response(response) == struct_to_binary(response)


def test_a_good_double_takes_the_packed_path_and_others_fall_back():
    t = datetime(2026, 11, 23, 8, 0, 0, 123456, tzinfo=UTC)
    good = ua.DataValue(
        ua.Variant(230.5, ua.VariantType.Double),
        ua.StatusCode(ua.StatusCodes.Good),
        SourceTimestamp=t,
        ServerTimestamp=t,
    )
    packed = pack_data_value(good)
    assert len(packed) == 30 and packed[0] == 0x0F  # value, status, both timestamps
    bad = ua.DataValue(
        StatusCode=ua.StatusCode(ua.StatusCodes.BadNoCommunication),
        SourceTimestamp=t,
        ServerTimestamp=t,
    )
    assert pack_data_value(bad) == struct_to_binary(bad)


async def test_clients_watching_one_variable_each_get_every_value(start_server):
    """One packed value, several clients and queue sizes: each decodes its own handles."""
    image = one_tag()
    srv = await start_server(image, config_overrides={"sampling_interval_ms": 0.0})
    assert UaProcessor.forward_publish_response is publish_encoding._forward_publish_response
    async with client_for(srv) as first, client_for(srv) as second:
        seen: list[Values] = []
        subs = []
        for client, queue in ((first, 5), (second, 5), (second, 1)):
            ns = await ns_of(client)
            values = Values()
            sub = await client.create_subscription(200, values)
            await sub.subscribe_data_change(client.get_node(nid(ns, TAG)), queuesize=queue)
            seen.append(values)
            subs.append(sub)
        for values in seen:
            await values.until(lambda v: v == [0.0])
        await asyncio.sleep(0.25)  # just after a publish
        await separate_batches(image, [1.0, 2.0, 3.0])
        for values in seen:
            await values.until(lambda v: v[-1] == 3.0)
        assert seen[0].values == seen[1].values == [0.0, 1.0, 2.0, 3.0]
        assert seen[2].values[-1] == 3.0 and len(seen[2].values) < 4  # queue size 1

        # A Bad value goes out as a Bad StatusCode, never as a number.
        image.write(TAG, None, Quality.BAD, "meter offline", code=Reason.LINK_DOWN)
        ns = await ns_of(first)
        errors: list[ua.StatusCode] = []

        class StatusSink(Values):
            def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
                errors.append(data.monitored_item.Value.StatusCode)
                super().datachange_notification(node, val, data)

        bad = StatusSink()
        sub = await first.create_subscription(100, bad)
        await sub.subscribe_data_change(first.get_node(nid(ns, TAG)))
        await bad.until(lambda v: len(v) >= 1)
        assert errors[-1].value == ua.StatusCodes.BadNoCommunication
        for s in [*subs, sub]:
            await s.delete()


def test_another_asyncua_version_keeps_its_own_encoder(monkeypatch, caplog):
    import asyncua

    monkeypatch.setattr(UaProcessor, "forward_publish_response", publish_encoding.ASYNCUA_FORWARD)
    monkeypatch.setattr(asyncua, "__version__", "3.0.0")
    assert publish_encoding.install() is False
    assert UaProcessor.forward_publish_response is publish_encoding.ASYNCUA_FORWARD
    assert "asyncua 3.0.0: publish responses encoded by asyncua" in caplog.text
    monkeypatch.setattr(asyncua, "__version__", "2.1.0")
    assert publish_encoding.install() is True
    assert UaProcessor.forward_publish_response is publish_encoding._forward_publish_response
