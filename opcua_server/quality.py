"""Process-image quality and reason code → OPC UA StatusCode, and TagValue → DataValue."""

from __future__ import annotations

from datetime import UTC, datetime

from asyncua import ua

from controller.process_image import Quality, TagValue
from controller.quality_reason import Reason
from opcua_server.ua_values import status_code as from_value
from opcua_server.ua_values import ua_time

SC = ua.StatusCodes

# One StatusCode per cause (Part 8 Data Access codes). A code whose severity
# disagrees with the tag's quality is not used: the quality decides Good, Bad or
# Uncertain (and whether the value travels), the code only which one.
STATUS_OF_REASON: dict[Reason, int] = {
    Reason.NOT_YET_POLLED: SC.BadWaitingForInitialData,
    Reason.NO_ANSWER: SC.BadTimeout,
    Reason.LINK_DOWN: SC.BadNoCommunication,
    Reason.QUARANTINED: SC.BadOutOfService,
    Reason.DEVICE_REFUSED: SC.BadDeviceFailure,
    Reason.UNDECODABLE: SC.BadCommunicationError,
    Reason.STALE: SC.UncertainLastUsableValue,
    Reason.OUT_OF_RANGE: SC.BadOutOfRange,
    Reason.CONFIG: SC.BadConfigurationError,
}
_SEVERITY_MASK = 0xC0000000
_SEVERITY = {Quality.BAD: 0x80000000, Quality.UNCERTAIN: 0x40000000}
_PLAIN = {Quality.BAD: from_value(SC.Bad), Quality.UNCERTAIN: from_value(SC.Uncertain)}
_GOOD = from_value(SC.Good)
_TABLE: dict[tuple[Quality, int], ua.StatusCode] = {
    (quality, int(reason)): from_value(value)
    for reason, value in STATUS_OF_REASON.items()
    for quality, severity in _SEVERITY.items()
    if value & _SEVERITY_MASK == severity
}


def status_code(quality: Quality, code: int) -> ua.StatusCode:
    """The StatusCode for a quality and reason code; an unknown code is plain Bad/Uncertain."""
    if quality is Quality.GOOD:
        return _GOOD
    found = _TABLE.get((quality, code))
    return found if found is not None else _PLAIN[quality]


_NULL = ua.Variant(None, ua.VariantType.Null)


def to_variant(value: object, vtype: ua.VariantType | None) -> ua.Variant:
    if value is None:
        return _NULL
    if vtype is ua.VariantType.Double:
        return ua.Variant(float(value), vtype)  # type: ignore[arg-type]
    if vtype is ua.VariantType.Boolean:
        return ua.Variant(bool(value), vtype)
    if vtype is ua.VariantType.Int64:
        return ua.Variant(int(value), vtype)  # type: ignore[call-overload]
    if vtype is ua.VariantType.String:
        return ua.Variant(str(value), vtype)
    return ua.Variant(value, vtype) if vtype is not None else ua.Variant(value)


def data_value(tv: TagValue, vtype: ua.VariantType | None) -> ua.DataValue:
    """A DataValue for a tag value. Bad values carry a null Variant (Part 4, 7.7.1)."""
    status = status_code(tv.quality, tv.code)
    variant = _NULL if tv.quality is Quality.BAD else to_variant(tv.value, vtype)
    source = datetime.fromtimestamp(tv.source_time, UTC)
    # Drivers without a device clock stamp both times alike: convert once.
    server = (
        source if tv.server_time == tv.source_time else datetime.fromtimestamp(tv.server_time, UTC)
    )
    return ua.DataValue(
        variant, status, SourceTimestamp=ua_time(source), ServerTimestamp=ua_time(server)
    )
