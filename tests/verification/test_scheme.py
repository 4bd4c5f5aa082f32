import tomllib
from pathlib import Path

import pytest

from controller.verification.scheme import (
    MeterType,
    SchemeError,
    Scope,
    load_scheme,
    parse_scheme,
)

SCHEMES = Path(__file__).resolve().parents[2] / "config" / "schemes"
METER = MeterType(name="DDZY 5(60)A", accuracy_class="1", un=220, ib=5, imax=60, constant=1200)


def base() -> dict:
    return tomllib.loads((SCHEMES / "class1_single_phase.toml").read_text())


@pytest.mark.parametrize("path", sorted(SCHEMES.glob("*.toml")), ids=lambda p: p.name)
def test_example_schemes_load(path):
    scheme = load_scheme(path)
    assert scheme.version >= 1 and scheme.items


def test_example_scheme_plan_matches_formulas():
    scheme = load_scheme(SCHEMES / "class1_single_phase.toml")
    scheme.validate_for(METER)
    plan = dict(zip([i.kind for i in scheme.items], scheme.plan(METER), strict=True))
    assert plan["starting"] == (
        Scope.UNIT,
        pytest.approx(2 + 1.2 * 60000 / (1200 * 220 * 0.02) * 60),
    )
    assert plan["creep"] == (Scope.UNIT, pytest.approx(2 + 600e6 / (1200 * 220 * 60) * 60))
    assert plan["clock"] == (Scope.STATION, 100.0)
    # Imax PF1, 40 pulses x 2 samples: 80 / (1200 imp/kWh * 13.2 kW) h = 18.18 s (+5 s settle)
    assert plan["withstand"] == (Scope.UNIT, 70.0)


def test_unknown_item_is_refused_naming_it():
    data = base()
    data["items"].insert(2, {"kind": "dielectric_magic", "kv": 3})
    with pytest.raises(SchemeError) as exc:
        parse_scheme(data, "bad.toml")
    msg = str(exc.value)
    assert "items[2].kind" in msg and "'dielectric_magic'" in msg and "basic_error" in msg


def test_load_point_below_class_range_is_refused():
    data = base()
    data["items"][4]["points"].append({"i": "0.01Ib", "pf": "1.0", "pulses": 1})
    with pytest.raises(SchemeError) as exc:
        parse_scheme(data, "bad.toml")
    # the lowest point of class 1 at PF 1 is 0.02 In (transformer-operated meters)
    assert "items[4].points[8].i: 0.01Ib at PF 1.0 is below the range of class 1" in str(exc.value)
    assert "0.02 Ib to Imax" in str(exc.value)


def test_point_for_transformer_operated_meters_is_refused_for_a_direct_one():
    data = base()
    data["items"][4]["points"].append({"i": "0.02Ib", "pf": "1.0", "pulses": 1})
    scheme = parse_scheme(data)  # a class 1 CT meter is verified from 0.02 In...
    ct = MeterType.model_validate({**METER.model_dump(), "connection": "ct"})
    assert scheme.problems_for(ct) == []
    with pytest.raises(SchemeError) as exc:  # ...a direct-connected one from 0.05 Ib
        scheme.validate_for(METER)
    msg = str(exc.value)
    # 0.02 × 5 A = 0.1 A; 0.05 × 5 A = 0.25 A
    assert "items[4].points[8].i: 0.02Ib = 0.1 A at PF 1.0 is outside the range" in msg
    assert "class 1 direct-connected: 0.05 Ib = 0.25 A .. Imax = 60 A" in msg
    assert "transformer-operated meters (connection = 'ct')" in msg


def test_load_point_above_meter_imax_is_refused():
    data = base()
    data["items"][4]["points"].append({"i": "15Ib", "pf": "1.0", "pulses": 50})
    scheme = parse_scheme(data)  # fine for the class...
    with pytest.raises(SchemeError) as exc:  # ...but not for a 5(60) A meter
        scheme.validate_for(METER)
    msg = str(exc.value)
    assert "items[4].points[8].i: 15Ib = 75 A at PF 1.0 is outside the range" in msg
    assert "Imax = 60 A" in msg


def test_lagging_point_below_its_band_is_refused():
    data = base()
    data["items"][4]["points"].append({"i": "0.04Ib", "pf": "0.5L"})
    with pytest.raises(SchemeError, match=r"0.04Ib at PF 0.5L is below the range.*0.05 Ib"):
        parse_scheme(data)
    data["items"][4]["points"][-1]["i"] = "0.05Ib"  # CT meters only: direct ones from 0.1 Ib
    with pytest.raises(SchemeError, match=r"class 1 direct-connected: 0.1 Ib = 0.5 A"):
        parse_scheme(data).validate_for(METER)


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"kind": "withstand", "kv": 9}, "items[0].kv: Input should be less than or equal to 6"),
        (
            {"kind": "basic_error", "points": [{"i": "Ib", "samples": 1}]},
            "items[0].points[0].samples",
        ),
        ({"kind": "basic_error", "points": [{"i": "Ib", "pf": "0.3L"}]}, "items[0].points[0].pf"),
        ({"kind": "basic_error", "points": [{"i": "5A"}]}, "not a multiple of Ib"),
        ({"kind": "clock", "readings": 10, "colour": "red"}, "items[0].colour: unknown field"),
    ],
)
def test_factor_out_of_range_names_field(patch, fragment):
    data = {"name": "x", "version": 1, "accuracy_class": "1", "items": [patch]}
    with pytest.raises(SchemeError) as exc:
        parse_scheme(data)
    assert fragment in str(exc.value)


def test_class_mismatch_and_hash_versioning():
    scheme = load_scheme(SCHEMES / "class2_quick.toml")
    with pytest.raises(
        SchemeError, match="scheme is for class 2, meter type 'DDZY 5\\(60\\)A' is class 1"
    ):
        scheme.validate_for(METER)
    data = base()
    a = parse_scheme(data)
    data["items"][1]["kv"] = 2.0
    b = parse_scheme(data)
    assert a.content_hash != b.content_hash and a.version == b.version


def test_meter_type_refuses_imax_below_ib():
    with pytest.raises(ValueError, match="imax must be >= ib"):
        MeterType(name="x", accuracy_class="1", un=220, ib=10, imax=5, constant=1200)
