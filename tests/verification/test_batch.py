"""A 48-meter batch with injected faults, checked item by item and by hand."""

from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction

import pytest

from tests.verification.conftest import good

# class 1, Ib = 5 A, Imax = 60 A = 12 Ib: limit 1.5 % below 0.1 Ib (PF 1) / 0.2 Ib (PF 0.5L), else 1.0 %
LIMIT = {
    (12.0, "1.0"): "1.0",
    (1.0, "1.0"): "1.0",
    (0.1, "1.0"): "1.0",
    (0.05, "1.0"): "1.5",
    (12.0, "0.5L"): "1.0",
    (1.0, "0.5L"): "1.0",
    (0.2, "0.5L"): "1.0",
    (1.0, "0.8C"): "1.0",
}
POINTS = list(LIMIT)  # in the scheme's order


def population():
    specs = [good(n) for n in range(48)]
    faults = {
        1: dict(error_pct=-0.4),
        2: dict(error_pct=0.94),  # rounds to 0.9: pass
        3: dict(error_pct=-0.96),  # rounds to -1.0 = limit: pass
        4: dict(error_pct=1.04),  # rounds to 1.0: pass
        5: dict(error_pct=2.1),  # fails everywhere
        6: dict(error_pct=-1.14),  # -1.1: fails where the limit is 1.0, passes at 0.05 Ib
        7: dict(error_pct=1.16),
        8: dict(point_errors={(0.05, "1.0"): 1.44}),  # 1.4 within 1.5 at 0.05 Ib: pass
        9: dict(point_errors={(0.05, "1.0"): 1.62}),  # 1.6 > 1.5: fails that point only
        10: dict(point_errors={(12.0, "0.5L"): -1.3}),
        11: dict(creep_w=5.0),  # creeps: ≈ 3.8 pulses in Δt
        12: dict(starting_factor=2.0),  # does not start at 0.004 Ib
        13: dict(clock_drift_s_per_day=0.71),
        14: dict(clock_drift_s_per_day=-0.45),  # within ±0.5
        15: dict(comm_ok=False),
        16: dict(relay_ok=False),
        17: dict(leakage_ma=8.0),  # breaks down: stop_on_fail skips the rest
        18: dict(powers_on=False),  # dead at power-on: skips the rest
        19: dict(constant_factor=1.03),  # pulses at 1.03 C: basic error +3 % and constant fails
        30: dict(error_pct=0.0),
        40: dict(error_pct=-0.74, point_errors={(0.05, "1.0"): -1.46}),
    }
    for n, kw in faults.items():
        for k, v in kw.items():
            setattr(specs[n], k, v)
    return specs


def hand_round(x: Fraction, interval="0.1") -> Decimal:
    d = Decimal(x.numerator) / Decimal(x.denominator)
    return d.quantize(Decimal(interval), rounding=ROUND_HALF_EVEN)


def expected_error_verdict(spec, point):
    e = spec.error_at(*point)
    e = (1 + e / 100) * spec.constant_factor * 100 - 100
    if not spec.powers_on or spec.leakage_ma > 5:
        return "skipped"
    r = Decimal(str(e)).quantize(Decimal("0.1"), rounding=ROUND_HALF_EVEN)
    return "pass" if abs(r) <= Decimal(LIMIT[point]) else "fail"


