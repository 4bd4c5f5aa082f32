"""The verification line inside a real Service: commands through the router, batch as a
task on the service loop, results in the journal file, export, abort, resume after stop."""

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from controller.api import CommandRefused
from controller.config import validate_config
from controller.line_sim import sim_spec
from controller.service import Service
from controller.verification.subsystem import SERVICE_STOP

ROOT = Path(__file__).resolve().parents[2]
SCHEMES = ROOT / "config" / "schemes"
ROWS_PER_METER = 16  # class1-single-phase: 8 single-result items + 8 basic-error points
FAST = 20_000.0  # rig seconds per real second: the ~115 min scheme in well under a second


def config(tmp_path, scale=FAST, **line):
    return validate_config(
        {
            "service": {"state_dir": str(tmp_path / "var"), "control_socket": ""},
            "tasks": {"gc_freeze": False},
            "journal": {"path": str(tmp_path / "var" / "journal.sqlite")},
            "metrics": {"port": 0},
            "opcua": {"enabled": False},
            "line": {
                "time_scale": scale,
                "scheme_dir": str(SCHEMES),
                "units": [{"id": 1, "stations": 4}, {"id": 2, "stations": 4}],
                "meter_types": {
                    "DDZY-1-5(60)A": {
                        "name": "DDZY-1-5(60)A",
                        "accuracy_class": "1",
                        "un": 220,
                        "ib": 5,
                        "imax": 60,
                        "constant": 1200,
                    }
                },
                **line,
            },
        }
    )


_tokens = iter(range(1_000_000))


def req(kind, args=None, user="operator", reason="test batch"):
    return SimpleNamespace(
        target="line",  # the VerificationLine object (OPC UA path "line")
        kind=kind,
        reason=reason,
        user=user,
        role="operator",
        token=f"tok{next(_tokens)}",
        armed_at=time.time(),
        source="opcua",
        args=args if args is not None else {},
    )


async def until(cond, timeout=30.0, what="condition"):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def sequencer_runs(svc, batch):
    return (
        svc.image.value("line/batch/id") == batch
        and svc.image.value("line/batch/state") == "running"
    )


def line_of(svc):
    return next(s for s in svc.subsystems if s.name == "verification line")


