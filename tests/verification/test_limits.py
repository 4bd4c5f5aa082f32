"""Verification limits through the sequencer on the simulated rig, expected values by hand.

The rig computes its side (pulses from power and constant, starting current,
second pulses) from its own nameplate values; the controller judges from the
counts. Every expected number below is worked out in the comment next to it.
"""

from __future__ import annotations

import ast
import sqlite3
import subprocess
import sys
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from controller.line_sim import build_sim_rig
from controller.verification.clock import VirtualClock
from controller.verification.config import LineConfig, StationConfig, UnitConfig, demo_line
from controller.verification.results import ResultsRepository
from controller.verification.scheme import MeterType, SchemeError, parse_scheme
from controller.verification.sequencer import MeterTask, Sequencer
from drivers.sim.rig import SimMeterSpec

ROOT = Path(__file__).resolve().parents[2]


def run_batch(meter_type: MeterType, scheme: dict, specs: list[SimMeterSpec], stations: int = 4):
    """One unit of ``stations`` positions, this meter type, one batch run to its end."""
    config = LineConfig(
        units=[
            UnitConfig(
                id=1,
                stations=[StationConfig(id=p, position=p) for p in range(1, stations + 1)],
            )
        ],
        meter_types={meter_type.name: meter_type},
    )
    clock = VirtualClock()
    try:
        rig = build_sim_rig(config, meter_type, clock)
        repo = ResultsRepository(sqlite3.connect(":memory:"))
        seq = Sequencer(config, rig, repo, clock)
        rig.feed(specs)
        seq.create_batch(
            "B",
            parse_scheme(scheme),
            meter_type.name,
            [MeterTask(s.barcode, s.address) for s in specs],
        )
        summary = clock.run(seq.run("B"))
    finally:
        clock.close()
    assert summary.state == "done"
    return {(r.barcode, r.item_index, r.point_index): r for r in repo.results("B")}


def spec(n: int, **kw) -> SimMeterSpec:
    kw.setdefault("error_pct", 0.0)
    return SimMeterSpec(barcode=f"L{n:03d}", address=f"{n:012d}", **kw)


def half_even(x: Fraction, interval: str) -> Decimal:
    return (Decimal(x.numerator) / Decimal(x.denominator)).quantize(
        Decimal(interval), rounding=ROUND_HALF_EVEN
    )


# -- the rig is an independent witness --------------------------------------------------------


def test_rig_imports_nothing_from_the_controller():
    for path in (ROOT / "drivers" / "sim" / "rig.py", ROOT / "drivers" / "verification_rig.py"):
        tree = ast.parse(path.read_text())
        modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + [
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
        ]
        assert not [m for m in modules if m.split(".")[0] == "controller"], (path, modules)
    # and importing it loads no controller module either
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, drivers.sim.rig; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'controller'))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"


# -- transformer-operated meters --------------------------------------------------------------

# Class 1, 3P4W, transformer-operated, 3 × 220 V, In = 1.5 A, Imax = 6 A, 6400 imp/kWh.
CT_METER = MeterType(
    name="DTZ-1-CT",
    accuracy_class="1",
    connection="ct",
    phases=3,
    un=220,
    ib=Decimal("1.5"),
    imax=6,
    constant=6400,
)
CT_SCHEME = {
    "name": "class1-ct",
    "version": 1,
    "accuracy_class": "1",
    "items": [
        {
            "kind": "basic_error",
            "settle_s": 1,
            "points": [
                {"i": "0.02In", "pf": "1.0", "pulses": 1},
                {"i": "0.05In", "pf": "1.0", "pulses": 2},
                {"i": "0.05In", "pf": "0.5L", "pulses": 1},
                {"i": "0.1In", "pf": "0.5L", "pulses": 2},
            ],
        }
    ],
}


