"""Test harness: a simulated plant + the warehouse service in virtual time."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

from controller.process_image import ProcessImage
from controller.warehouse.config import WarehouseConfig
from controller.warehouse.inventory import open_db
from controller.warehouse.line_link import BatchFeed
from controller.warehouse.plant_io import LocalPlantIO, PlcImageIO
from controller.warehouse.rack import Location
from controller.warehouse.service import Warehouse
from drivers.config import Quarantine
from drivers.sim.warehouse import WarehousePlant
from drivers.sim.warehouse_model import Spot, WarehouseModel
from drivers.warehouse_plc import WarehousePlcBus

SMALL = dict(
    rows=2,
    bays=20,
    levels=8,
    cranes=[dict(vx_m_s=3.0, ax_m_s2=0.5, vy_m_s=1.0, ay_m_s2=0.5, fork_cycle_s=6.0)],
    inbound=dict(zones=4, zone_travel_s=2.0, jam_timeout_s=10.0),
    outbound=dict(zones=4, zone_travel_s=2.0, jam_timeout_s=10.0),
)


def sim_plant(cfg: WarehouseConfig) -> WarehousePlant:
    """The simulated plant for a site's [warehouse] table, read by the simulator's own model."""
    return WarehousePlant(WarehouseModel.from_table(cfg.model_dump()))


def spot(loc: Location) -> Spot:
    """The simulator's name for a controller location (the plant keys its slots by it)."""
    return Spot(loc.row, loc.bay, loc.level)


class Alarms:
    def __init__(self) -> None:
        self.raised: list[tuple[str, str, int, str]] = []
        self.cleared: list[tuple[str, str, str]] = []
        self.active: set[tuple[str, str]] = set()

    def raise_alarm(self, source: str, kind: str, severity: int, message: str) -> None:
        self.raised.append((source, kind, severity, message))
        self.active.add((source, kind))

    def clear_alarm(self, source: str, kind: str, message: str) -> None:
        self.cleared.append((source, kind, message))
        self.active.discard((source, kind))

    def kinds(self) -> list[str]:
        return [k for _s, k, _v, _m in self.raised]


@dataclass
class LineStandIn:
    feeds: list[BatchFeed] = field(default_factory=list)

    def batch_ready(self, feed: BatchFeed) -> None:
        self.feeds.append(feed)


def manifest(prefix: str, n: int, meters: int = 4, start: int = 0) -> dict:
    boxes = []
    for i in range(start, start + n):
        boxes.append(
            {
                "barcode": f"{prefix}{i:05d}",
                "meters": [{"address": f"{i:08d}{j:04d}", "type": "DDZY-1"} for j in range(meters)],
            }
        )
    return {"boxes": boxes}


class Rig:
    def __init__(self, cfg: dict | None = None, db: str = ":memory:") -> None:
        self.cfg = WarehouseConfig.model_validate(cfg or SMALL)
        self.plant = sim_plant(self.cfg)
        self.io = LocalPlantIO(self.plant)
        self.conn: sqlite3.Connection = open_db(db)
        self.alarms = Alarms()
        self.line = LineStandIn()
        loop = asyncio.get_running_loop()
        self.image = ProcessImage(clock=loop.time)
        self.wh = Warehouse(
            self.cfg, self.conn, self.io, self.image, self.alarms, self.line, clock=loop.time
        )

    async def wait_for(
        self, cond: Callable[[], bool], timeout: float = 36_000.0, step: float = 1.0
    ) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not cond():
            self.wh.check_running()
            if loop.time() > end:
                raise AssertionError(f"condition not met within {timeout}s virtual")
            await asyncio.sleep(step)

    def order_state(self, order_id: int) -> str:
        return self.wh.order(order_id).state.value

    def check_consistent(self) -> None:
        """Journal vs plant: no box lost, none duplicated, rack mirror equals journal."""
        census = self.plant.census()
        for code, places in census.items():
            assert len(places) == 1, f"box {code} physically in {places}"
        inv = self.wh.inv
        journal = {b.barcode: b.location for b in inv.boxes()}
        for code, (place,) in census.items():
            loc = journal.get(code)
            if place.startswith("CONV:") and place.endswith(":in:0") and loc is None:
                continue  # at the induct, not read yet
            assert loc is not None, f"box {code} at {place} missing from the journal"
            if place.startswith("CONV:"):
                assert place.startswith(loc + ":"), f"{code}: plant {place}, journal {loc}"
            else:
                assert loc == place, f"{code}: plant {place}, journal {loc}"
        for code, loc in journal.items():
            if loc.startswith(("R", "CRANE:", "CONV:")):
                assert code in census, f"journal has {code} at {loc}, plant has it nowhere"
        rack_boxes = {s.loc.code: s.box for s in self.wh.rack.slots.values() if s.box}
        assert rack_boxes == {loc: code for code, loc in journal.items() if loc.startswith("R")}
        # classes never share a slot: one box per slot, and every box is homogeneous
        for b in inv.boxes("R*"):
            states = {m.state for m in inv.meters(b.barcode)}
            expect = {
                "unverified": {"new", "returned"},
                "qualified": {"qualified"},
                "rejected": {"rejected"},
            }
            assert states <= expect[b.klass.value], (b.barcode, b.klass, states)


async def open_plc(port: int, aisles: int = 1, poll_s: float = 0.01) -> PlcImageIO:
    """The PLC at 127.0.0.1:port through its bus (as the service reaches it), once it answers."""
    bus = WarehousePlcBus(
        "warehouse_plc",
        ProcessImage(),
        host="127.0.0.1",
        port=port,
        aisles=aisles,
        poll_s=poll_s,
        # a test's client shares the simulated PLC with the controller under test on a
        # busy machine: a generous reply time, and a short back-off after a miss
        response_timeout_s=2.0,
        quarantine=Quarantine(initial_s=0.1, max_s=0.5),
    )
    await bus.start()
    io = PlcImageIO(bus)
    loop = asyncio.get_running_loop()
    end = loop.time() + 10.0
    while io.unavailable():
        if loop.time() > end:
            await bus.stop()
            raise AssertionError(f"PLC at port {port}: {io.unavailable()}")
        await asyncio.sleep(0.01)
    return io


async def close_plc(io: PlcImageIO) -> None:
    await io.bus.stop()
