"""SIGKILL between send and confirm: after restart the command ends confirmed or failed, once."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.sim.control import request
from drivers.sim.launch import start_simulator

from .conftest import ADDR1, dlt645_config

DRIVER = Path(__file__).with_name("crash_driver.py")
ROOT = Path(__file__).resolve().parents[2]


def run_driver(field: Path, journal: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(DRIVER), str(field), str(journal), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    ("mode", "marker", "final", "honoured", "relay_open"),
    [
        ("after", "APPLIED", "confirmed", 1, True),
        ("before", "SENT", "failed", 0, False),
    ],
)
async def test_sigkill_between_send_and_confirm(
    tmp_path, mode, marker, final, honoured, relay_open
):
    dlt645_config(tmp_path, meters=2, port=str(tmp_path / "tty" / "bus1"))
    field = tmp_path / "field.toml"
    journal = tmp_path / "journal.sqlite"
    sock = tmp_path / "sim.sock"
    with start_simulator(field, fast=True, cwd=ROOT):
        proc = run_driver(field, journal, mode)
        first = await asyncio.to_thread(proc.stdout.readline)
        assert first.startswith("RECONCILED"), first + proc.stderr.read()
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line.startswith(marker), line + proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

        # the restarted controller reconciles by reading the relay back, never re-sending
        again = run_driver(field, journal, "reconcile")
        out, err = await asyncio.to_thread(again.communicate, timeout=60)
        assert again.returncode == 0, err
        report = json.loads(out.split(" ", 1)[1])
        assert report["examined"] == 1 and report.get(final) == 1

        state = await request(sock, {"op": "state", "meter": ADDR1})
        assert state["controls_honoured"] == honoured  # never duplicated
        assert state["relay_open"] is relay_open

    db = sqlite3.connect(journal)
    ((state_,),) = db.execute("SELECT state FROM commands WHERE id = ?", (f"crash-{mode}",))
    assert state_ == final
    hist = [
        (s, w)
        for s, w in db.execute(
            "SELECT state, who FROM command_transitions WHERE command_id = ? ORDER BY seq",
            (f"crash-{mode}",),
        )
    ]
    assert hist == [("queued", "crash-test"), ("sent", "system"), (final, "reconcile")]
