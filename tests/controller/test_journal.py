import asyncio
import sqlite3

import pytest

from controller.api import CommandRefused, RefusalReason
from controller.commands import (
    CommandError,
    CommandLog,
    CommandState,
    Resolution,
)
from controller.journal import MIGRATIONS, Journal, JournalError, JournalFull


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "var" / "journal.sqlite")
    j.open()
    yield j
    j.close()


def test_open_creates_wal_file_with_current_schema(journal):
    assert journal.schema_version == len(MIGRATIONS)
    conn = sqlite3.connect(journal.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"commands", "command_transitions", "alarms", "events"} <= tables


def test_migrations_apply_in_order_and_only_once(tmp_path):
    path = tmp_path / "j.sqlite"
    extra = [*MIGRATIONS, ("results", "CREATE TABLE results (id INTEGER PRIMARY KEY, v REAL);")]
    j = Journal(path)
    assert j.open() == len(MIGRATIONS)
    j.close()
    j2 = Journal(path, migrations=extra)
    assert j2.open() == len(extra)  # only the new script runs (a re-run would fail: table exists)
    j2.close()
    j3 = Journal(path, migrations=extra)
    assert j3.open() == len(extra)
    j3.close()


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "j.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 3}")
    conn.close()
    with pytest.raises(JournalError, match=r"schema version \d+ is newer than this gridctl knows"):
        Journal(path).open()


def test_failed_migration_is_rolled_back(tmp_path):
    path = tmp_path / "j.sqlite"
    bad = [*MIGRATIONS, ("broken", "CREATE TABLE t (x); INSERT INTO nope VALUES (1);")]
    with pytest.raises(JournalError, match=rf"migration {len(bad)} \(broken\) failed"):
        Journal(path, migrations=bad).open()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "t" not in names


async def test_commit_is_readable_after_await(journal):
    await journal.commit(
        [("INSERT INTO events(at, kind, source, message) VALUES (1, 'k', 's', 'm')", ())]
    )
    assert journal.query("SELECT message FROM events")[0]["message"] == "m"
    snap = journal.snapshot()
    assert snap.units == 1 and snap.durable_batches == 1
    assert snap.write_latency.count == 1


async def test_bad_unit_fails_alone(journal):
    good = journal.submit(
        [("INSERT INTO events(at, kind, source, message) VALUES (1, 'k', 's', 'a')", ())]
    )
    bad = journal.submit([("INSERT INTO nope VALUES (1)", ())])
    await asyncio.wrap_future(good)
    with pytest.raises(JournalError, match="no such table: nope"):
        await asyncio.wrap_future(bad)
    assert [r[0] for r in journal.query("SELECT message FROM events")] == ["a"]
    assert journal.snapshot().failed == 1


async def test_events_are_dropped_and_counted_when_queue_full(tmp_path):
    j = Journal(tmp_path / "j.sqlite", queue_limit=10)
    j.open()
    j._cond.acquire()  # hold the writer so the queue fills
    try:
        results = [j.event("test", "src", f"e{i}") for i in range(25)]
        with pytest.raises(JournalFull, match="journal queue full"):
            j.submit([("SELECT 1", ())])
    finally:
        j._cond.release()
    while j.snapshot().queue_depth:
        await asyncio.sleep(0.01)
    await j.flush()
    assert results.count(False) == j.dropped >= 15
    assert len(j.query("SELECT * FROM events")) == results.count(True)
    j.close()


