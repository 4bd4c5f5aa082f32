"""The HMI driven by Textual's pilot against a real gridctl OPC UA server over the
fake plant (tests/hmi/plant.py): for the states the real service's small plant
(tests/hmi/test_real_service.py) cannot produce on demand — a meter Bad from the
start and Uncertain substitutes, fixed values to sort by, a running or finished
verification batch, a stocked warehouse, alarms that return to normal while
unacknowledged, a server that stops and comes back on the same port — and for
what the HMI sends (the fake sink records each request: role checks, cancel)."""

from __future__ import annotations

import asyncio

from textual.widgets import DataTable

from controller.process_image import Quality
from hmi.textshot import screen_text

from .conftest import make_app, ready, wait_for
from .plant import DEMO_BOXES, RACK, line_done, line_running

SIZE = (80, 24)


async def test_navigates_every_screen(plant):
    app = make_app(plant, "otto")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        text = screen_text(app)
        assert "● CONNECTED otto" in text
        assert "bus1" in text and "1 quarantined (offline)" in text
        assert "Line     idle  no batch since the server started" in text
        assert "Warehouse 24/120 slots occupied  crane 1 idle  orders open 0" in text
        expected = {
            "2": "8 of 8 meters",
            "3": "feeder1_l1",
            "4": "bus1: meter 010000000004 quarantined",
            "5": "Line idle",
            "6": "Crane 1 idle",
            "1": "Buses",
        }
        for key, needle in expected.items():
            await pilot.press(key)
            await wait_for(pilot, lambda n=needle: n in screen_text(app))
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: "keys (the footer shows" in screen_text(app))
        await pilot.press("escape")


async def test_meters_filter_sort_and_bad_quality(plant):
    app = make_app(plant)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("2")
        table = app.query_one("#meter-table", DataTable)
        await wait_for(pilot, lambda: table.row_count == 8)
        await wait_for(pilot, lambda: "4.100" in screen_text(app))
        # A Bad value is never shown as a number.
        bad_row = next(line for line in screen_text(app).splitlines() if "010000000004" in line)
        assert "✖ OutSvc" in bad_row and "." not in bad_row.split("bus1", 1)[1]
        await pilot.press("slash")
        await pilot.press(*"bus2")
        await wait_for(pilot, lambda: table.row_count == 4)
        assert "4 of 8 meters" in screen_text(app)
        app.query_one("#meter-filter").value = "bad"
        await wait_for(pilot, lambda: table.row_count == 1)
        await pilot.press("escape")
        await wait_for(pilot, lambda: table.row_count == 8)
        # sort by bus, then by P; reverse puts the largest P first
        await pilot.press("s", "s", "r")
        await wait_for(pilot, lambda: "sort: P kW ↓" in screen_text(app))
        first = table.coordinate_to_cell_key((0, 0)).row_key.value
        assert first.endswith("020000000004")


async def test_value_change_is_shown_and_detail_pane(plant):
    app = make_app(plant)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("2")
        await wait_for(pilot, lambda: "Meter 010000000001 on bus1" in screen_text(app))
        plant.image.write("buses/bus1/meters/010000000001/power_active_total", 12.345)
        await wait_for(pilot, lambda: "12.345" in screen_text(app), timeout=1.5)
        assert "power_active_total" in screen_text(app) and "kW" in screen_text(app)
        plant.image.write(
            "buses/bus1/meters/010000000001/voltage_a", 231.0, Quality.UNCERTAIN, "substitute"
        )
        await wait_for(pilot, lambda: "231.0?" in screen_text(app))


async def test_cancel_at_confirm_sends_nothing(plant):
    app = make_app(plant, "otto")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("3", "t")
        await wait_for(pilot, lambda: "Command for" in screen_text(app))
        await pilot.press(*"x", "enter")
        await wait_for(pilot, lambda: "Confirm command" in screen_text(app))
        await pilot.press("enter")  # Cancel has the focus
        await wait_for(pilot, lambda: "not executed" in screen_text(app))
        assert plant.sink.requests == []


