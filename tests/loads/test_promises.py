"""Executor promises: per-feeder rate limit, ids that act once (across restarts too),
keep-power blocks every trip, Prometheus counts and latency by kind and outcome."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controller.commands import CommandLog, CommandState
from controller.journal import Journal
from controller.loads.config import LoadsConfig
from controller.loads.interlocks import LoadFacts, check
from controller.loads.switching import SwitchingExecutor
from controller.metrics import Sources, make_registry
from controller.process_image import ProcessImage

from .test_runtime import FakeRelay

FEEDERS = {"a": "f1", "b": "f1", "c": "f1", "e": "f1", "d": "f2"}


def config(**over) -> LoadsConfig:
    base = {
        "loads": [
            {"name": n, "bus": "b", "address": f"00000000000{i}", "feeder": f}
            for i, (n, f) in enumerate(FEEDERS.items(), start=1)
        ],
        "confirm": {"reread_interval_s": 0.0, "max_rereads": 0},
        "rate_limit": {"per_feeder_per_s": 2.0, "burst": 1, "max_wait_s": 1.0},
    }
    base.update(over)
    return LoadsConfig.model_validate(base)


def executor(journal: Journal, cfg: LoadsConfig, **kw) -> tuple[SwitchingExecutor, dict]:
    image = ProcessImage()
    relays = {x.name: FakeRelay(image, x.address) for x in cfg.loads}
    return SwitchingExecutor(cfg, CommandLog(journal), relays, **kw), relays


async def test_mass_switching_is_spread_out_per_feeder(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    journal.open()
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)
        await asyncio.sleep(0)

    ex, relays = executor(journal, config(), monotonic=lambda: 100.0, sleep=sleep)
    cmds = [
        await ex.submit("trip", n, who="demand", why="round 1", automation=False) for n in FEEDERS
    ]
    done = {c.args["load"]: await ex.wait(c.id) for c in cmds}
    # 2 per second on f1: slots at +0, +0.5, +1.0; the fourth would wait 1.5 s > max_wait_s
    assert sorted(sleeps) == [0.5, 1.0]
    assert [done[n].state for n in ("a", "b", "c")] == [CommandState.CONFIRMED] * 3
    assert done["e"].state is CommandState.FAILED
    assert "rate limit: feeder f1 has no slot within 1 s" in done["e"].reason
    assert relays["e"].sent == []
    # another feeder does not wait for f1
    assert done["d"].state is CommandState.CONFIRMED
    journal.close()


async def test_a_command_id_acts_once_even_after_a_restart(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    journal.open()
    ex, relays = executor(journal, config())
    first = await ex.run("trip", "a", who="otto", why="t", command_id="opcua-77")
    assert first.state is CommandState.CONFIRMED and relays["a"].sent == ["trip"]
    journal.close()

    journal = Journal(tmp_path / "j.sqlite")
    journal.open()
    ex, relays = executor(journal, config())
    again = await ex.run("trip", "a", who="otto", why="t", command_id="opcua-77")
    assert again.id == "opcua-77" and again.state is CommandState.CONFIRMED
    assert relays["a"].sent == [] and ex.sent_frames == 0
    journal.close()


@pytest.mark.parametrize("automation", [False, True])
async def test_keep_power_blocks_every_trip(tmp_path, automation):
    journal = Journal(tmp_path / "j.sqlite")
    journal.open()
    ex, relays = executor(journal, config())
    relays["a"].keep_power = True
    cmd = await ex.run("trip", "a", who="x", why="t", automation=automation)
    assert cmd.state is CommandState.REFUSED and "keep-power active" in cmd.reason
    assert relays["a"].sent == []
    # and automation can neither trip blind nor lift keep-power itself
    assert "unknown" in check("trip", LoadFacts(None), automation=True)
    lift = await ex.run("keep_power_off", "a", who="demand", why="t", automation=True)
    assert lift.state is CommandState.REFUSED and "never by automation" in lift.reason
    journal.close()


async def test_command_counts_and_latency_by_kind_and_outcome(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    journal.open()
    ex, relays = executor(journal, config())
    assert (await ex.run("trip", "a", who="o", why="t")).state is CommandState.CONFIRMED
    assert (await ex.run("direct_close", "a", who="o", why="t")).state is CommandState.CONFIRMED
    relays["b"].keep_power = True
    assert (await ex.run("trip", "b", who="o", why="t")).state is CommandState.REFUSED
    registry, _ = make_registry(Sources(commands=ex.commands))
    out: dict[tuple[str, tuple], float] = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    count = "gridctl_commands_latency_seconds_count"
    assert out[(count, (("kind", "trip"), ("outcome", "confirmed")))] == 1
    assert out[(count, (("kind", "direct_close"), ("outcome", "confirmed")))] == 1
    assert out[(count, (("kind", "trip"), ("outcome", "refused")))] == 1
    assert ex.outcomes[("trip", "refused")] == 1
    assert ex.latency["trip"].summary().count == 1
    journal.close()
