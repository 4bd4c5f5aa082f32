"""Select-before-operate in the command log: the armed record reserves its target."""

import asyncio

import pytest

from controller.api import CommandRefused, RefusalReason
from controller.commands import CommandLog, CommandState
from controller.journal import Journal

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "journal.sqlite")
    j.open()
    yield j
    j.close()


def states(journal: Journal, command_id: str) -> list[str]:
    rows = journal.query(
        "SELECT state FROM command_transitions WHERE command_id = ? ORDER BY seq", (command_id,)
    )
    return [r["state"] for r in rows]


async def test_a_second_arm_of_the_target_is_busy_naming_holder_and_time(journal):
    clock = Clock()
    log = CommandLog(journal, clock=clock)
    held = await log.arm("trip", "loads/l1", who="otto", why="select", timeout_s=30)
    with pytest.raises(CommandRefused) as err:
        await log.arm("close_allowed", "loads/l1", who="emma", why="mine", timeout_s=30)
    assert err.value.reason is RefusalReason.BUSY
    # T0 + 30 s = 2023-11-14T22:13:50Z
    assert str(err.value) == "target 'loads/l1': armed by otto until 2023-11-14T22:13:50Z"
    # nothing journaled for the refused Arm; the holder's record is on disk
    assert [r["id"] for r in journal.query("SELECT id FROM commands")] == [held.id]
    assert states(journal, held.id) == ["armed"]
    # another target is free
    await log.arm("trip", "loads/l2", who="emma", why="other", timeout_s=30)


async def test_the_same_user_selecting_again_replaces_their_selection(journal):
    # e.g. an HMI restarted between Arm and Execute and lost its token
    log = CommandLog(journal, clock=Clock())
    first = await log.arm("trip", "loads/l1", who="otto", why="select", timeout_s=30)
    second = await log.arm("trip", "loads/l1", who="otto", why="again", timeout_s=30)
    assert second.id != first.id
    assert states(journal, first.id) == ["armed", "expired"]
    assert log.get(first.id).reason == "superseded by a new selection by otto"
    with pytest.raises(CommandRefused) as err:
        await log.execute_armed(first.id, target="loads/l1", who="otto", expires_in_s=60)
    assert err.value.reason in (RefusalReason.NOT_ARMED, RefusalReason.EXPIRED)
    done = await log.execute_armed(second.id, target="loads/l1", who="otto", expires_in_s=60)
    assert done.state is CommandState.QUEUED
    # re-selecting is the holder's right only: another user is still refused
    await log.arm("trip", "loads/l2", who="otto", why="x", timeout_s=30)
    with pytest.raises(CommandRefused) as busy:
        await log.arm("trip", "loads/l2", who="emma", why="y", timeout_s=30)
    assert busy.value.reason is RefusalReason.BUSY


async def test_concurrent_arms_of_one_target_reserve_it_once(journal):
    log = CommandLog(journal)
    results = await asyncio.gather(
        log.arm("trip", "loads/l1", who="otto", why="a", timeout_s=30),
        log.arm("trip", "loads/l1", who="emma", why="b", timeout_s=30),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, CommandRefused)]
    assert len(refused) == 1 and refused[0].reason is RefusalReason.BUSY
    assert len(journal.query("SELECT id FROM commands WHERE state = 'armed'")) == 1


async def test_execute_only_by_the_armer_before_the_timeout(journal):
    clock = Clock()
    log = CommandLog(journal, clock=clock)
    cmd = await log.arm("trip", "loads/l1", who="otto", why="select", timeout_s=30)
    for target, who, text in [
        ("loads/l1", "emma", "token: armed by otto, not by emma"),
        ("loads/l2", "otto", "token: armed for loads/l1, not loads/l2"),
    ]:
        with pytest.raises(CommandRefused, match=text) as err:
            await log.execute_armed(cmd.id, target=target, who=who, expires_in_s=600)
        assert err.value.reason is RefusalReason.NOT_ARMED
    with pytest.raises(CommandRefused) as err:
        await log.execute_armed("nope", target="loads/l1", who="otto", expires_in_s=600)
    assert err.value.reason is RefusalReason.NOT_ARMED
    clock.t += 29.0
    done = await log.execute_armed(cmd.id, target="loads/l1", who="otto", expires_in_s=600)
    # executed: the arm timeout gives way to the command's validity, T0 + 29 + 600
    assert (done.state, done.expires) == (CommandState.QUEUED, T0 + 629.0)
    assert states(journal, cmd.id) == ["armed", "queued"]
    (row,) = journal.query("SELECT expires FROM commands WHERE id = ?", (cmd.id,))
    assert row["expires"] == T0 + 629.0
    # single use
    with pytest.raises(CommandRefused, match="already queued") as err:
        await log.execute_armed(cmd.id, target="loads/l1", who="otto", expires_in_s=600)
    assert err.value.reason is RefusalReason.NOT_ARMED


async def test_a_lapsed_selection_expires_journaled_and_frees_the_target(journal):
    clock = Clock()
    log = CommandLog(journal, clock=clock)
    swept = await log.arm("trip", "loads/l1", who="otto", why="a", timeout_s=30)
    late = await log.arm("trip", "loads/l2", who="otto", why="b", timeout_s=30)
    clock.t += 30.0  # the timeout itself is already too late
    assert [c.id for c in await log.expire_due()] == [swept.id, late.id]
    assert states(journal, swept.id) == ["armed", "expired"]
    assert log.get(swept.id).reason == "arm timeout passed; selection lapsed"
    with pytest.raises(CommandRefused) as err:
        await log.execute_armed(swept.id, target="loads/l1", who="otto", expires_in_s=600)
    assert err.value.reason is RefusalReason.EXPIRED
    # a lapse found by the next Arm of the target (no sweep between) is journaled too
    again = await log.arm("trip", "loads/l1", who="emma", why="c", timeout_s=30)
    clock.t += 31.0
    taken = await log.arm("trip", "loads/l1", who="otto", why="d", timeout_s=30)
    assert states(journal, again.id) == ["armed", "expired"]
    assert states(journal, taken.id) == ["armed"]


async def test_the_armed_state_survives_a_restart_until_its_timeout(tmp_path):
    path = tmp_path / "journal.sqlite"
    clock = Clock()
    j = Journal(path)
    j.open()
    log = CommandLog(j, clock=clock)
    kept = await log.arm("trip", "loads/l1", who="otto", why="a", timeout_s=60)
    await log.arm("trip", "loads/l2", who="otto", why="b", timeout_s=10)
    j.close()

    clock.t += 20.0  # l2's selection lapsed while the controller was down, l1's did not
    j2 = Journal(path)
    j2.open()
    try:
        log2 = CommandLog(j2, clock=clock)
        assert log2.load() == 2

        async def reread(cmd):  # armed ones are never read back
            raise AssertionError(cmd.id)

        report = await log2.reconcile(reread)
        assert report.outcomes == {"armed": 1, "expired": 1}
        with pytest.raises(CommandRefused) as err:
            await log2.arm("trip", "loads/l1", who="emma", why="c", timeout_s=60)
        assert err.value.reason is RefusalReason.BUSY
        done = await log2.execute_armed(kept.id, target="loads/l1", who="otto", expires_in_s=600)
        assert done.state is CommandState.QUEUED
        assert states(j2, kept.id) == ["armed", "queued"]
    finally:
        j2.close()