async def test_viewer_is_refused(plant):
    app = make_app(plant, "vera")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        # the server tells the session's role (WhoAmI): a viewer is never offered a command
        await wait_for(pilot, lambda: "vera (viewer)" in screen_text(app))
        await pilot.press("3")
        await wait_for(pilot, lambda: "Read-only (role viewer)" in screen_text(app))
        footer = screen_text(app).splitlines()[-1]
        assert "Trip" not in footer and "Command" not in footer and "limit" not in footer
        await pilot.press("t", "x", "l")
        await pilot.pause(0.3)
        assert "Command for" not in screen_text(app)
        assert "Set demand limit" not in screen_text(app)
        for key, needle in (("5", "Start batch"), ("6", "Create order")):
            await pilot.press(key)
            await wait_for(pilot, lambda: "Read-only (role viewer)" in screen_text(app))
            assert needle not in screen_text(app).splitlines()[-1]
        await pilot.press("b", "o")
        await pilot.pause(0.3)
        assert "Start a verification batch" not in screen_text(app)
        assert "Create warehouse order" not in screen_text(app)
        assert plant.sink.requests == []


async def test_anonymous_is_read_only(plant):
    app = make_app(plant)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("3", "t")
        await wait_for(pilot, lambda: "Read-only (anonymous)" in screen_text(app))
        assert "Command for" not in screen_text(app)
        await pilot.press("4", "a")
        await wait_for(pilot, lambda: "cannot acknowledge" in screen_text(app))


async def test_reconnects_and_marks_stale(tmp_path):
    from .plant import start_plant

    first = await start_plant(tmp_path)
    port = int(first.url.rsplit(":", 1)[1].split("/")[0])
    app = make_app(first, "otto")
    app.client.max_backoff = 0.5
    second = None
    try:
        async with app.run_test(size=SIZE) as pilot:
            await ready(pilot, app)
            await pilot.press("2")
            await wait_for(pilot, lambda: "4.100" in screen_text(app))
            await first.stop()
            await wait_for(pilot, lambda: "RECONNECTING" in screen_text(app))
            await wait_for(pilot, lambda: "4.100~" in screen_text(app))  # stale, marked
            second = await start_plant(tmp_path, port=port)
            second.image.write("buses/bus1/meters/010000000001/power_active_total", 5.5)
            await wait_for(pilot, lambda: "● CONNECTED" in screen_text(app), timeout=15)
            await wait_for(pilot, lambda: "5.500 " in screen_text(app))
            assert "~" not in screen_text(app).split("Meter ", 1)[0]
    finally:
        if second is not None:
            await second.stop()


async def test_engineer_sets_a_demand_limit(plant):
    app = make_app(plant, "emma")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("3")
        await wait_for(
            pilot, lambda: "Group feeder1  demand 87.5 / limit 120.0 kW" in screen_text(app)
        )
        assert "(73 %)" in screen_text(app) and "normal" in screen_text(app)
        assert "Demand limit" in screen_text(app).splitlines()[-1]
        await pilot.press("l")
        await wait_for(pilot, lambda: "Set demand limit" in screen_text(app))
        await pilot.press("enter")  # the only group
        await pilot.press(*"95.5", "enter", *"evening peak", "enter")
        await wait_for(pilot, lambda: "Confirm demand limit" in screen_text(app))
        assert "from 120 kW to 95.5 kW" in screen_text(app)
        assert plant.sink.requests == []
        await pilot.click("#command-confirm-ok")
        await wait_for(pilot, lambda: len(plant.sink.requests) == 1)
        req = plant.sink.requests[0]
        assert (req.target, req.kind, req.args, req.user) == (
            "demand/groups/feeder1",
            "set_demand_limit",
            {"limit_kw": 95.5},
            "emma",
        )
        await wait_for(pilot, lambda: "limit 95.5 kW" in screen_text(app))
        await wait_for(pilot, lambda: "feeder1: limit reads 95.5 kW" in screen_text(app))
        await wait_for(pilot, lambda: "last command confirmed" in screen_text(app))


async def test_operator_is_not_offered_the_demand_limit(plant):
    app = make_app(plant, "otto")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("3")
        await wait_for(pilot, lambda: "Group feeder1" in screen_text(app))
        assert "Trip" in screen_text(app).splitlines()[-1]
        assert "Demand limit" not in screen_text(app).splitlines()[-1]
        await pilot.press("l")
        await pilot.pause(0.3)
        assert "Set demand limit" not in screen_text(app)


