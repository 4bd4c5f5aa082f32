"""Disk full under the journal: refuse new commands, raise an alarm, corrupt nothing.

The disk is filled for real as far as SQLite can tell: ``PRAGMA max_page_count``
on the writer's connection caps the file at its current size, so the next write
that needs a page fails with SQLITE_FULL — the same error an ENOSPC from the
file system produces — while the test stays on the ordinary tmp directory.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from controller.alarms import AlarmEngine, Severity
from controller.api import CommandRefused, RefusalReason
from controller.commands import JOURNAL_FAILED, CommandLog
from controller.journal import Journal, JournalError, JournalStorageError, storage_failure

PAD = "x" * 3000  # a few of these fill the pages SQLite still has free


async def fill_disk(journal: Journal) -> None:
    """Cap the file at the pages it has now (runs on the writer's own connection)."""
    await journal.commit([("PRAGMA max_page_count = 1", ())])


def rows(path: Path) -> dict[str, tuple[str, list[str]]]:
    """id -> (state, transition states) as a fresh process would read them."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        out = {}
        for cid, state in conn.execute("SELECT id, state FROM commands"):
            seq = conn.execute(
                "SELECT state FROM command_transitions WHERE command_id = ? ORDER BY seq", (cid,)
            ).fetchall()
            out[cid] = (state, [s for (s,) in seq])
        return out
    finally:
        conn.close()


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "var" / "journal.sqlite")
    j.open()
    yield j
    j.close()


async def test_disk_full_closes_intake_raises_alarm_and_keeps_what_was_confirmed(journal):
    log = CommandLog(journal)
    alarms = AlarmEngine(journal)
    # state before the disk fills: confirmed, sent (in flight) and queued commands
    told: dict[str, str] = {}
    for n in range(5):
        cmd = await log.submit("trip", f"load{n}", {"n": n}, who="op", why="before")
        if n < 4:
            await log.transition(cmd.id, "sent")
        if n < 3:
            await log.transition(cmd.id, "confirmed", reason="read back")
        told[cmd.id] = log.get(cmd.id).state.value
    assert not log.check_journal(alarms)
    assert alarms.annunciated() == []

    await fill_disk(journal)
    accepted, refused = [], None
    for n in range(200):
        try:
            cmd = await log.submit("trip", f"bulk{n}", {"pad": PAD}, who="op", why="flood")
        except CommandRefused as exc:
            refused = (f"bulk{n}", exc)
            break
        accepted.append(cmd.id)
        told[cmd.id] = cmd.state.value
    assert refused is not None, "the capped file never filled up"
    target, exc = refused
    # the refusal says why, and the cause is the disk, not the command
    assert "journal failed" in str(exc) and "disk full" in str(exc)
    assert isinstance(exc.__cause__, JournalStorageError)
    assert journal.failure is not None and "disk full" in journal.failure
    assert journal.snapshot().failure == journal.failure
    assert not journal.healthy
    assert not log.accepting and "disk full" in log.refusal

    # the alarm: raised once, critical, with the reason
    assert log.check_journal(alarms)
    alarm = alarms.get(f"{JOURNAL_FAILED}:journal")
    assert alarm.active and alarm.severity == Severity.CRITICAL
    assert "disk full" in alarm.message

    # later commands are refused up front, without another write attempt
    units = journal.units
    with pytest.raises(CommandRefused, match="journal failed") as err:
        await log.submit("trip", "tiny", who="op", why="after")
    assert err.value.reason is RefusalReason.SERVICE_STOPPING
    assert journal.units == units
    # whatever the command: the intake is checked before the arguments
    with pytest.raises(CommandRefused, match="journal failed"):
        await log.submit("no-such-kind", "x", who="op", why="after")

    journal.close()
    # what a restart finds: an intact file; every command a caller was told about, in
    # the state it was told; nothing from the refused one
    found = rows(journal.path)
    assert {cid: state for cid, (state, _) in found.items()} == told
    conn = sqlite3.connect(journal.path)
    targets = {t for (t,) in conn.execute("SELECT target FROM commands")}
    conn.close()
    assert target not in targets and "tiny" not in targets
    for state, history in found.values():
        assert history[-1] == state
        if state == "confirmed":
            assert history == ["queued", "sent", "confirmed"]

    # with space again (a new connection has no cap) the journal opens healthy
    j2 = Journal(journal.path)
    j2.open()
    try:
        assert j2.healthy and j2.failure is None
        log2 = CommandLog(j2)
        assert log2.load() == 2 + len(accepted)  # sent + queued + the accepted flood
        await log2.submit("trip", "after-restart", who="op", why="space freed")
    finally:
        j2.close()


async def test_transition_that_cannot_be_written_keeps_the_last_durable_state(journal):
    log = CommandLog(journal)
    cmd = await log.submit("trip", "load1", who="op", why="t")
    await log.transition(cmd.id, "sent")
    await fill_disk(journal)
    # reasons big enough to need new pages: the confirmation cannot be recorded
    with pytest.raises(CommandRefused, match="disk full"):
        for n in range(200):
            other = await log.submit("trip", f"pad{n}", {"pad": PAD}, who="op", why="fill")
            assert other.state.value == "queued"
    with pytest.raises(JournalStorageError):
        await log.transition(cmd.id, "confirmed", reason="read back " + PAD * 4)
    # in memory and on disk: still `sent`, to be reconciled by read-back at restart
    assert log.get(cmd.id).state.value == "sent"
    assert cmd.id in {c.id for c in log.pending()}
    journal.close()
    assert rows(journal.path)[cmd.id] == ("sent", ["queued", "sent"])


async def test_the_control_cycle_closes_the_intake_without_a_new_command(journal):
    log = CommandLog(journal)
    armed = await log.submit("trip", "load1", who="op", why="t", arm=True, expires_in_s=0.001)
    await fill_disk(journal)
    # an event write (fire and forget) is what hits the full disk first
    while journal.failure is None:
        journal.event("test", "faults", PAD)
        with contextlib.suppress(JournalError):  # the flush shares the failing batch
            await journal.flush()
    assert log.accepting  # nobody has submitted since
    assert await log.expire_due(now=armed.expires + 1) == []  # the per-second control hook
    assert not log.accepting and "disk full" in log.refusal
    assert log.get(armed.id).state.value == "armed"  # left for the restart to expire


async def test_a_bad_statement_fails_alone_and_is_not_a_disk_failure(journal):
    with pytest.raises(JournalError) as info:
        await journal.commit([("INSERT INTO no_such_table VALUES (1)", ())])
    assert not isinstance(info.value, JournalStorageError)
    assert journal.failure is None and journal.healthy
    log = CommandLog(journal)
    await log.submit("trip", "load1", who="op", why="still fine")
    assert log.accepting


@pytest.mark.parametrize(
    ("exc", "storage"),
    [
        (sqlite3.OperationalError("database or disk is full"), True),
        (sqlite3.OperationalError("disk I/O error"), True),
        (OSError(28, "No space left on device"), True),
        (sqlite3.OperationalError("no such table: x"), False),
        (sqlite3.IntegrityError("UNIQUE constraint failed: commands.id"), False),
        (ValueError("not storage"), False),
    ],
)
def test_storage_failure_classification(exc, storage):
    assert (storage_failure(exc) is not None) is storage


async def test_the_running_service_raises_journal_failed_and_refuses_commands(tmp_path):
    import asyncio
    import urllib.request

    from controller.config import validate_config
    from controller.service import Service

    cfg = validate_config(
        {
            "service": {"state_dir": str(tmp_path / "var"), "control_socket": ""},
            "tasks": {"gc_freeze": False, "control_period_ms": 100},
            "journal": {"path": str(tmp_path / "var" / "journal.sqlite")},
            "metrics": {"port": 0},
            "opcua": {"enabled": False},
        }
    )
    svc = Service(cfg)
    await svc.start()
    try:
        kept = await svc.commands.submit("trip", "l1", who="op", why="before")
        await fill_disk(svc.journal)
        with contextlib.suppress(CommandRefused, JournalStorageError):
            for n in range(200):
                await svc.commands.submit("trip", f"b{n}", {"pad": PAD}, who="op", why="flood")
        # the control task (every 100 ms here) raises the alarm without waiting for a command
        for _ in range(50):
            alarm = next((a for a in svc.alarms if a.condition == JOURNAL_FAILED), None)
            if alarm is not None and alarm.active:
                break
            await asyncio.sleep(0.1)
        assert alarm is not None and alarm.active and alarm.severity == Severity.CRITICAL
        assert not svc.commands.accepting
        with pytest.raises(CommandRefused, match="journal"):
            await svc.commands.submit("trip", "l2", who="op", why="after")
        url = f"http://127.0.0.1:{svc.metrics.port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        assert b"gridctl_journal_storage_failed 1.0" in body
    finally:
        await svc.stop()
    assert rows(Path(cfg.journal.path))[kept.id][0] == "queued"
