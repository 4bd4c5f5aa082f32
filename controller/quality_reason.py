"""Why a tag is not Good, as a code: the process image carries it next to the
quality, the OPC UA server maps it to a StatusCode (``opcua_server.quality``).

The free text next to it (``TagValue.reason``) is for people (HMI, logs) and
may say anything; the code is what clients act on, so it never depends on
wording. An IntEnum so it crosses the OPC UA feed channel as a plain integer.
"""

from __future__ import annotations

from enum import IntEnum


class Reason(IntEnum):
    """The cause of a Bad or Uncertain value."""

    NONE = 0  # Good, or a writer that gave no cause (published as plain Bad / Uncertain)
    NOT_YET_POLLED = 1  # defined, never read since start-up
    NO_ANSWER = 2  # the device did not reply within the response timeout, retries included
    LINK_DOWN = 3  # the port or TCP link of the bus is closed
    QUARANTINED = 4  # still silent after its back-off probe: polled only once per back-off
    DEVICE_REFUSED = 5  # the device answered with an exception reply (DL/T 645 ERR, Modbus)
    UNDECODABLE = 6  # a reply failed its checksum or its value could not be decoded
    STALE = 7  # last Good value kept, its source is no longer Good (Uncertain)
    OUT_OF_RANGE = 8  # outside the range the tag's definition allows
    CONFIG = 9  # the configuration (or the device's wiring) does not provide this value


def reason_from_wire(code: int) -> Reason:
    """A code received from another process; an unknown one is NONE (plain Bad)."""
    try:
        return Reason(code)
    except ValueError:
        return Reason.NONE
