import sqlite3
from pathlib import Path

import pytest

from controller.line_sim import build_sim_rig
from controller.process_image import ProcessImage
from controller.verification.clock import VirtualClock
from controller.verification.config import demo_line
from controller.verification.results import ResultsRepository
from controller.verification.scheme import AccuracyClass, MeterType, load_scheme
from controller.verification.sequencer import MeterTask, Sequencer
from drivers.sim.rig import SimMeterSpec

SCHEMES = Path(__file__).resolve().parents[2] / "config" / "schemes"
METER_TYPE = "DDZY-1-5(60)A"
# a class 2 single-phase meter for the class 2 scheme: 220 V, 10(40) A, 1600 imp/kWh
CLASS2_TYPE = MeterType(
    name="DDS-2-10(40)A", accuracy_class=AccuracyClass.C2, un=220, ib=10, imax=40, constant=1600
)


class Alarms:
    def __init__(self):
        self.raised = []

    def raise_alarm(self, source, kind, severity, message):
        self.raised.append((source, kind, severity, message))


class Line:
    """A simulated line in virtual time with an in-memory results repository."""

    def __init__(
        self,
        db=":memory:",
        units=2,
        per_unit=24,
        start_epoch=1_767_225_600.0,
        log=None,
        meter_type=METER_TYPE,
    ):
        config = demo_line(units, per_unit)
        if meter_type == CLASS2_TYPE.name:
            types = {**config.meter_types, CLASS2_TYPE.name: CLASS2_TYPE}
            config = config.model_copy(update={"meter_types": types})
        self.config = config
        self.meter_type = self.config.meter_type(meter_type)
        self.clock = VirtualClock(start_epoch)
        self.rig = build_sim_rig(self.config, self.meter_type, self.clock, log)
        self.conn = sqlite3.connect(db)
        self.repo = ResultsRepository(self.conn)
        self.image = ProcessImage(self.clock.now)
        self.alarms = Alarms()
        self.seq = Sequencer(self.config, self.rig, self.repo, self.clock, self.image, self.alarms)

    def start(self, batch_id, scheme_file, specs, feed=None):
        scheme = load_scheme(SCHEMES / scheme_file)
        self.rig.feed(feed if feed is not None else specs)
        self.seq.create_batch(
            batch_id, scheme, self.meter_type.name, [MeterTask(s.barcode, s.address) for s in specs]
        )
        return scheme


def good(n, **kw):
    return SimMeterSpec(
        barcode=f"M{n:05d}", address=f"{2026_0000_0000 + n:012d}", error_pct=0.3, **kw
    )


@pytest.fixture
def line():
    ln = Line()
    yield ln
    ln.clock.close()


@pytest.fixture
def line2():
    """The line set up for class 2 meters (the class 2 scheme runs on it)."""
    ln = Line(meter_type=CLASS2_TYPE.name)
    yield ln
    ln.clock.close()
