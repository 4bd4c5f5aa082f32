"""The line's results go through the journal's one writer: the loop keeps cycling
while another connection holds the file's write lock."""

import asyncio
import sqlite3
import threading

import pytest

from controller.cycle import CycleTask
from controller.journal import Journal
from controller.verification.config import demo_line
from controller.verification.results import PASS, ResultRow, ResultsRepository, open_read_only
from controller.verification.scheme import load_scheme
from tests.verification.conftest import METER_TYPE, SCHEMES

HOLD_S = 2.0
PERIOD_S = 0.01


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "journal.sqlite")
    j.open()
    yield j
    j.close()


def _hold_write_lock(path, held: threading.Event, release: threading.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO events(at, kind, source, message) VALUES (0, 'test', 'holder', 'x')")
    held.set()
    release.wait(HOLD_S)  # the scenario: another writer keeps the lock for 2 s
    conn.execute("COMMIT")
    conn.close()


async def _wait(condition, what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_fast_task_keeps_cycling_while_the_file_is_locked(journal, tmp_path):
    repo = ResultsRepository(open_read_only(journal.path), install=False, journal=journal)
    scheme = load_scheme(SCHEMES / "class1_single_phase.toml")
    meter_type = demo_line(1, 1).meter_type(METER_TYPE)
    fast = CycleTask("fast", PERIOD_S, spin_s=0.001)
    fast.start()
    held, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(journal.path, held, release))
    holder.start()
    try:
        await _wait(held.is_set, "the other connection to take the write lock")
        before = fast.cycles
        written = repo.create_batch("B1", scheme, meter_type, [("M1", "000000000001", 1, 1)], 1.0)
        row = ResultRow(
            batch_id="B1",
            barcode="M1",
            item_index=0,
            point_index=0,
            kind="basic_error",
            point="1.0Ib",
            station=1,
            samples=[],
            average="0.1",
            rounded="0.1",
            limit_low="-1.0",
            limit_high="1.0",
            unit="%",
            verdict=PASS,
            reason="",
            started=1.0,
            ended=2.0,
            scheme_version=1,
        )
        finished = repo.finish_item([row], 2.0)
        await written
        await finished
        during = fast.cycles - before
    finally:
        release.set()
        holder.join()
        await fast.stop()
    # the writes waited ~2 s for the lock: at one cycle per 10 ms that is ~200 cycles
    # (2.0 / 0.01); a loop blocked on the lock would have run 0-1. A quarter of that
    # leaves room for a loaded machine.
    assert during >= 50, f"fast task ran {during} cycles while the writes waited for the lock"
    # and what was written is there, after the holder's row (it committed first)
    assert repo.batches() == [("B1", "created")]
    assert [(r.barcode, r.verdict) for r in repo.results("B1")] == [("M1", PASS)]
    rows = journal.query("SELECT source FROM events WHERE kind = 'test'")
    assert [r["source"] for r in rows] == ["holder"]


def test_the_line_reads_on_a_connection_that_cannot_write(journal):
    conn = open_read_only(journal.path)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("DELETE FROM vl_batches")
