"""SIGKILL the controller mid crane move, restart, and find every box exactly once."""

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from controller.warehouse.crane import CraneDriver
from controller.warehouse.plant_io import (
    CODE_REGS,
    SCAN_BASE,
    CraneState,
    conveyor_base,
    decode_code,
)
from controller.warehouse.rack import Location

from .harness import close_plc, open_plc
from .test_modbus import FAST, free_port

ROOT = Path(__file__).resolve().parents[2]
N = 12


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"simulated PLC not listening on {port}")


def _puts(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        c = sqlite3.connect(db)
        try:
            return c.execute("SELECT count(*) FROM wh_event WHERE kind='put'").fetchone()[0]
        finally:
            c.close()
    except sqlite3.Error:
        return 0


async def _plant_census(port: int) -> dict[str, list[str]]:
    """What the plant holds, read over Modbus like any client: rack scan, fork, conveyors."""
    io = await open_plc(port, 1)
    out: dict[str, list[str]] = {}
    try:
        for row in (1, 2):
            for bay in range(1, FAST["bays"] + 1):
                for level in range(1, FAST["levels"] + 1):
                    await io.write(SCAN_BASE, [row, bay, level])
                    r = await io.read(SCAN_BASE + 3, 1 + CODE_REGS)
                    if r[0]:
                        out.setdefault(decode_code(r[1:]), []).append(
                            Location(row, bay, level).code
                        )
        st = await CraneDriver(io, 1).status()
        if st.fork_loaded:
            out.setdefault(st.fork_code, []).append("CRANE:1")
        for outbound in (False, True):
            eyes = (await io.read(conveyor_base(1, outbound) + 1, 1))[0]
            if eyes:
                out.setdefault("?conveyor", []).append(f"{outbound}:{eyes:b}")
    finally:
        await close_plc(io)
    return out


async def _crane_phase(port: int) -> tuple[CraneState, bool]:
    io = await open_plc(port, 1)
    try:
        st = await CraneDriver(io, 1).status()
        return st.state, st.fork_loaded
    finally:
        await close_plc(io)


def test_sigkill_mid_move_then_restart_reconciles(tmp_path):
    port = free_port()
    db = tmp_path / "journal.db"
    boxes = ",".join(f"NB{i:05d}" for i in range(N))
    plant = _spawn(
        "-m",
        "drivers.sim.warehouse",
        "--port",
        str(port),
        "--config",
        json.dumps(FAST),
        "--boxes",
        boxes,
    )
    try:
        wait_listening(port, plant)
        kills = 0
        phases = [
            (2, (CraneState.MOVING, False)),  # travelling empty to pick
            (5, (CraneState.MOVING, True)),  # travelling loaded to put
            (8, (CraneState.FORKING, True)),  # fork stroke of a put
        ]
        for kill_after_puts, phase in phases:
            ctl = _spawn("-m", "tests.warehouse.killable", str(db), str(port), str(N))
            deadline = time.monotonic() + 30
            while _puts(db) < kill_after_puts and time.monotonic() < deadline:
                assert ctl.poll() is None, ctl.communicate()
                time.sleep(0.01)
            # now wait until the crane is actually travelling, then kill without warning
            while asyncio.run(_crane_phase(port)) != phase and time.monotonic() < deadline:
                time.sleep(0.005)
            os.kill(ctl.pid, signal.SIGKILL)
            ctl.wait()
            kills += 1
        final = _spawn("-m", "tests.warehouse.killable", str(db), str(port), str(N))
        try:
            _out, err = final.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            final.kill()
            _out, err = final.communicate()
            c = sqlite3.connect(db)
            dump = {
                "tasks": c.execute("SELECT * FROM wh_task WHERE state != 'done'").fetchall(),
                "events": c.execute("SELECT * FROM wh_event ORDER BY id DESC LIMIT 15").fetchall(),
                "census": asyncio.run(_plant_census(port)),
            }
            raise AssertionError(
                f"restarted controller did not finish: {dump}\n{_out}\n{err}"
            ) from None
        assert final.returncode == 0, err
        assert kills == 3
        census = asyncio.run(_plant_census(port))
        conn = sqlite3.connect(db)
        journal = dict(conn.execute("SELECT barcode, location FROM wh_box").fetchall())
        assert "?conveyor" not in census
        assert sorted(census) == [f"NB{i:05d}" for i in range(N)]
        for code, places in census.items():
            assert len(places) == 1, f"{code} duplicated: {places}"
            assert journal[code] == places[0], f"{code}: plant {places[0]}, journal {journal[code]}"
        assert conn.execute("SELECT count(*) FROM wh_box").fetchone()[0] == N
        open_tasks = conn.execute("SELECT count(*) FROM wh_task WHERE state != 'done'").fetchone()[
            0
        ]
        assert open_tasks == 0
        reserved = conn.execute(
            "SELECT count(*) FROM wh_slot WHERE reserved_by IS NOT NULL"
        ).fetchone()[0]
        assert reserved == 0
        reports = [
            r[0]
            for r in conn.execute("SELECT detail FROM wh_event WHERE kind='reconciled' ORDER BY id")
        ]
        assert len(reports) == 4
        # every kill hit a crane move, so each restart found a task in flight to settle
        assert "pick completed while down" in reports[1], reports
        assert "put completed while down" in reports[2], reports
        assert "put completed while down" in reports[3], reports
        print("\n".join(reports))
    finally:
        plant.send_signal(signal.SIGTERM)
        plant.wait(timeout=10)
