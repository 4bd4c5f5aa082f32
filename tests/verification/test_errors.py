"""Computations checked against values worked out by hand from the formulas."""

from decimal import Decimal
from fractions import Fraction

import pytest

from controller.verification.errors import (
    AccuracyClass,
    Connection,
    PowerFactor,
    Wiring,
    clock_error_s_per_day,
    creep_time_s,
    error_limit,
    evaluate_clock,
    evaluate_error,
    round_to_interval,
    sample_error,
    starting_current,
    starting_time_s,
    theoretical_count,
)

C1, C2, C05S, C02S = AccuracyClass.C1, AccuracyClass.C2, AccuracyClass.C05S, AccuracyClass.C02S


@pytest.mark.parametrize(
    ("value", "interval", "expected"),
    [
        ("0.34", "0.1", "0.3"),
        ("0.36", "0.1", "0.4"),
        ("1.05", "0.1", "1.0"),  # tie -> even multiple (10)
        ("1.15", "0.1", "1.2"),  # tie -> even multiple (12)
        ("-1.05", "0.1", "-1.0"),
        ("1.1", "0.2", "1.2"),  # 5.5 intervals -> 6
        ("1.3", "0.2", "1.2"),  # 6.5 intervals -> 6
        ("1.31", "0.2", "1.4"),
        ("0.125", "0.05", "0.10"),  # 2.5 -> 2
        ("0.175", "0.05", "0.20"),  # 3.5 -> 4
        ("0.03", "0.02", "0.04"),  # 1.5 -> 2
        ("0.01", "0.02", "0.00"),  # 0.5 -> 0
    ],
)
def test_rounding_to_interval_ties_to_even(value, interval, expected):
    assert round_to_interval(Decimal(value), Decimal(interval)) == Decimal(expected)
    assert str(round_to_interval(Decimal(value), Decimal(interval))) == expected


def test_rounding_interval_is_a_tenth_of_the_class_index():
    assert C1.rounding_interval == Decimal("0.1")
    assert C2.rounding_interval == Decimal("0.2")
    assert C05S.rounding_interval == Decimal("0.05")
    assert C02S.rounding_interval == Decimal("0.02")


def test_basic_error_by_hand():
    # C0 = 2e6 imp/kWh, C = 1200 imp/kWh, N = 10: m0 = 2e6*10/1200 = 16666.666...
    m0 = theoretical_count(2_000_000, 10, 1200)
    assert m0 == Fraction(50000, 3)
    # sample 1: m = 16616 -> (16666.667 - 16616)/16616*100 = 0.304927...
    assert float(sample_error(m0, 16616)) == pytest.approx(0.304927, abs=1e-6)
    ev = evaluate_error(m0, [16616, 16617], C1, Decimal("1.0"))
    # sample 2: 49.6667/16617*100 = 0.298891...; mean 0.301910 -> 0.3
    assert float(ev.samples[1]) == pytest.approx(0.2988907, abs=1e-6)
    assert float(ev.mean) == pytest.approx((0.304927 + 0.2988907) / 2, abs=1e-6)
    assert ev.rounded == Decimal("0.3")
    assert ev.passed


def test_basic_error_fail_and_edge():
    m0 = theoretical_count(2_000_000, 10, 1200)
    # a meter +2.1 % fast: m = m0/1.021
    m = round(float(m0) / 1.021)
    ev = evaluate_error(m0, [m, m], C1, Decimal("1.0"))
    assert ev.rounded == Decimal("2.1") and not ev.passed
    # rounded value equal to the limit passes: 1.04 % -> 1.0
    m = round(float(m0) / 1.0104)
    ev = evaluate_error(m0, [m, m], C1, Decimal("1.0"))
    assert ev.rounded == Decimal("1.0") and ev.passed
    with pytest.raises(ValueError, match="at least 2 samples"):
        evaluate_error(m0, [m], C1, Decimal("1.0"))


