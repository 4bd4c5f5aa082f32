"""An engineer's demand-limit override is durable: it survives a restart until cleared."""

from __future__ import annotations

import datetime as dt

import pytest

from controller.api import CommandRefused, CommandRequest
from controller.loads.switching import LoadsError

from .test_runtime import cfg, make

GROUP = {
    "name": "g",
    "members": ["a", "b"],
    "rounds": [{"name": "r1", "loads": ["b"], "alarm_s": 60}],
    "limit_kw": 10.0,
    "hysteresis_kw": 1.0,
    "window_min": 1,
    # 12:00-14:00 a lower limit applies (the time-of-day schedule)
    "schedule": [{"start": "12:00", "end": "14:00", "limit_kw": 8.0}],
}
NOON = dt.datetime(2026, 3, 2, 12, 30).timestamp()


async def test_override_survives_restart_and_clearing_restores_the_schedule(tmp_path):
    now = [NOON]
    config = cfg(accounts=[], groups=[GROUP])
    journal, image, _, rt = await make(tmp_path, config, clock=lambda: now[0])
    assert image.value("demand/groups/g/limit_kw") == 8.0
    assert image.value("demand/groups/g/limit_source") == "schedule 12:00-14:00"
    await rt.set_demand_limit("g", 20.0, who="emma", why="evening peak plan", ref="r-1")
    assert image.value("demand/groups/g/limit_kw") == 20.0
    await rt.control()
    assert rt.groups["g"].limit_kw == 20.0
    journal.close()

    # a restart on the same SQLite file: the override is still in force
    journal2, image2, relays, rt2 = await make(tmp_path, config, clock=lambda: now[0])
    g = rt2.groups["g"]
    assert g.override_kw == 20.0
    assert image2.value("demand/groups/g/limit_kw") == 20.0
    assert image2.value("demand/groups/g/limit_source") == (
        "override 20 kW (by emma: evening peak plan)"
    )
    # 16 kW is over the schedule's 8 kW but within the override: nothing sheds
    image2.write(relays["a"].power, 8.0)
    image2.write(relays["b"].power, 8.0)
    for _ in range(3):
        await rt2.control()
        now[0] += 1
    assert g.status() == "normal" and relays["b"].sent == []

    assert await rt2.clear_demand_limit("g", who="emma", why="peak over") == 8.0
    assert image2.value("demand/groups/g/limit_kw") == 8.0
    assert image2.value("demand/groups/g/limit_source") == "schedule 12:00-14:00"
    await rt2.control()
    assert g.limit_kw == 8.0 and g.status() == "over_limit"
    await journal2.flush()
    events = [r["message"] for r in journal2.query("SELECT message FROM events WHERE kind='loads'")]
    assert any("set to 20 kW by emma (evening peak plan) [r-1]" in m for m in events)
    assert any("override 20 kW cleared by emma (peak over), 8 kW in force" in m for m in events)
    journal2.close()

    # cleared is durable too; outside the schedule the configured limit applies
    now[0] = dt.datetime(2026, 3, 2, 18).timestamp()
    journal3, image3, _, rt3 = await make(tmp_path, config, clock=lambda: now[0])
    assert rt3.groups["g"].override_kw is None
    assert image3.value("demand/groups/g/limit_kw") == 10.0
    assert image3.value("demand/groups/g/limit_source") == "configured"
    journal3.close()


@pytest.mark.parametrize(
    ("group", "limit", "expected"),
    [
        ("nope", 5.0, "group: no demand group 'nope' (groups: g)"),
        ("g", 0.5, "limit_kw: must be > 1 (group g's hysteresis_kw) and <= 1e+07 kW (got 0.5)"),
        ("g", float("nan"), "limit_kw: must be > 1"),
        ("g", 2e7, "limit_kw: must be > 1"),
        ("g", "ten", "limit_kw: must be a number of kW (got 'ten')"),
    ],
)
async def test_bad_override_is_refused_and_changes_nothing(tmp_path, group, limit, expected):
    journal, _, _, rt = await make(tmp_path, cfg(accounts=[], groups=[GROUP]))
    with pytest.raises(LoadsError) as err:
        await rt.set_demand_limit(group, limit, who="emma", why="t")
    assert str(err.value).startswith(expected)
    assert rt.groups["g"].override_kw is None
    assert journal.query("SELECT COUNT(*) FROM ld_demand_overrides")[0][0] == 0
    with pytest.raises(LoadsError, match="no limit override to clear"):
        await rt.clear_demand_limit("g", who="emma", why="t")
    journal.close()


async def test_sink_sets_and_clears_through_command_requests(tmp_path):
    from controller.loads.sink import DemandLimitSink

    journal, _, _, rt = await make(tmp_path, cfg(accounts=[], groups=[GROUP]))
    sink = DemandLimitSink(rt)

    tokens = iter(f"tok-{i}" for i in range(100))

    def request(kind: str, token: str | None = None, **args: object) -> CommandRequest:
        return CommandRequest(
            kind=kind,
            target="demand/groups/g",
            args=args,
            user="emma",
            role="engineer",
            reason="plan",
            token=token or next(tokens),
            armed_at=0.0,
        )

    log = rt.executor.commands
    first = request("set_demand_limit", limit_kw=15.0)
    set_id = await sink.submit(first)
    assert set_id.startswith("opcua-")
    assert rt.groups["g"].override_kw == 15.0
    cmd = log.get(set_id)
    assert (cmd.kind, cmd.state.value, cmd.who, cmd.why) == (
        "set_limit",
        "confirmed",
        "emma",
        "plan",
    )
    assert cmd.reason == "15 kW in force"
    # the same request again (a client retry) returns the record and does not act twice
    assert await sink.submit(first) == set_id
    with pytest.raises(CommandRefused, match="limit_kw"):
        await sink.submit(request("set_demand_limit", token="tok-low", limit_kw=0.5))
    assert log.get("opcua-tok-low").state.value == "refused"
    assert rt.groups["g"].override_kw == 15.0
    clear_id = await sink.submit(request("clear_demand_limit"))
    assert log.get(clear_id).state.value == "confirmed"
    assert rt.groups["g"].override_kw is None
    with pytest.raises(CommandRefused, match="no limit override"):
        await sink.submit(request("clear_demand_limit"))
    journal.close()
