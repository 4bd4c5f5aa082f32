"""[loads] config errors name the field and the allowed range, through the root loader."""

from __future__ import annotations

import pytest

from controller.config import ConfigError, validate_config

LOAD = {"name": "l1", "bus": "bus1", "address": "000000000001"}
ROUND = {"name": "r1", "loads": ["l1"]}
GROUP = {
    "name": "g",
    "members": ["l1"],
    "rounds": [ROUND],
    "limit_kw": 10,
}


@pytest.mark.parametrize(
    ("loads", "expected"),
    [
        (
            {"loads": [LOAD], "groups": [{**GROUP, "window_min": 90}]},
            "loads.groups[0].window_min: must be between 1 and 60 (got 90)",
        ),
        (
            {"loads": [LOAD], "groups": [{**GROUP, "members": ["nope"]}]},
            "loads: groups[0].members: unknown load 'nope' (loads: l1)",
        ),
        (
            {"loads": [{**LOAD, "relay": 1}]},
            "loads.loads[0].relay: unknown key",
        ),
        (
            {"loads": [LOAD], "groups": [{**GROUP, "security_kw": 20}]},
            "security_kw: must be at most limit_kw 10 (got 20)",
        ),
        (
            {
                "loads": [LOAD],
                "tariffs": [{"name": "t", "default_price": "0.5"}],
                "accounts": [{"id": "a", "load": "l1", "tariff": "t", "alarm1": 5, "alarm2": 10}],
            },
            "need alarm1 >= alarm2 >= -overdraft_limit",
        ),
        (
            {"loads": [LOAD], "confirm": {"max_rereads": 1000}},
            "loads.confirm.max_rereads: must be between 0 and 100 (got 1000)",
        ),
        (
            {"loads": [LOAD], "mismatch_grace_s": -5},
            "loads.mismatch_grace_s: must be between 0.0 and 86400.0 (got -5)",
        ),
        (
            {"loads": [LOAD], "mismatch_grace_s": "soon"},
            "loads.mismatch_grace_s:",
        ),
        # the 5-min window needs 300 s after a trip before the average shows it
        (
            {"loads": [LOAD], "groups": [{**GROUP, "rounds": [{**ROUND, "alarm_s": 60}]}]},
            "rounds[0].alarm_s: must be between 300 (window_min × 60) and 3600 s, "
            "or shorten window_min (got 60)",
        ),
        (
            {"loads": [LOAD], "groups": [{**GROUP, "window_min": 15, "restore_delay_s": 600}]},
            "rounds[0].alarm_s: must be between 900",
        ),
        (
            {"loads": [LOAD], "groups": [{**GROUP, "restore_delay_s": 120}]},
            "restore_delay_s: must be between 300 (window_min × 60) and 86400 s, "
            "or shorten window_min (got 120)",
        ),
        (
            {
                "loads": [LOAD],
                "groups": [
                    {
                        **GROUP,
                        "security_kw": 6,
                        "schedule": [{"start": "18:00", "end": "21:00", "limit_kw": 5}],
                    }
                ],
            },
            "schedule[0].limit_kw: must be at least security_kw 6 "
            "(the supply the site always keeps) (got 5)",
        ),
        (
            {"loads": [LOAD], "groups": [{**GROUP, "restore_mode": "auto"}]},
            "loads.groups[0].restore_mode:",
        ),
        (
            {"loads": [LOAD], "groups": [{**GROUP, "members": [{"meter": "bus1/12", "sign": 1}]}]},
            "loads.groups[0].members[0].meter:",
        ),
        (
            {
                "loads": [LOAD],
                "groups": [{**GROUP, "members": [{"meter": "bus1/000000000009", "sign": 2}]}],
            },
            "loads.groups[0].members[0].sign:",
        ),
        (
            {
                "loads": [LOAD],
                "groups": [{**GROUP, "members": [{"load": "l1", "meter": "bus1/000000000009"}]}],
            },
            'load, meter: give exactly one: load = "<load name>" or meter = "<bus>/<12-digit address>"',
        ),
        (
            {"loads": [LOAD], "groups": [{**GROUP, "members": ["l1", {"load": "l1", "sign": -1}]}]},
            "members[1]: load l1 is already a member (counted twice)",
        ),
        (
            {"loads": [LOAD], "groups": [{**GROUP, "members": [{"load": "nope", "sign": -1}]}]},
            "loads: groups[0].members: unknown load 'nope' (loads: l1)",
        ),
        (
            {"loads": [{**LOAD, "safe_state": "open"}]},
            "safe_state: a meter relay latches; only 'hold' is allowed",
        ),
    ],
)
def test_bad_loads_config_is_precise(loads, expected):
    with pytest.raises(ConfigError) as info:
        validate_config({"loads": loads}, "site.toml")
    assert expected in str(info.value), str(info.value)


def test_prices_are_exact_decimals():
    cfg = validate_config(
        {
            "loads": {
                "loads": [LOAD],
                "tariffs": [{"name": "t", "default_price": 0.1}],
                "accounts": [{"id": "a", "load": "l1", "tariff": "t"}],
            }
        }
    )
    from decimal import Decimal

    assert cfg.loads.tariffs[0].default_price == Decimal("0.1")


def test_group_members_are_signed_metering_points():
    cfg = validate_config(
        {
            "loads": {
                "loads": [LOAD],
                "groups": [
                    {
                        **GROUP,
                        "members": [
                            {"meter": "bus1/000000000100"},
                            {"meter": "bus1/000000000101", "sign": -1},
                            "l1",
                        ],
                    }
                ],
            }
        }
    )
    members = cfg.loads.groups[0].members
    assert [(m.load, m.meter, m.sign) for m in members] == [
        (None, "bus1/000000000100", 1),
        (None, "bus1/000000000101", -1),
        ("l1", None, 1),
    ]
    # defaults that cannot hunt: alarm time and restore delay span the window
    g = cfg.loads.groups[0]
    assert (g.window_min * 60, g.rounds[0].alarm_s, g.restore_delay_s) == (300, 300.0, 600.0)
    assert g.restore_mode == "close_allowed"