@pytest.mark.parametrize(
    ("cls", "pf", "i", "expected"),
    [
        (C1, PowerFactor.UNITY, Fraction(5, 100), "1.5"),
        (C1, PowerFactor.UNITY, Fraction(9, 100), "1.5"),
        (C1, PowerFactor.UNITY, Fraction(1, 10), "1.0"),
        (C1, PowerFactor.UNITY, Fraction(12), "1.0"),  # Imax = 12 Ib
        (C1, PowerFactor.UNITY, Fraction(13), None),
        (C1, PowerFactor.UNITY, Fraction(4, 100), None),
        (C1, PowerFactor.LAG_05, Fraction(1, 10), "1.5"),
        (C1, PowerFactor.CAP_08, Fraction(2, 10), "1.0"),
        (C1, PowerFactor.LAG_05, Fraction(5, 100), None),
        (C2, PowerFactor.UNITY, Fraction(5, 100), "2.5"),
        (C2, PowerFactor.UNITY, Fraction(1), "2.0"),
        (C2, PowerFactor.LAG_05, Fraction(1, 10), "2.5"),
        (C05S, PowerFactor.UNITY, Fraction(1, 100), "1.0"),
        (C05S, PowerFactor.UNITY, Fraction(5, 100), "0.5"),
        (C05S, PowerFactor.LAG_05, Fraction(2, 100), "1.0"),
        (C05S, PowerFactor.LAG_05, Fraction(1, 10), "0.6"),
        (C02S, PowerFactor.UNITY, Fraction(1, 100), "0.4"),
        (C02S, PowerFactor.UNITY, Fraction(1), "0.2"),
        (C02S, PowerFactor.LAG_05, Fraction(5, 100), "0.5"),
        (C02S, PowerFactor.CAP_08, Fraction(1, 10), "0.3"),
    ],
)
def test_limits_per_class_pf_and_current(cls, pf, i, expected):
    limit = error_limit(cls, pf, i, Fraction(12), Connection.DIRECT)
    assert limit == (None if expected is None else Decimal(expected))


@pytest.mark.parametrize(
    ("cls", "pf", "i", "expected"),
    [
        # IEC 62053-21 Table 6, transformer-operated: class 1 PF 1 ±1.5 % at
        # 0.02 In <= I < 0.05 In, ±1.0 % from 0.05 In; PF 0.5L/0.8C ±1.5 % at
        # 0.05 In <= I < 0.1 In, ±1.0 % from 0.1 In. Class 2: ±2.5 / ±2.0 likewise.
        (C1, PowerFactor.UNITY, Fraction(2, 100), "1.5"),
        (C1, PowerFactor.UNITY, Fraction(4, 100), "1.5"),
        (C1, PowerFactor.UNITY, Fraction(5, 100), "1.0"),  # direct: 1.5
        (C1, PowerFactor.UNITY, Fraction(1, 100), None),
        (C1, PowerFactor.LAG_05, Fraction(5, 100), "1.5"),  # direct: none
        (C1, PowerFactor.CAP_08, Fraction(1, 10), "1.0"),  # direct: 1.5
        (C1, PowerFactor.LAG_05, Fraction(4, 100), None),
        (C2, PowerFactor.UNITY, Fraction(2, 100), "2.5"),
        (C2, PowerFactor.UNITY, Fraction(5, 100), "2.0"),
        (C2, PowerFactor.LAG_05, Fraction(5, 100), "2.5"),
        (C2, PowerFactor.LAG_05, Fraction(1, 10), "2.0"),
        # 0.5S/0.2S are transformer-operated classes: one table for both connections
        (C05S, PowerFactor.UNITY, Fraction(1, 100), "1.0"),
        (C02S, PowerFactor.LAG_05, Fraction(1, 10), "0.3"),
    ],
)
def test_limits_of_transformer_operated_meters(cls, pf, i, expected):
    limit = error_limit(cls, pf, i, Fraction(4), Connection.CT)
    assert limit == (None if expected is None else Decimal(expected))


def test_power_factor_codes_are_the_wire_contract():
    from drivers.verification_rig import POWER_FACTOR_CODES

    assert tuple(p.value for p in PowerFactor) == POWER_FACTOR_CODES
    assert Connection("transformer") is Connection.CT  # the spelling of earlier configs