def test_48_meter_batch_item_by_item(line):
    specs = population()
    scheme = line.start("B48", "class1_single_phase.toml", specs)
    summary = line.clock.run(line.seq.run("B48"))
    assert summary.state == "done"
    rows = line.repo.results("B48")
    by = {(r.barcode, r.item_index, r.point_index): r for r in rows}
    kinds = [i.kind for i in scheme.items]
    mt = line.meter_type
    c0 = line.config.units[0].standard_constant
    expected_fail = set()
    for n, spec in enumerate(specs):
        dead = not spec.powers_on
        broke = spec.leakage_ma > 5
        verdicts = {}
        verdicts["appearance"] = "fail" if dead else "pass"
        verdicts["withstand"] = "skipped" if dead else ("fail" if broke else "pass")
        stopped = dead or broke
        verdicts["starting"] = (
            "skipped" if stopped else ("fail" if spec.starting_factor > 1 else "pass")
        )
        verdicts["creep"] = "skipped" if stopped else ("fail" if spec.creep_w > 0 else "pass")
        verdicts["constant"] = (
            "skipped"
            if stopped
            else "fail"
            if (spec.constant_factor != 1 or not spec.comm_ok)
            else "pass"
        )
        verdicts["clock"] = (
            "skipped" if stopped else ("fail" if abs(spec.clock_drift_s_per_day) > 0.5 else "pass")
        )
        verdicts["communication"] = "skipped" if stopped else ("pass" if spec.comm_ok else "fail")
        verdicts["cost_control"] = (
            "skipped" if stopped else ("pass" if spec.comm_ok and spec.relay_ok else "fail")
        )
        for idx, kind in enumerate(kinds):
            if kind == "basic_error":
                if stopped:
                    assert by[(spec.barcode, idx, 0)].verdict == "skipped"
                    continue
                for k, point in enumerate(POINTS):
                    r = by[(spec.barcode, idx, k)]
                    want = expected_error_verdict(spec, point)
                    assert r.verdict == want, (n, point, r.rounded, r.verdict)
                    assert r.limit_high == LIMIT[point] and r.limit_low == "-" + LIMIT[point]
                    # the report's numbers, recomputed by hand from the raw counts
                    assert len(r.samples) == 2
                    gammas = []
                    for s in r.samples:
                        m0 = Fraction(c0) * s["n"] / mt.constant
                        assert Fraction(s["m0"]) == m0
                        gammas.append((m0 - s["m"]) / s["m"] * 100)
                    mean = sum(gammas) / 2
                    assert Decimal(r.average) == hand_round(mean, "0.000001")
                    assert Decimal(r.rounded) == hand_round(mean)
                    # and the measurement found the injected error
                    e = ((1 + spec.error_at(*point) / 100) * spec.constant_factor - 1) * 100
                    assert abs(float(mean) - e) < 0.01
                    if want == "fail":
                        expected_fail.add(spec.barcode)
                continue
            r = by[(spec.barcode, idx, 0)]
            assert r.verdict == verdicts[kind], (n, kind, r)
            assert r.scheme_version == scheme.version
            if verdicts[kind] == "fail":
                expected_fail.add(spec.barcode)
    assert set(summary.failed) == expected_fail
    assert len(summary.passed) == 48 - len(expected_fail)
    assert set(summary.passed) == {s.barcode for s in specs} - expected_fail
    # sorted and boxed: qualified meters sealed in the pass box, the rest in the reject box
    assert sorted(line.rig.boxes["pass"]) == sorted(summary.passed)
    assert sorted(line.rig.boxes["fail"]) == sorted(summary.failed)
    assert {5, 6, 7, 9, 10, 11, 12, 13, 15, 16, 17, 18, 19} == {int(b[1:]) for b in expected_fail}


def test_starting_and_creep_numbers_by_hand(line):
    specs = population()[:24]
    line.start("B24", "class1_single_phase.toml", specs)
    line.clock.run(line.seq.run("B24"))
    rows = {(r.barcode, r.kind): r for r in line.repo.results("B24")}
    # t = 1.2 * 60000 / (1200 * 1 * 220 * 0.02) min = 818.18 s
    start = rows[("M00000", "starting")]
    assert start.limit_high == "818.2" and start.unit == "s"
    assert Decimal(start.average) <= Decimal("818.2") and start.samples[0]["pulses"] >= 1
    nonstart = rows[("M00012", "starting")]
    assert nonstart.verdict == "fail" and nonstart.samples[0]["pulses"] == 0
    # Δt = 600e6 / (1200 * 1 * 220 * 60) min = 37.88 min = 2272.7 s
    creep = rows[("M00011", "creep")]
    assert "2272.7 s" in creep.point and creep.limit_high == "1"
    # 5 W creep with C = 1200: 1200 * 5 / 3.6e6 pulses/s * 2272.7 s = 3.79 -> 3 or 4 pulses
    assert creep.samples[0]["pulses"] in (3, 4) and creep.verdict == "fail"
    clock = rows[("M00013", "clock")]
    vals = [Decimal(s["s_per_day"]) for s in clock.samples]
    assert len(vals) == 10
    assert Decimal(clock.rounded) == (sum(vals) / 10).quantize(
        Decimal("0.01"), rounding=ROUND_HALF_EVEN
    )
    assert clock.verdict == "fail"


