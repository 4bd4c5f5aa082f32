"""CT/PT ratios (倍率): a transformer-operated meter on a real pty, primary values in the image."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from controller.process_image import ProcessImage
from drivers.config import FieldConfig, MeterConfig, SimMeterConfig
from drivers.plant import FieldPlant
from drivers.sim.farm import MeterFarm, PtyWire
from drivers.sim.meter import SimMeter
from drivers.site_time import host_zone

from .conftest import wait_for

ADDR = "000000000040"


class MidRng(random.Random):
    """The simulated meter's noise at the middle of its range: values computable by hand."""

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


def field(tmp: Path, ct: object, pt: object) -> FieldConfig:
    return FieldConfig.model_validate(
        {
            "poll_groups": {
                "instant": {
                    "period_s": 0.2,
                    "items": ["0201FF00", "0202FF00", "02030000", "02060000", "02800002"],
                },
                "energy": {"period_s": 0.2, "items": ["00010000", "0001FF00", "00900200"]},
            },
            "buses": [
                {
                    "name": "bus1",
                    "protocol": "dlt645",
                    "port": str(tmp / "tty" / "bus1"),
                    "baud": 115200,
                    "response_delay_s": 0.0,
                    "response_timeout_s": 0.15,
                    "byte_timeout_s": 0.05,
                    "send_interval_s": 0.0,
                    "meters": [
                        {
                            "address": ADDR,
                            "groups": ["instant", "energy"],
                            "ct_ratio": ct,
                            "pt_ratio": pt,
                        }
                    ],
                }
            ],
        }
    )


@pytest.mark.parametrize(
    ("ct", "pt", "secondary_kw", "secondary_v", "secondary_a", "primary_v", "primary_a"),
    [
        # 10 kV customer, CT 200/5 (40), PT 10000/100 (100): ratio 4000.
        # P: 120 kW / 4000 = 0.03 kW at the meter.
        # U: the sim's primary phase voltage 100/√3 × 100 = 5773.5 V, noise × 1.005
        #    → 5802.4 V; the meter sees / 100 = 58.02 → 58.0 V (1 decimal);
        #    published 58.0 × 100 = 5800.0 V.
        # I: 0.03 kW / 3 phases = 0.01 kW; 10 W / (58.0 V × pf 0.95) = 0.18149 → 0.181 A;
        #    published 0.181 × 40 = 7.24 A.
        ("200/5", "10000/100", 0.03, 58.0, 0.181, 5800.0, 7.24),
        # 0.4 kV 专变 with a 200/5 CT only: 120 kW / 40 = 3 kW at the meter.
        # U: 220 × 1.005 = 221.1 V on both sides. I: 1 kW / (221.1 × 0.95) = 4.7609 → 4.761 A;
        #    published 4.761 × 40 = 190.44 A.
        (40, 1, 3.0, 221.1, 4.761, 221.1, 190.44),
    ],
)
async def test_meter_behind_ct_and_pt_publishes_primary_and_secondary(
    tmp_path, ct, pt, secondary_kw, secondary_v, secondary_a, primary_v, primary_a
):
    config = field(tmp_path, ct, pt)
    meter_cfg = config.buses[0].meters[0]
    # the plant: 120 kW at 19:30 local (profile 0.25 + 0.75·e^0 + 0.45·e^-33 → min(1, …) = 1.0),
    # noise at mid-range (×1.00), opening register 10.00 kWh; time frozen (time_scale 0)
    evening = dt.datetime(2026, 3, 2, 19, 30).timestamp()
    sim = SimMeter(
        # the controller here keeps the host's zone (no site zone given): so does the meter
        tz=host_zone(),
        address=ADDR,
        peak_kw=120.0,
        energy_kwh=10.0,
        tariff_kwh=[0.0, 4.0, 6.0, 0.0],
        ct_ratio=SimMeterConfig(ct_ratio=ct).ct_ratio,
        pt_ratio=SimMeterConfig(pt_ratio=pt).pt_ratio,
        time_scale=0.0,
        clock_drift_s_per_day=0.0,
        rng=MidRng(),
    )
    farm = MeterFarm(
        "bus1", [sim], char_time_s=0.0001, response_delay_s=0.0, fast=True, wall=lambda: evening
    )
    wire = PtyWire(farm, Path(config.buses[0].port))
    await wire.start()
    farm_task = asyncio.create_task(farm.run())
    image = ProcessImage()
    plant = FieldPlant(config, image, wall=lambda: evening)
    await plant.start()
    prefix = f"buses/bus1/meters/{ADDR}/"
    try:
        assert await wait_for(
            lambda: (
                image.value(prefix + "energy_fwd_active_t3") is not None
                and image.value(prefix + "frequency") is not None
            ),
            10,
        )
        assert sim.state()["power_kw"] == 120.0  # the primary load, the sim's own side
        # before the ratios: 0.03 (or 3.0) kW published as the customer's demand, 4000× (40×) low
        assert image.value(prefix + "power_active_total") == 120.0
        assert image.value(prefix + "power_active_total_secondary") == secondary_kw
        assert image.value(prefix + "voltage_a_secondary") == secondary_v
        assert image.value(prefix + "voltage_a") == primary_v
        assert image.value(prefix + "current_a_secondary") == secondary_a
        assert image.value(prefix + "current_a") == primary_a
        # energy: 10.00 kWh on the register × 4000 (or × 40) = 40 000 (or 400) kWh primary
        factor = meter_cfg.ct_ratio * meter_cfg.pt_ratio
        assert image.value(prefix + "energy_fwd_active_total_secondary") == 10.0
        assert image.value(prefix + "energy_fwd_active_total") == 10.0 * factor
        assert image.value(prefix + "energy_fwd_active_t3") == 6.0 * factor
        # the same on both sides of a transformer: no twin, value as read
        assert image.value(prefix + "power_factor_total") == 0.95
        assert image.value(prefix + "frequency") == 50.0  # (49.98 + 50.02) / 2
        assert image.value(prefix + "remaining_money") == 500.0
        for same in ("power_factor_total", "frequency", "remaining_money"):
            assert prefix + same + "_secondary" not in image
        assert image.tag(prefix + "power_active_total_secondary").unit == "kW"
        assert image.tag(prefix + "current_a").unit == "A"
    finally:
        await plant.stop()
        farm_task.cancel()
        await wire.stop()


