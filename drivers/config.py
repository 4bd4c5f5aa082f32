"""Field configuration: buses, meters, poll groups and the simulated plant.

The root config (`controller.config.GridConfig`) extends `FieldConfig` with the
runtime's own sections; this module holds only what the drivers need.

Every model forbids unknown keys, and every validator names the field and the
allowed range, so a typo in a site config is a clear error at load time and
never a surprise on the wire.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from controller.config_model import ConfigModel, Secret, is_secret_reference, resolve_secret
from drivers.quantities import QUANTITIES, normalise_di

BAUD_RATES = (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
_PARITY_ALIASES = {"N": "N", "NONE": "N", "E": "E", "EVEN": "E", "O": "O", "ODD": "O"}
_ADDRESS_RE = re.compile(r"^[0-9]{12}$")
_HEX_RE = re.compile(r"^[0-9A-Fa-f]+$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")

FaultKind = Literal[
    "dead", "slow", "noisy", "bad_checksum", "exception", "drop_control", "ignore_time_sync"
]
FAULT_KINDS: tuple[str, ...] = FaultKind.__args__  # type: ignore[attr-defined]


def within(lo: float, hi: float, unit: str = "") -> AfterValidator:
    """A closed range check for a numeric field; the message names the field, the
    range and its unit (``preamble must be 0..4 FE bytes, got 9``)."""

    def check(value: float, info: ValidationInfo) -> float:
        if not lo <= value <= hi:
            raise ValueError(
                f"{info.field_name} must be {_number(lo)}..{_number(hi)}{unit}, got {value}"
            )
        return value

    return AfterValidator(check)


def _number(x: float) -> str:
    return str(int(x)) if x == int(x) else f"{x:.6g}"


class _Model(ConfigModel):
    model_config = ConfigDict(frozen=False, validate_default=True)


# CT 5000/1 or PT 500 kV/100 V are 5000; leave room for odd installations
MAX_TRANSFORMER_RATIO = 100_000.0


def transformer_ratio(value: Any, info: ValidationInfo) -> float:
    """A CT or PT ratio as a number (``40``) or as primary/secondary (``"200/5"``).

    Meters behind instrument transformers read secondary values; primary =
    secondary × ratio. Zero or a negative ratio would zero or flip every
    reading, so it is refused naming the field."""
    name = info.field_name
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number > 0 such as 40 or '200/5', got {value!r}")
    ratio: float
    if isinstance(value, str):
        text = value.strip()
        primary, slash, secondary = text.partition("/")
        try:
            ratio = float(primary) / float(secondary) if slash else float(text)
        except (ValueError, ZeroDivisionError):
            raise ValueError(
                f"{name} must be a number > 0 or primary/secondary such as '200/5', got {value!r}"
            ) from None
    elif isinstance(value, int | float):
        ratio = float(value)
    else:
        raise ValueError(f"{name} must be a number > 0 such as 40 or '200/5', got {value!r}")
    if not 0.0 < ratio <= MAX_TRANSFORMER_RATIO:  # also refuses NaN
        raise ValueError(
            f"{name} must be > 0 and ≤ {MAX_TRANSFORMER_RATIO:g} (primary/secondary, "
            f"e.g. 200/5 = 40), got {value!r}"
        )
    return ratio


TransformerRatio = Annotated[float, BeforeValidator(transformer_ratio)]


def _check_name(value: str, what: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            f"{what} must be 1-63 characters of letters, digits, '_', '.', '-' "
            f"(no '/': it becomes part of tag paths), got {value!r}"
        )
    return value


def _core_di_known(di: str) -> bool:
    """True when the Rust DI table has ``di`` (or our quantity table does, if the core is older)."""
    try:
        from controller._core_rs import di_info
    except ImportError:
        return di in QUANTITIES
    try:
        return di_info(di) is not None or di in QUANTITIES
    except Exception:
        return di in QUANTITIES


# ---------------------------------------------------------------------------
# poll groups
# ---------------------------------------------------------------------------


class ItemFormat(_Model):
    """Format of a DI the core table does not know (manufacturer-specific items)."""

    length: Annotated[int, within(1, 16, " bytes")] = Field(description="bytes of one element")
    decimals: Annotated[int, within(0, 8)] = 0
    signed: bool = False
    unit: str = ""
    count: Annotated[int, within(1, 32, " elements")] = 1


class PollItem(_Model):
    """One DI read in a poll group. Written in TOML as ``"02010100"`` or a table."""

    di: str
    name: str | None = None  # tag short name; default from the quantity table
    format: ItemFormat | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str | int):
            return {"di": data}
        return data

    @field_validator("di", mode="before")
    @classmethod
    def _di(cls, v: Any) -> str:
        if not isinstance(v, str | int):
            raise ValueError(f"di must be 8 hex digits such as '00010000', got {v!r}")
        return normalise_di(v)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None else _check_name(v, "name")

    @model_validator(mode="after")
    def _known(self) -> PollItem:
        if self.format is None and not _core_di_known(self.di):
            raise ValueError(
                f"di {self.di} is not in the DI table; give it a format "
                '(format = {length = N, decimals = D, unit = "..."}) and a name'
            )
        if self.format is not None and self.name is None and self.di not in QUANTITIES:
            self.name = f"di_{self.di.lower()}"
        return self


class PollGroup(_Model):
    """A set of DIs read together at one period (e.g. instant 15 s, energy 15 min)."""

    period_s: Annotated[float, within(0.1, 31 * 86400, " s (31 days)")]
    items: list[PollItem] = []
    kind: Literal["read", "clock"] = "read"
    lane: Literal["cyclic", "event"] = "cyclic"
    # clock groups: broadcast time sync when |meter − controller| exceeds this
    max_drift_s: Annotated[float, within(1.0, 3600.0, " s")] = 30.0
    # clock groups: broadcast syncs (at most one a meter-local day) a meter may
    # ignore, each seen by reading its clock back, before clock_sync_failed
    sync_attempts: Annotated[int, within(1, 10)] = 3

    @model_validator(mode="after")
    def _items(self) -> PollGroup:
        if self.kind == "read" and not self.items:
            raise ValueError("items must list at least one DI for a read group")
        if len(self.items) > 64:
            raise ValueError(f"items must hold at most 64 DIs, got {len(self.items)}")
        return self


# ---------------------------------------------------------------------------
# links
# ---------------------------------------------------------------------------


class LinkConfig(_Model):
    """Serial line or TCP link: ``port`` is a device path or ``tcp://host:port``."""

    port: str
    baud: int = 2400
    byte_size: int = 8
    parity: str = "E"
    stop_bits: int = 1
    # gap after which a partial reply is abandoned (DL/T 645: inter-byte ≤ 500 ms)
    byte_timeout_s: Annotated[float, within(0.001, 5.0, " s")] = 0.5
    # first byte of the reply must arrive within this (meters answer in 20-500 ms)
    response_timeout_s: Annotated[float, within(0.02, 30.0, " s")] = 1.0
    # reconnect back-off for a closed port or lost connection
    reconnect_initial_s: Annotated[float, within(0.01, 3600.0, " s")] = 1.0
    reconnect_max_s: Annotated[float, within(0.01, 3600.0, " s")] = 30.0

    @field_validator("port")
    @classmethod
    def _port(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("port must be a serial device path or tcp://host:port, got ''")
        if v.startswith("tcp://"):
            host, _, port = v[6:].rpartition(":")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"port must be tcp://host:PORT with PORT 1..65535, got {v!r}")
        return v

    @field_validator("baud")
    @classmethod
    def _baud(cls, v: int) -> int:
        if v not in BAUD_RATES:
            raise ValueError(f"baud must be one of {', '.join(map(str, BAUD_RATES))}, got {v}")
        return v

    @field_validator("byte_size")
    @classmethod
    def _byte_size(cls, v: int) -> int:
        if v not in (7, 8):
            raise ValueError(f"byte_size must be 7 or 8, got {v}")
        return v

    @field_validator("parity", mode="before")
    @classmethod
    def _parity(cls, v: Any) -> str:
        key = str(v).strip().upper() if isinstance(v, str) else None
        if key not in _PARITY_ALIASES:
            raise ValueError(f"parity must be one of N, E, O (none, even, odd), got {v!r}")
        return _PARITY_ALIASES[key]

    @field_validator("stop_bits")
    @classmethod
    def _stop_bits(cls, v: int) -> int:
        if v not in (1, 2):
            raise ValueError(f"stop_bits must be 1 or 2, got {v}")
        return v

    @property
    def is_tcp(self) -> bool:
        return self.port.startswith("tcp://")

    @property
    def tcp_endpoint(self) -> tuple[str, int]:
        host, _, port = self.port[6:].rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def bits_per_char(self) -> int:
        """Start bit + data bits + parity bit + stop bits (8E1 = 11)."""
        return 1 + self.byte_size + (0 if self.parity == "N" else 1) + self.stop_bits

    @property
    def char_time_s(self) -> float:
        return self.bits_per_char / self.baud


