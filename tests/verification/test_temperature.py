"""Over-temperature: the station's loop is cut in the fast cycle that sees it; the rest go on."""

import asyncio
import math

from controller.verification.scheme import parse_scheme
from controller.verification.sequencer import MeterTask
from controller.verification.temperature import TemperatureSupervisor, run_fast_cycle
from tests.verification.conftest import METER_TYPE, Alarms, good

SHORT = {
    "name": "class1-heat-run",
    "version": 1,
    "accuracy_class": "1",
    "items": [
        {"kind": "appearance"},
        {"kind": "basic_error", "points": [{"i": "Imax", "pulses": 40}, {"i": "Ib", "pulses": 10}]},
        {"kind": "constant", "i": "Imax", "energy_kwh": 10},
        {"kind": "basic_error", "points": [{"i": "0.5Imax", "pulses": 20}]},
        {"kind": "communication"},
    ],
}


def run_with_supervisor(line, specs, trace_station):
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
    trace = []

    def body():
        st = line.rig.stations[trace_station]
        trace.append((line.clock.monotonic(), st.temperature(), st.cut))
        sup.scan()
        trace[-1] = (*trace[-1], st.cut)

    async def main():
        stop = asyncio.Event()
        fast = asyncio.ensure_future(run_fast_cycle(line.clock, body, stop, 0.01))
        summary = await line.seq.run("HEAT")
        stop.set()
        await fast
        return summary

    return line.clock.run(main()), sup, trace


def test_supervisor_cuts_in_the_same_scan(line):
    alarms = Alarms()
    trips = []
    sup = TemperatureSupervisor(
        line.rig.stations, 75.0, lambda s, t: trips.append((s, t)), line.image, alarms
    )
    line.rig.force_temperature(7, 74.9)
    assert sup.scan() == 0 and not line.rig.stations[7].cut
    line.rig.force_temperature(7, 75.2)
    assert sup.scan() == 1
    assert line.rig.stations[7].cut and trips == [(7, 75.2)]
    assert [a[:3] for a in alarms.raised] == [("line/stations/07", "over_temperature", 800)]
    assert "75.2 °C > limit 75.0 °C" in alarms.raised[0][3]
    assert line.image.value("line/stations/07/temperature") == 75.2
    assert sup.scan() == 0 and len(alarms.raised) == 1  # latched: one alarm, one cut
    assert not any(line.rig.stations[s].cut for s in line.rig.stations if s != 7)
    sup.reset(7)
    assert not line.rig.stations[7].cut


def test_loose_terminal_heats_up_mid_batch_only_that_station_stops(line):
    specs = [good(n) for n in range(48)]
    specs[4].heating = 8.0  # station 5: loose terminal, 185 °C final at 60 A
    summary, sup, trace = run_with_supervisor(line, specs, trace_station=5)
    st = line.rig.stations[5]
    limit = line.config.temperature.limit_c
    # the first fast cycle that read above the limit cut the loop in that same cycle
    k = next(i for i, row in enumerate(trace) if row[1] > limit)
    t_read, temp, cut_before, cut_after = trace[k]
    assert not cut_before and cut_after
    assert trace[k - 1][1] <= limit and not trace[k - 1][3]
    # the crossing lies inside that one 10 ms cycle: the previous scan saw it below the limit
    assert t_read - trace[k - 1][0] <= 0.010 + 1e-9
    # it happened mid-batch: at Imax, during the constant test
    results = {(r.barcode, r.item_index, r.point_index): r for r in line.repo.results("HEAT")}
    m5 = specs[4].barcode
    aborted = [r for r in results.values() if r.barcode == m5 and r.verdict == "aborted"]
    assert len(aborted) == 1 and aborted[0].reason == "over-temperature"
    assert aborted[0].kind in ("basic_error", "constant") and aborted[0].samples == []
    later = [
        r for r in results.values() if r.barcode == m5 and r.item_index > aborted[0].item_index
    ]
    assert later and all(r.verdict == "skipped" for r in later)
    assert summary.failed == {m5: "aborted: over-temperature"}
    assert len(summary.passed) == 47  # the other stations, same unit included, finished
    assert sup.tripped.keys() == {5} and st.cut
    assert [a[0] for a in line.alarms.raised] == ["line/stations/05"]
    assert not math.isnan(temp)


def test_forced_temperature_at_a_given_instant(line):
    specs = [good(n) for n in range(48)]
    line.clock.loop.call_at(150.0, line.rig.force_temperature, 30, 95.0)
    summary, _sup, trace = run_with_supervisor(line, specs, trace_station=30)
    cut_at = next(t for t, _, _, after in trace if after)
    assert 150.0 <= cut_at <= 150.0 + 0.010 + 1e-9
    assert summary.failed == {specs[29].barcode: "aborted: over-temperature"}
    assert len(summary.passed) == 47