async def test_close_flushes(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    j.open()
    for i in range(100):
        j.event("test", "src", f"e{i}")
    assert j.close()
    j2 = Journal(tmp_path / "j.sqlite")
    j2.open()
    assert len(j2.query("SELECT * FROM events")) == 100
    j2.close()


# -- commands ---------------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.t = 1_700_000_000.0

    def __call__(self):
        return self.t


async def test_command_lifecycle_is_journaled(journal):
    clock = Clock()
    log = CommandLog(journal, clock=clock)
    cmd = await log.submit("trip", "bus1/000000000161", {"n1": 0x1A}, who="alice", why="overdraft")
    assert cmd.state is CommandState.QUEUED
    clock.t += 1
    await log.transition(cmd.id, "sent")
    clock.t += 2
    done = await log.transition(cmd.id, CommandState.CONFIRMED, reason="status word 3 bit4 = 1")
    assert done.terminal and not log.pending()
    rows = journal.query(
        "SELECT state, who, at FROM command_transitions WHERE command_id = ? ORDER BY seq",
        (cmd.id,),
    )
    assert [(r["state"], r["who"]) for r in rows] == [
        ("queued", "alice"),
        ("sent", "system"),
        ("confirmed", "system"),
    ]
    row = journal.query("SELECT * FROM commands WHERE id = ?", (cmd.id,))[0]
    assert (row["state"], row["who"], row["why"]) == ("confirmed", "alice", "overdraft")
    assert log.latency[("trip", "confirmed")].max == pytest.approx(3.0)
    # a fresh log sees the same record from disk
    again = CommandLog(journal).get(cmd.id)
    assert again.args == {"n1": 0x1A}
    assert [t.state for t in again.history] == ["queued", "sent", "confirmed"]


async def test_illegal_transitions_and_bad_input_change_nothing(journal):
    log = CommandLog(journal)
    cmd = await log.submit("trip", "m1", who="op", why="test")
    with pytest.raises(CommandError, match="cannot go from queued to confirmed"):
        await log.transition(cmd.id, "confirmed")
    with pytest.raises(CommandError, match="a reason is required for failed"):
        await log.transition(cmd.id, "failed")
    with pytest.raises(CommandError, match="unknown command id 'nope'"):
        await log.transition("nope", "sent")
    with pytest.raises(ValueError):
        await log.transition(cmd.id, "bogus")
    with pytest.raises(CommandError, match="kind: must be one of"):
        await log.submit("explode", "m1", who="op", why="x")
    with pytest.raises(CommandError, match="who: required"):
        await log.submit("trip", "m1", who="", why="x")
    with pytest.raises(CommandError, match="args: not serialisable"):
        await log.submit("trip", "m1", {"x": object()}, who="op", why="x")
    assert len(journal.query("SELECT * FROM commands")) == 1
    await log.transition(cmd.id, "refused", reason="keep-power")
    with pytest.raises(CommandError, match="already refused"):
        await log.transition(cmd.id, "sent")


async def test_same_id_is_idempotent(journal):
    log = CommandLog(journal)
    a = await log.submit("trip", "m1", {"x": 1}, who="op", why="r", command_id="req-1")
    b = await log.submit("trip", "m1", {"x": 1}, who="op", why="r", command_id="req-1")
    assert a is b
    with pytest.raises(CommandError, match="already used for a different command"):
        await log.submit("close_allowed", "m1", who="op", why="r", command_id="req-1")
    assert len(journal.query("SELECT * FROM commands")) == 1


async def test_closed_intake_refuses(journal):
    log = CommandLog(journal)
    log.close_intake("service stopping")
    with pytest.raises(CommandRefused, match="not accepting commands: service stopping") as err:
        await log.submit("trip", "m1", who="op", why="r")
    assert err.value.reason is RefusalReason.SERVICE_STOPPING


async def test_expiry(journal):
    clock = Clock()
    log = CommandLog(journal, clock=clock)
    armed = await log.submit("trip", "m1", who="op", why="r", arm=True, expires_in_s=10)
    sent = await log.submit("trip", "m2", who="op", why="r", expires_in_s=10)
    await log.transition(sent.id, "sent")
    clock.t += 11
    expired = await log.expire_due()
    assert [c.id for c in expired] == [armed.id]
    assert log.get(sent.id).state is CommandState.SENT  # waits for its read-back


async def test_reconcile_rereads_and_never_resends(tmp_path):
    path = tmp_path / "j.sqlite"
    j = Journal(path)
    j.open()
    log = CommandLog(j)
    applied = await log.submit("trip", "m-applied", who="op", why="r")
    await log.transition(applied.id, "sent")
    lost = await log.submit("trip", "m-lost", who="op", why="r")
    await log.transition(lost.id, "sent")
    queued = await log.submit("trip", "m-queued", who="op", why="r")
    armed = await log.submit("trip", "m-armed", who="op", why="r", arm=True)
    broken = await log.submit("trip", "m-broken", who="op", why="r")
    await log.transition(broken.id, "sent")
    done = await log.submit("trip", "m-done", who="op", why="r")
    await log.transition(done.id, "sent")
    await log.transition(done.id, "confirmed", reason="read back")
    j.close()

    j2 = Journal(path)
    j2.open()
    log2 = CommandLog(j2)
    assert log2.load() == 5
    reread_targets = []

    async def reread(cmd):
        reread_targets.append(cmd.target)
        if cmd.target == "m-broken":
            raise TimeoutError("meter silent")
        if cmd.target == "m-applied":
            return Resolution(CommandState.CONFIRMED, "relay open per status word 3")
        return None

    report = await log2.reconcile(reread)
    assert report.examined == 5
    assert not log2.pending()
    assert "m-armed" not in reread_targets and "m-done" not in reread_targets
    states = {
        r["target"]: (r["state"], r["reason"])
        for r in j2.query("SELECT target, state, reason FROM commands")
    }
    assert states["m-applied"] == ("confirmed", "relay open per status word 3")
    assert states["m-lost"] == ("failed", "not applied per read-back after restart; not re-sent")
    assert states["m-queued"] == ("failed", "not sent before restart; not re-sent")
    assert states["m-armed"][0] == "expired"
    assert states["m-broken"] == ("failed", "read-back failed: meter silent")
    assert states["m-done"] == ("confirmed", "read back")
    assert log2.get(queued.id).history[-1].who == "reconcile"
    assert log2.get(armed.id).state is CommandState.EXPIRED
    j2.close()


async def test_reconcile_leaves_a_command_its_subsystem_adopted(tmp_path):
    # a warehouse order released before a restart goes on running: its create_order
    # ends with the order, not with a device read-back that knows nothing of orders
    path = tmp_path / "j.sqlite"
    j = Journal(path)
    j.open()
    log = CommandLog(j)
    order = await log.submit("trip", "warehouse/orders", who="op", why="r")
    await log.transition(order.id, "sent", reason="order 7")
    relay = await log.submit("trip", "m1", who="op", why="r")
    await log.transition(relay.id, "sent")
    j.close()

    j2 = Journal(path)
    j2.open()
    log2 = CommandLog(j2)
    assert log2.load() == 2
    with pytest.raises(CommandError, match="not pending"):
        log2.adopt("no-such-command")
    log2.adopt(order.id)
    seen = []

    async def reread(cmd):
        seen.append(cmd.id)
        return None

    report = await log2.reconcile(reread)
    assert (report.examined, seen) == (1, [relay.id])
    assert log2.get(order.id).state is CommandState.SENT  # still the warehouse's to settle
    assert log2.get(relay.id).state is CommandState.FAILED
    await log2.transition(order.id, "confirmed", reason="order 7 completed")
    assert not log2.pending()
    j2.close()


async def test_the_read_connection_cannot_write(journal):
    # one writer to the file: a write through query() is refused, and the file keeps
    # only what the writer thread committed (one event, none from the query)
    journal.event("service", "test", "written by the writer")
    await journal.flush()
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        journal.query("INSERT INTO events(at, kind, source, message) VALUES (1, 'x', 'y', 'z')")
    assert [r["message"] for r in journal.query("SELECT message FROM events")] == [
        "written by the writer"
    ]