class Quarantine(_Model):
    """Exponential back-off for a meter that failed all its retries."""

    initial_s: Annotated[float, within(0.1, 86400.0, " s")] = 30.0
    max_s: Annotated[float, within(0.1, 86400.0, " s")] = 900.0
    factor: Annotated[float, within(1.0, 10.0)] = 2.0

    @model_validator(mode="after")
    def _order(self) -> Quarantine:
        if self.max_s < self.initial_s:
            raise ValueError(f"max_s ({self.max_s}) must be ≥ initial_s ({self.initial_s})")
        return self


# ---------------------------------------------------------------------------
# DL/T 645 buses
# ---------------------------------------------------------------------------


# How 1C and 0x14 frames reach a meter: as built ("plaintext") or through the
# `[esam]` adapter (remote-cost-control meters with an ESAM).
Security = Literal["plaintext", "esam"]


class MeterConfig(_Model):
    address: str
    name: str | None = None
    groups: list[str] = []
    password_level: Annotated[int, within(0, 0xFF, " (usually 2 or 4)")] = 2
    # 6 hex digits, as text or from outside the file: {env = "VAR"} or {file = "PATH"}
    password: Secret = "000000"
    operator: str = "00000000"
    security: Security = "plaintext"
    # 倍率: the current and voltage transformers in front of the meter (200/5 → 40).
    # The image gets primary values under the quantity names and, when either
    # ratio is not 1, the meter's own readings under <name>_secondary.
    ct_ratio: TransformerRatio = 1.0
    pt_ratio: TransformerRatio = 1.0
    # a clock off by more than a broadcast may move (5 min) is set with a
    # password-level-04 write of 0400010C (journaled as a set_clock command)
    # instead of raising clock_sync_failed for a site visit; None: the bus's
    clock_write: bool | None = None
    clock_password: str = "000000"

    @field_validator("address", mode="before")
    @classmethod
    def _address(cls, v: Any) -> str:
        text = str(v).strip()
        if not _ADDRESS_RE.match(text):
            raise ValueError(f"address must be 12 decimal digits, got {v!r}")
        if text == "999999999999":
            raise ValueError("address 999999999999 is the broadcast address, not a meter")
        return text

    @field_validator("password", "clock_password")
    @classmethod
    def _password(cls, v: str, info: ValidationInfo) -> str:
        if len(v) != 6 or not _HEX_RE.match(v):
            # the value itself is not echoed: it may come from a secret store
            shape = "hex" if _HEX_RE.match(v) else "not all hex"
            raise ValueError(
                f"{info.field_name} must be 6 hex digits, got {len(v)} characters ({shape})"
            )
        return v.upper()

    @field_validator("operator")
    @classmethod
    def _operator(cls, v: str) -> str:
        if len(v) != 8 or not _HEX_RE.match(v):
            raise ValueError(f"operator must be 8 hex digits, got {v!r}")
        return v.upper()