def test_transformer_operated_meter_limits_through_the_sequencer():
    specs = [
        # +1.3 % at 0.05 In PF 1: the limit there is ±1.0 % for a CT meter (±1.5 % only
        # below 0.05 In), so it fails (a direct meter's ±1.5 % would pass it)
        spec(0, error_pct=0.3, point_errors={(0.05, "1.0"): 1.3}),
        # +1.44 % at 0.02 In -> 1.4 <= 1.5; −1.46 % at 0.05 In PF 0.5L -> −1.5 = −limit: pass
        spec(1, error_pct=0.2, point_errors={(0.02, "1.0"): 1.44, (0.05, "0.5L"): -1.46}),
        # +1.2 % at 0.1 In PF 0.5L: ±1.0 % from 0.1 In lagging -> fails
        spec(2, error_pct=0.2, point_errors={(0.1, "0.5L"): 1.2}),
    ]
    rows = run_batch(CT_METER, CT_SCHEME, specs, stations=3)
    limits = ["1.5", "1.0", "1.5", "1.0"]  # per point, IEC 62053-21 Table 6 transformer-operated
    expected = {
        "L000": [("0.3", "pass"), ("1.3", "fail"), ("0.3", "pass"), ("0.3", "pass")],
        "L001": [("1.4", "pass"), ("0.2", "pass"), ("-1.5", "pass"), ("0.2", "pass")],
        "L002": [("0.2", "pass"), ("0.2", "pass"), ("0.2", "pass"), ("1.2", "fail")],
    }
    for barcode, points in expected.items():
        for k, (rounded, verdict) in enumerate(points):
            r = rows[(barcode, 0, k)]
            assert (r.rounded, r.verdict) == (rounded, verdict), (barcode, k, r.point)
            assert (r.limit_low, r.limit_high) == ("-" + limits[k], limits[k])


def test_point_of_transformer_operated_meters_refused_for_a_direct_meter():
    direct = MeterType.model_validate({**CT_METER.model_dump(), "connection": "direct"})
    with pytest.raises(SchemeError) as exc:
        parse_scheme(CT_SCHEME).validate_for(direct)
    msg = str(exc.value)
    # 0.02 × 1.5 A = 0.03 A; a direct class 1 meter starts at 0.05 Ib = 0.075 A (PF 1),
    # 0.1 Ib = 0.15 A (PF 0.5L)
    assert "items[0].points[0].i: 0.02Ib = 0.03 A at PF 1.0 is outside the range" in msg
    assert "class 1 direct-connected: 0.05 Ib = 0.075 A .. Imax = 6 A" in msg
    assert "items[0].points[2].i: 0.05Ib = 0.075 A at PF 0.5L" in msg
    assert "connection = 'ct'" in msg


# -- constant (register) test -----------------------------------------------------------------

CONSTANT_SCHEME = {
    "name": "class1-constant",
    "version": 1,
    "accuracy_class": "1",
    "items": [{"kind": "constant", "i": "Imax", "energy_kwh": 10}],
}


def test_constant_test_judged_against_the_class_limit():
    mt = demo_line(1, 4).meter_type("DDZY-1-5(60)A")  # class 1, 220 V 5(60) A, 1200 imp/kWh
    specs = [
        spec(0, constant_factor=1.021),  # pulses 2.1 % too many per kWh
        spec(1, constant_factor=0.99609375),  # 1 − 1/256: 0.39 % too few
        spec(2),  # exact
    ]
    rows = run_batch(mt, CONSTANT_SCHEME, specs, stations=3)
    # At Imax the standard measures 10 kWh; an exact register advances 10.00 kWh.
    # γ = (D − N/C) / (N/C) × 100 %, D the register advance, N the meter's pulses.
    # L000: N = 1.021 × 1200 × 10 = 12 252 (12 251 when the gate cuts the first pulse):
    #   (10 − 12252/1200) / (12252/1200) = −0.21/10.21 = −2.0568 % -> −2.1
    #   (10 − 12251/1200) / (12251/1200) = −0.209167/10.209167 = −2.0488 % -> −2.0
    # L001: N = 0.99609375 × 12 000 = 11 953.125 -> 11 953 or 11 954:
    #   (10 − 9.960833)/9.960833 = +0.3932 % -> 0.4; (10 − 9.961667)/9.961667 = +0.3848 % -> 0.4
    # L002: N = 12 000 -> 0.0 (11 999 -> +0.0083 % -> 0.0)
    hand = {
        "L000": {12251: "-2.0", 12252: "-2.1"},
        "L001": {11953: "0.4", 11954: "0.4"},
        "L002": {11999: "0.0", 12000: "0.0"},
    }
    verdicts = {"L000": "fail", "L001": "pass", "L002": "pass"}
    for barcode, by_count in hand.items():
        r = rows[(barcode, 0, 0)]
        s = r.samples[0]
        advance = Decimal(s["register_after"]) - Decimal(s["register_before"])
        assert advance == Decimal("10.00"), (barcode, s)
        assert s["pulses"] in by_count, (barcode, s)
        assert r.rounded == by_count[s["pulses"]]
        by_pulses = Fraction(s["pulses"], 1200)
        assert Decimal(r.average) == half_even(
            (Fraction(advance) - by_pulses) / by_pulses * 100, "0.000001"
        )
        assert (r.unit, r.limit_low, r.limit_high) == ("%", "-1.0", "1.0")  # class 1 at Imax PF 1
        assert r.verdict == verdicts[barcode], (barcode, r.reason)


