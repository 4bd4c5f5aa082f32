"""The Service object in-process: start-up reconciliation, safe state and intake at stop."""

import pytest

from controller.api import CommandRefused
from controller.commands import CommandLog, CommandState, Resolution
from controller.config import validate_config
from controller.journal import Journal
from controller.service import Service


def config(tmp_path):
    return validate_config(
        {
            "service": {"state_dir": str(tmp_path / "var"), "control_socket": ""},
            "tasks": {"gc_freeze": False},
            "journal": {"path": str(tmp_path / "var" / "journal.sqlite")},
            "metrics": {"port": 0},
            "opcua": {"enabled": False},
        }
    )


async def _leave_pending(path):
    j = Journal(path)
    j.open()
    log = CommandLog(j)
    applied = await log.submit("trip", "bus1/000000000161", who="op", why="r")
    await log.transition(applied.id, "sent")
    other = await log.submit("trip", "bus1/000000000162", who="op", why="r")
    await log.transition(other.id, "sent")
    j.close()
    return applied.id, other.id


async def test_start_reconciles_pending_commands_by_read_back(tmp_path):
    cfg = config(tmp_path)
    applied, other = await _leave_pending(cfg.journal.path)
    svc = Service(cfg)
    reads = []

    async def reread(cmd):
        reads.append(cmd.id)
        return Resolution(CommandState.CONFIRMED, "relay open") if cmd.id == applied else None

    svc.reread = reread
    await svc.start()
    try:
        assert sorted(reads) == sorted([applied, other])
        assert svc.commands.get(applied).state is CommandState.CONFIRMED
        assert svc.commands.get(other).state is CommandState.FAILED
        assert not svc.commands.pending()
    finally:
        assert await svc.stop()


async def test_without_a_read_back_path_pending_commands_fail_with_that_reason(tmp_path):
    cfg = config(tmp_path)
    applied, _ = await _leave_pending(cfg.journal.path)
    svc = Service(cfg)
    await svc.start()
    try:
        cmd = svc.commands.get(applied)
        assert cmd.state is CommandState.FAILED
        assert cmd.reason == "read-back failed: no read-back path for trip commands in this build"
    finally:
        await svc.stop()


async def test_stop_refuses_commands_runs_safe_state_and_closes_journal(tmp_path):
    svc = Service(config(tmp_path))
    calls = []

    async def outputs_off():
        calls.append("outputs")

    svc.add_safe_state("outputs", outputs_off)
    svc.add_safe_state("sync", lambda: calls.append("sync"))
    await svc.start()
    assert svc.fast.running and svc.control.running
    assert svc.metrics is not None and svc.metrics.port > 0
    cmd = await svc.commands.submit("trip", "m1", who="op", why="r")
    assert await svc.stop()
    assert calls == ["outputs", "sync"]
    assert not svc.fast.running and not svc.journal.is_open
    with pytest.raises(CommandRefused):
        await svc.commands.submit("trip", "m1", who="op", why="r")
    j = Journal(cfg_path := svc.config.journal.path)
    j.open()
    assert j.query("SELECT state FROM commands WHERE id = ?", (cmd.id,))[0]["state"] == "queued"
    assert cfg_path.exists()
    j.close()
