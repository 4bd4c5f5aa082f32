"""Test-only command traffic against the real journal, for the SIGKILL crash test.

    python crash_driver.py JOURNAL DEVICE ROUND [--workers N]

First reconciles whatever the previous (killed) run left pending, reading the
"device" back; then runs command traffic until killed. The device is an
append-only file standing in for the field: one line per command that reached
it (a process kill does not undo a completed write()). Lines on stdout:

    RECONCILED {json report}
    CONFIRMED <id>      printed only after the confirmed state is committed
"""

import argparse
import asyncio
import json
import os
import random
import sys
from pathlib import Path

from controller.commands import CommandLog, CommandState, Resolution
from controller.journal import Journal


def device_ids(device: Path) -> set[str]:
    if not device.exists():
        return set()
    return {line for line in device.read_text().splitlines() if line}


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("journal", type=Path)
    p.add_argument("device", type=Path)
    p.add_argument("round", type=int)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--reconcile-only", action="store_true")
    args = p.parse_args()

    journal = Journal(args.journal)
    journal.open()
    log = CommandLog(journal)
    log.load()
    on_device = device_ids(args.device)

    async def reread(cmd):
        # read back from the field; never re-send
        if cmd.id in on_device:
            return Resolution(CommandState.CONFIRMED, "reconcile: device shows it applied")
        return None

    report = await log.reconcile(reread)
    print("RECONCILED", json.dumps({"examined": report.examined, **report.outcomes}), flush=True)
    if args.reconcile_only:
        journal.close()
        return

    fd = os.open(args.device, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    rng = random.Random(args.round)

    async def worker(w: int) -> None:
        n = 0
        while True:
            cid = f"r{args.round}-w{w}-{n:06d}"
            n += 1
            cmd = await log.submit(
                "test", f"dev/{w}", {"n": n}, who="crash-test", why="traffic", command_id=cid
            )
            await asyncio.sleep(rng.random() * 0.002)
            await log.transition(
                cmd.id, CommandState.SENT
            )  # write-ahead: journaled before the wire
            os.write(fd, f"{cmd.id}\n".encode())  # the wire
            await asyncio.sleep(rng.random() * 0.002)  # the device answers later
            if rng.random() < 0.1:
                await log.transition(cmd.id, CommandState.FAILED, reason="test: no read-back")
                continue
            await log.transition(cmd.id, CommandState.CONFIRMED, reason="read back")
            sys.stdout.write(f"CONFIRMED {cmd.id}\n")
            sys.stdout.flush()

    await asyncio.gather(*(worker(w) for w in range(args.workers)))


if __name__ == "__main__":
    asyncio.run(main())