def test_starting_current_and_time_by_hand():
    # class 1 direct, Ib = 5 A: 0.004 Ib = 0.02 A
    assert starting_current(C1, Connection.DIRECT, Decimal(5)) == Fraction(2, 100)
    assert starting_current(C2, Connection.DIRECT, Decimal(5)) == Fraction(25, 1000)
    assert starting_current(C05S, Connection.CT, Decimal("1.5")) == Fraction(15, 10000)
    # class 1 CT, In = 1.5 A: 0.002 In = 0.003 A; class 2 CT: 0.003 In = 0.0045 A
    assert starting_current(C1, Connection.CT, Decimal("1.5")) == Fraction(3, 1000)
    assert starting_current(C2, Connection.CT, Decimal("1.5")) == Fraction(45, 10000)
    # t = 1.2 * 60000 / (1200 * 1 * 220 * 0.02) min = 13.636... min = 818.18 s
    t = starting_time_s(1200, 1, 220, Fraction(2, 100))
    assert float(t) == pytest.approx(1.2 * 60000 / (1200 * 220 * 0.02) * 60)
    assert float(t) == pytest.approx(818.1818, abs=1e-3)
    # 3P4W: m = 3
    assert starting_time_s(1200, 3, 220, Fraction(2, 100)) == t / 3
    # 3P3W: m = √3. C = 20 000, Un = 100 V, I = 0.002 In = 0.003 A (class 1 CT, In = 1.5 A):
    # 1.2 × 60 000 / (20 000 × 1.7320508 × 100 × 0.003) min = 72 000 / 10 392.305 min
    # = 6.928203 min = 415.692 s
    m = Wiring.THREE_PHASE_THREE_WIRE.elements
    assert float(m) == pytest.approx(1.7320508075688772, rel=1e-15)
    assert float(starting_time_s(20_000, m, 100, Fraction(3, 1000))) == pytest.approx(
        415.692194, abs=1e-6
    )
    assert Wiring.THREE_PHASE_FOUR_WIRE.elements == 3 and Wiring.SINGLE_PHASE.elements == 1


def test_creep_time_by_hand():
    # class 1: F = 600; C = 1200, Un = 220, Imax = 60: 600e6/(1200*220*60) min = 37.878 min
    assert float(creep_time_s(C1, 1200, 1, 220, 60)) == pytest.approx(37.878788 * 60, abs=1e-3)
    assert creep_time_s(C2, 1200, 1, 220, 60) == creep_time_s(C1, 1200, 1, 220, 60) * 480 / 600
    assert creep_time_s(C02S, 1200, 1, 220, 60) == creep_time_s(C1, 1200, 1, 220, 60) * 900 / 600
    # 3P3W, C = 20 000, Un = 100 V, Imax = 6 A: 600e6 / (20 000 × √3 × 100 × 6) min
    # = 600e6 / 20 784 609.69 min = 28.867513 min = 1732.0508 s
    m = Wiring.THREE_PHASE_THREE_WIRE.elements
    assert float(creep_time_s(C1, 20_000, m, 100, 6)) == pytest.approx(1732.050808, abs=1e-6)


def test_clock_error_mean_of_ten_readings():
    readings = [
        Decimal(x)
        for x in ("0.31", "0.29", "0.30", "0.33", "0.27", "0.30", "0.31", "0.29", "0.30", "0.34")
    ]
    ev = evaluate_clock(readings, Decimal("0.5"))
    assert ev.mean == Fraction(3040, 10000)  # 3.04 / 10
    assert ev.rounded == Decimal("0.30") and ev.passed
    bad = evaluate_clock([Decimal("0.62")] * 10, Decimal("0.5"))
    assert not bad.passed and bad.rounded == Decimal("0.62")
    # 10 second pulses timed as 10 000 050 ticks of 1 MHz: f = 10 / 10.00005 s =
    # 0.999995000025 Hz; (f − 1) × 86 400 = −4.999975e-6 × 86 400 = −0.431998 s/d (loses)
    assert float(clock_error_s_per_day(10, 10_000_050, 1_000_000)) == pytest.approx(
        -0.431998, abs=1e-6
    )
    # 10 pulses in 9 999 918 ticks: f = 10 / 9.999918 = 1.0000082000672 Hz;
    # 8.2000672e-6 × 86 400 = +0.708486 s/d (gains)
    assert float(clock_error_s_per_day(10, 9_999_918, 1_000_000)) == pytest.approx(
        0.708486, abs=1e-6
    )
    with pytest.raises(ValueError, match="ticks"):
        clock_error_s_per_day(10, 0, 1_000_000)
