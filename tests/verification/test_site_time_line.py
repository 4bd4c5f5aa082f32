"""The line's 1C (cost control item): its expiry is wall-clock time in the meters' zone."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from controller.verification.sequencer import Sequencer
from tests.verification.conftest import good

# The meters under test keep Beijing time; the line's host (and this test) runs UTC.
SITE_TZ = ZoneInfo("Asia/Shanghai")


def test_cost_control_expiry_is_ten_minutes_ahead_in_beijing_time(line) -> None:
    line.seq = Sequencer(
        line.config, line.rig, line.repo, line.clock, line.image, line.alarms, site_tz=SITE_TZ
    )
    seen: list[tuple[str, tuple[int, ...], float]] = []
    for station in line.rig.stations.values():
        send = station.comms.relay_control

        async def recording(command, valid_until, _send=send):  # type: ignore[no-untyped-def]
            # what goes on the wire: ss mm hh DD MM YY from this tuple, and when
            seen.append((command, tuple(valid_until), line.clock.now()))
            return await _send(command, valid_until)

        station.comms.relay_control = recording  # type: ignore[method-assign]
    line.start("TZ", "class1_single_phase.toml", [good(n) for n in range(2)])
    line.clock.run(line.seq.run("TZ"))
    assert sorted({c for c, _, _ in seen}) == ["close", "trip"]
    assert len(seen) == 4  # trip and close for each of the two meters
    aheads = {}
    for command, until, now in seen:
        # by hand: Beijing = UTC + 8 h. The batch starts 2026-01-01T00:00:00Z, so the
        # meters show 08:xx; expiry_min = 10 (the scheme's default) -> 08:(xx+10).
        # Built in UTC (as before) it said 00:(xx+10): 7 h 50 min = 28 200 s stale.
        beijing_now = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=now, hours=8)
        ahead = (dt.datetime(*until) - beijing_now).total_seconds()
        aheads.setdefault(command, []).append(ahead)
    # the trip goes out within a second of the expiry being built (10 min less the
    # dropped fraction of a second and one transaction); the close, sent with the
    # same expiry, after the 1 s relay settle and the read-back: one second less
    assert all(599.0 < a <= 600.0 for a in aheads["trip"]), aheads
    assert all(598.0 < a <= 599.0 for a in aheads["close"]), aheads
