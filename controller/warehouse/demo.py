"""Demo stock: the boxes of new meters a demo rack starts with.

The controller records them in an empty inventory; the simulated PLC fills its
slots from its own list built by the same rule
(``drivers.sim.warehouse_model.demo_stock``), so plant and journal agree from
the first cycle, there is something for the cranes to move, and a change to
one rule alone shows up as differences in the rack scan a restarted service makes.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.warehouse.config import WarehouseConfig
from controller.warehouse.rack import Location

DEMO_METER_TYPE = "DDZY-1-5(60)A"  # the demo line's meter type, so the line can verify them
DEMO_METERS_PER_BOX = 4


@dataclass(frozen=True, slots=True)
class DemoBox:
    barcode: str
    location: Location
    meters: tuple[str, ...]  # 12-digit addresses


def demo_stock(cfg: WarehouseConfig) -> list[DemoBox]:
    """``cfg.demo_boxes`` boxes, spread over the aisles, lowest levels and nearest bays first."""
    locs = sorted(
        (
            Location(row, bay, level)
            for row in range(1, cfg.rows + 1)
            for bay in range(1, cfg.bays + 1)
            for level in range(1, cfg.levels + 1)
        ),
        key=lambda loc: (loc.level, loc.bay, loc.row),
    )
    per_box = min(DEMO_METERS_PER_BOX, cfg.meters_per_box)
    out = []
    for i, loc in enumerate(locs[: cfg.demo_boxes]):
        # the simulated line derives each meter's error from its address; with this
        # prefix about one meter in twelve fails, one of them in the first three boxes,
        # so the demo's first fed batch shows both verdicts
        meters = tuple(f"4{i:07d}{j:04d}" for j in range(per_box))
        out.append(DemoBox(f"NEW{i:05d}", loc, meters))
    return out
