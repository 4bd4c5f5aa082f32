"""Engineering units: process-image unit strings → OPC UA EUInformation.

OPC UA (Part 8, 5.6.3) identifies units by UNECE Recommendation 20 common
codes, encoded into ``UnitId`` as big-endian ASCII bytes. Units without a
UNECE code (the currency "yuan") use UnitId -1 and our own namespace, as the
spec allows for units outside the UNECE table.
"""

from __future__ import annotations

from dataclasses import dataclass

from asyncua import ua

UNECE_NAMESPACE = "http://www.opcfoundation.org/UA/units/un/cefact"
CUSTOM_UNIT_NAMESPACE = "urn:gridctl:units"


def unece_unit_id(code: str) -> int:
    """UnitId for a UNECE common code (Part 8: each character shifted in, 8 bits each)."""
    unit_id = 0
    for char in code.upper():
        unit_id = (unit_id << 8) | ord(char)
    return unit_id


@dataclass(frozen=True, slots=True)
class UnitSpec:
    code: str | None  # UNECE common code; None when there is none
    display: str
    description: str
    range: tuple[float, float] | None = None  # physical EURange when it is known


# Keys are the unit strings drivers put on tags (case-sensitive, as written).
UNITS: dict[str, UnitSpec] = {
    "kWh": UnitSpec("KWH", "kWh", "kilowatt hour"),
    "kvarh": UnitSpec("K3", "kvarh", "kilovolt ampere (reactive) hour"),
    "Wh": UnitSpec("WHR", "Wh", "watt hour"),
    "V": UnitSpec("VLT", "V", "volt"),
    "kV": UnitSpec("KVT", "kV", "kilovolt"),
    "A": UnitSpec("AMP", "A", "ampere"),
    "mA": UnitSpec("4K", "mA", "milliampere"),
    "W": UnitSpec("WTT", "W", "watt"),
    "kW": UnitSpec("KWT", "kW", "kilowatt"),
    "MW": UnitSpec("MAW", "MW", "megawatt"),
    "kvar": UnitSpec("KVR", "kvar", "kilovar"),
    "kVA": UnitSpec("KVA", "kVA", "kilovolt ampere"),
    "Hz": UnitSpec("HTZ", "Hz", "hertz", (45.0, 55.0)),
    "°C": UnitSpec("CEL", "°C", "degree Celsius", (-40.0, 150.0)),
    "s": UnitSpec("SEC", "s", "second"),
    "ms": UnitSpec("C26", "ms", "millisecond"),
    "min": UnitSpec("MIN", "min", "minute"),
    "h": UnitSpec("HUR", "h", "hour"),
    "%": UnitSpec("P1", "%", "percent", (0.0, 100.0)),
    "PF": UnitSpec("C62", "", "power factor (dimensionless)", (-1.0, 1.0)),
    "1": UnitSpec("C62", "", "one (dimensionless)"),
    "bit/s": UnitSpec("B10", "bit/s", "bit per second"),
    "Bd": UnitSpec("J54", "Bd", "baud"),
    "yuan": UnitSpec(None, "yuan", "Chinese yuan renminbi (currency, no UNECE code)"),
    "CNY": UnitSpec(None, "yuan", "Chinese yuan renminbi (currency, no UNECE code)"),
}

# Leaves whose name fixes a physical range regardless of unit string.
NAME_RANGES: dict[str, tuple[float, float]] = {"power_factor": (-1.0, 1.0)}


def eu_information(unit: str) -> ua.EUInformation | None:
    """EUInformation for a unit string, None for an empty unit (not an analog item)."""
    if not unit:
        return None
    spec = UNITS.get(unit)
    if spec is None:
        # Unknown unit: still tell the client what it is, honestly marked as not UNECE.
        return ua.EUInformation(
            NamespaceUri=CUSTOM_UNIT_NAMESPACE,
            UnitId=-1,
            DisplayName=ua.LocalizedText(unit),
            Description=ua.LocalizedText(unit),
        )
    return ua.EUInformation(
        NamespaceUri=UNECE_NAMESPACE if spec.code else CUSTOM_UNIT_NAMESPACE,
        UnitId=unece_unit_id(spec.code) if spec.code else -1,
        DisplayName=ua.LocalizedText(spec.display),
        Description=ua.LocalizedText(spec.description),
    )


def eu_range(unit: str, leaf: str) -> ua.Range | None:
    known = NAME_RANGES.get(leaf)
    if known is None:
        spec = UNITS.get(unit)
        known = spec.range if spec else None
    return ua.Range(Low=known[0], High=known[1]) if known else None