async def test_line_mimic_start_and_abort_batch(plant):
    app = make_app(plant, "otto")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("5")
        await wait_for(pilot, lambda: "Line idle" in screen_text(app))
        text = screen_text(app)
        assert "01 - - - - - - - - 08" in text  # one mimic cell per station, no data yet
        assert "Start batch" in text.splitlines()[-1]
        await pilot.press("b")
        await wait_for(pilot, lambda: "Start a verification batch" in screen_text(app))
        await pilot.press("down", "enter")  # second scheme
        await pilot.press(*"000000001001, 000000001002", "enter", *"monthly check", "enter")
        await wait_for(pilot, lambda: "Confirm start batch" in screen_text(app))
        text = screen_text(app)
        assert "Scheme class2-quick" in text
        assert "2 meters: 000000001001, 000000001002" in text
        assert plant.sink.requests == []
        await pilot.click("#command-confirm-ok")
        await wait_for(pilot, lambda: len(plant.sink.requests) == 1)
        req = plant.sink.requests[0]
        assert (req.target, req.kind, req.user, req.reason) == (
            "line",
            "start_batch",
            "otto",
            "monthly check",
        )
        assert req.args == {
            "scheme": "class2-quick",
            "meters": ["000000001001", "000000001002"],
        }
        # the test plant's line runs the batch: the mimic shows the stations
        await wait_for(pilot, lambda: "01 ▶ ▶ ✖ ▶ ▶ ▶ ▶ ▶ 08" in screen_text(app))
        text = screen_text(app)
        assert "Line running" in text and "42.5 %" in text
        row = next(line for line in text.splitlines() if line.startswith(" 03"))
        assert "M00003" in row and "61.5" in row and "fail" in row
        await pilot.press("a")
        await wait_for(pilot, lambda: "Abort the batch" in screen_text(app))
        await pilot.press(*"wrong scheme", "enter")
        await wait_for(pilot, lambda: "Confirm abort" in screen_text(app))
        await pilot.press("enter")  # Cancel has the focus
        await wait_for(pilot, lambda: "not aborted" in screen_text(app))
        assert len(plant.sink.requests) == 1
        await pilot.press("a", *"wrong scheme", "enter")
        await wait_for(pilot, lambda: "Confirm abort" in screen_text(app))
        await pilot.click("#command-confirm-ok")
        await wait_for(pilot, lambda: len(plant.sink.requests) == 2)
        req = plant.sink.requests[1]
        assert (req.kind, req.args, req.reason) == (
            "abort_batch",
            {"batch_id": "cmd-0001"},
            "wrong scheme",
        )
        await wait_for(pilot, lambda: "Line idle" in screen_text(app))


async def test_warehouse_map_orders_create_and_cancel(plant):
    app = make_app(plant, "otto")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("6")
        await wait_for(pilot, lambda: "Crane 1 idle" in screen_text(app))
        text = screen_text(app)
        rows, bays, levels = RACK
        assert f"Slots {DEMO_BOXES}/{rows * bays * levels} occupied" in text
        # the map: one character per slot, as many U as occupied slots
        view = app.query_one("#view-warehouse")
        assert view.map_counts() == {"U": DEMO_BOXES, ".": rows * bays * levels - DEMO_BOXES}
        map_lines = [line for line in text.splitlines() if line.startswith("L0")]
        assert len(map_lines) == levels
        assert sum(line[:30].count("U") for line in map_lines) == DEMO_BOXES
        assert "L01 UUUUUUUUUU  UUUUUUUUUU" in text
        assert "1-in" in text and "1-out" in text
        await pilot.press("o")
        await wait_for(pilot, lambda: "Create warehouse order" in screen_text(app))
        await pilot.press("enter")  # outbound_verification
        await pilot.press(*"B-0001, 2", "enter", *"batch for Monday", "enter")
        await wait_for(pilot, lambda: "Confirm order" in screen_text(app))
        assert "Create order: outbound_verification" in screen_text(app)
        assert "Items: B-0001, 2" in screen_text(app)
        await pilot.click("#command-confirm-ok")
        await wait_for(pilot, lambda: len(plant.sink.requests) == 1)
        req = plant.sink.requests[0]
        assert (req.target, req.kind, req.args, req.user) == (
            "warehouse",
            "create_order",
            {"kind": "outbound_verification", "items": ["B-0001", "2"]},
            "otto",
        )
        # the order appears from the server's command records
        row = lambda: next(  # noqa: E731
            (line for line in screen_text(app).splitlines() if line.startswith(" 1      ")), ""
        )
        await wait_for(pilot, lambda: "open" in row())
        assert "outbound_verification" in row() and "otto" in row()
        await pilot.press("d")
        await wait_for(pilot, lambda: "Cancel warehouse order" in screen_text(app))
        await pilot.press("enter", *"wrong batch", "enter")  # the selected order is filled in
        await wait_for(pilot, lambda: "Confirm cancel" in screen_text(app))
        assert "CANCEL warehouse order 1" in screen_text(app)
        await pilot.click("#command-confirm-ok")
        await wait_for(pilot, lambda: len(plant.sink.requests) == 2)
        req = plant.sink.requests[1]
        assert (req.kind, req.args, req.reason) == (
            "cancel_order",
            {"order_id": "1"},
            "wrong batch",
        )
        await wait_for(pilot, lambda: "CancelOrder 1 sent." in screen_text(app))


