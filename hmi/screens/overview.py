"""Overview: buses (utilisation, error rate), meters in service, alarms, line and
warehouse status, cycle timing."""

from __future__ import annotations

import time
from collections import deque

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from ..client import NODE_OBJECT, SERVICE_DIAG, Quality
from ..format import number, severity_style, show
from .alarms import parse_alarms
from .base import View

BUS_FIELDS = (
    "Connected",
    "Protocol",
    "Utilisation",
    "MetersTotal",
    "MetersQuarantined",
    "TransactionsOk",
    "Timeouts",
    "ChecksumErrors",
    "Exceptions",
    "IoErrors",
)
ERROR_FIELDS = ("Timeouts", "ChecksumErrors", "Exceptions", "IoErrors")
SERVICE_FIELDS = ("LastBatchLatency", "QueueLength", "Dropped")
TASK_FIELDS = ("latency_p50", "latency_p99", "latency_max", "overruns")
ERROR_WINDOW_S = 60.0
LINE_PATHS = (
    "line/state",
    "line/batch/message",
    "line/batch/id",
    "line/batch/state",
    "line/batch/progress",
    "line/batch/passed",
    "line/batch/failed",
    "line/metrics/pass_rate",
)
OPEN_ORDER_STATES = ("created", "released", "in_progress", "held")


