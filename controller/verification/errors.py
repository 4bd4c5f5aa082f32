"""Verification computations, exactly as JJG 596-2012 / IEC 62053-21 state them.

Everything here is pure and exact: pulse counts are integers, constants and
ratings are Decimals, intermediate values are Fractions, and only the final
reported numbers become Decimals. A result is therefore reproducible by hand
from the recorded counts, which is what an auditor of a calibration lab does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction

Number = int | Decimal | Fraction


class AccuracyClass(StrEnum):
    C02S = "0.2S"
    C05S = "0.5S"
    C1 = "1"
    C2 = "2"

    @property
    def class_index(self) -> Decimal:
        """The class index as a percentage (0.2S -> 0.2)."""
        return Decimal(self.value.rstrip("S"))

    @property
    def rounding_interval(self) -> Decimal:
        # JJG 596-2012 §7.4 (data processing): the relative error is rounded to
        # 1/10 of the class index: 0.02 % for 0.2S, 0.05 % for 0.5S, 0.1 % for
        # class 1 and 0.2 % for class 2.
        return self.class_index / 10


class PowerFactor(StrEnum):
    UNITY = "1.0"
    LAG_05 = "0.5L"
    CAP_08 = "0.8C"

    @property
    def cos_phi(self) -> Fraction:
        return Fraction(Decimal(self.value.rstrip("LC")))


class Connection(StrEnum):
    DIRECT = "direct"
    TRANSFORMER = "transformer"


def to_fraction(x: Number) -> Fraction:
    return x if isinstance(x, Fraction) else Fraction(x)


# -- rounding ---------------------------------------------------------------


def round_to_interval(value: Number, interval: Decimal) -> Decimal:
    """Round ``value`` to the nearest multiple of ``interval``; ties go to the even multiple.

    Why ties-to-even: JJG 596-2012 refers data rounding to JJF 1027 / GB/T 8170,
    whose rule is "四舍六入五成双" — round to the nearest multiple of the
    rounding interval and, when the value lies exactly half-way, to the even
    multiple. It also keeps intervals that are not a power of ten (0.2 % for
    class 2, 0.05 % for 0.5S) right: we count intervals, not decimal digits.
    The computation is done on exact Fractions so no binary floating-point
    representation error can move a value across a tie.
    """
    if interval <= 0:
        raise ValueError(f"interval must be > 0, got {interval}")
    q = to_fraction(value) / to_fraction(interval)
    n = round(q)  # Python's round on Fraction is exact and rounds half to even
    exponent = interval.as_tuple().exponent
    assert isinstance(exponent, int)
    return (Decimal(n) * interval).quantize(Decimal(1).scaleb(exponent))


def to_decimal(value: Fraction, places: int = 6) -> Decimal:
    """A Fraction as a Decimal with ``places`` digits, for reporting raw samples."""
    exact = Decimal(value.numerator) / Decimal(value.denominator)
    return exact.quantize(Decimal(1).scaleb(-places))


# -- basic error ----------------------------------------------------------------


def theoretical_count(c0: Number, n: int, c: Number) -> Fraction:
    """m0 = C0 · N / C: standard pulses that correspond to N meter pulses if the meter were exact."""
    return to_fraction(c0) * n / to_fraction(c)


def sample_error(m0: Fraction, m: int) -> Fraction:
    """γ = (m0 − m) / m × 100 %  (JJG 596-2012, standard-meter method)."""
    if m <= 0:
        raise ValueError(f"standard pulse count m must be > 0, got {m}")
    return (m0 - m) / m * 100


# Limits of the basic error (JJG 596-2012 Table 3 / IEC 62053-21 & -22 Table 6):
# per class and power-factor group, bands of current as multiples of Ib (In for
# transformer-operated meters): (from, to, limit %). A band ``to`` of None means
# "up to Imax inclusive"; otherwise the band is from <= I < to.
_Band = tuple[Fraction, Fraction | None, Decimal]
_F = Fraction
LIMITS: dict[AccuracyClass, dict[bool, tuple[_Band, ...]]] = {
    AccuracyClass.C1: {
        True: ((_F(5, 100), _F(1, 10), Decimal("1.5")), (_F(1, 10), None, Decimal("1.0"))),
        False: ((_F(1, 10), _F(2, 10), Decimal("1.5")), (_F(2, 10), None, Decimal("1.0"))),
    },
    AccuracyClass.C2: {
        True: ((_F(5, 100), _F(1, 10), Decimal("2.5")), (_F(1, 10), None, Decimal("2.0"))),
        False: ((_F(1, 10), _F(2, 10), Decimal("2.5")), (_F(2, 10), None, Decimal("2.0"))),
    },
    AccuracyClass.C05S: {
        True: ((_F(1, 100), _F(5, 100), Decimal("1.0")), (_F(5, 100), None, Decimal("0.5"))),
        False: ((_F(2, 100), _F(1, 10), Decimal("1.0")), (_F(1, 10), None, Decimal("0.6"))),
    },
    AccuracyClass.C02S: {
        True: ((_F(1, 100), _F(5, 100), Decimal("0.4")), (_F(5, 100), None, Decimal("0.2"))),
        False: ((_F(2, 100), _F(1, 10), Decimal("0.5")), (_F(1, 10), None, Decimal("0.3"))),
    },
}


def lowest_current(cls: AccuracyClass, pf: PowerFactor) -> Fraction:
    """The lowest current (× Ib) at which the class defines a limit for this PF."""
    return LIMITS[cls][pf is PowerFactor.UNITY][0][0]


def error_limit(
    cls: AccuracyClass, pf: PowerFactor, i_over_ib: Fraction, imax_over_ib: Fraction
) -> Decimal | None:
    """The ± limit in % at this load point, or None when the class defines none there."""
    if i_over_ib > imax_over_ib:
        return None
    for lo, hi, limit in LIMITS[cls][pf is PowerFactor.UNITY]:
        if i_over_ib >= lo and (hi is None or i_over_ib < hi):
            return limit
    return None


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One evaluated quantity: exact samples, their mean, the rounded value and the verdict."""

    samples: tuple[Fraction, ...]
    mean: Fraction
    rounded: Decimal
    limit_low: Decimal
    limit_high: Decimal

    @property
    def passed(self) -> bool:
        # JJG 596-2012 §7.4: the *rounded* value is compared with the limit;
        # a rounded value equal to the limit passes.
        return self.limit_low <= self.rounded <= self.limit_high


