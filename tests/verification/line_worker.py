"""A batch in its own process, for the SIGKILL test: ``start`` or ``resume`` a batch
on a real SQLite file, the simulated rig logging every value it produces."""

import sqlite3
import sys

from controller.line_sim import build_sim_rig
from controller.verification.clock import VirtualClock
from controller.verification.config import demo_line
from controller.verification.results import ResultsRepository
from controller.verification.scheme import load_scheme
from controller.verification.sequencer import MeterTask, Sequencer
from drivers.sim.rig import SimMeterSpec
from tests.verification.conftest import METER_TYPE, SCHEMES

BATCH = "KILL-1"


def population() -> list[SimMeterSpec]:
    specs = [
        SimMeterSpec(barcode=f"K{n:04d}", address=f"{3000_0000_0000 + n:012d}", error_pct=0.2)
        for n in range(48)
    ]
    specs[3].error_pct = 1.8
    specs[20].creep_w = 5.0
    specs[30].clock_drift_s_per_day = 0.9
    specs[41].point_errors = {(0.05, "1.0"): -1.9}
    return specs


def main() -> int:
    mode, db, log_path = sys.argv[1], sys.argv[2], sys.argv[3]
    scale = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    config = demo_line()
    mt = config.meter_type(METER_TYPE)
    conn = sqlite3.connect(db, isolation_level="DEFERRED")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    repo = ResultsRepository(conn)
    specs = {s.barcode: s for s in population()}
    log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115
    if mode == "start":
        clock = VirtualClock(scale=scale or None)
        rig = build_sim_rig(config, mt, clock, log)
        rig.feed(specs.values())
        seq = Sequencer(config, rig, repo, clock)
        scheme = load_scheme(SCHEMES / "class1_single_phase.toml")
        seq.create_batch(
            BATCH, scheme, METER_TYPE, [MeterTask(s.barcode, s.address) for s in specs.values()]
        )
    else:
        # The plant kept its state while the controller was down: meters that were
        # loaded are still on their stations; the rest wait on the infeed.
        clock = VirtualClock(start_epoch=repo.last_time() + 60.0)
        rig = build_sim_rig(config, mt, clock, log)
        batch = repo.batch(BATCH)
        for m in batch.meters:
            if m.state == "queued":
                rig.feed([specs[m.barcode]])
            elif m.state != "boxed":
                rig.place(m.station, specs[m.barcode])
        seq = Sequencer(config, rig, repo, clock)
    print("running", flush=True)
    summary = clock.run(seq.run(BATCH))
    print(summary.state, len(summary.passed), sorted(summary.failed), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
