"""A value as the HMI holds it: the reading, its quality from the status code,
the short status words that fit a table cell, and the node ids it is read by."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from asyncua import ua

SC = ua.StatusCodes

_UNCERTAIN = 0x40000000
_SEVERITY_MASK = 0xC0000000

# Short words for the status codes gridctl uses, so they fit a table cell.
SHORT_STATUS = {
    "BadNoCommunication": "NoComm",
    "BadTimeout": "Timeout",
    "BadOutOfService": "OutSvc",
    "BadWaitingForInitialData": "NoData",
    "BadCommunicationError": "CommErr",
    "BadOutOfRange": "Range",
    "BadConfigurationError": "Config",
    "BadSensorFailure": "Sensor",
    "BadDeviceFailure": "Device",
    "BadNodeIdUnknown": "Unknown",
    "UncertainSubstituteValue": "Subst",
    "UncertainInitialValue": "Initial",
    "UncertainLastUsableValue": "LastUsable",
    "UncertainSensorNotAccurate": "Inaccurate",
    "UncertainEngineeringUnitsExceeded": "Range",
}


def string_node(path: str, namespace: int) -> ua.NodeId:
    # asyncua annotates NodeId with its own str/int subclasses; plain values are what it sends
    return ua.NodeId(cast(ua.String, path), cast(ua.Int16, namespace))


class Quality(StrEnum):
    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


def status_name(code: int) -> str:
    try:
        name, _doc = ua.status_codes.get_name_and_doc(code)
    except Exception:
        return f"0x{code:08X}"
    return name


def quality_of(code: int) -> Quality:
    sev = code & _SEVERITY_MASK
    if sev == 0:
        return Quality.GOOD
    if sev == _UNCERTAIN:
        return Quality.UNCERTAIN
    return Quality.BAD


@dataclass(slots=True)
class Reading:
    """One value as last received: never shown as good unless its status is Good."""

    value: Any
    status: int
    source_time: datetime | None
    epoch: int  # connection number it arrived on
    received: float  # time.monotonic()

    @property
    def quality(self) -> Quality:
        return quality_of(self.status)

    @property
    def status_text(self) -> str:
        name = status_name(self.status)
        if name in SHORT_STATUS:
            return SHORT_STATUS[name]
        for prefix in ("Bad", "Uncertain", "Good"):
            if name.startswith(prefix) and len(name) > len(prefix):
                return name[len(prefix) :]
        return name


def describe(exc: BaseException) -> str:
    """An error in a few words, for the status line."""
    if isinstance(exc, ua.UaStatusCodeError):
        return status_name(exc.code)
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text[:80]


def read_params(paths: Sequence[str], ns: int, attribute: int) -> ua.ReadParameters:
    """One Read request for ``attribute`` of every node named by ``paths`` (string ids in ``ns``)."""
    params = ua.ReadParameters()
    for path in paths:
        rv = ua.ReadValueId()
        rv.NodeId = string_node(path, ns)
        rv.AttributeId = attribute
        params.NodesToRead.append(rv)
    return params
