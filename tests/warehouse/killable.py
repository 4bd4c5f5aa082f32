"""A warehouse controller process for the SIGKILL test: Modbus to the sim, SQLite on disk.

Usage: python -m tests.warehouse.killable DB PORT N_BOXES
Creates the inbound order on first start (none in the journal yet), reconciles
on every start, and exits 0 when the order is completed.
"""

from __future__ import annotations

import asyncio
import json
import sys

from controller.warehouse.config import WarehouseConfig
from controller.warehouse.inventory import open_db
from controller.warehouse.service import Warehouse
from tests.warehouse.harness import close_plc, manifest, open_plc
from tests.warehouse.test_modbus import FAST


async def main(db: str, port: int, n: int) -> int:
    cfg = WarehouseConfig.model_validate(FAST)
    io = await open_plc(port, 1, poll_s=0.005)
    wh = Warehouse(cfg, open_db(db), io)
    report = await wh.start()
    print(json.dumps({"reconciled": report}), flush=True)
    rows = wh.inv.order_rows()
    order = rows[0][0] if rows else wh.submit("inbound", manifest("NB", n))
    while wh.order(order).state.value != "completed":
        wh.check_running()
        await asyncio.sleep(0.02)
    await wh.stop()
    await close_plc(io)
    print(json.dumps({"completed": order}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
