"""Site time: the one place where an instant becomes a meter's wall clock and back.

Meters keep local wall-clock time with no zone on the wire (DL/T 645 sends
``ss mm hh DD MM YY``). Inside the controller every instant is an aware UTC
datetime (or epoch seconds); only at the wire is it turned into the site's
wall clock, with the zone named in ``[site] timezone``, never the host's.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# Meters refuse a broadcast time sync that moves them more than this, and
# the controller never sends one this close to (meter-local) midnight: a sync
# that crosses the day boundary would shift day-stamped records (freezes).
BROADCAST_SYNC_MAX_S = 300.0
MIDNIGHT_GUARD_S = 300.0


def host_timezone_name() -> str:
    """The IANA name of the host's zone: ``$TZ``, else the ``/etc/localtime`` link, else UTC."""
    env = os.environ.get("TZ", "").lstrip(":")
    if env and _valid(env):
        return env
    try:
        target = str(Path("/etc/localtime").resolve())
    except OSError:
        target = ""
    if "zoneinfo/" in target:
        name = target.split("zoneinfo/", 1)[1]
        if _valid(name):
            return name
    try:
        name = Path("/etc/timezone").read_text().strip()
    except OSError:
        name = ""
    return name if name and _valid(name) else "UTC"


def _valid(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def zone(name: str) -> ZoneInfo:
    """The zone for an IANA name; ValueError naming what is allowed otherwise."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"must be an IANA time zone name such as 'Asia/Shanghai' or 'UTC' (got {name!r})"
        ) from None


def host_zone() -> ZoneInfo:
    return ZoneInfo(host_timezone_name())


def to_wall(when: dt.datetime | float, tz: dt.tzinfo) -> dt.datetime:
    """An instant (aware datetime or epoch seconds) as naive wall-clock time in ``tz``.

    A naive datetime is refused: it names no instant, and guessing the host's
    zone is what sent Beijing meters commands 8 h stale."""
    if isinstance(when, int | float):
        return dt.datetime.fromtimestamp(when, tz).replace(tzinfo=None)
    if when.tzinfo is None:
        raise ValueError(f"valid_until: must be an aware datetime (got naive {when.isoformat()})")
    return when.astimezone(tz).replace(tzinfo=None)


def from_wall(wall: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """Naive wall-clock time read from a meter in ``tz`` as an aware UTC datetime."""
    return wall.replace(tzinfo=tz).astimezone(dt.UTC)


def seconds_to_midnight(wall: dt.datetime) -> float:
    """Seconds from a wall-clock time to the nearer midnight (before or after)."""
    since = wall.hour * 3600 + wall.minute * 60 + wall.second + wall.microsecond / 1e6
    return min(since, 86400.0 - since)