def test_constant_test_energy_too_small_for_the_register_is_refused():
    mt = demo_line(1, 4).meter_type("DDZY-1-5(60)A")
    scheme = parse_scheme({**CONSTANT_SCHEME, "items": [{"kind": "constant", "energy_kwh": 0.5}]})
    # 0.01 kWh of 0.5 kWh is 2 %: the old tolerance (one digit + one pulse = 0.0108 kWh)
    # let a constant 2.1 % off through (0.5 × 2.1 % = 0.0105 kWh). One digit must be at
    # most one rounding interval (0.1 %) of the energy: 0.01 / 0.001 = 10 kWh.
    with pytest.raises(SchemeError) as exc:
        scheme.validate_for(mt)
    assert "items[0].energy_kwh: 0.5 kWh is too little for class 1" in str(exc.value)
    assert "at least 10 kWh (allowed 10..100 kWh)" in str(exc.value)


# -- three-phase three-wire ------------------------------------------------------------------

# Class 1, 3P3W, transformer-operated, 3 × 100 V, In = 1.5 A, Imax = 6 A, 20 000 imp/kWh.
P3W3 = MeterType(
    name="DSZ-1-CT",
    accuracy_class="1",
    connection="ct",
    wiring="3P3W",
    un=100,
    ib=Decimal("1.5"),
    imax=6,
    constant=20_000,
)


def test_three_phase_three_wire_uses_root_three():
    scheme = {
        "name": "class1-3p3w",
        "version": 1,
        "accuracy_class": "1",
        "items": [
            {"kind": "starting"},
            {"kind": "creep"},
            {"kind": "basic_error", "points": [{"i": "In", "pf": "1.0", "pulses": 10}]},
        ],
    }
    assert P3W3.phases == 3
    rows = run_batch(P3W3, scheme, [spec(0, error_pct=0.3), spec(1, starting_factor=2.0)], 2)
    # starting current 0.002 In = 0.003 A; t = 1.2 × 60 000 / (C · √3 · Un · I) min
    # = 72 000 / (20 000 × 1.7320508 × 100 × 0.003) min = 72 000 / 10 392.305 min
    # = 6.928203 min = 415.69 s (m = 3 would give 240 s)
    start = rows[("L000", 0, 0)]
    assert start.point == "0.003 A" and start.limit_high == "415.7"
    # the rig's own physics: √3 · 100 V · 0.003 A = 0.5196 W; 20 000 × 0.5196 / 3.6e6
    # = 0.0028868 pulses/s, one pulse per 346.4 s: 1 or 2 pulses in 415.7 s
    assert start.samples[0]["pulses"] in (1, 2) and start.verdict == "pass"
    assert Decimal(start.average) <= Decimal("346.5")
    assert rows[("L001", 0, 0)].verdict == "fail"  # starts only at 0.006 A
    # creep: Δt = 600e6 / (20 000 × √3 × 100 × 6) min = 28.867513 min = 1732.05 s
    assert "1732.1 s" in rows[("L000", 1, 0)].point
    # basic error at In: P = √3 × 100 × 1.5 = 259.81 W, the meter 0.3 % fast -> 0.3
    assert rows[("L000", 2, 0)].rounded == "0.3"


