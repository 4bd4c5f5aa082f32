"""Warehouse configuration (the ``[warehouse]`` table of the site config).

Every numeric field carries its allowed range, so a bad config is refused with
an error naming the field and the range (see :func:`load_warehouse_config`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, ValidationError, model_validator

from controller.config_model import ConfigModel


class ConfigError(ValueError):
    """A config value out of range or unknown; the message names the field."""


class CraneConfig(ConfigModel):
    """One stacker crane serving one aisle (two facing rows).

    The upper limits are above any real crane on purpose: scaled-time test rigs
    and the Bozer–White benchmark (near-constant velocity) need them.
    """

    vx_m_s: float = Field(3.0, gt=0.0, le=50.0, description="travel (horizontal) top speed")
    ax_m_s2: float = Field(0.5, gt=0.0, le=1000.0, description="travel acceleration")
    vy_m_s: float = Field(1.0, gt=0.0, le=50.0, description="hoist (vertical) top speed")
    ay_m_s2: float = Field(0.5, gt=0.0, le=1000.0, description="hoist acceleration")
    fork_cycle_s: float = Field(
        6.0, ge=0.0, le=120.0, description="fork out + lift/lower + fork in, per pick or put"
    )


class ConveyorConfig(ConfigModel):
    zones: int = Field(4, ge=2, le=16, description="zones incl. the transfer station")
    zone_travel_s: float = Field(2.0, gt=0.0, le=60.0, description="time to cross one zone")
    jam_timeout_s: float = Field(
        10.0, gt=0.0, le=600.0, description="photo-eye blocked while running this long = jam"
    )


class WarehouseConfig(ConfigModel):
    """Rack geometry, cranes, conveyors and the controller's timing."""

    rows: int = Field(2, ge=2, le=40, description="rack rows; an aisle (one crane) serves two")
    bays: int = Field(20, ge=1, le=500)
    levels: int = Field(8, ge=1, le=60)
    bay_width_m: float = Field(1.2, gt=0.0, le=10.0)
    level_height_m: float = Field(0.8, gt=0.0, le=10.0)
    meters_per_box: int = Field(20, ge=1, le=500)
    cranes: list[CraneConfig] = Field(default_factory=lambda: [CraneConfig.model_validate({})])
    inbound: ConveyorConfig = Field(default_factory=lambda: ConveyorConfig.model_validate({}))
    outbound: ConveyorConfig = Field(default_factory=lambda: ConveyorConfig.model_validate({}))
    poll_s: float = Field(0.01, gt=0.0, le=1.0, description="plant status poll period")
    crane_timeout_margin_s: float = Field(
        30.0, gt=0.0, le=3600.0, description="a move longer than expected + this is a fault"
    )
    barcode_retries: int = Field(2, ge=0, le=10, description="re-reads after a no-read")
    plc: str = Field(
        "tcp://127.0.0.1:15021",
        pattern=r"^tcp://[^:/\s]+:\d{1,5}$",
        description="the warehouse PLC (Modbus TCP), tcp://HOST:PORT",
    )
    plc_timeout_s: float = Field(
        1.0,
        ge=0.02,
        le=30.0,
        description="the PLC's reply must arrive within this; after its retry the PLC "
        "is quarantined and its status Bad (the cranes hold)",
    )
    return_aisle: int = Field(
        1, ge=1, le=20, description="aisle whose induct the verification line returns boxes to"
    )
    demo_boxes: int = Field(
        0,
        ge=0,
        le=1000,
        description="demo stock: boxes of new meters the simulated rack and an empty "
        "inventory start with (0 = none)",
    )

    @model_validator(mode="after")
    def _aisles(self) -> WarehouseConfig:
        if self.rows % 2:
            raise ValueError(f"rows must be even (two rows per aisle), got {self.rows}")
        if len(self.cranes) != self.rows // 2:
            raise ValueError(
                f"cranes: one per aisle, expected {self.rows // 2} for {self.rows} rows, "
                f"got {len(self.cranes)}"
            )
        if self.demo_boxes > self.slot_count:
            raise ValueError(
                f"demo_boxes: {self.demo_boxes} boxes do not fit in {self.slot_count} slots"
            )
        if self.return_aisle > self.aisles:
            raise ValueError(
                f"return_aisle: {self.return_aisle} outside 1..{self.aisles} (one aisle per 2 rows)"
            )
        port = int(self.plc.rsplit(":", 1)[1])
        if not 0 < port <= 65535:
            raise ValueError(f"plc: port must be 1..65535, got {port}")
        return self

    @property
    def plc_endpoint(self) -> tuple[str, int]:
        host, port = self.plc.removeprefix("tcp://").rsplit(":", 1)
        return host, int(port)

    @property
    def aisles(self) -> int:
        return self.rows // 2

    @property
    def slot_count(self) -> int:
        return self.rows * self.bays * self.levels


def _range_of(model: type[BaseModel], name: str) -> str:
    field = model.model_fields.get(name)
    if field is None:
        return ""
    lo = hi = None
    lo_op = hi_op = ""
    for meta in field.metadata:
        for attr, op in (("ge", ">="), ("gt", ">")):
            if getattr(meta, attr, None) is not None:
                lo, lo_op = getattr(meta, attr), op
        for attr, op in (("le", "<="), ("lt", "<")):
            if getattr(meta, attr, None) is not None:
                hi, hi_op = getattr(meta, attr), op
    parts = [f"{lo_op} {lo}" if lo is not None else "", f"{hi_op} {hi}" if hi is not None else ""]
    return " and ".join(p for p in parts if p)


def load_warehouse_config(data: dict[str, Any]) -> WarehouseConfig:
    """Validate ``data``; on error raise :class:`ConfigError` naming each field and its range."""
    try:
        return WarehouseConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            model: type[BaseModel] = WarehouseConfig
            last = str(err["loc"][-1]) if err["loc"] else ""
            if err["loc"] and err["loc"][0] == "cranes":
                model = CraneConfig
            elif err["loc"] and err["loc"][0] in ("inbound", "outbound"):
                model = ConveyorConfig
            allowed = _range_of(model, last)
            suffix = f" (allowed: {allowed})" if allowed else ""
            got = f", got {err['input']!r}" if "input" in err and err["type"] != "missing" else ""
            lines.append(
                f"warehouse.{loc}: {err['msg']}{suffix}{got}" if loc else f"warehouse: {err['msg']}"
            )
        raise ConfigError("; ".join(lines)) from None
