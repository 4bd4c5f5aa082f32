"""SIGKILL in the middle of command traffic, restart, reconcile: nothing confirmed is lost."""

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

DRIVER = Path(__file__).with_name("crash_driver.py")
ROOT = Path(__file__).resolve().parents[2]


def start(journal, device, rnd, *extra):
    return subprocess.Popen(
        [sys.executable, str(DRIVER), str(journal), str(device), str(rnd), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def test_sigkill_during_command_traffic_loses_nothing(tmp_path):
    journal = tmp_path / "journal.sqlite"
    device = tmp_path / "device.log"
    confirmed_before_kill: set[str] = set()
    reconciled_total = 0
    for rnd, kill_after in enumerate((40, 150, 90)):
        proc = start(journal, device, rnd)
        first = proc.stdout.readline()
        assert first.startswith("RECONCILED"), first + proc.stderr.read()
        reconciled_total += json.loads(first.split(" ", 1)[1])["examined"]
        seen = 0
        deadline = time.monotonic() + 60
        while seen < kill_after and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            if line.startswith("CONFIRMED "):
                confirmed_before_kill.add(line.split()[1])
                seen += 1
        assert seen == kill_after
        proc.send_signal(signal.SIGKILL)  # mid-traffic: other workers are between states
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        # lines already written before the kill count as confirmed too
        confirmed_before_kill |= {
            ln.split()[1] for ln in out.splitlines() if ln.startswith("CONFIRMED ")
        }

    final = start(journal, device, 99, "--reconcile-only")
    out, err = final.communicate(timeout=60)
    assert final.returncode == 0, err
    reconciled_total += json.loads(out.split(" ", 1)[1])["examined"]
    assert reconciled_total > 0  # the kills did catch commands in flight

    db = sqlite3.connect(journal)
    states = dict(db.execute("SELECT id, state FROM commands"))
    history = {}
    for cid, state, who in db.execute(
        "SELECT command_id, state, who FROM command_transitions ORDER BY seq"
    ):
        history.setdefault(cid, []).append((state, who))
    on_wire = Counter(line for line in device.read_text().splitlines() if line)

    # every command confirmed before a kill is still confirmed, by the original path
    for cid in confirmed_before_kill:
        assert states[cid] == "confirmed", cid
        assert [s for s, _ in history[cid]] == ["queued", "sent", "confirmed"], cid
    # nothing is left pending
    assert not [
        c for c, s in states.items() if s not in ("confirmed", "failed", "expired", "refused")
    ]
    # nothing reached the wire twice, and nothing reached it without being journaled as sent first
    assert max(on_wire.values()) == 1
    assert set(on_wire) <= {c for c, h in history.items() if ("sent", "system") in h}
    # pending commands were resolved by read-back: applied → confirmed, not applied → failed
    reconciled = {c for c, h in history.items() if h[-1][1] == "reconcile"}
    for cid in reconciled:
        if cid in on_wire:
            assert states[cid] == "confirmed"
        else:
            assert states[cid] == "failed"
    for cid, state in states.items():
        if state == "confirmed":
            assert cid in on_wire
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