def export(db, batch, fmt="csv"):
    cmd = [sys.executable, "-m", "controller", "results", "export", batch, "--db", str(db)]
    out = subprocess.run(
        [*cmd, "--format", fmt], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


async def test_batch_runs_to_completion_and_exports_from_the_running_service(tmp_path):
    cfg = config(tmp_path)
    svc = Service(cfg)
    await svc.start()
    try:
        line = line_of(svc)
        assert svc.router.prefixes == ("line/",)
        assert svc.image.value("line/time_scale") == FAST
        assert svc.image.value("line/schemes") == "class1-single-phase"
        batch = await svc.router.submit(
            req("start_batch", {"scheme": "class1-single-phase", "meters": "3"})
        )
        cmd = svc.commands.get(batch)
        assert cmd.state.value == "confirmed" and cmd.kind == "start_batch"
        assert [t.state.value for t in cmd.history] == ["queued", "sent", "confirmed"]
        await until(lambda: not line.running, what="batch end")
        assert svc.image.value("line/batch/state") == "done"
        assert svc.image.value("line/batch/id") == batch
        assert svc.image.value("line/batch/progress") == 100.0
        assert svc.image.value("line/batch/meters") == 3
        passed = svc.image.value("line/batch/passed")
        assert passed + svc.image.value("line/batch/failed") == 3
        # verdicts as the simulated meters deserve (scaled real time must not distort them)
        for m in line.repo.batch(batch).meters:
            good = abs(sim_spec(m.barcode, m.address).error_pct) < 1.0
            assert m.verdict == ("pass" if good else "fail"), m
        rows = line.repo.results(batch)
        assert len(rows) == 3 * ROWS_PER_METER
        assert {r.barcode for r in rows} == {f"{batch}-0{n}" for n in (1, 2, 3)}
        # the exporter reads the running service's journal file
        csv_text = export(cfg.journal.path, batch)
        assert len(csv_text.strip().splitlines()) == 1 + 3 * ROWS_PER_METER
        doc = json.loads(export(cfg.journal.path, batch, "json"))
        assert doc["state"] == "done" and len(doc["results"]) == 3 * ROWS_PER_METER
        assert sum(m["verdict"] == "pass" for m in doc["meters"]) == passed
    finally:
        assert await svc.stop()


async def test_barcodes_retry_and_busy_line(tmp_path):
    svc = Service(config(tmp_path, scale=200.0))
    await svc.start()
    try:
        line = line_of(svc)
        r = req("start_batch", {"scheme": "class1_single_phase", "meters": "A1, A2"})
        batch = await svc.router.submit(r)
        assert await svc.router.submit(r) == batch  # retry: same command, same batch
        assert [m.barcode for m in line.repo.batch(batch).meters] == ["A1", "A2"]
        with pytest.raises(CommandRefused, match=f"line busy: batch {batch} is running"):
            await svc.router.submit(
                req("start_batch", {"scheme": "class1-single-phase", "meters": 1})
            )
        # (through the sequencer: the sink's path is tested below). The sequencer aborts
        # a run it is in, so wait for the batch task to begin it first.
        await until(lambda: sequencer_runs(svc, batch), what="run")
        line.seq.abort("test")
        await until(lambda: not line.running)
        # OPC UA String[]: one short number is a count, 12 digits are meter addresses
        b2 = await svc.router.submit(
            req("start_batch", {"scheme": "class1-single-phase", "meters": ["2"]})
        )
        assert len(line.repo.batch(b2).meters) == 2
        await until(lambda: sequencer_runs(svc, b2), what="run")
        line.seq.abort("test")
        await until(lambda: not line.running)
        b3 = await svc.router.submit(
            req("start_batch", {"scheme": "class1-single-phase", "meters": ["000000009001", "X:7"]})
        )
        assert next((m.barcode, m.address) for m in line.repo.batch(b3).meters) == (
            "000000009001",
            "000000009001",
        )
        await until(lambda: sequencer_runs(svc, b3), what="run")
        line.seq.abort("test")
        await until(lambda: not line.running)
        refused = svc.commands.journal.query(
            "SELECT state, reason FROM commands WHERE kind = 'start_batch' AND state = 'refused'"
        )
        assert [tuple(x) for x in refused] == [("refused", f"line busy: batch {batch} is running")]
    finally:
        assert await svc.stop()


@pytest.mark.parametrize(
    "args, message",
    [
        (
            {"scheme": "nope", "meters": 2},
            r"scheme: unknown 'nope'; one of class1-single-phase, class2-quick",
        ),
        ({"meters": 2}, r"scheme: required"),
        (
            {"scheme": "class2-quick", "meters": 2},
            r"scheme: 'class2-quick' cannot run on meter type 'DDZY-1-5\(60\)A': accuracy_class",
        ),
        (
            {"scheme": "class1-single-phase", "meters": "0"},
            r"meters: 0 meters, but the line has 8 stations \(allowed 1..8\)",
        ),
        (
            {"scheme": "class1-single-phase", "meters": 9},
            r"meters: 9 meters, but the line has 8 stations",
        ),
        ({"scheme": "class1-single-phase"}, r"meters: required, a count 1..8 or 1..8 barcodes"),
        (
            {"scheme": "class1-single-phase", "meters": "A,B,A"},
            r"meters\[2\]: barcode 'A' appears twice",
        ),
        (
            {"scheme": "class1-single-phase", "meters": ["ok", "bad code"]},
            r"meters\[1\]: barcode must be",
        ),
        ({"scheme": "class1-single-phase", "meters": 2, "speed": 3}, r"args: unknown speed"),
        ("{not json", r"args: not a JSON object"),
    ],
)
async def test_bad_arguments_are_refused_naming_the_argument_and_change_nothing(
    tmp_path, args, message
):
    svc = Service(config(tmp_path))
    await svc.start()
    try:
        with pytest.raises(CommandRefused, match=message):
            await svc.router.submit(req("start_batch", args))
        assert svc.commands.journal.query("SELECT * FROM commands") == []
        assert line_of(svc).repo.batches() == []
        assert svc.image.value("line/state") == "idle"
    finally:
        assert await svc.stop()


async def test_args_as_json_string_and_unknown_kind(tmp_path):
    svc = Service(config(tmp_path))
    await svc.start()
    try:
        batch = await svc.router.submit(
            req("start_batch", json.dumps({"scheme": "class1-single-phase", "meters": 1}))
        )
        await until(lambda: not line_of(svc).running)
        assert line_of(svc).repo.batch(batch).state == "done"
        with pytest.raises(
            CommandRefused, match="kind: the verification line takes start_batch or abort_batch"
        ):
            await svc.router.submit(req("trip"))
    finally:
        assert await svc.stop()


async def test_abort_stops_the_batch_sources_off(tmp_path):
    svc = Service(config(tmp_path, scale=100.0))
    await svc.start()
    try:
        line = line_of(svc)
        batch = await svc.router.submit(
            req("start_batch", {"scheme": "class1-single-phase", "meters": 6})
        )
        await until(lambda: any(u.voltage_pct > 0 for u in line.rig.units.values()), what="tests")
        with pytest.raises(CommandRefused, match=r"batch_id: 'other' is not running"):
            await svc.router.submit(req("abort_batch", {"batch_id": "other"}))
        cid = await svc.router.submit(req("abort_batch", reason="wrong meters"))
        cmd = svc.commands.get(cid)
        assert cmd.state.value == "confirmed", cmd.reason
        assert not line.running
        rec = line.repo.batch(batch)
        assert rec.state == "aborted" and rec.reason == "aborted by operator: wrong meters"
        assert all(u.voltage_pct == 0 and u.current_a == 0 for u in line.rig.units.values())
        assert svc.image.value("line/batch/state") == "aborted"
        assert svc.image.value("line/state") == "idle"
        with pytest.raises(CommandRefused, match="no batch is running"):
            await svc.router.submit(req("abort_batch"))
    finally:
        assert await svc.stop()
    # an operator-aborted batch does not resume at the next start
    svc = Service(config(tmp_path))
    await svc.start()
    try:
        assert not line_of(svc).running
    finally:
        assert await svc.stop()


async def test_service_stop_aborts_and_next_start_resumes(tmp_path):
    svc = Service(config(tmp_path, scale=100.0))
    await svc.start()
    line = line_of(svc)
    batch = await svc.router.submit(
        req("start_batch", {"scheme": "class1-single-phase", "meters": 8})
    )
    await until(lambda: (svc.image.value("line/batch/progress") or 0) > 5, what="progress")
    assert await svc.stop()
    assert all(u.voltage_pct == 0 for u in line.rig.units.values())  # safe state: sources off
    svc = Service(config(tmp_path))
    await svc.start()
    try:
        line = line_of(svc)
        assert line.running and line.batch_id == batch
        await until(lambda: not line.running, what="resumed batch end")
        rec = line.repo.batch(batch)
        assert rec.state == "done"
        assert len(line.repo.results(batch)) == 8 * ROWS_PER_METER
        assert any(state == "interrupted" for *_, state in line.repo.item_runs(batch))
    finally:
        assert await svc.stop()
    assert SERVICE_STOP  # the reason that marks a batch for resumption


async def test_over_temperature_raises_an_alarm_from_the_fast_task(tmp_path):
    svc = Service(config(tmp_path))
    await svc.start()
    try:
        line = line_of(svc)
        line.rig.force_temperature(3, 92.0)
        await until(lambda: 3 in line.supervisor.tripped, timeout=5, what="trip")
        alarm = svc.alarms.get("over_temperature:line/stations/03")
        assert alarm.active and "92.0 °C" in alarm.message
        assert line.rig.stations[3].cut
        assert svc.image.value("line/stations/03/temperature") == 92.0
    finally:
        assert await svc.stop()
