import pytest

from controller.alarms import AlarmEngine, AlarmError, AlarmState, Severity
from controller.bus_stats import BusSnapshot
from controller.journal import Journal


class Clock:
    def __init__(self):
        self.t = 1_700_000_000.0

    def __call__(self):
        return self.t


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    j.open()
    yield j
    j.close()


def test_state_machine_raise_ack_clear():
    clock = Clock()
    eng = AlarmEngine(clock=clock)
    ev = eng.set("bus_down", "bus/b1", True, "no reply")
    assert ev.action == "raised" and ev.state is AlarmState.UNACKED
    assert eng.set("bus_down", "bus/b1", True) is None  # no change, no event
    clock.t += 5
    eng.acknowledge("bus_down:bus/b1", "alice", "calling the field crew")
    a = eng.get("bus_down:bus/b1")
    assert (a.state, a.acked_by, a.acked_at, a.ack_note) == (
        AlarmState.ACKED,
        "alice",
        clock.t,
        "calling the field crew",
    )
    eng.set("bus_down", "bus/b1", False)
    assert a.state is AlarmState.NORMAL


def test_clear_before_ack_needs_ack_and_reraise_resets_ack():
    eng = AlarmEngine(clock=Clock())
    eng.set("over_temperature", "line/st07", True)
    eng.set("over_temperature", "line/st07", False)
    a = eng.get("over_temperature:line/st07")
    assert a.state is AlarmState.RTN_UNACKED
    assert a.severity == Severity.CRITICAL
    eng.acknowledge(a.key, "bob")
    assert a.state is AlarmState.NORMAL
    eng.set("over_temperature", "line/st07", True)
    assert a.state is AlarmState.UNACKED and a.acked_by is None


def test_bad_operations_are_refused():
    eng = AlarmEngine(clock=Clock())
    with pytest.raises(AlarmError, match=r"condition: must be one of .*bus_down"):
        eng.set("bogus", "x", True)
    with pytest.raises(AlarmError, match="unknown alarm 'bus_down:nope'"):
        eng.acknowledge("bus_down:nope", "alice")
    eng.set("bus_down", "b", True)
    with pytest.raises(AlarmError, match="who: required"):
        eng.acknowledge("bus_down:b", "")
    eng.acknowledge("bus_down:b", "alice")
    with pytest.raises(AlarmError, match="nothing to acknowledge"):
        eng.acknowledge("bus_down:b", "alice")
    with pytest.raises(AlarmError, match="duration_s: must be between"):
        eng.shelve("bus_down:b", "alice", 0, "maintenance")


def test_shelving_hides_then_expires():
    clock = Clock()
    eng = AlarmEngine(clock=clock)
    eng.set("crane_fault", "crane1", True, "E12 drive fault")
    eng.shelve("crane_fault:crane1", "carol", 600, "crane under maintenance")
    assert eng.annunciated() == []
    assert eng.counts()["high"]["active"] == 0 and eng.counts()["shelved"] == 1
    clock.t += 601
    events = eng.tick()
    assert [e.action for e in events] == ["unshelved"]
    assert [a.key for a in eng.annunciated()] == ["crane_fault:crane1"]
    assert eng.counts()["high"] == {"active": 1, "unacked": 1}


def test_threshold_hysteresis_and_helpers():
    eng = AlarmEngine(clock=Clock())
    eng.check_high("over_temperature", "st1", 81.0, 80.0, hysteresis=5.0)
    a = eng.get("over_temperature:st1")
    assert a.active
    eng.check_high("over_temperature", "st1", 77.0, 80.0, hysteresis=5.0)
    assert a.active  # inside the hysteresis band
    eng.check_high("over_temperature", "st1", 74.0, 80.0, hysteresis=5.0)
    assert not a.active
    eng.check_relay("m161", commanded_open=True, actual_open=False)
    assert eng.get("relay_mismatch:m161").message == "commanded open, reads closed"
    eng.check_bus(BusSnapshot("b1", "dlt645", False, 10, 0))
    assert eng.get("bus_down:bus/b1").active
    eng.check_meter("b1", "000000000161", online=False, reason="3 retries, quarantined")
    assert eng.get("meter_offline:bus/b1/meter/000000000161").active
    eng.check_fault("crane_fault", "crane1", None)
    assert "crane_fault:crane1" not in {a.key for a in eng}


async def test_persisted_with_events_and_restored(journal):
    clock = Clock()
    eng = AlarmEngine(journal, clock=clock)
    q = eng.subscribe("opcua", maxsize=2)
    eng.set("bus_down", "bus/b1", True, "no reply")
    eng.acknowledge("bus_down:bus/b1", "alice", "ack")
    eng.set("clock_drift", "m1", True, "12 s")
    assert q.dropped == 1 and len(q) == 2
    await journal.flush()
    rows = journal.query("SELECT kind, message FROM events ORDER BY seq")
    assert [r["message"] for r in rows] == [
        "bus_down raised: no reply",
        "bus_down acknowledged: no reply",
        "clock_drift raised: 12 s",
    ]
    eng2 = AlarmEngine(journal, clock=clock)
    assert eng2.load() == 2
    a = eng2.get("bus_down:bus/b1")
    assert (a.active, a.acked, a.acked_by) == (True, True, "alice")