async def test_meter_without_transformers_has_no_secondary_tags(tmp_path):
    config = field(tmp_path, 1, 1)
    image = ProcessImage()
    FieldPlant(config, image)  # tags are defined at construction
    names = {t.name for t in image.tags(f"buses/bus1/meters/{ADDR}/")}
    assert f"buses/bus1/meters/{ADDR}/power_active_total" in names
    assert not [n for n in names if n.endswith("_secondary")]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("ct_ratio", 0, r"ct_ratio must be > 0 and ≤ 100000 .*got 0"),
        ("pt_ratio", -100, r"pt_ratio must be > 0 and ≤ 100000 .*got -100"),
        ("ct_ratio", "200/0", r"ct_ratio must be a number > 0 or primary/secondary"),
        ("pt_ratio", "ten", r"pt_ratio must be a number > 0 or primary/secondary"),
        ("ct_ratio", True, r"ct_ratio must be a number > 0"),
        ("ct_ratio", float("nan"), r"ct_ratio must be > 0"),
    ],
)
def test_bad_ratios_are_refused_naming_the_field(key, value, message):
    with pytest.raises(ValidationError, match=message):
        MeterConfig.model_validate({"address": ADDR, key: value})
    with pytest.raises(ValidationError, match=message):
        SimMeterConfig.model_validate({key: value})


def test_ratios_as_numbers_or_primary_over_secondary():
    m = MeterConfig.model_validate({"address": ADDR, "ct_ratio": "200/5", "pt_ratio": 100})
    assert (m.ct_ratio, m.pt_ratio) == (40.0, 100.0)  # 200 / 5 = 40
    assert MeterConfig.model_validate({"address": ADDR}).ct_ratio == 1.0
    block = FieldConfig.model_validate(
        {
            "poll_groups": {"g": {"period_s": 1, "items": ["02030000"]}},
            "buses": [
                {
                    "name": "b",
                    "protocol": "dlt645",
                    "port": "/dev/null",
                    "meter_block": {
                        "first_address": ADDR,
                        "count": 2,
                        "groups": ["g"],
                        "ct_ratio": "75/5",
                    },
                }
            ],
        }
    )
    assert [m.ct_ratio for m in block.buses[0].meters] == [15.0, 15.0]  # 75 / 5


async def test_modbus_meter_behind_a_ct_publishes_primary_readings(tmp_path, running):
    from .conftest import LCT_TAGS, free_port, lct_config

    setpoint = '{ name = "limit", table = "holding", address = 0, scale = 0.1, unit = "kW", writable = true }'
    tags = LCT_TAGS.replace("]", f"  {setpoint},\n]") + '\nct_ratio = "200/5"'
    config = lct_config(tmp_path, free_port(), tags=tags)
    _sim, _plant, image = await running(config)
    prefix = "buses/lct/devices/t1/"

    def polled() -> bool:
        return all(
            image.value(prefix + n) not in (None, 0.0)
            for n in ("power_1", "power_1_secondary", "power_total_secondary")
        )

    assert await wait_for(polled, 10)
    for name in ("power_total", "power_1", "power_2"):
        primary, secondary = image.get(prefix + name), image.get(prefix + name + "_secondary")
        assert primary.source_time == secondary.source_time  # one poll writes both
        # 200/5 = 40: e.g. power_1 12.3 kW at the terminal → 492.0 kW primary
        assert primary.value == round(secondary.value * 40, 6)
        assert image.tag(prefix + name + "_secondary").unit == "kW"
    # outputs and setpoints keep the device's own values: no twin
    for name in ("out1", "limit"):
        assert prefix + name in image
        assert prefix + name + "_secondary" not in image