class MeterBlock(_Model):
    """A run of meters with consecutive addresses (compact form for big buses)."""

    first_address: str
    count: Annotated[int, within(1, 256, " meters")]
    groups: list[str] = []
    password_level: int = 2
    password: Secret = "000000"
    operator: str = "00000000"
    security: Security = "plaintext"
    ct_ratio: TransformerRatio = 1.0
    pt_ratio: TransformerRatio = 1.0
    clock_write: bool | None = None
    clock_password: str = "000000"

    @field_validator("first_address")
    @classmethod
    def _first(cls, v: str) -> str:
        if not _ADDRESS_RE.match(v):
            raise ValueError(f"first_address must be 12 decimal digits, got {v!r}")
        return v

    def expand(self) -> list[dict[str, Any]]:
        base = int(self.first_address)
        return [
            {
                "address": f"{base + i:012d}",
                "groups": list(self.groups),
                "password_level": self.password_level,
                "password": self.password,
                "operator": self.operator,
                "security": self.security,
                "ct_ratio": self.ct_ratio,
                "pt_ratio": self.pt_ratio,
                "clock_write": self.clock_write,
                "clock_password": self.clock_password,
            }
            for i in range(self.count)
        ]


class Dlt645BusConfig(LinkConfig):
    name: str
    protocol: Literal["dlt645"] = "dlt645"
    # FE bytes sent before each request to wake the meter's UART (0..4)
    preamble: Annotated[int, within(0, 4, " FE bytes")] = 4
    # quiet time on the line between the end of a reply and the next request
    send_interval_s: Annotated[float, within(0.0, 2.0, " s")] = 0.02
    retries: Annotated[int, within(0, 10)] = 3
    quarantine: Quarantine = Quarantine()
    # the scheduler stretches cyclic periods above this bus utilisation
    max_utilisation: Annotated[float, within(0.1, 1.0)] = 0.95
    # meter response delay assumed for planning: `gridctl plan` and the
    # scheduler's first duration estimate (real durations replace it)
    response_delay_s: Annotated[float, within(0.0, 2.0, " s (meters: 20-500 ms)")] = 0.1
    meters: list[MeterConfig] = []
    meter_block: MeterBlock | None = None
    # default of the meters' clock_write (off: a far-off clock is an alarm)
    clock_write: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v, "name")

    @model_validator(mode="before")
    @classmethod
    def _expand_block(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("meter_block"):
            block = MeterBlock.model_validate(data["meter_block"])
            data = dict(data)
            data["meters"] = [*data.get("meters", []), *block.expand()]
        return data

    @model_validator(mode="after")
    def _unique(self) -> Dlt645BusConfig:
        seen: set[str] = set()
        for i, meter in enumerate(self.meters):
            if meter.address in seen:
                raise ValueError(
                    f"meters[{i}].address {meter.address} is a duplicate on bus {self.name!r}: "
                    "every meter on one bus needs its own address"
                )
            seen.add(meter.address)
        if len(self.meters) > 256:
            raise ValueError(f"meters must be at most 256 on one bus, got {len(self.meters)}")
        return self


class EsamConfig(_Model):
    """``[esam]``: the adapter that seals 1C and 0x14 frames for ``security = "esam"`` meters.

    ``adapter`` names a factory: a built-in (``plaintext``, ``test-hmac``), an
    entry point in group ``gridctl.esam_adapters``, or ``"package.module:factory"``.
    The factory is called with ``options`` (the TOML table) and must not do I/O;
    both are checked here, so a bad name or option is a config error. An option
    value written ``{env = "VAR"}`` or ``{file = "PATH"}`` is read from there first
    (keys stay out of the config file)."""

    adapter: str = "plaintext"
    options: dict[str, Any] = {}
    # a crypto machine that does not answer must not hold the bus owner's control slot
    timeout_s: Annotated[float, within(0.1, 60.0, " s")] = 5.0

    @field_validator("adapter")
    @classmethod
    def _adapter(cls, v: str) -> str:
        from drivers.esam import resolve_factory

        resolve_factory(v)  # raises ValueError naming what was tried
        return v

    @field_validator("options")
    @classmethod
    def _options(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from drivers.esam import resolve_factory

        # an option such as a key may come from outside the file: {env = ...} / {file = ...}
        v = {
            name: resolve_secret(value, name) if is_secret_reference(value) else value
            for name, value in v.items()
        }
        if "adapter" in info.data:  # otherwise the adapter's own error says why
            try:
                resolve_factory(info.data["adapter"])(v)
            except (ValueError, TypeError, KeyError) as exc:
                raise ValueError(f"options for adapter {info.data['adapter']!r}: {exc}") from None
        return v


# ---------------------------------------------------------------------------
# Modbus buses
# ---------------------------------------------------------------------------

ModbusTable = Literal["coil", "discrete_input", "holding", "input"]
ModbusType = Literal["bool", "u16", "i16", "u32", "i32", "f32"]
REGISTER_WIDTH = {"bool": 1, "u16": 1, "i16": 1, "u32": 2, "i32": 2, "f32": 2}
MAX_READ_REGISTERS = 125  # Modbus Application Protocol V1.1b3, function 03/04
MAX_READ_BITS = 2000  # function 01/02


class ModbusTag(_Model):
    name: str
    table: ModbusTable
    address: Annotated[int, within(0, 65535)]
    type: ModbusType = "u16"
    scale: float = 1.0
    unit: str = ""
    writable: bool = False
    # The least OPC UA role that may write a writable holding register (a
    # setpoint). Writable coils are not setpoints: they are load outputs behind
    # the loads' select-before-operate, never written directly by a client.
    write_role: Literal["operator", "engineer", "admin"] = "operator"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v, "name")

    @property
    def setpoint(self) -> bool:
        """Writable over OPC UA (by ``write_role``): a writable holding register."""
        return self.writable and self.table == "holding"

    @model_validator(mode="after")
    def _type(self) -> ModbusTag:
        bits = self.table in ("coil", "discrete_input")
        if bits != (self.type == "bool"):
            raise ValueError(
                f"type {self.type!r} does not fit table {self.table!r}: "
                "coils and discrete inputs are 'bool', registers are u16/i16/u32/i32/f32"
            )
        if self.writable and self.table not in ("coil", "holding"):
            raise ValueError(f"writable needs table 'coil' or 'holding', got {self.table!r}")
        if "write_role" in self.model_fields_set and not self.setpoint:
            # a role on anything else would read as a permission that is never granted
            raise ValueError(
                "write_role is for setpoints: needs writable = true and table 'holding'"
            )
        return self


class ModbusDeviceConfig(_Model):
    name: str
    unit_id: Annotated[int, within(0, 247)] = 1
    period_s: Annotated[float, within(0.05, 86400.0, " s")] = 1.0
    tags: list[ModbusTag] = []
    # 倍率 of a transformer-operated Modbus meter: read-only register tags in
    # A, V, kW, kvar, kVA, kWh, kvarh, kVAh are published as primary values
    # and, when a ratio is not 1, as <tag>_secondary (setpoints are not scaled)
    ct_ratio: TransformerRatio = 1.0
    pt_ratio: TransformerRatio = 1.0

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v, "name")

    @model_validator(mode="after")
    def _unique(self) -> ModbusDeviceConfig:
        names = [t.name for t in self.tags]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"tags[].name must be unique in a device, duplicated: {sorted(dup)}")
        return self


