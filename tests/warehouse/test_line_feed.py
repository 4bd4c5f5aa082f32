"""The warehouse and the verification line together in the service: demo stock of
unverified meters -> auto-fed batches -> results -> qualified return and rejected
outbound; box and meter bookkeeping checked at every journalled step, and across
service restarts in the middle of the flow."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from controller.api import CommandRefused
from controller.config import validate_config
from controller.line_sim import sim_spec
from controller.service import Service
from controller.warehouse.demo import demo_stock
from drivers.sim.plant import SimulatedPlant

from .test_subsystem import FAST_CONVEYOR, FAST_CRANE, Request, free_port, wait_for

SCHEMES = Path(__file__).resolve().parents[2] / "config" / "schemes"
BOXES = 6  # demo stock: 6 boxes x 4 meters; 2 boxes (8 meters, 8 stations) per batch


def config(tmp_path):
    return validate_config(
        {
            "service": {
                "state_dir": str(tmp_path / "var"),
                "control_socket": "",
                # the restart tests stop and start the service in one process: a stop cut
                # short by a loaded machine would leave its tasks driving the plant beside
                # the next instance's (a real restart ends the process)
                "stop_timeout_s": 30.0,
            },
            "tasks": {"gc_freeze": False},
            "journal": {"path": str(tmp_path / "var" / "journal.sqlite")},
            "metrics": {"enabled": False},
            "opcua": {"enabled": False},
            "sim": {"control_socket": str(tmp_path / "sim.sock")},
            "warehouse": {
                "plc": f"tcp://127.0.0.1:{free_port()}",
                "rows": 2,
                "bays": 10,
                "levels": 6,
                "demo_boxes": BOXES,
                "poll_s": 0.01,
                "cranes": [FAST_CRANE],
                "inbound": FAST_CONVEYOR,
                "outbound": FAST_CONVEYOR,
            },
            "line": {
                "time_scale": 1_000.0,  # the ~115 min scheme in about 7 s
                "scheme_dir": str(SCHEMES),
                "feed": "warehouse",
                "feed_boxes": 2,
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
            },
        }
    )


def expected_rejects(cfg) -> set[str]:
    return {
        a
        for box in demo_stock(cfg.warehouse)
        for a in box.meters
        if abs(sim_spec(a, a).error_pct) >= 1.0
    }


def subsystem(svc, name):
    return next(s for s in svc.subsystems if s.name == name)


class Bookkeeping:
    """Checks plant against journal after every journalled box move."""

    def __init__(self, svc, sim, meters: int) -> None:
        self.plant = sim.warehouse.plant
        self.meters = meters
        self.checks = 0
        self.wh = subsystem(svc, "warehouse").wh
        for name in ("mark_picked", "mark_put", "delivered", "inducted"):
            self._wrap(name)

    def _wrap(self, name: str) -> None:
        orig = getattr(self.wh, name)

        def checked(*args, **kwargs):
            result = orig(*args, **kwargs)
            self.check()
            return result

        setattr(self.wh, name, checked)

    def check(self) -> None:
        """The plant runs on its own (Modbus, real time), so the journal may trail it by one
        step (a box already discharged, a pick done but not yet read back); what must never
        happen is a box in two places, a box the journal does not know, or one it lost."""
        self.checks += 1
        inv = self.wh.inv
        census = self.plant.census()
        for code, places in census.items():
            assert len(places) == 1, f"box {code} physically in {places}"
        journal = {b.barcode: b.location for b in inv.boxes()}
        for code, (place,) in census.items():
            loc = journal.get(code)
            if place.startswith("CONV:") and place.split(":")[2:3] == ["in"] and loc is None:
                continue  # on the induct, not read yet
            assert loc is not None, f"box {code} at {place} missing from the journal"
            assert not loc.startswith(("LINE:", "DOCK:")), f"{code}: plant {place}, journal {loc}"
        delivered = {c for conv in self.plant.conveyors.values() for c in conv.delivered}
        for code, loc in journal.items():
            if loc.startswith("R"):
                assert census.get(code, [None])[0] in (loc, "CRANE:1"), (
                    code,
                    loc,
                    census.get(code),
                )
            elif loc.startswith(("CRANE:", "CONV:")):
                assert code in census or code in delivered, f"journal {code} at {loc}: lost"
        rack = {s.loc.code: s.box for s in self.wh.rack.slots.values() if s.box}
        assert rack == {loc: code for code, loc in journal.items() if loc.startswith("R")}
        # every meter in exactly one known box, none lost or made up
        meters = inv.meters()
        assert len(meters) == self.meters
        assert all(m.box in journal for m in meters)
        expect = {
            "unverified": {"new", "returned"},
            "qualified": {"qualified"},
            "rejected": {"rejected"},
        }
        for b in inv.boxes():
            states = {m.state for m in inv.meters(b.barcode)}
            if b.location.startswith(("R", "CRANE:", "CONV:")):
                assert states and states <= expect[b.klass.value], (b.barcode, b.klass, states)


async def until(cond, timeout=60.0, what="condition"):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def check_final(svc, cfg) -> None:
    wh = subsystem(svc, "warehouse").wh
    feed = subsystem(svc, "line feed")
    line = subsystem(svc, "verification line")
    # the line's verdicts decide; the simulated meters make one of them a reject
    verdicts = {m.address: m.verdict for r in feed.rows() for m in line.repo.batch(r.batch).meters}
    rejects = {a for a, v in verdicts.items() if v == "fail"}
    assert expected_rejects(cfg) <= rejects
    meters = {m.address: m for m in wh.inv.meters()}
    assert set(verdicts) == set(meters)  # every meter verified exactly once
    assert len(meters) == 4 * BOXES
    assert {a for a, m in meters.items() if m.state == "rejected"} == rejects
    assert all(m.state == "qualified" for a, m in meters.items() if a not in rejects)
    assert all(m.batch and m.batch.startswith("WF") for m in meters.values())
    rows = feed.rows()
    assert [r.batch for r in rows] == [f"WF{n:05d}" for n in range(1, len(rows) + 1)]
    assert all(r.state == "done" for r in rows)
    # qualified meters stored, one class per box; rejected boxes left for the rejects dock
    totals = wh.inv.totals()
    assert totals.get("slots_unverified", 0) == totals.get("slots_rejected", 0) == 0
    assert totals["meters_in_stock"] == 4 * BOXES - len(rejects)
    assert totals["in_racks"] == totals["slots_qualified"]
    assert totals["on_cranes"] == totals["on_conveyors"] == 0
    for m in meters.values():
        box = wh.inv.box(m.box)
        if m.state == "qualified":
            assert box.location.startswith("R") and box.klass.value == "qualified"
        else:
            assert box.location == "DOCK:rejects" and box.klass.value == "rejected"
    # every fed batch journaled as a line command, by the feed
    starts = [svc.commands.get(r.batch) for r in rows]
    assert all(c.kind == "start_batch" for c in starts)
    assert all(c.who == "warehouse feed" and c.state.value == "confirmed" for c in starts)
    # what the marketing system reads over OPC UA
    img = svc.image
    slots = json.loads(img.value("warehouse/marketing/qualified_slots"))
    assert set(slots) == set(meters) - rejects
    assert all(slots[a] == wh.inv.box(meters[a].box).location for a in slots)
    assert img.value("warehouse/marketing/batch") == rows[-1].batch
    assert len(json.loads(img.value("warehouse/marketing/results"))) == 8
    assert len(json.loads(img.value("warehouse/marketing/withstand"))) == 8
    last = {a for a in verdicts if meters[a].batch == rows[-1].batch}
    assert [b["barcode"] for b in json.loads(img.value("warehouse/marketing/boxing"))] == [
        f"{rows[-1].batch}-Q01",
        *([f"{rows[-1].batch}-R01"] if last & rejects else []),
    ]
    # a batch with rejects sends them out on their own order, one without does not
    for r in rows:
        batch_rejects = {a for a in rejects if meters[a].batch == r.batch}
        assert (r.reject_order is not None) == bool(batch_rejects), r
    assert img.value("warehouse/feed/state") == "idle"
    assert img.value("warehouse/feed/batches_done") == len(rows)


async def test_demo_stock_flows_through_the_line_and_back(tmp_path):
    cfg = config(tmp_path)
    assert len(expected_rejects(cfg)) == 1  # the demo stock's one bad meter is in box 2
    sim = SimulatedPlant(cfg)
    await sim.start()
    svc = Service(cfg)
    await svc.start()
    try:
        books = Bookkeeping(svc, sim, 4 * BOXES)
        feed = subsystem(svc, "line feed")
        await until(
            lambda: len(feed.rows()) == 3 and all(r.state == "done" for r in feed.rows()),
            timeout=120,
            what="three batches fed, verified and returned",
        )
        books.check()
        assert books.checks > 6 * 4  # picks, puts, deliveries and inducts all checked
        check_final(svc, cfg)
        assert feed.rows()[1].reject_order is not None  # the demo's bad meter is in batch 2
        plant = sim.warehouse.plant
        assert sorted(plant.handed_over) == sorted(
            b.barcode for b in subsystem(svc, "warehouse").wh.inv.boxes() if "-" in b.barcode
        )
        assert "WF00002-R01" in plant.conveyors[(1, True)].delivered
        await marketing_over_methods_and_export(svc, cfg)
    finally:
        await svc.stop()
        await sim.stop()


@pytest.mark.parametrize("stop_at", [("ordered", "returning"), ("testing", "rejecting")])
async def test_restarts_mid_flow_resume_without_losing_or_duplicating_boxes(tmp_path, stop_at):
    cfg = config(tmp_path)
    sim = SimulatedPlant(cfg)  # the plant keeps running while the service restarts
    await sim.start()
    try:
        for state in stop_at:
            svc = Service(cfg)
            await svc.start()
            try:
                books = Bookkeeping(svc, sim, 4 * BOXES)
                feed = subsystem(svc, "line feed")
                await until(
                    lambda feed=feed, state=state: any(r.state == state for r in feed.rows()),
                    what=f"a batch {state}",
                )
                books.check()
            finally:
                stopped = await svc.stop()
            assert stopped, f"the service stopped at {state!r} with errors (see the log)"
        svc = Service(cfg)
        await svc.start()
        try:
            books = Bookkeeping(svc, sim, 4 * BOXES)
            feed = subsystem(svc, "line feed")
            await until(
                lambda: len(feed.rows()) == 3 and all(r.state == "done" for r in feed.rows()),
                timeout=120,
                what="the flow to finish after the restarts",
            )
            books.check()
            check_final(svc, cfg)
        finally:
            await svc.stop()
    finally:
        await sim.stop()


async def marketing_over_methods_and_export(svc, cfg) -> None:
    """The OPC UA CreateOrder method's path (router -> warehouse sink) for points 6 and 9,
    and the export for all nine, read from the running service's journal file."""
    wh = subsystem(svc, "warehouse").wh
    # point 6 by batch: the boxes of WF00002 are already back, so the order is refused
    with pytest.raises(CommandRefused, match=r"box WF00002-Q01 already in the warehouse"):
        await svc.router.submit(
            Request(
                "warehouse",
                "create_order",
                token="m-6",
                args={"kind": "qualified_return", "items": ["WF00002"]},
            )
        )
    # point 9: the oldest qualified box leaves for a district
    cid = await svc.router.submit(
        Request(
            "warehouse",
            "create_order",
            token="m-9",
            args={"kind": "distribution_outbound", "items": ["north", "1"]},
        )
    )
    await wait_for(lambda: svc.commands.get(cid).state.value == "confirmed")
    assert wh.inv.box("WF00001-Q01").location == "DOCK:north"
    cmd = ["inventory", "marketing", "--db", str(cfg.journal.path), "--batch", "WF00002"]
    out = subprocess.run(
        [sys.executable, "-m", "controller", *cmd],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert len(doc["meters"]) == 4 * BOXES  # 1
    assert doc["verification_tasks"] == []  # 2: nothing left to verify
    assert set(doc["qualified_slots"]) == {  # 3: WF00001's meters left for the district
        m.address
        for m in wh.inv.meters()
        if m.state == "qualified" and wh.inv.box(m.box).location.startswith("R")
    }
    batch = doc["batches"]["WF00002"]
    assert [b["barcode"] for b in batch["boxing"]] == ["WF00002-Q01", "WF00002-R01"]  # 4
    assert len(batch["results"]) == len(batch["withstand"]) == 8  # 5, 7
    assert [o["boxes"] for o in doc["qualified_return_orders"]] == [  # 6
        ["WF00002-Q01", "WF00002-R01"]
    ]
    assert [o["batch"] for o in doc["outbound_verification_orders"]] == ["WF00002"]  # 8
    assert [o["district"] for o in doc["distribution_orders"]] == ["north"]  # 9
    assert [o["state"] for o in doc["rejected_outbound_orders"]] == ["completed"]


async def test_operator_batch_over_start_batch_still_runs_and_the_feed_waits_for_it(tmp_path):
    cfg = config(tmp_path)
    sim = SimulatedPlant(cfg)
    await sim.start()
    svc = Service(cfg)
    await svc.start()
    try:
        line = subsystem(svc, "verification line")
        feed = subsystem(svc, "line feed")
        # StartBatch(scheme, meters) as the OPC UA method hands it over: an operator's list
        batch = await svc.router.submit(
            Request(
                "line",
                "start_batch",
                token="op-1",
                args={"scheme": "class1-single-phase", "meters": ["OP-1", "OP-2", "OP-3"]},
            )
        )
        assert svc.commands.get(batch).who == "operator"
        await until(lambda: line.repo.batch(batch).state == "done", what="operator batch")
        await until(
            lambda: len(feed.rows()) == 3 and all(r.state == "done" for r in feed.rows()),
            timeout=120,
            what="the fed batches after the operator's",
        )
        check_final(svc, cfg)
        # the operator's meters were never warehouse stock
        assert all(
            subsystem(svc, "warehouse").wh.inv.meter(m.address) is None
            for m in line.repo.batch(batch).meters
        )
    finally:
        await svc.stop()
        await sim.stop()


async def test_an_aborted_fed_batch_returns_its_meters_unverified_and_they_are_fed_again(tmp_path):
    cfg = config(tmp_path)
    sim = SimulatedPlant(cfg)
    await sim.start()
    svc = Service(cfg)
    await svc.start()
    try:
        books = Bookkeeping(svc, sim, 4 * BOXES)
        line = subsystem(svc, "verification line")
        feed = subsystem(svc, "line feed")
        wh = subsystem(svc, "warehouse").wh
        await until(lambda: line.running and line.batch_id == "WF00001", what="WF00001 running")
        await svc.router.submit(
            Request("line", "abort_batch", token="ab-1", args={"batch_id": "WF00001"})
        )
        assert line.repo.batch("WF00001").state == "aborted"
        await until(lambda: feed.rows()[0].state == "done", what="WF00001 returned")
        # untested meters came back in their own box, unverified, and are stock again
        box = wh.inv.box("WF00001-U01")
        assert box is not None and box.klass.value == "unverified"
        assert {m.state for m in wh.inv.meters("WF00001-U01")} == {"new"}
        await until(
            lambda: (
                all(r.state == "done" for r in feed.rows())
                and all(m.state in ("qualified", "rejected") for m in wh.inv.meters())
            ),
            timeout=120,
            what="every meter verified after the abort",
        )
        books.check()
        rows = feed.rows()
        assert len(rows) == 4  # WF00001's meters went out again on the last batch
        assert {m.address for m in wh.inv.meters() if m.batch == rows[-1].batch} == {
            m.address for m in line.repo.batch("WF00001").meters
        }
        check_final(svc, cfg)
    finally:
        await svc.stop()
        await sim.stop()
