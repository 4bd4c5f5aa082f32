"""Test-only: a real Service with ``[tasks] cpus`` set, reporting where its parts run.

    python cpu_layout_driver.py STATE_DIR OPCUA_PORT CPU

Starts the service (journal, OPC UA server in its own process, tasks) on one
uvloop loop, then prints one JSON line with the ids of the loop thread, the
journal writer thread, an ``asyncio.to_thread`` worker and the OPC UA server
process, so the test can read their masks from outside. Stops when stdin closes.
"""

import asyncio
import json
import logging
import sys
import threading
from pathlib import Path

import uvloop

from controller.config import validate_config
from controller.service import Service


async def main(state_dir: Path, opcua_port: int, cpu: int) -> None:
    config = validate_config(
        {
            "service": {"state_dir": str(state_dir), "control_socket": ""},
            "tasks": {"gc_freeze": False, "cpus": [cpu]},
            "journal": {"path": str(state_dir / "journal.sqlite")},
            "metrics": {"port": 0},
            "opcua": {
                "endpoint": f"opc.tcp://127.0.0.1:{opcua_port}/gridctl",
                "security_policies": ["None"],
                "anonymous": "read-only",
            },
        }
    )
    service = Service(config)
    await service.start()
    try:
        journal_thread = service.journal._thread
        assert journal_thread is not None
        report = {
            "loop_tid": threading.get_native_id(),
            "journal_tid": journal_thread.native_id,
            # a worker started now, after the loop thread was pinned
            "worker_tid": await asyncio.to_thread(threading.get_native_id),
            "opcua_pid": service.opcua.pid,
        }
        print(json.dumps(report), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await service.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    uvloop.run(main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
