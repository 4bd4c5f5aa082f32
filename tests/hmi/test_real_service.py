"""The HMI driven by Textual's pilot against the real service: `gridctl run` with
its simulated plant (tests/hmi/service.py), its own OPC UA server, polling,
load switching and alarms. What the screens should show is read from the
simulator's control socket (``state``) and the service's (``status``)."""

from __future__ import annotations

import re
import time

from textual.widgets import DataTable

from hmi.textshot import screen_text

from .conftest import make_real_app, ready, wait_for
from .service import BUSES, METERED, METERED_OPENING_KWH, METERED_PEAK_KW, RealService

SIZE = (100, 30)


def row_of(text: str, needle: str) -> str:
    return next((line for line in text.splitlines() if needle in line), "")


async def test_overview_shows_the_real_buses(service: RealService):
    app = make_real_app(service, "operator")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await wait_for(pilot, lambda: "of 5" in screen_text(app), timeout=15)
        status = {b["name"]: b for b in (await service.status())["buses"]}
        assert sorted(status) == sorted(BUSES)
        text = screen_text(app)
        for bus, meters in BUSES.items():
            # the service says: link up, every configured meter, none quarantined
            assert status[bus]["connected"] is True
            assert status[bus]["meters_total"] == len(meters)
            assert status[bus]["meters_quarantined"] == 0
            cells = row_of(text, f" {bus} ").split()
            assert cells[:3] == [bus, "●", "up"], cells
            assert cells[-3:] == [str(len(meters)), "0", "dlt645"], cells
        # 3 + 2 meters, all answering
        assert "5 in service  0 quarantined (offline)  of 5" in text
        assert "● CONNECTED operator (operator)" in text


async def test_meters_show_what_the_simulated_meters_measure(service: RealService):
    app = make_real_app(service)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("2")
        await wait_for(pilot, lambda: "5 of 5 meters" in screen_text(app), timeout=15)

        def cells() -> list[str]:
            return row_of(screen_text(app), METERED).split()

        # meter, bus, P kW, Ua V, Ia A, E+ kWh, quality: wait until the first poll shows
        def shows(column: int, number: str) -> bool:
            row = cells()
            return len(row) == 7 and re.fullmatch(number, row[column]) is not None

        await wait_for(pilot, lambda: shows(2, r"\d+\.\d{3}"), 15)
        await wait_for(pilot, lambda: shows(5, r"\d+\.\d"), 15)
        row = cells()
        state = await service.sim_state(METERED)
        p_shown, e_shown = float(row[2]), float(row[5])
        # P: the simulator draws each second's load as profile × uniform(0.97, 1.03),
        # so two moments of the same hour differ by at most 1.03 / 0.97 = 1.062
        assert state["power_kw"] > 0.0
        assert abs(p_shown / state["power_kw"] - 1.0) <= 0.065, (p_shown, state)
        # E+: read at the energy poll, shown to 0.1 kWh (±0.05); the register has grown
        # since (and from its 5000 kWh opening) by at most
        # 3.6 kW × 1.03 × the seconds the service has run / 3600
        growth = METERED_PEAK_KW * 1.03 * (time.monotonic() - service.started) / 3600.0
        assert state["energy_kwh"] - growth - 0.05 <= e_shown <= state["energy_kwh"] + 0.05
        assert METERED_OPENING_KWH <= state["energy_kwh"] <= METERED_OPENING_KWH + growth
        assert row[6] == "ok", row


async def test_operator_trips_a_load_and_the_meter_relay_opens(service: RealService):
    assert (await service.sim_state(METERED))["relay_open"] is False
    app = make_real_app(service, "operator")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("3")
        await wait_for(pilot, lambda: "l1001" in screen_text(app))
        await pilot.press("t")
        await wait_for(pilot, lambda: "Command for loads/l1001" in screen_text(app))
        await pilot.press(*"demand test", "enter")
        await wait_for(pilot, lambda: "Confirm command" in screen_text(app))
        assert "TRIP on load loads/l1001" in screen_text(app)
        # armed only: the meter's relay has not moved
        assert (await service.sim_state(METERED))["relay_open"] is False
        await pilot.click("#confirm-execute")
        deadline = time.monotonic() + 15
        while not (state := await service.sim_state(METERED))["relay_open"]:
            assert time.monotonic() < deadline, state
            await pilot.pause(0.1)
        assert state["relay_commanded_open"] is True
        await wait_for(pilot, lambda: "OPEN" in row_of(screen_text(app), "l1001"), 15)
        await wait_for(pilot, lambda: "trip l1001: confirmed" in screen_text(app), 15)
        # the other load on the bus is untouched
        assert (await service.sim_state("000000001002"))["relay_open"] is False


async def test_dead_meter_alarm_is_shown_and_acknowledged(service: RealService):
    dead = "000000002002"
    source = f"bus/bus2/meter/{dead}"
    alarm_id = f"meter_offline:{source}"
    app = make_real_app(service, "operator")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("4")
        assert service.sim_fault(dead, "dead") == f"bus2/{dead}: faults = dead"
        await wait_for(pilot, lambda: source in screen_text(app), timeout=30)
        alarm = (await service.alarms())[alarm_id]
        assert (alarm["active"], alarm["acknowledged"]) == (True, False)
        assert "UNACK" in row_of(screen_text(app), source)
        # put the cursor on it: other alarms (a cycle overrun on a loaded machine) may be
        # listed too and re-order the rows, so check whom the dialog names and retry
        table = app.query_one("#alarm-table", DataTable)
        for _attempt in range(5):
            for _ in range(table.row_count):
                if table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value == alarm_id:
                    break
                await pilot.press("down")
            await pilot.press("a")
            await wait_for(pilot, lambda: "Acknowledge alarm " in screen_text(app))
            if f"Acknowledge alarm {alarm_id}" in screen_text(app):
                break
            await pilot.press("escape")
            await wait_for(pilot, lambda: "Acknowledge alarm " not in screen_text(app))
        assert f"Acknowledge alarm {alarm_id}" in screen_text(app), screen_text(app)
        await pilot.press(*"crew sent", "enter")
        await wait_for(pilot, lambda: " ack " in row_of(screen_text(app), source), 15)
        alarm = (await service.alarms())[alarm_id]
        # acknowledged, and still active: the meter is still dead
        assert (alarm["active"], alarm["acknowledged"]) == (True, True)
