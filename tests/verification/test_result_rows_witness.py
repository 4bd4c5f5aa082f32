"""The result rows of fixed batches, every field, against rows recorded once.

The simulated meters are seeded by their barcodes and the line runs in virtual
time, so a batch writes the same rows on every run. The fixture was recorded
from the sequencer before its items became one class per kind; a change to how
items run that alters any stored value (a sample, a rounding, a limit, a
reason, a start or end time) fails here.

Re-record (only for an intended change of the results):
    PYTHONPATH=$PWD python -m tests.verification.test_result_rows_witness
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from controller.verification.scheme import parse_scheme
from controller.verification.sequencer import MeterTask
from controller.verification.temperature import TemperatureSupervisor, run_fast_cycle
from tests.verification.conftest import CLASS2_TYPE, METER_TYPE, Line, good
from tests.verification.test_batch import population
from tests.verification.test_temperature import SHORT

FIXTURE = Path(__file__).parent / "fixtures" / "result_rows.json"


def _rows(line: Line, batch_id: str) -> list[dict[str, Any]]:
    return [asdict(r) for r in line.repo.results(batch_id)]


def class1_population() -> list[dict[str, Any]]:
    """Every item kind, with the faults of the 48-meter batch (fails, skips, stop on fail)."""
    line = Line()
    try:
        line.start("B48", "class1_single_phase.toml", population())
        line.clock.run(line.seq.run("B48"))
        return _rows(line, "B48")
    finally:
        line.clock.close()


def class2_quick() -> list[dict[str, Any]]:
    line = Line(meter_type=CLASS2_TYPE.name)
    try:
        specs = [good(n) for n in range(6)]
        specs[1].error_pct = 2.3  # outside ±2.0 %
        specs[2].creep_w = 5.0
        specs[3].comm_ok = False
        line.start("Q6", "class2_quick.toml", specs)
        line.clock.run(line.seq.run("Q6"))
        return _rows(line, "Q6")
    finally:
        line.clock.close()


def heat_run() -> list[dict[str, Any]]:
    """A station cut for over-temperature mid-item: aborted rows, then skipped ones."""
    line = Line()
    try:
        specs = [good(n) for n in range(48)]
        specs[4].heating = 8.0
        scheme = parse_scheme(SHORT)
        line.rig.feed(specs)
        line.seq.create_batch(
            "HEAT", scheme, METER_TYPE, [MeterTask(s.barcode, s.address) for s in specs]
        )
        sup = TemperatureSupervisor(
            line.rig.stations,
            line.config.temperature.limit_c,
            line.seq.on_over_temperature,
            line.image,
            line.alarms,
        )

        async def main() -> None:
            stop = asyncio.Event()
            fast = asyncio.ensure_future(run_fast_cycle(line.clock, sup.scan, stop, 0.01))
            await line.seq.run("HEAT")
            stop.set()
            await fast

        line.clock.run(main())
        return _rows(line, "HEAT")
    finally:
        line.clock.close()


def all_batches() -> dict[str, list[dict[str, Any]]]:
    return {"B48": class1_population(), "Q6": class2_quick(), "HEAT": heat_run()}


def test_result_rows_identical_to_the_recorded_ones() -> None:
    want = json.loads(FIXTURE.read_text())
    # through JSON like the fixture, so floats and tuples compare the same way
    got = json.loads(json.dumps(all_batches()))
    for batch_id in want:
        assert len(got[batch_id]) == len(want[batch_id]), batch_id
        for g, w in zip(got[batch_id], want[batch_id], strict=True):
            assert g == w, (batch_id, w["barcode"], w["item_index"], w["point_index"])
    assert got.keys() == want.keys()


if __name__ == "__main__":
    # one row a line: a re-recording shows in a diff row by row
    batches = all_batches()
    FIXTURE.write_text(
        "{\n"
        + ",\n".join(
            json.dumps(b)
            + ": [\n"
            + ",\n".join(json.dumps(r, sort_keys=True) for r in rows)
            + "\n]"
            for b, rows in batches.items()
        )
        + "\n}\n"
    )
