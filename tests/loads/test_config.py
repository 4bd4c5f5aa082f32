"""[loads] config errors name the field and the allowed range, through the root loader."""

from __future__ import annotations

import pytest

from controller.config import ConfigError, validate_config

LOAD = {"name": "l1", "bus": "bus1", "address": "000000000001"}
GROUP = {
    "name": "g",
    "members": ["l1"],
    "rounds": [{"name": "r1", "loads": ["l1"]}],
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