class OverviewView(View):
    def compose(self) -> ComposeResult:
        yield Static("Buses", classes="section-title")
        table: DataTable[Text | str] = DataTable(
            id="bus-table", cursor_type="row", zebra_stripes=True
        )
        yield table
        yield Static(id="overview-summary")

    def on_mount(self) -> None:
        table = self.query_one("#bus-table", DataTable)
        for label, key, width in (
            ("Bus", "bus", 10),
            ("Link", "link", 8),
            ("Util %", "util", 7),
            ("Err % 60s", "err", 9),
            ("Meters", "meters", 7),
            ("Quarant.", "quar", 8),
            ("Protocol", "proto", 10),
        ):
            table.add_column(label, key=key, width=width)
        self._samples: dict[str, deque[tuple[float, float, float]]] = {}
        self.cranes: list[str] = []
        self.conveyors: list[str] = []

    def _bus_path(self, bus: str, name: str) -> str:
        return f"buses/{bus}/@diag/{name}"

    async def plant_changed(self) -> None:
        plant = self.client.plant
        paths = [self._bus_path(b, f) for b in plant.bus_diagnostics for f in BUS_FIELDS]
        paths += [f"{SERVICE_DIAG}/{f}" for f in SERVICE_FIELDS]
        paths += [f"{t}/{f}" for t in plant.tasks for f in TASK_FIELDS]
        if plant.has_alarm_list:
            from ..client import ALARM_LIST

            paths.append(ALARM_LIST)
        if plant.line:
            paths += LINE_PATHS
        self.cranes, self.conveyors = [], []
        if plant.warehouse:
            for folder, into in (("cranes", self.cranes), ("conveyors", self.conveyors)):
                found = await self.client.browse(f"warehouse/{folder}")
                into.extend(sorted(i for _n, i, cls in found if cls == NODE_OBJECT))
            paths += ["warehouse/slots/occupied", "warehouse/slots/free"]
            paths += [f"warehouse/orders/{s}" for s in (*OPEN_ORDER_STATES, "failed")]
            paths += [f"{c}/{f}" for c in self.cranes for f in ("state", "fault")]
            paths += [f"{c}/jam" for c in self.conveyors]
        table = self.query_one("#bus-table", DataTable)
        table.clear()
        for bus in plant.buses:
            table.add_row(*self._bus_cells(bus), key=bus)
        await self.client.watch(paths)
        self._dirty = True
        if self.active:
            self.activate()

    def _error_rate(self, bus: str) -> Text:
        c = self.client
        ok = c.get(self._bus_path(bus, "TransactionsOk"))
        if ok is None or ok.quality is not Quality.GOOD:
            return Text("…", style="dim")
        errs = 0.0
        for f in ERROR_FIELDS:
            r = c.get(self._bus_path(bus, f))
            if r is not None and r.quality is Quality.GOOD and r.value is not None:
                errs += float(r.value)
        now = time.monotonic()
        samples = self._samples.setdefault(bus, deque(maxlen=256))
        if not samples or samples[-1][1:] != (float(ok.value), errs):
            samples.append((now, float(ok.value), errs))
        while len(samples) > 2 and now - samples[1][0] > ERROR_WINDOW_S:
            samples.popleft()
        _t0, ok0, err0 = samples[0]
        if len(samples) >= 2:
            d_ok, d_err = float(ok.value) - ok0, errs - err0
        else:
            d_ok, d_err = float(ok.value), errs
        total = d_ok + d_err
        rate = 100.0 * d_err / total if total > 0 else 0.0
        style = "bold red" if rate >= 5 else "yellow" if rate >= 1 else ""
        text = show(self.client, self._bus_path(bus, "TransactionsOk"), text=f"{rate:.1f}")
        if style and text.style == "":
            text.stylize(style)
        return text

    def _bus_cells(self, bus: str) -> list[Text | str]:
        c = self.client
        if bus not in c.plant.bus_diagnostics:
            na = Text("n/a", style="dim")
            return [bus, na, na, na, Text(str(len(c.plant.buses[bus]))), na, na]
        link = c.get(self._bus_path(bus, "Connected"))
        link_text = (
            show(c, self._bus_path(bus, "Connected"), text="● up", style="green")
            if link is not None and link.value
            else show(c, self._bus_path(bus, "Connected"), text="○ DOWN", style="bold red")
        )
        util = c.get(self._bus_path(bus, "Utilisation"))
        util_style = ""
        if util is not None and isinstance(util.value, float) and util.value >= 90:
            util_style = "bold red"
        elif util is not None and isinstance(util.value, float) and util.value >= 70:
            util_style = "yellow"
        quar = c.get(self._bus_path(bus, "MetersQuarantined"))
        quar_style = "bold red" if quar is not None and quar.value else ""
        return [
            bus,
            link_text,
            show(c, self._bus_path(bus, "Utilisation"), digits=1, style=util_style),
            self._error_rate(bus),
            show(c, self._bus_path(bus, "MetersTotal")),
            show(c, self._bus_path(bus, "MetersQuarantined"), style=quar_style),
            show(c, self._bus_path(bus, "Protocol")),
        ]

    def update_values(self, changed: set[str] | None) -> None:
        table = self.query_one("#bus-table", DataTable)
        keys = ("bus", "link", "util", "err", "meters", "quar", "proto")
        for bus in self.client.plant.buses:
            if changed is not None and not any(p.startswith(f"buses/{bus}/") for p in changed):
                continue
            if bus not in table.rows:
                continue
            for key, cell in zip(keys, self._bus_cells(bus), strict=True):
                table.update_cell(bus, key, cell)
        self.query_one("#overview-summary", Static).update(self._summary())

    def _summary(self) -> Text:
        c = self.client
        plant = c.plant
        out = Text()
        # Meters in service / quarantined, from the bus diagnostics.
        total = quarantined = 0
        known = True
        for bus in plant.buses:
            t = c.get(self._bus_path(bus, "MetersTotal"))
            q = c.get(self._bus_path(bus, "MetersQuarantined"))
            if t is None or q is None or t.quality is not Quality.GOOD:
                known = False
                continue
            total += int(t.value or 0)
            quarantined += int(q.value or 0)
        out.append("Meters   ", style="bold")
        if plant.buses and known:
            out.append(f"{total - quarantined} in service", style="green")
            out.append("  ")
            out.append(
                f"{quarantined} quarantined (offline)", style="bold red" if quarantined else ""
            )
            out.append(f"  of {total}")
        else:
            out.append(f"{plant.meter_count} on the server; service counts not available")
        out.append("\n")
        out.append("Alarms   ", style="bold")
        out.append_text(self._alarm_summary())
        out.append("\n")
        out.append("Line     ", style="bold")
        out.append_text(self._line_summary())
        out.append("\n")
        out.append("Warehouse ", style="bold")
        out.append_text(self._warehouse_summary())
        out.append("\n")
        out.append("Cycles   ", style="bold")
        if plant.tasks:
            for task in plant.tasks:
                name = task.rsplit("/", 1)[-1]
                out.append(f"{name}: p99 ")
                out.append_text(show(c, f"{task}/latency_p99", digits=4))
                out.append(" s  max ")
                out.append_text(show(c, f"{task}/latency_max", digits=4))
                out.append(" s  overruns ")
                out.append_text(show(c, f"{task}/overruns"))
                out.append("   ")
        else:
            out.append("cycle timing not available on this server", style="dim")
        out.append("\n")
        out.append("OPC UA   ", style="bold")
        out.append("publish latency ")
        lat = c.get(f"{SERVICE_DIAG}/LastBatchLatency")
        out.append_text(
            show(c, f"{SERVICE_DIAG}/LastBatchLatency", digits=1)
            if lat is None or lat.value is None
            else show(c, f"{SERVICE_DIAG}/LastBatchLatency", text=f"{lat.value * 1000:.1f}")
        )
        out.append(" ms  queue ")
        out.append_text(show(c, f"{SERVICE_DIAG}/QueueLength"))
        out.append("  dropped ")
        out.append_text(show(c, f"{SERVICE_DIAG}/Dropped"))
        return out

    def _line_summary(self) -> Text:
        c = self.client
        if not c.plant.line:
            return Text("not available on this server", style="dim")
        state = self._value("line/state")
        out = show(
            c,
            "line/state",
            style={"idle": "green", "running": "bold yellow"}.get(str(state), "bold red"),
        )
        batch = self._value("line/batch/id")
        if batch is None:
            out.append("  no batch since the server started", style="dim")
            return out
        bstate = self._value("line/batch/state")
        out.append(f"  batch {batch} ")
        out.append_text(show(c, "line/batch/state"))
        if bstate == "running":
            out.append(" ")
            out.append_text(show(c, "line/batch/progress", digits=1))
            out.append(" %")
        passed, failed = self._value("line/batch/passed"), self._value("line/batch/failed")
        # The counts are this batch's only once its closing message names it.
        message = str(self._value("line/batch/message") or "")
        if bstate == "done" and passed is not None and str(batch) in message:
            out.append(f"  passed {passed} failed {failed}", style="bold red" if failed else "")
        out.append("  pass rate ")
        out.append_text(show(c, "line/metrics/pass_rate", digits=1, quiet_nodata=True))
        out.append(" %")
        return out

    def _warehouse_summary(self) -> Text:
        c = self.client
        if not c.plant.warehouse:
            return Text("not available on this server", style="dim")
        out = Text()
        occupied, free = (
            self._value("warehouse/slots/occupied"),
            self._value("warehouse/slots/free"),
        )
        out.append_text(show(c, "warehouse/slots/occupied"))
        if isinstance(occupied, int) and isinstance(free, int):
            out.append(f"/{occupied + free}")
        out.append(" slots occupied")
        for crane in self.cranes:
            fault = self._value(f"{crane}/fault")
            out.append(f"  crane {crane.rsplit('/', 1)[-1]} ")
            out.append_text(show(c, f"{crane}/state", style="bold red" if fault else ""))
            if fault:
                out.append(f" FAULT {fault}", style="bold red")
        jams = [v.rsplit("/", 1)[-1] for v in self.conveyors if self._value(f"{v}/jam")]
        if jams:
            out.append(f"  JAM {', '.join(jams)}", style="bold white on red")
        counts = [self._value(f"warehouse/orders/{s}") for s in OPEN_ORDER_STATES]
        if all(isinstance(n, int) for n in counts):
            out.append(f"  orders open {sum(n for n in counts if isinstance(n, int))}")
        failed = self._value("warehouse/orders/failed")
        if failed:
            out.append(f" failed {failed}", style="bold red")
        return out

    def _alarm_summary(self) -> Text:
        from ..client import ALARM_LIST

        c = self.client
        if not c.plant.has_alarm_list:
            return Text("alarm list not available on this server", style="dim")
        reading = c.get(ALARM_LIST)
        if reading is None or reading.quality is Quality.BAD:
            return show(c, ALARM_LIST)
        # Returned-to-normal alarms still wait for an acknowledgement: they count.
        alarms = [
            a
            for a in parse_alarms(reading.value)
            if (a.active or not a.acknowledged) and not a.shelved
        ]
        if not alarms:
            return Text("none active or unacknowledged", style="green")
        counts: dict[str, tuple[int, str]] = {}
        for a in alarms:
            label, style = severity_style(a.severity)
            n, _ = counts.get(label, (0, style))
            counts[label] = (n + 1, style)
        out = Text()
        for label in ("CRIT", "HIGH", "MED", "LOW"):
            if label in counts:
                n, style = counts[label]
                out.append(f" {n} {label} ", style=style)
                out.append(" ")
        active = sum(1 for a in alarms if a.active)
        unacked = sum(1 for a in alarms if not a.acknowledged)
        out.append(f" {active} active")
        out.append(f"  {unacked} unacknowledged", style="bold" if unacked else "")
        if c.is_stale(reading):
            out.append(" ~stale", style="dim")
        return out


__all__ = ["OverviewView", "number"]
