import argparse
import csv
import io
import json
import sqlite3

import pytest

from controller.journal import MIGRATIONS
from controller.verification import cli
from controller.verification.results import RepositoryError, ResultsRepository
from controller.verification.scheme import parse_scheme
from tests.verification.conftest import Line, good


def run_cli(argv):
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_export_csv_and_json_through_the_cli(tmp_path, capsys):
    db = tmp_path / "j.db"
    line = Line(db=str(db))
    specs = [good(n) for n in range(24)]
    specs[2].error_pct = 2.1
    line.start("EXP-1", "class1_single_phase.toml", specs)
    line.clock.run(line.seq.run("EXP-1"))
    line.conn.close()
    assert run_cli(["results", "export", "EXP-1", "--db", str(db)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 24 * (8 + 8)  # 8 single-result items + 8 load points
    r = next(r for r in rows if r["barcode"] == "M00002" and r["point"] == "Ib PF1.0")
    assert r["verdict"] == "fail" and r["rounded"] == "2.1" and r["limit_high"] == "1.0"
    assert r["samples"].count("m0=") == 2 and r["scheme_version"] == "1"
    out = tmp_path / "e.json"
    assert (
        run_cli(["results", "export", "EXP-1", "--db", str(db), "--format", "json", "-o", str(out)])
        == 0
    )
    doc = json.loads(out.read_text())
    assert doc["scheme"]["name"] == "class1-single-phase" and doc["scheme"]["version"] == 1
    assert len(doc["meters"]) == 24 and doc["meters"][2]["verdict"] == "fail"
    assert run_cli(["results", "export", "NOPE", "--db", str(db)]) == 2
    assert "unknown batch 'NOPE'" in capsys.readouterr().err


def test_schema_steps_apply_once_and_chain():
    conn = sqlite3.connect(":memory:")
    ResultsRepository(conn)
    ResultsRepository(conn)  # idempotent
    # standalone, the file gets the journal's one migration list, counted by user_version
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'vl_meta'").fetchall() == []
    assert ResultsRepository(conn, install=False).batches() == []


def test_same_scheme_version_with_other_content_is_refused(line):
    data = {"name": "s", "version": 4, "accuracy_class": "1", "items": [{"kind": "communication"}]}
    line.repo.record_scheme(parse_scheme(data))
    data["items"][0]["read_energy"] = False
    with pytest.raises(RepositoryError, match="raise 'version'"):
        line.repo.record_scheme(parse_scheme(data))


def test_abort_leaves_known_state_and_resume_finishes(line):
    specs = [good(n) for n in range(48)]
    line.start("AB", "class1_single_phase.toml", specs)

    async def main():
        line.clock.loop.call_at(1500.0, line.seq.abort, "operator stop")
        return await line.seq.run("AB")

    summary = line.clock.run(main())
    assert summary.state == "aborted"
    batch = line.repo.batch("AB")
    assert batch.state == "aborted" and batch.reason == "operator stop"
    assert {m.state for m in batch.meters} == {"testing"}  # all on stations, wired
    assert all(u.current_a == 0 and u.voltage_pct == 0 for u in line.rig.units.values())
    runs = line.repo.item_runs("AB")
    assert all(state != "running" for *_, state in runs)
    interrupted = {(b, i) for b, i, _, s in runs if s == "interrupted"}
    assert interrupted and not (interrupted & line.repo.completed_items("AB"))
    n_before = len(line.repo.results("AB"))
    summary = line.clock.run(line.seq.run("AB"))
    assert summary.state == "done" and len(summary.passed) == 48
    assert len(line.repo.results("AB")) > n_before


def test_batch_refuses_bad_input(line):
    from controller.verification.scheme import SchemeError, load_scheme
    from controller.verification.sequencer import BatchError, MeterTask
    from tests.verification.conftest import SCHEMES

    scheme = load_scheme(SCHEMES / "class1_single_phase.toml")
    with pytest.raises(BatchError, match=r"meters: 49 meters but the line has 48 stations"):
        line.seq.create_batch(
            "X", scheme, "DDZY-1-5(60)A", [MeterTask(f"b{n}", "1") for n in range(49)]
        )
    with pytest.raises(BatchError, match="appears twice"):
        line.seq.create_batch("X", scheme, "DDZY-1-5(60)A", [MeterTask("b", "1")] * 2)
    with pytest.raises(KeyError, match="meter_type: unknown 'nope'"):
        line.seq.create_batch("X", scheme, "nope", [MeterTask("b", "1")])
    with pytest.raises(SchemeError, match="scheme is for class 2"):
        line.seq.create_batch(
            "X", load_scheme(SCHEMES / "class2_quick.toml"), "DDZY-1-5(60)A", [MeterTask("b", "1")]
        )
    assert line.repo.batches() == []