async def test_warehouse_without_slot_states_shows_counts(tmp_path):
    from .plant import start_plant

    plant = await start_plant(tmp_path, rack_map=False)
    try:
        app = make_app(plant, "otto")
        async with app.run_test(size=SIZE) as pilot:
            await ready(pilot, app)
            await pilot.press("6")
            await wait_for(pilot, lambda: "No rack map: the server does not" in screen_text(app))
            assert "Slots 24/120 occupied" in screen_text(app)
    finally:
        await plant.stop()


async def test_overview_counts_unacknowledged_alarms_that_returned_to_normal(plant):
    from opcua_server import AlarmInfo

    app = make_app(plant, "otto")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await wait_for(pilot, lambda: "3 active  2 unacknowledged" in screen_text(app))
        # every alarm returns to normal; one stays unacknowledged
        for a in list(plant.alarms.alarms.values()):
            plant.alarms.alarms[a.alarm_id] = AlarmInfo(
                a.alarm_id, a.source, a.message, a.severity, False, a.alarm_id != "A-0001"
            )
        plant.alarms.changed.set()
        await wait_for(pilot, lambda: "0 active  1 unacknowledged" in screen_text(app))
        assert "1 HIGH" in screen_text(app)
        assert "none active" not in screen_text(app)


async def test_line_does_not_show_an_earlier_batch_verdicts_as_current(plant):
    app = make_app(plant, "vera")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        line_running(plant.image, "b-0001")
        line_done(plant.image, "b-0001")
        await pilot.press("5")
        await wait_for(pilot, lambda: "01 ✔ ✔ ✖ ✔ ✔ ✔ ✔ ✔ 08" in screen_text(app))
        assert "passed 7 failed 1" in screen_text(app)
        await asyncio.sleep(0.05)  # the next batch starts later (timestamps)
        # the next batch: the line rewrites id and station states, not the verdicts
        line_running(plant.image, "b-0002")
        plant.image.write("line/stations/03/verdict", "fail")  # unchanged: not published
        await wait_for(pilot, lambda: "Batch b-0002" in screen_text(app))
        await wait_for(pilot, lambda: "01 ▶ ▶ ✖ ▶ ▶ ▶ ▶ ▶ 08" in screen_text(app))
        text = screen_text(app)
        assert "passed 7" not in text
        for line in text.splitlines():
            if line.startswith(" 0") and not line.startswith(" 03"):
                assert line.rstrip().endswith("—"), line  # verdict pending
        line_done(plant.image, "b-0002")
        await wait_for(pilot, lambda: "01 ✔ ✔ ✖ ✔ ✔ ✔ ✔ ✔ 08" in screen_text(app))
        row = next(line for line in screen_text(app).splitlines() if line.startswith(" 03"))
        assert row.rstrip().endswith("fail")
        await pilot.press("1")
        await wait_for(pilot, lambda: "batch b-0002 done  passed 7 failed 1" in screen_text(app))