def evaluate_error(
    m0: Fraction, counts: Sequence[int], cls: AccuracyClass, limit: Decimal
) -> Evaluation:
    """Basic error at one load point from the standard counts of each sample."""
    if len(counts) < 2:
        # JJG 596-2012 §7.2.3: at least two measurements per load point.
        raise ValueError(f"at least 2 samples are required, got {len(counts)}")
    samples = tuple(sample_error(m0, m) for m in counts)
    mean = sum(samples, Fraction(0)) / len(samples)
    return Evaluation(samples, mean, round_to_interval(mean, cls.rounding_interval), -limit, limit)


# -- starting and creep -------------------------------------------------------------


def starting_current(cls: AccuracyClass, connection: Connection, ib: Number) -> Fraction:
    """Starting current in A (IEC 62053-21 §8.3.3 / -22 §8.3.3, JJG 596-2012 Table 7)."""
    ib_f = to_fraction(ib)
    if cls in (AccuracyClass.C02S, AccuracyClass.C05S):
        return ib_f / 1000  # 0.001 In
    if cls is AccuracyClass.C1:
        return ib_f * (Fraction(4, 1000) if connection is Connection.DIRECT else Fraction(2, 1000))
    return ib_f * (Fraction(5, 1000) if connection is Connection.DIRECT else Fraction(3, 1000))


def starting_time_s(c: Number, phases: int, un: Number, current: Number) -> Fraction:
    """Time limit for the first pulse: t = 1.2 × 60 000 / (C · m · Un · I) min.

    60 000 / (C·m·Un·I) min is one pulse period at the starting current
    (1 kWh = 60 000 W·min); the factor 1.2 is the regulation's margin.
    ``phases`` is m: 1 for single-phase, 3 for three-phase four-wire."""
    minutes = (
        Fraction(12, 10)
        * 60_000
        / (to_fraction(c) * phases * to_fraction(un) * to_fraction(current))
    )
    return minutes * 60


CREEP_F: dict[AccuracyClass, int] = {
    AccuracyClass.C02S: 900,
    AccuracyClass.C05S: 600,
    AccuracyClass.C1: 600,
    AccuracyClass.C2: 480,
}


def creep_time_s(cls: AccuracyClass, c: Number, phases: int, un: Number, imax: Number) -> Fraction:
    """Creep test duration Δt = F · 10⁶ / (C · m · Un · Imax) min (JJG 596-2012 §7.3.3)."""
    minutes = Fraction(CREEP_F[cls] * 10**6) / (
        to_fraction(c) * phases * to_fraction(un) * to_fraction(imax)
    )
    return minutes * 60


# Starting passes with >= 1 pulse inside the time limit; creep passes with
# <= 1 pulse in Δt (a single pulse may be the one already "in flight" when the
# current was removed).
STARTING_MIN_PULSES = 1
CREEP_MAX_PULSES = 1


# -- daily clock error --------------------------------------------------------------

CLOCK_INTERVAL = Decimal("0.01")  # s/d: clock results are reported to 0.01 s/d
CLOCK_READINGS = 10


def evaluate_clock(readings: Sequence[Number], limit_s_per_day: Decimal) -> Evaluation:
    """Daily clock error: the mean of the readings (10 by JJG 596-2012 §7.3.8), ± limit s/d."""
    if len(readings) < 2:
        raise ValueError(f"at least 2 clock readings are required, got {len(readings)}")
    samples = tuple(to_fraction(r) for r in readings)
    mean = sum(samples, Fraction(0)) / len(samples)
    return Evaluation(
        samples, mean, round_to_interval(mean, CLOCK_INTERVAL), -limit_s_per_day, limit_s_per_day
    )


def clock_error_s_per_day(measured_period_s: Number, nominal_period_s: Number = 1) -> Fraction:
    """Daily error from one gate measurement of the meter's second pulse.

    A second pulse that is ``measured`` seconds long against the standard time
    base means the meter's clock gains (nominal − measured)/measured of a day
    per day."""
    measured = to_fraction(measured_period_s)
    return (to_fraction(nominal_period_s) - measured) / measured * 86_400