def test_barcode_mismatch_rejects_both_swapped_meters(line2):
    line = line2
    specs = [good(n) for n in range(24)]
    feed = list(specs)
    feed[2], feed[3] = feed[3], feed[2]
    line.start("SWAP", "class2_quick.toml", specs, feed=feed)
    summary = line.clock.run(line.seq.run("SWAP"))
    assert summary.failed == {
        "M00002": "rejected: barcode mismatch",
        "M00003": "rejected: barcode mismatch",
    }
    rows = [r for r in line.repo.results("SWAP") if r.barcode == "M00002"]
    assert rows and all(r.verdict == "skipped" for r in rows)


def test_progress_and_tags_published(line):
    specs = [good(n) for n in range(48)]
    line.start("TAGS", "class1_single_phase.toml", specs)
    line.clock.run(line.seq.run("TAGS"))
    img = line.image
    assert img.value("line/batch/progress") == 100.0
    assert img.value("line/batch/state") == "done"
    assert img.value("line/metrics/meters_tested") == 48
    assert img.value("line/metrics/pass_rate") == 100.0
    assert img.value("line/metrics/items_per_hour") > 0
    assert img.value("line/stations/03/verdict") == "pass"
    assert img.value("line/stations/03/last_verdict") == "pass"
    assert img.value("line/stations/48/state").startswith("boxed")


@pytest.mark.parametrize("n_meters", [1, 30])
def test_partial_batches(line2, n_meters):
    # the class 2 scheme on class 2 meters (+0.3 %, inside ±2 %): every meter passes
    line = line2
    specs = [good(n) for n in range(n_meters)]
    line.start(f"P{n_meters}", "class2_quick.toml", specs)
    summary = line.clock.run(line.seq.run(f"P{n_meters}"))
    assert len(summary.passed) == n_meters
    rows = line.repo.results(f"P{n_meters}")
    assert {r.kind for r in rows} == {"starting", "creep", "basic_error", "communication"}
    # class 2, direct: ±2.0 % at Imax and Ib (PF 1) and at Ib PF 0.5L (GB/T 17215.321)
    limits = {(r.limit_low, r.limit_high) for r in rows if r.kind == "basic_error"}
    assert {(float(lo), float(hi)) for lo, hi in limits} == {(-2.0, 2.0)}


def test_a_new_batch_clears_what_the_last_one_left_on_its_stations(line):
    line.start("FIRST", "class1_single_phase.toml", [good(n) for n in range(48)])
    line.clock.run(line.seq.run("FIRST"))
    img = line.image
    assert img.value("line/stations/40/verdict") == "pass"
    line.start("SECOND", "class1_single_phase.toml", [good(n) for n in range(100, 124)])
    line.clock.run(line.seq.run("SECOND"))
    # station 40 had no meter in the second batch: nothing of the first one's is left
    for leaf, empty in (("meter", ""), ("state", "empty"), ("verdict", ""), ("last_item", "")):
        assert img.value(f"line/stations/40/{leaf}") == empty, leaf
    assert img.value("line/stations/40/last_verdict") == ""
    assert img.value("line/stations/03/meter") == "M00102"
    assert img.value("line/stations/03/verdict") == "pass"
