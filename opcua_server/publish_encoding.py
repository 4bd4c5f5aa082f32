"""PublishResponse encoding with each published value packed once.

asyncua encodes a PublishResponse field by field through its generic dataclass
serializer: ~4 µs per MonitoredItemNotification, and a value watched by five
clients is encoded five times. The publisher instead packs a value's DataValue
once, when it hands the value to monitored items (:func:`pack_data_value`), and
queues :class:`PackedNotification` s carrying those bytes. Here a
notification is written as its client handle followed by them; every other
part of the response (header, sequence numbers, events, status changes, items
queued by asyncua itself) goes through asyncua's own serializers, so the bytes
are exactly what asyncua would send (tests hold them equal for data changes,
events, status changes, Bad values and timestamps at the edges of the range).

:func:`install` replaces ``UaProcessor.forward_publish_response`` (the one place
asyncua encodes a PublishResponse for a client) for the pinned asyncua
version; on any other version it leaves asyncua alone and says so.
"""

from __future__ import annotations

import logging
import struct
from typing import Any, cast

import asyncua
from asyncua import ua
from asyncua.server.uaprocessor import UaProcessor
from asyncua.ua import ua_binary

_log = logging.getLogger(__name__)

# The asyncua versions whose PublishResponse layout and UaProcessor internals
# this module is written (and tested) against.
SUPPORTED_ASYNCUA = ("2.1.",)

_U32 = struct.Struct("<I").pack
_I32 = struct.Struct("<i").pack
_BOOL = ua_binary.Primitives.Boolean.pack
_BYTES = ua_binary.Primitives.Bytes.pack
_nodeid = ua_binary.nodeid_to_binary
_struct = ua_binary.struct_to_binary
_extension_object = ua_binary.extensionobject_to_binary
_datetime = ua_binary.Primitives.DateTime.pack
_u32_list = ua_binary.create_list_serializer(ua.UInt32)
_status_list = ua_binary.create_list_serializer(ua.StatusCode)
_diagnostics_list = ua_binary.create_list_serializer(ua.DiagnosticInfo)
_data_value = ua_binary.create_type_serializer(ua.DataValue)
_item = ua_binary.create_type_serializer(ua.MonitoredItemNotification)
_to_ticks = ua.datetime_to_win_epoch
_DOUBLE = ua.VariantType.Double
_VARIANT = ua.Variant
_DATA_CHANGE = ua.DataChangeNotification
_DATA_CHANGE_ID = _nodeid(ua.typeid_by_extension_objects[ua.DataChangeNotification])
# Encoding mask (Value | StatusCode | SourceTimestamp | ServerTimestamp), the
# Variant's type byte, the Double, the StatusCode, the two timestamps.
_GOOD_DOUBLE = struct.Struct("<BBdIqq").pack
_GOOD_DOUBLE_MASK = 0x0F


class PackedNotification(ua.MonitoredItemNotification):
    """A MonitoredItemNotification that also carries its DataValue's encoding.

    Anything that reads it as a MonitoredItemNotification (Republish, asyncua's
    own encoder) sees the ordinary fields.
    """

    __slots__ = ("packed_value",)

    def __init__(self, client_handle: int, value: ua.DataValue, packed_value: bytes) -> None:
        self.ClientHandle = client_handle
        self.Value = value
        self.packed_value = packed_value


def pack_data_value(dv: ua.DataValue) -> bytes:
    """The DataValue's binary encoding, as asyncua writes it."""
    variant = dv.Value
    source = dv.SourceTimestamp
    server = dv.ServerTimestamp
    if (
        type(variant) is _VARIANT
        and variant.VariantType is _DOUBLE
        and type(variant.Value) is float
        and not variant.is_array
        and variant.Dimensions is None
        and dv.StatusCode is not None
        and source is not None
        and server is not None
        and dv.SourcePicoseconds is None
        and dv.ServerPicoseconds is None
    ):
        ticks = _to_ticks(source)
        return _GOOD_DOUBLE(
            _GOOD_DOUBLE_MASK,
            11,  # Variant encoding byte: Double, scalar
            variant.Value,
            dv.StatusCode.value,
            ticks,
            ticks if server is source else _to_ticks(server),
        )
    return _data_value(dv)


def encode_data_change(notification: ua.DataChangeNotification) -> bytes:
    """The DataChangeNotification as an ExtensionObject (TypeId, flag, length, body)."""
    parts = [_I32(len(notification.MonitoredItems))]
    append = parts.append
    for item in notification.MonitoredItems:
        if type(item) is PackedNotification:
            append(_U32(item.ClientHandle))
            append(item.packed_value)
        else:
            append(_item(item))
    append(_diagnostics_list(notification.DiagnosticInfos))
    return _DATA_CHANGE_ID + b"\x01" + _BYTES(b"".join(parts))


def encode_publish_response(response: ua.PublishResponse) -> bytes:
    """``struct_to_binary(response)``, with data changes written from packed values."""
    result = response.Parameters
    message = result.NotificationMessage
    data = message.NotificationData
    if not any(type(n) is _DATA_CHANGE for n in data):
        return _struct(response)
    return b"".join(
        (
            _nodeid(response.TypeId),
            _struct(response.ResponseHeader),
            _U32(result.SubscriptionId),
            _u32_list(result.AvailableSequenceNumbers),
            _BOOL(result.MoreNotifications),
            _U32(message.SequenceNumber),
            _datetime(message.PublishTime),
            _I32(len(data)),
            *(
                encode_data_change(n) if type(n) is _DATA_CHANGE else _extension_object(n)
                for n in data
            ),
            _status_list(result.Results),
            _diagnostics_list(result.DiagnosticInfos),
        )
    )


async def _forward_publish_response(
    self: UaProcessor, result: ua.PublishResult, requestdata: Any
) -> None:
    # UaProcessor.forward_publish_response + send_response, with the encoder above.
    response = ua.PublishResponse()
    response.Parameters = result
    result.Results = requestdata.results
    response.ResponseHeader.RequestHandle = requestdata.requesthdr.RequestHandle
    data = self._connection.message_to_binary(
        encode_publish_response(response),
        # asyncua declares the parameter as its MessageType class; it passes the bytes constant
        message_type=cast(ua.MessageType, ua.MessageType.SecureMessage),
        request_id=requestdata.seqhdr.RequestId,
    )
    self._transport.write(data)


# asyncua's own, as imported (what any other asyncua version keeps using).
ASYNCUA_FORWARD = UaProcessor.forward_publish_response


def supported() -> bool:
    return asyncua.__version__.startswith(SUPPORTED_ASYNCUA)


def install() -> bool:
    """Use the packed encoder for every PublishResponse this process sends."""
    if UaProcessor.forward_publish_response is _forward_publish_response:
        return True
    if not supported():
        _log.warning(
            "asyncua %s: publish responses encoded by asyncua (the packed encoder is "
            "written for %s)",
            asyncua.__version__,
            ", ".join(v + "x" for v in SUPPORTED_ASYNCUA),
        )
        return False
    UaProcessor.forward_publish_response = _forward_publish_response  # type: ignore[method-assign]
    return True