class ModbusBusConfig(LinkConfig):
    name: str
    protocol: Literal["modbus_tcp", "modbus_rtu"]
    baud: int = 9600
    parity: str = "E"
    retries: Annotated[int, within(0, 10)] = 3
    quarantine: Quarantine = Quarantine(initial_s=5.0, max_s=120.0)
    devices: list[ModbusDeviceConfig] = []

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v, "name")

    @model_validator(mode="after")
    def _shape(self) -> ModbusBusConfig:
        if self.protocol == "modbus_tcp" and not self.is_tcp:
            raise ValueError(f"port must be tcp://host:port for modbus_tcp, got {self.port!r}")
        names = [d.name for d in self.devices]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"devices[].name must be unique on a bus, duplicated: {sorted(dup)}")
        if self.protocol == "modbus_rtu":
            ids = [d.unit_id for d in self.devices]
            dup_ids = {i for i in ids if ids.count(i) > 1}
            if dup_ids:
                raise ValueError(
                    f"devices[].unit_id must be unique on an RTU line, duplicated: {sorted(dup_ids)}"
                )
        return self


BusConfig = Annotated[Dlt645BusConfig | ModbusBusConfig, Field(discriminator="protocol")]


# ---------------------------------------------------------------------------
# protocol defaults
# ---------------------------------------------------------------------------

