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
    CT = "ct"  # transformer-operated: rated current In instead of Ib
    TRANSFORMER = "ct"  # alias

    @classmethod
    def _missing_(cls, value: object) -> Connection | None:
        return cls.CT if value == "transformer" else None  # the spelling of earlier configs


class Wiring(StrEnum):
    SINGLE_PHASE = "1P2W"
    THREE_PHASE_THREE_WIRE = "3P3W"
    THREE_PHASE_FOUR_WIRE = "3P4W"

    @property
    def elements(self) -> Fraction:
        """m in the starting-time and creep formulas (JJG 596-2012 §7.3.2, §7.3.3):
        1 single-phase, 3 three-phase four-wire, √3 three-phase three-wire (two
        elements on line voltages: P = √3 · U · I · cos φ). √3 as a Fraction of 28
        significant digits: a relative error below 1e-27, far under any reported digit."""
        if self is Wiring.SINGLE_PHASE:
            return Fraction(1)
        if self is Wiring.THREE_PHASE_FOUR_WIRE:
            return Fraction(3)
        return Fraction(Decimal(3).sqrt())


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
# Classes 1 and 2 transformer-operated (IEC 62053-21 Table 6, "transformer-operated"
# column): the bands start lower, at 0.02 In (PF 1) and 0.05 In (PF 0.5L/0.8C), and
# the tighter limit applies from 0.05 In / 0.1 In. Classes 0.2S/0.5S are
# transformer-operated by definition: their table above applies to both connections.
CT_LIMITS: dict[AccuracyClass, dict[bool, tuple[_Band, ...]]] = {
    AccuracyClass.C1: {
        True: ((_F(2, 100), _F(5, 100), Decimal("1.5")), (_F(5, 100), None, Decimal("1.0"))),
        False: ((_F(5, 100), _F(1, 10), Decimal("1.5")), (_F(1, 10), None, Decimal("1.0"))),
    },
    AccuracyClass.C2: {
        True: ((_F(2, 100), _F(5, 100), Decimal("2.5")), (_F(5, 100), None, Decimal("2.0"))),
        False: ((_F(5, 100), _F(1, 10), Decimal("2.5")), (_F(1, 10), None, Decimal("2.0"))),
    },
}


def _bands(cls: AccuracyClass, pf: PowerFactor, connection: Connection) -> tuple[_Band, ...]:
    table = CT_LIMITS if connection is Connection.CT and cls in CT_LIMITS else LIMITS
    return table[cls][pf is PowerFactor.UNITY]


def lowest_current(
    cls: AccuracyClass, pf: PowerFactor, connection: Connection = Connection.DIRECT
) -> Fraction:
    """The lowest current (× Ib or In) at which the class defines a limit for this PF."""
    return _bands(cls, pf, connection)[0][0]


def error_limit(
    cls: AccuracyClass,
    pf: PowerFactor,
    i_over_ib: Fraction,
    imax_over_ib: Fraction,
    connection: Connection,
) -> Decimal | None:
    """The ± limit in % at this load point, or None when the class defines none there."""
    if i_over_ib > imax_over_ib:
        return None
    for lo, hi, limit in _bands(cls, pf, connection):
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


def starting_time_s(c: Number, m: Number, un: Number, current: Number) -> Fraction:
    """Time limit for the first pulse: t = 1.2 × 60 000 / (C · m · Un · I) min.

    60 000 / (C·m·Un·I) min is one pulse period at the starting current
    (1 kWh = 60 000 W·min); the factor 1.2 is the regulation's margin.
    m: 1 single-phase, 3 three-phase four-wire, √3 three-phase three-wire
    (:attr:`Wiring.elements`)."""
    minutes = (
        Fraction(12, 10)
        * 60_000
        / (to_fraction(c) * to_fraction(m) * to_fraction(un) * to_fraction(current))
    )
    return minutes * 60


CREEP_F: dict[AccuracyClass, int] = {
    AccuracyClass.C02S: 900,
    AccuracyClass.C05S: 600,
    AccuracyClass.C1: 600,
    AccuracyClass.C2: 480,
}


def creep_time_s(cls: AccuracyClass, c: Number, m: Number, un: Number, imax: Number) -> Fraction:
    """Creep test duration Δt = F · 10⁶ / (C · m · Un · Imax) min (JJG 596-2012 §7.3.3),
    m as in :func:`starting_time_s`."""
    minutes = Fraction(CREEP_F[cls] * 10**6) / (
        to_fraction(c) * to_fraction(m) * to_fraction(un) * to_fraction(imax)
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


def clock_error_s_per_day(
    pulses: int, ticks: int, timebase_hz: int, nominal_hz: int = 1
) -> Fraction:
    """Daily error from one gate over the meter's second pulse.

    The gate spans ``pulses`` periods, timed as ``ticks`` of the standard time
    base: the measured frequency is f = pulses / (ticks / timebase_hz). A clock
    whose second pulse runs at f instead of f_nominal counts f/f_nominal seconds
    per true second, so it gains (f − f_nominal)/f_nominal × 86 400 s a day."""
    if pulses <= 0 or ticks <= 0 or timebase_hz <= 0:
        raise ValueError(
            f"clock gate: pulses, ticks and timebase_hz must be > 0, got {pulses}, {ticks}, {timebase_hz}"
        )
    f = Fraction(pulses * timebase_hz, ticks)
    return (f - nominal_hz) / nominal_hz * 86_400
