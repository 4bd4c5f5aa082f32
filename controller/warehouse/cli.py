"""``gridctl inventory count``: compare the journal with a scan of the racks.

    gridctl inventory count --db var/journal.db --plant 127.0.0.1:5020 \
        [--config site.toml] [--slot R01-B001-L01 ...] [--json]

Exit status 0 when journal and racks agree, 1 when they differ, 2 on bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tomllib
from typing import Any

from controller.warehouse.config import ConfigError, WarehouseConfig, load_warehouse_config
from controller.warehouse.rack import Location, Rack


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inventory", help="warehouse inventory tools")
    p.set_defaults(func=lambda _a: p.print_help())
    isub = p.add_subparsers(dest="inventory_command", metavar="ACTION")
    c = isub.add_parser("count", help="compare the journal with a scan of the racks")
    c.add_argument("--db", required=True, help="journal SQLite file")
    c.add_argument("--plant", default="127.0.0.1:5020", help="warehouse PLC Modbus TCP HOST:PORT")
    c.add_argument(
        "--config", help="TOML file with a [warehouse] table (default: built-in defaults)"
    )
    c.add_argument("--slot", action="append", help="scan only these slots (repeatable)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=run_count)
    m = isub.add_parser(
        "marketing",
        help="export what the marketing system reads: meters, tasks, slot codes, boxing, "
        "results, withstand, orders (JSON)",
    )
    m.add_argument("--db", required=True, help="journal SQLite file")
    m.add_argument("--batch", help="only this verification batch")
    m.add_argument("--meter", help="only this meter's parameters (12-digit address)")
    m.set_defaults(func=run_marketing)


def _config(path: str | None) -> WarehouseConfig:
    if not path:
        return WarehouseConfig.model_validate({})
    with open(path, "rb") as f:
        data: dict[str, Any] = tomllib.load(f)
    return load_warehouse_config(data.get("warehouse", {}))


async def count(
    cfg: WarehouseConfig, db: str, host: str, port: int, slots: list[str] | None
) -> dict[str, Any]:
    from controller.process_image import ProcessImage
    from controller.warehouse.plant_io import PlcImageIO
    from controller.warehouse.service import Warehouse
    from drivers.warehouse_plc import WarehousePlcBus

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    # the PLC through its bus, as the service reaches it: one transaction in flight
    bus = WarehousePlcBus(
        "warehouse_plc", ProcessImage(), host=host, port=port, aisles=cfg.aisles, poll_s=1.0
    )
    await bus.start()
    try:
        io = PlcImageIO(bus)
        loop = asyncio.get_running_loop()
        end = loop.time() + cfg.plc_timeout_s * 5
        while io.unavailable():
            if loop.time() > end:
                raise OSError(f"--plant: no PLC answering at {host}:{port} ({io.unavailable()})")
            await asyncio.sleep(0.02)
        wh = Warehouse(cfg, conn, io)
        wh.inv.load_rack(wh.rack)
        return await wh.count(slots)
    finally:
        await bus.stop()
        conn.close()


def run_count(args: argparse.Namespace) -> int:
    try:
        cfg = _config(args.config)
        host, _, port_s = args.plant.rpartition(":")
        if not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise ValueError(f"--plant: expected HOST:PORT with port 1..65535, got {args.plant!r}")
        if args.slot:
            rack = Rack(cfg)
            for s in args.slot:
                if Location.parse(s) not in rack.slots:
                    raise ValueError(f"--slot: {s} is not a slot of this rack")
        report = asyncio.run(count(cfg, args.db, host, int(port_s), args.slot))
    except (ConfigError, ValueError, OSError, sqlite3.Error) as exc:
        print(f"gridctl inventory count: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        diffs = report["differences"]
        print(f"scanned {report['slots']} slots, {len(diffs)} differences")
        for d in diffs:
            print(
                f"  {d['slot']}: journal {d['journal'] or '(empty)'}, rack {d['scan'] or '(empty)'}"
            )
    return 1 if report["differences"] else 0


def run_marketing(args: argparse.Namespace) -> int:
    """Read-only: the journal file of a running or stopped service."""
    from controller.warehouse.marketing import MarketingError, MarketingInterface
    from controller.warehouse.service import Warehouse

    try:
        conn = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True)
        try:
            # no plant I/O: the interface only reads the inventory and the orders
            wh = Warehouse(WarehouseConfig.model_validate({}), conn, io=None)  # type: ignore[arg-type]
            mi = MarketingInterface(wh)
            doc: Any = mi.query_meter(args.meter) if args.meter else mi.export(args.batch)
        finally:
            conn.close()
    except (MarketingError, sqlite3.Error) as exc:
        print(f"gridctl inventory marketing: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(doc, indent=2))
    return 0