# Keys that make one bus that bus: never inherited.
_BUS_OWN_KEYS = frozenset({"name", "protocol", "port", "meters", "meter_block", "devices"})
_BUS_MODELS: dict[str, type[Dlt645BusConfig] | type[ModbusBusConfig]] = {
    "dlt645": Dlt645BusConfig,
    "modbus_rtu": ModbusBusConfig,
    "modbus_tcp": ModbusBusConfig,
}


def inheritable_bus_keys(protocol: str) -> list[str]:
    """The keys ``[bus_defaults.<protocol>]`` may set: a bus's settings, not its identity."""
    return sorted(set(_BUS_MODELS[protocol].model_fields) - _BUS_OWN_KEYS)


def inherit_bus_defaults(bus: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The bus table with its protocol's defaults under it: the bus's own value wins,
    and a table value (``quarantine``) is merged key by key the same way."""
    out = dict(defaults)
    for key, value in bus.items():
        inherited = out.get(key)
        if isinstance(value, dict) and isinstance(inherited, dict):
            out[key] = {**inherited, **value}
        else:
            out[key] = value
    return out


class BusDefaults(_Model):
    """``[bus_defaults.<protocol>]``: settings every bus of that protocol inherits.

    Precedence, per key: the bus's own value > its protocol's default here > the
    built-in default. Identity keys (name, port, meters, devices) are never
    inherited. Each default is checked as a bus would check it, so a bad value
    or an unknown key is an error here, naming it."""

    dlt645: dict[str, Any] = {}
    modbus_rtu: dict[str, Any] = {}
    modbus_tcp: dict[str, Any] = {}

    @field_validator("dlt645", "modbus_rtu", "modbus_tcp")
    @classmethod
    def _as_a_bus_would(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        protocol = info.field_name or "dlt645"
        allowed = inheritable_bus_keys(protocol)
        unknown = sorted(key for key in v if key not in allowed)
        if unknown:
            raise ValueError(
                f"unknown key {', '.join(map(repr, unknown))} (allowed: {', '.join(allowed)})"
            )
        port = "tcp://127.0.0.1:1" if protocol == "modbus_tcp" else "/dev/null"
        try:
            _BUS_MODELS[protocol].model_validate(
                {**v, "name": "defaults", "protocol": protocol, "port": port}
            )
        except ValidationError as exc:
            raise ValueError(describe_validation_error(exc).replace("\n", "; ")) from None
        return v


# ---------------------------------------------------------------------------
# simulated plant
# ---------------------------------------------------------------------------


class SimMeterConfig(_Model):
    """Per-meter simulation parameters (all optional)."""

    peak_kw: float | None = None  # default: spread 1-8 kW by address
    phases: Literal[1, 3] = 3
    energy_kwh: float | None = None
    money_yuan: float = 500.0
    relay_open: bool = False
    keep_power: bool = False
    clock_drift_s_per_day: float | None = None
    # the clock at start: this many seconds ahead of true time (negative: behind)
    clock_offset_s: float = 0.0
    # the zone of the meter's own wall clock (Beijing time for State Grid meters)
    timezone: str = "Asia/Shanghai"
    # refuse a broadcast time sync that moves the clock more than 5 min or comes
    # a second time the same (meter-local) day, as real meters do
    time_sync_rules: bool = True
    faults: list[FaultKind] = []
    # an ESAM that refuses 1C and 0x14 frames without a valid MAC under esam_key
    # (the test-hmac wire contract in drivers/esam.py)
    require_esam: bool = False
    esam_key: str = ""
    # the instrument transformers physically in front of the simulated meter:
    # peak_kw is the primary load, the meter measures primary / ratio
    ct_ratio: TransformerRatio = 1.0
    pt_ratio: TransformerRatio = 1.0
    # the meter's own time-of-use table: "HH:MM" (its local clock) → tariff
    # register 1..4 from that minute on (T1 sharp, T2 peak, T3 flat, T4 valley)
    tou: dict[str, int] = {"00:00": 4, "08:00": 3, "10:00": 2, "15:00": 3, "18:00": 2, "23:00": 4}

    @field_validator("tou")
    @classmethod
    def _tou(cls, v: dict[str, int]) -> dict[str, int]:
        if not v:
            raise ValueError("tou must name at least one period start, e.g. {'00:00' = 3}")
        for start, register in v.items():
            hh, colon, mm = start.partition(":")
            if not (colon and hh.isdigit() and mm.isdigit() and len(hh) == len(mm) == 2):
                raise ValueError(f"tou: period start must be HH:MM, got {start!r}")
            if not (int(hh) <= 23 and int(mm) <= 59):
                raise ValueError(f"tou: period start must be 00:00..23:59, got {start!r}")
            if not 1 <= register <= 4:
                raise ValueError(f"tou[{start!r}] must be tariff register 1..4, got {register}")
        return v

    # answer ERR=02 (no requested data) to block DIs (FF in DI1 or DI0), as many
    # meters in the field do: the controller must fall back to single DIs
    refuse_block_dis: bool = False

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"timezone must be an IANA time zone name such as 'Asia/Shanghai', got {v!r}"
            ) from None
        return v

    @field_validator("peak_kw")
    @classmethod
    def _peak(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 <= v <= 1000.0:
            raise ValueError(f"peak_kw must be 0..1000 kW, got {v}")
        return v

    @field_validator("esam_key")
    @classmethod
    def _esam_key(cls, v: str) -> str:
        if v and (len(v) % 2 or len(v) > 128 or not _HEX_RE.match(v)):
            raise ValueError(f"esam_key must be 2..128 hex digits (whole bytes), got {v!r}")
        return v.upper()

    @model_validator(mode="after")
    def _esam(self) -> SimMeterConfig:
        if self.require_esam and not self.esam_key:
            raise ValueError("esam_key: required when require_esam = true (2..128 hex digits)")
        return self


class SimBusConfig(_Model):
    simulated: bool = True
    response_delay_s: float | None = None
    # data bytes per reply frame before the meter splits it into follow-up frames
    max_frame_data: Annotated[int, within(16, 200, " bytes")] = 200
    meters: dict[str, SimMeterConfig] = {}
    # meters that exist on the simulated wire but not in the controller config (discovery)
    extra_meters: list[str] = []

    @field_validator("response_delay_s")
    @classmethod
    def _delay(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 <= v <= 0.5:
            raise ValueError(f"response_delay_s must be 0..0.5 s (meters: 20-500 ms), got {v}")
        return v


class SimModbusDeviceConfig(_Model):
    power_kw: float = 50.0  # per closed output
    outputs: Annotated[int, within(1, 64)] = 4


class SimConfig(_Model):
    enabled: bool = False
    # skip wire timing and response delays (unit tests)
    fast: bool = False
    control_socket: str = "var/sim.sock"
    seed: int = 1
    response_delay_s: Annotated[float, within(0.0, 0.5, " s (meters: 20-500 ms)")] = 0.05
    tariff_yuan_per_kwh: Annotated[float, within(0.0, 100.0)] = 0.6
    # simulated time runs this much faster for energy integration (demo: see values move)
    time_scale: Annotated[float, within(0.0, 10000.0)] = 1.0
    buses: dict[str, SimBusConfig] = {}
    modbus_devices: dict[str, SimModbusDeviceConfig] = {}


# ---------------------------------------------------------------------------
# root
# ---------------------------------------------------------------------------


class FieldConfig(ConfigModel):
    """Top-level keys owned by the drivers: ``buses``, ``poll_groups``, ``esam``, ``sim``."""

    buses: list[BusConfig] = []
    bus_defaults: BusDefaults = BusDefaults()
    poll_groups: dict[str, PollGroup] = {}
    esam: EsamConfig = EsamConfig()
    sim: SimConfig = SimConfig()

    @model_validator(mode="before")
    @classmethod
    def _inherit_bus_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        defaults, buses = data.get("bus_defaults"), data.get("buses")
        if not defaults or not isinstance(buses, list):
            return data
        try:
            BusDefaults.model_validate(defaults)
        except ValidationError:
            return data  # bus_defaults reports its own error; the buses are checked as written
        return {
            **data,
            "buses": [
                inherit_bus_defaults(bus, defaults.get(bus.get("protocol"), {}))
                if isinstance(bus, dict) and isinstance(bus.get("protocol"), str)
                else bus
                for bus in buses
            ],
        }

    @field_validator("poll_groups")
    @classmethod
    def _group_names(cls, v: dict[str, PollGroup]) -> dict[str, PollGroup]:
        for name in v:
            _check_name(name, "poll group name")
        return v

    @model_validator(mode="after")
    def _cross(self) -> FieldConfig:
        names = [b.name for b in self.buses]
        for i, name in enumerate(names):
            if names.index(name) != i:
                raise ValueError(
                    f"buses[{i}].name {name!r} is a duplicate: bus names must be unique"
                )
        ports = [b.port for b in self.buses]
        for i, port in enumerate(ports):
            if ports.index(port) != i:
                raise ValueError(
                    f"buses[{i}].port {port!r} is already used by bus {names[ports.index(port)]!r}: "
                    "exactly one bus owns a physical wire"
                )
        for i, bus in enumerate(self.buses):
            if isinstance(bus, Dlt645BusConfig):
                for j, meter in enumerate(bus.meters):
                    for group in meter.groups:
                        if group not in self.poll_groups:
                            known = ", ".join(sorted(self.poll_groups)) or "none defined"
                            raise ValueError(
                                f"buses[{i}].meters[{j}].groups: unknown poll group {group!r} "
                                f"(known: {known})"
                            )
        for name in self.sim.buses:
            if name not in names:
                raise ValueError(f"sim.buses.{name}: no bus named {name!r} in buses")
        return self

    def bus(self, name: str) -> Dlt645BusConfig | ModbusBusConfig:
        for b in self.buses:
            if b.name == name:
                return b
        raise KeyError(f"no bus named {name!r}")


# Union members pydantic puts in an error's location; they are not keys a user wrote.
LOCATION_TAGS = frozenset({"dlt645", "modbus_tcp", "modbus_rtu"})


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem: ``buses[1].baud: baud must be one of ..., got 0``."""
    lines = []
    for err in exc.errors():
        parts: list[str] = []
        for loc in err["loc"]:
            if isinstance(loc, int):
                parts[-1:] = [f"{parts[-1] if parts else ''}[{loc}]"]
            elif (loc in LOCATION_TAGS and parts and parts[-1].endswith("]")) or str(
                loc
            ).startswith("function-"):
                continue
            else:
                parts.append(str(loc))
        where = ".".join(parts) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {msg}")
    return "\n".join(lines)


FIELD_KEYS = ("buses", "bus_defaults", "poll_groups", "esam", "sim")


class ConfigFileError(ValueError):
    """A config file that cannot be read or does not validate; the message names the field."""


def load_field_config(path: str | Path) -> FieldConfig:
    """Load the field part of a config file: the drivers' sections, validated; the
    rest of the file is the service's to check (``gridctl check-config``)."""
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: not valid TOML: {exc}") from exc
    subset = {k: v for k, v in data.items() if k in FIELD_KEYS}
    try:
        return FieldConfig.model_validate(subset)
    except ValidationError as exc:
        raise ConfigFileError(f"{path}:\n{describe_validation_error(exc)}") from exc
