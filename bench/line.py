"""Verification line: makespan of a 48-meter batch in virtual time ÷ its lower bound.

Lower bound (from the scheme, for exact meters): Σ unit-wide item durations +
the per-station chain. Two ratios are printed: the test phase (first item
start to last item end, the part the bound describes) and the whole batch
(including conveyor loading, wiring press, sealing and unloading, which the
bound leaves out). Also the wall-clock seconds to simulate the batch.
"""

from __future__ import annotations

import sqlite3
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.line_sim import build_sim_rig  # noqa: E402
from controller.verification.clock import VirtualClock  # noqa: E402
from controller.verification.config import demo_line  # noqa: E402
from controller.verification.results import ResultsRepository  # noqa: E402
from controller.verification.scheme import load_scheme  # noqa: E402
from controller.verification.sequencer import MeterTask, Sequencer  # noqa: E402
from drivers.sim.rig import SimMeterSpec  # noqa: E402

TARGET = 1.05


def one_batch(seed: int) -> tuple[float, float, float, float]:
    config = demo_line(2, 24)
    mt = config.meter_type("DDZY-1-5(60)A")
    scheme = load_scheme(ROOT / "config" / "schemes" / "class1_single_phase.toml")
    clock = VirtualClock()
    rig = build_sim_rig(config, mt, clock)
    # realistic spread of errors (−0.5 … +0.5 %), every meter passes
    specs = [
        SimMeterSpec(f"S{seed}-{n:03d}", f"{n + 1:012d}", error_pct=((n * 37 + seed) % 11 - 5) / 10)
        for n in range(48)
    ]
    rig.feed(specs)
    seq = Sequencer(config, rig, ResultsRepository(sqlite3.connect(":memory:")), clock)
    seq.create_batch("bench", scheme, mt.name, [MeterTask(s.barcode, s.address) for s in specs])
    t0 = time.perf_counter()
    summary = clock.run(seq.run("bench"))
    wall = time.perf_counter() - t0
    clock.close()
    assert summary.state == "done" and len(summary.passed) == 48, summary
    bound = scheme.lower_bound_s(mt)
    return (
        (summary.tests_ended - summary.tests_started) / bound,
        (summary.ended - summary.started) / bound,
        wall,
        bound,
    )


def main() -> int:
    runs = [one_batch(seed) for seed in range(5)]
    test_ratio = max(r[0] for r in runs)
    full_ratio = max(r[1] for r in runs)
    wall = statistics.median(r[2] for r in runs)
    bound = runs[0][3]
    print(f"lower bound (scheme)              {bound:9.1f} s  ({bound / 60:.1f} min)")
    print(f"test-phase makespan / bound (max) {test_ratio:9.4f}   target <= {TARGET}")
    print(f"whole-batch makespan / bound (max){full_ratio:9.4f}   (includes handling)")
    print(f"wall-clock to simulate (median)   {wall:9.3f} s  for 48 meters")
    return 0 if test_ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
