"""A trip from a UTC host reaches a Beijing-time meter with its expiry 10 min ahead."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import pytest

from controller import _core_rs as core
from controller.commands import CommandState

from .conftest import ADDR1


@pytest.fixture(autouse=True)
def host_in_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


async def test_trip_expiry_ten_minutes_ahead_on_the_meters_clock(rig) -> None:
    r = await rig()
    meter = r.meter(ADDR1)
    seen: list[float] = []
    handle = meter._control

    def recording(frame: core.Dlt645Frame, now: float, wall: float) -> list[bytes]:
        ss, mm, hh, dd, mo, yy = (int(f"{b:02x}") for b in frame.data[10:16])
        expiry = dt.datetime(2000 + yy, mo, dd, hh, mm, ss)
        # the meter's own clock, by hand: true UTC + 8 h (Beijing), offset 0 at start
        shown = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=wall + meter.clock_offset_s, hours=8)
        seen.append((expiry - shown).total_seconds())
        return handle(frame, now, wall)

    meter._control = recording  # type: ignore[method-assign]
    cmd = await r.executor.run("trip", "l1", who="otto", why="site time")
    # before: the expiry went out as host (UTC) wall-clock time, 02:10 for a meter
    # showing 10:00 -> 7 h 50 min stale, refused, the trip failed unconfirmed
    assert cmd.state is CommandState.CONFIRMED, cmd.reason
    assert meter.relay_open is True
    (ahead,) = seen
    # confirm.valid_for_s = 600, less the dropped fraction of a second on the wire
    assert 599.0 < ahead <= 600.0, ahead
