"""SIGKILL mid-batch, restart in a new process: no result lost, none invented."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

ROOT = Path(__file__).resolve().parents[2]


def snapshot(db):
    if not Path(db).exists():
        return {}, []
    conn = sqlite3.connect(db, timeout=5)
    try:
        rows = conn.execute(
            "SELECT * FROM vl_results ORDER BY barcode, item_index, point_index"
        ).fetchall()
        runs = conn.execute(
            "SELECT barcode, item_index, attempt, state FROM vl_item_runs"
        ).fetchall()
        return {(r[0], r[1], r[2], r[3]): r for r in rows}, runs
    except sqlite3.OperationalError:
        return {}, []
    finally:
        conn.close()


def spawn(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "tests.verification.line_worker", *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def log_sequences(log_path):
    seqs = {}
    for line in Path(log_path).read_text().splitlines():
        rec = json.loads(line)
        seqs.setdefault((rec["barcode"], rec["what"]), []).append(rec["value"])
    return seqs


def contains_run(haystack, needle):
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


@pytest.mark.parametrize("kill_after_results", [1, 300, 700])
def test_sigkill_mid_batch_then_resume(tmp_path, kill_after_results):
    db, log = tmp_path / "line.db", tmp_path / "rig.jsonl"
    # scale 2000: the ≈ 70 min batch takes ≈ 2 s of real time
    proc = spawn("start", db, log, 2000)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"worker ended before the kill: {proc.communicate()}")
        if len(snapshot(db)[0]) >= kill_after_results:
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before, _runs_before = snapshot(db)
    assert proc.returncode == -signal.SIGKILL and before

    res = spawn("resume", db, log)
    out, err = res.communicate(timeout=120)
    assert res.returncode == 0, err
    assert out.splitlines()[-1].startswith("done 44")
    after, _runs_after = snapshot(db)

    # nothing lost, nothing rewritten
    for key, row in before.items():
        assert after[key] == row
    # complete: every meter has every item (one row per point), none twice (primary key)
    conn = sqlite3.connect(db)
    per_meter = conn.execute(
        "SELECT barcode, COUNT(DISTINCT item_index) FROM vl_results GROUP BY barcode"
    ).fetchall()
    assert len(per_meter) == 48 and all(n == 9 for _, n in per_meter)
    assert (
        conn.execute("SELECT COUNT(*) FROM vl_results WHERE kind = 'basic_error'").fetchone()[0]
        == 48 * 8
    )
    # interrupted runs are kept and were re-tested by a later attempt
    runs = conn.execute("SELECT barcode, item_index, attempt, state FROM vl_item_runs").fetchall()
    interrupted = [(b, i) for b, i, a, s in runs if s == "interrupted"]
    done = {(b, i): a for b, i, a, s in runs if s == "done"}
    assert all(r[3] != "running" for r in runs)
    for b, i in interrupted:
        assert (b, i) in done
    for row in after.values():
        if row[14] in ("pass", "fail"):
            assert row[4] == done[(row[1], row[2])]  # the result belongs to the completed attempt
    # not invented: every measured value is one the rig produced, in the order it produced it
    seqs = log_sequences(log)
    for row in after.values():
        barcode, kind, samples = row[1], row[5], msgpack.unpackb(row[8])
        if kind == "basic_error" and row[14] != "skipped":
            assert contains_run(seqs[(barcode, "error_sample")], [s["m"] for s in samples]), row
        elif kind == "clock":
            assert contains_run(
                seqs[(barcode, "clock")], [[s["pulses"], s["ticks"]] for s in samples]
            ), row
        elif kind in ("starting", "creep"):
            assert samples[0]["pulses"] in seqs[(barcode, "pulses")], row
    verdicts = dict(conn.execute("SELECT barcode, verdict FROM vl_meters"))
    assert {b for b, v in verdicts.items() if v != "pass"} == {"K0003", "K0020", "K0030", "K0041"}
    state = conn.execute("SELECT state FROM vl_batches").fetchone()[0]
    assert state == "done"
    print(f"killed with {len(before)} results, {len(interrupted)} interrupted runs re-tested")