def test_wiring_must_fit_the_phases():
    with pytest.raises(ValueError, match=r"wiring: 3P3W does not fit phases = 1"):
        MeterType.model_validate({**P3W3.model_dump(), "phases": 1})
    with pytest.raises(ValueError, match="wiring"):
        MeterType.model_validate({**P3W3.model_dump(), "wiring": "3P2W"})


# -- daily clock error -----------------------------------------------------------------------


def test_clock_error_from_timed_second_pulses():
    mt = demo_line(1, 4).meter_type("DDZY-1-5(60)A")
    scheme = {
        "name": "clock",
        "version": 1,
        "accuracy_class": "1",
        "items": [{"kind": "clock", "readings": 10, "gate_s": 10}],
    }
    specs = [spec(0, clock_drift_s_per_day=0.71), spec(1, clock_drift_s_per_day=-0.45)]
    rows = run_batch(mt, scheme, specs, stations=2)
    # A clock gaining y s/d pulses at f = (86 400 + y)/86 400 Hz; 10 periods last 10/f s,
    # timed in whole µs ticks:
    #   y = +0.71: 10 / 1.0000082176 = 9.9999178 s -> 9 999 917 or 9 999 918 ticks
    #     -> (10e6/9999917 − 1) × 86 400 = +0.717125; (10e6/9999918 − 1) × 86 400 = +0.708486
    #   y = −0.45: 10 / 0.9999947917 = 10.0000521 s -> 10 000 052 or 10 000 053 ticks
    #     -> −0.449277 or −0.457917 s/d
    hand = {
        "L000": ({9_999_917, 9_999_918}, ("0.71", "0.72"), "fail"),
        "L001": ({10_000_052, 10_000_053}, ("-0.45", "-0.46"), "pass"),
    }
    for barcode, (ticks, rounded, verdict) in hand.items():
        r = rows[(barcode, 0, 0)]
        assert len(r.samples) == 10
        values = []
        for s in r.samples:
            assert s["pulses"] == 10 and s["timebase_hz"] == 1_000_000 and s["ticks"] in ticks
            v = (Fraction(10 * 1_000_000, s["ticks"]) - 1) * 86_400
            assert Decimal(s["s_per_day"]) == half_even(v, "0.0001")
            values.append(v)
        assert Decimal(r.rounded) == half_even(sum(values) / 10, "0.01")
        assert r.rounded in rounded and r.verdict == verdict
        assert (r.limit_low, r.limit_high, r.unit) == ("-0.5", "0.5", "s/d")


def test_rig_nameplate_physics_by_hand():
    from drivers.sim.rig import SimNameplate, cos_phi

    def plate(cls, connection, ib, wiring="1P2W"):
        return SimNameplate(cls, connection, wiring, 220.0, ib, 1200)

    # starting current: direct class 1 0.004 × 5 A = 0.02 A, class 2 0.005 × 5 A = 0.025 A;
    # CT class 1 0.002 × 1.5 A = 0.003 A, class 2 0.003 × 1.5 A = 0.0045 A; 0.5S 0.001 In
    assert plate("1", "direct", 5.0).class_starting_a == pytest.approx(0.02)
    assert plate("2", "direct", 5.0).class_starting_a == pytest.approx(0.025)
    assert plate("1", "ct", 1.5).class_starting_a == pytest.approx(0.003)
    assert plate("2", "ct", 1.5).class_starting_a == pytest.approx(0.0045)
    assert plate("0.5S", "ct", 1.5).class_starting_a == pytest.approx(0.0015)
    # m in P = m · U · I · cos φ
    assert plate("1", "ct", 1.5, "3P3W").power_elements == pytest.approx(1.7320508075688772)
    assert plate("1", "ct", 1.5, "3P4W").power_elements == 3.0
    assert cos_phi("0.5L") == 0.5 and cos_phi("0.8C") == 0.8
    with pytest.raises(ValueError, match=r"pf: '0.3L' is not a source setting"):
        cos_phi("0.3L")
    with pytest.raises(ValueError, match=r"wiring: '3P2W' not one of 1P2W, 3P3W, 3P4W"):
        plate("1", "ct", 1.5, "3P2W")
