"""Tag short names for DL/T 645-2007 data identifiers.

The Rust DI table knows formats and units; this table only says how a reading
is called in the process image (``buses/<bus>/meters/<addr>/<quantity>``).
Block DIs (``FF`` in DI1 or DI0) expand to one quantity per element, in the
order the standard lists them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Quantity:
    di: str
    names: tuple[str, ...]  # one per element of the reply (block DIs have several)
    unit: str
    description: str


def _q(di: str, names: str | tuple[str, ...], unit: str, description: str) -> Quantity:
    return Quantity(di, (names,) if isinstance(names, str) else names, unit, description)


_TARIFFS = ("total", "t1", "t2", "t3", "t4")

QUANTITIES: dict[str, Quantity] = {
    q.di: q
    for q in (
        _q("00000000", "energy_combined_active_total", "kWh", "combined active energy, total"),
        _q("00010000", "energy_fwd_active_total", "kWh", "forward active energy, total"),
        _q("00020000", "energy_rev_active_total", "kWh", "reverse active energy, total"),
        _q(
            "0001FF00",
            tuple(f"energy_fwd_active_{t}" for t in _TARIFFS),
            "kWh",
            "forward active energy, total and tariffs 1-4",
        ),
        # the same registers one by one (meters that refuse the block DI): same tags,
        # so tariff-register billing finds T1..T4 either way
        *(
            _q(
                f"00010{i}00",
                f"energy_fwd_active_t{i}",
                "kWh",
                f"forward active energy, tariff {i}",
            )
            for i in range(1, 5)
        ),
        _q("02010100", "voltage_a", "V", "phase A voltage"),
        _q("02010200", "voltage_b", "V", "phase B voltage"),
        _q("02010300", "voltage_c", "V", "phase C voltage"),
        _q("0201FF00", ("voltage_a", "voltage_b", "voltage_c"), "V", "phase voltages"),
        _q("02020100", "current_a", "A", "phase A current"),
        _q("02020200", "current_b", "A", "phase B current"),
        _q("02020300", "current_c", "A", "phase C current"),
        _q("0202FF00", ("current_a", "current_b", "current_c"), "A", "phase currents"),
        _q("02030000", "power_active_total", "kW", "active power, total"),
        _q(
            "0203FF00",
            ("power_active_total", "power_active_a", "power_active_b", "power_active_c"),
            "kW",
            "active power, total and phases",
        ),
        _q("02040000", "power_reactive_total", "kvar", "reactive power, total"),
        _q("02060000", "power_factor_total", "", "power factor, total"),
        _q(
            "0206FF00",
            ("power_factor_total", "power_factor_a", "power_factor_b", "power_factor_c"),
            "",
            "power factor, total and phases",
        ),
        _q("02800002", "frequency", "Hz", "grid frequency"),
        _q("04000101", "date", "", "meter date"),
        _q("04000102", "time", "", "meter time"),
        _q("04000401", "address", "", "communication address"),
        _q("04000501", "status_word_1", "", "status word 1"),
        _q("04000502", "status_word_2", "", "status word 2"),
        _q("04000503", "status_word_3", "", "status word 3 (relay, keep-power)"),
        _q("00900200", "remaining_money", "yuan", "remaining money (prepaid)"),
    )
}

# Status word 3 (04000503) bits, DL/T 645-2007 Appendix: derived boolean tags.
SW3_RELAY_OPEN = 1 << 4  # actual relay state, 1 = open
SW3_RELAY_COMMANDED_OPEN = 1 << 6
SW3_PRE_TRIP_ALARM = 1 << 7
SW3_KEEP_POWER = 1 << 12

STATUS3_FLAGS: dict[str, int] = {
    "relay_open": SW3_RELAY_OPEN,
    "relay_commanded_open": SW3_RELAY_COMMANDED_OPEN,
    "pre_trip_alarm": SW3_PRE_TRIP_ALARM,
    "keep_power": SW3_KEEP_POWER,
}


def normalise_di(di: str | int) -> str:
    """``"0201ff00"``/``0x0201FF00`` → ``"0201FF00"``; ValueError when not 8 hex digits."""
    if isinstance(di, int):
        if not 0 <= di <= 0xFFFFFFFF:
            raise ValueError(f"DI must be 0..0xFFFFFFFF, got {di}")
        return f"{di:08X}"
    text = di.strip().upper()
    if len(text) != 8 or any(c not in "0123456789ABCDEF" for c in text):
        raise ValueError(f"DI must be 8 hex digits (DI3 DI2 DI1 DI0), got {di!r}")
    return text


def quantity_for(di: str) -> Quantity | None:
    return QUANTITIES.get(di)


# Which instrument transformer a reading goes through, by its unit: currents
# through the CT, voltages through the PT, power, demand and energy through
# both. Everything else (power factor, frequency, angles, money, clock, status)
# is the same on either side of the transformers.
_CT_UNITS = frozenset({"A"})
_PT_UNITS = frozenset({"V"})
_CT_PT_UNITS = frozenset({"kW", "kvar", "kVA", "kWh", "kvarh", "kVAh"})
SECONDARY_SUFFIX = "_secondary"


def transformer_factor(unit: str, ct_ratio: float, pt_ratio: float) -> float:
    """primary = secondary × this, for a reading in ``unit`` behind CT and PT ratios."""
    if unit in _CT_UNITS:
        return ct_ratio
    if unit in _PT_UNITS:
        return pt_ratio
    if unit in _CT_PT_UNITS:
        return ct_ratio * pt_ratio
    return 1.0


def scales_with_ratio(unit: str) -> bool:
    """True for the quantities a CT or PT changes (they get a ``_secondary`` twin)."""
    return unit in _CT_UNITS or unit in _PT_UNITS or unit in _CT_PT_UNITS
