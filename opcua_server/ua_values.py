"""Typed constructors for asyncua's NodeId, StatusCode and timestamps.

asyncua annotates these fields with its own int/str/datetime subclasses (``Int32``,
``Int16``, ``UInt32``, ``DateTime``) while its own code, like every caller, passes
plain ``int``, ``str`` and ``datetime``; the values are the same on the wire. The
difference is stated here once, so the rest of the package type-checks without
a cast at every call.
"""

from __future__ import annotations

import datetime as dt
from typing import cast

from asyncua import ua


def node_id(identifier: int | str | bytes, namespace: int = 0) -> ua.NodeId:
    """A NodeId: numeric, string or opaque identifier in ``namespace``."""
    return ua.NodeId(cast(ua.String, identifier), cast(ua.Int16, namespace))


def status_code(code: int) -> ua.StatusCode:
    """A StatusCode from its 32-bit value (``ua.StatusCodes.*``)."""
    return ua.StatusCode(cast(ua.UInt32, code))


def ua_time(when: dt.datetime) -> ua.DateTime:
    """An aware datetime as asyncua's DateTime field type."""
    return cast(ua.DateTime, when)
