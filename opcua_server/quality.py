"""Process-image quality → OPC UA StatusCode, and TagValue → DataValue."""

from __future__ import annotations

from datetime import UTC, datetime

from asyncua import ua

from controller.process_image import Quality, TagValue

SC = ua.StatusCodes

# Reason keywords, checked in order; the first match decides. Drivers write
# reasons such as "not yet read", "timeout", "meter quarantined", "bus offline".
_BAD_REASONS: tuple[tuple[tuple[str, ...], int], ...] = (
    (("not yet read", "waiting", "initial"), SC.BadWaitingForInitialData),
    (
        ("offline", "quarantine", "disconnected", "no communication", "not connected"),
        SC.BadNoCommunication,
    ),
    (
        ("timeout", "timed out", "checksum", "io error", "i/o", "exception"),
        SC.BadCommunicationError,
    ),
    (("out of range", "range"), SC.BadOutOfRange),
    (("config", "not configured"), SC.BadConfigurationError),
    (("sensor",), SC.BadSensorFailure),
    (("device", "failure"), SC.BadDeviceFailure),
)
_UNCERTAIN_REASONS: tuple[tuple[tuple[str, ...], int], ...] = (
    (("substitute", "manual"), SC.UncertainSubstituteValue),
    (("initial",), SC.UncertainInitialValue),
    (("sensor", "inaccurate"), SC.UncertainSensorNotAccurate),
    (("range",), SC.UncertainEngineeringUnitsExceeded),
)

_GOOD = ua.StatusCode(SC.Good)
_cache: dict[tuple[Quality, str], ua.StatusCode] = {}


def _lookup(table: tuple[tuple[tuple[str, ...], int], ...], reason: str, default: int) -> int:
    low = reason.lower()
    for words, code in table:
        if any(word in low for word in words):
            return code
    return default


def status_code(quality: Quality, reason: str) -> ua.StatusCode:
    """The StatusCode for a quality and reason; cached since reasons are a small set."""
    if quality is Quality.GOOD:
        return _GOOD
    key = (quality, reason)
    code = _cache.get(key)
    if code is None:
        if quality is Quality.UNCERTAIN:
            value = _lookup(_UNCERTAIN_REASONS, reason, SC.UncertainLastUsableValue)
        else:
            value = _lookup(_BAD_REASONS, reason, SC.Bad)
        code = ua.StatusCode(value)
        if len(_cache) < 4096:  # reasons are few; never let odd ones grow this unbounded
            _cache[key] = code
    return code


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
    return ua.Variant(value, vtype)


def data_value(tv: TagValue, vtype: ua.VariantType | None) -> ua.DataValue:
    """A DataValue for a tag value. Bad values carry a null Variant (Part 4, 7.7.1)."""
    status = status_code(tv.quality, tv.reason)
    variant = _NULL if tv.quality is Quality.BAD else to_variant(tv.value, vtype)
    source = datetime.fromtimestamp(tv.source_time, UTC)
    # Drivers without a device clock stamp both times alike: convert once.
    server = (
        source if tv.server_time == tv.source_time else datetime.fromtimestamp(tv.server_time, UTC)
    )
    return ua.DataValue(variant, status, SourceTimestamp=source, ServerTimestamp=server)
