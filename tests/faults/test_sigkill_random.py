"""SIGKILL at random points, many times over: batch and crane traffic.

The single-kill tests (tests/verification/test_crash.py,
tests/warehouse/test_sigkill.py) pin chosen moments; these run the same worker
processes and kill them at random moments, 20+ times each, then check the same
invariants on what is left: the journal is consistent, no confirmed result or
box is lost or duplicated. Seeded, so a failure can be replayed; slow
(minutes): `make test-all`. Load commands are killed in the real service, with
the meters in their own simulator process: tests/faults/test_service_sigkill.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

from tests.verification.test_crash import contains_run, log_sequences, snapshot
from tests.warehouse.test_modbus import FAST, free_port
from tests.warehouse.test_sigkill import _plant_census, wait_listening

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
KILLS = 20


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill(proc: subprocess.Popen[str]) -> str:
    """SIGKILL (if still running) and return what it printed."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    return out


# -- verification batch ----------------------------------------------------------------------


def line_worker(*args: object) -> subprocess.Popen[str]:
    return spawn("-m", "tests.verification.line_worker", *map(str, args))


@pytest.mark.parametrize("seed", range(KILLS // 2))
def test_batch_survives_two_random_kills(tmp_path: Path, seed: int) -> None:
    # two kills per batch (mid-start, mid-resume) × 10 seeds = 20 kills
    rng = random.Random(seed)
    db, log = tmp_path / "line.db", tmp_path / "rig.jsonl"
    kept: dict = {}
    proc = line_worker("start", db, log, 2000)
    target = rng.randint(1, 800)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if len(snapshot(db)[0]) >= target:
            break
        time.sleep(0.003)
    kill(proc)
    kept.update(snapshot(db)[0])
    # the resumed run is killed at a random moment too (it may have finished by then)
    proc = line_worker("resume", db, log)
    time.sleep(0.3 + rng.random() * 1.5)
    kill(proc)
    before, _ = snapshot(db)
    for key, row in kept.items():
        assert before[key] == row, "a result changed across a kill"
    res = line_worker("resume", db, log)
    out, err = res.communicate(timeout=180)
    assert res.returncode == 0, err
    assert out.splitlines()[-1].startswith("done 44"), out
    after, _ = snapshot(db)
    for key, row in before.items():
        assert after[key] == row, "a result was lost or rewritten"
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    per_meter = conn.execute(
        "SELECT barcode, COUNT(DISTINCT item_index) FROM vl_results GROUP BY barcode"
    ).fetchall()
    assert len(per_meter) == 48 and all(n == 9 for _, n in per_meter)
    runs = conn.execute("SELECT barcode, item_index, attempt, state FROM vl_item_runs").fetchall()
    assert all(r[3] != "running" for r in runs)
    seqs = log_sequences(log)
    for row in after.values():
        if row[5] == "basic_error" and row[14] != "skipped":
            samples = msgpack.unpackb(row[8])
            assert contains_run(seqs[(row[1], "error_sample")], [s["m"] for s in samples]), row
    verdicts = dict(conn.execute("SELECT barcode, verdict FROM vl_meters"))
    assert {b for b, v in verdicts.items() if v != "pass"} == {"K0003", "K0020", "K0030", "K0041"}


# -- warehouse crane -------------------------------------------------------------------------


def test_crane_traffic_survives_20_random_kills(tmp_path: Path) -> None:
    rng = random.Random(3)
    n = 24  # of the 30 slots of the FAST rack
    port = free_port()
    db = tmp_path / "journal.db"
    boxes = ",".join(f"NB{i:05d}" for i in range(n))
    plant = spawn(
        "-m", "drivers.sim.warehouse", "--port", str(port), "--config", json.dumps(FAST),
        "--boxes", boxes,
    )  # fmt: skip
    try:
        wait_listening(port, plant)
        kills = 0
        for _ in range(KILLS):
            ctl = spawn("-m", "tests.warehouse.killable", str(db), str(port), str(n))
            first = ctl.stdout.readline()
            assert first.startswith('{"reconciled"'), first + ctl.stderr.read()
            time.sleep(rng.uniform(0.05, 0.6))
            if ctl.poll() is not None:  # the order completed first: nothing left to kill
                ctl.communicate()
                break
            kill(ctl)
            kills += 1
        final = spawn("-m", "tests.warehouse.killable", str(db), str(port), str(n))
        _out, err = final.communicate(timeout=120)
        assert final.returncode == 0, err
        assert kills >= KILLS // 2, f"only {kills} kills landed before the order completed"
        census = asyncio.run(_plant_census(port))
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        journal = dict(conn.execute("SELECT barcode, location FROM wh_box").fetchall())
        # every box exactly once, where the journal says, nothing left on a conveyor
        assert "?conveyor" not in census
        assert sorted(census) == [f"NB{i:05d}" for i in range(n)]
        for code, places in census.items():
            assert len(places) == 1, f"{code} duplicated: {places}"
            assert journal[code] == places[0], (code, places, journal[code])
        assert len(journal) == n
        assert conn.execute("SELECT count(*) FROM wh_task WHERE state != 'done'").fetchone()[0] == 0
        assert (
            conn.execute("SELECT count(*) FROM wh_slot WHERE reserved_by IS NOT NULL").fetchone()[0]
            == 0
        )
    finally:
        plant.send_signal(signal.SIGTERM)
        plant.wait(timeout=10)
