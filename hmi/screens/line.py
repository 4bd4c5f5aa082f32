"""Verification line: a mimic of the stations, the batch, start and abort.

Everything shown is what the line publishes under ``line/``:
``line/state``, ``line/batch/*`` (id, scheme, state, progress, meters, passed,
failed, message), ``line/metrics/*``, ``line/units/<n>/{state,item}`` and per
station ``line/stations/<NN>/{state,meter,last_item,last_verdict,verdict,
temperature}``. Stations are discovered by browsing, so a line of any size
draws itself.

StartBatch(scheme, meters, reason) and AbortBatch(batch_id, reason) are
methods of the ``line`` object; both go form → confirmation → call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from ..client import NODE_OBJECT, NODE_VARIABLE, Quality, Reading
from ..format import NOTHING_YET, show
from .base import View
from .dialogs import CommandConfirm, FormDialog, FormField

LINE_FIELDS = ("state", "rig", "time_scale", "meter_type", "schemes", "LastCommandState")
BATCH_FIELDS = ("id", "scheme", "state", "progress", "meters", "passed", "failed", "message")
METRIC_FIELDS = ("meters_tested", "pass_rate", "items_per_hour")
STATION_FIELDS = ("state", "meter", "last_item", "last_verdict", "verdict", "temperature")
PER_ROW = 24  # stations per mimic row (one rig unit on the demo line)
METER_WIDTH = 14
PASS = "pass"

# Mimic symbols: (symbol, style, legend). Never colour alone: each state has its glyph.
SYMBOLS: dict[str, tuple[str, str, str]] = {
    "nodata": ("-", "dim", "no data"),
    "empty": ("·", "dim", "empty"),
    "loaded": ("○", "cyan", "meter on station"),
    "testing": ("▶", "bold yellow", "testing"),
    "pass": ("✔", "green", "pass"),
    "fail": ("✖", "bold red", "fail"),
    "aborted": ("!", "bold white on red", "aborted"),
}
STATE_STYLE = {"idle": "green", "running": "bold yellow", "aborting": "bold red"}
BATCH_STATE_STYLE = {
    "running": "bold yellow",
    "done": "green",
    "aborted": "bold red",
    "failed": "bold red",
}


def _good(reading: Reading | None) -> bool:
    return reading is not None and reading.quality is not Quality.BAD


# Station states after the test, written "<state>: <verdict>" once the verdict is known.
POST_TEST = ("tested", "disconnected", "sealed", "sorted", "boxed")


@dataclass(frozen=True, slots=True)
class StationNow:
    """A station as it stands in the current batch."""

    kind: str  # a key of SYMBOLS
    verdict: str | None  # final verdict of this batch's meter, None while pending
    in_batch: bool  # False: what it shows is left over from an earlier batch


def _since(reading: Reading | None, start: datetime | None) -> bool:
    """Written in the current batch (or no batch start known to compare with)."""
    if start is None or reading is None or reading.source_time is None:
        return True
    return reading.source_time >= start


def station_now(
    state: Reading | None,
    meter: Reading | None,
    verdict: Reading | None,
    batch_start: datetime | None,
) -> StationNow:
    """What a station shows; a Bad state is "no data", never a guess.

    The line clears a station's tags when a batch starts, but a client that
    connects mid-batch, or a batch resumed after a restart, can still show a
    value from before the batch start: a verdict tag whose timestamp is older
    than the batch may be the previous meter's. The verdict is taken
    from the tag only when it was written in this batch, else from the
    station's state ("boxed: pass"), else it is pending.
    """
    if not _good(state):
        return StationNow("nodata", None, True)
    assert state is not None
    if not _since(state, batch_start):
        return StationNow("empty", None, False)
    text = str(state.value or "")
    found: str | None = None
    if _good(verdict) and verdict is not None and verdict.value and _since(verdict, batch_start):
        found = str(verdict.value)
    for word in POST_TEST:
        if found is None and text.startswith(f"{word}: "):
            found = text[len(word) + 2 :]
    if found:
        return StationNow("pass" if found == PASS else "fail", found, True)
    if text.startswith("aborted"):
        return StationNow("aborted", None, True)
    if text.startswith("testing"):
        return StationNow("testing", None, True)
    if text and _good(meter) and meter is not None and meter.value:
        return StationNow("loaded", None, True)
    return StationNow("empty", None, True)


def split_meters(text: str) -> list[str]:
    return [m for m in re.split(r"[,\s]+", text.strip()) if m]


class LineView(View):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("b", "start_batch", "Start batch…"),
        Binding("a", "abort_batch", "Abort batch…"),
    ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stations: list[str] = []  # station object paths, in order
        self.units: list[str] = []
        self.paths: set[str] = set()

    def compose(self) -> ComposeResult:
        yield Static(id="line-status")
        with Vertical(id="line-body"):
            yield Static(id="line-mimic")
            yield DataTable(id="station-table", cursor_type="row", zebra_stripes=True)
        yield Static(id="line-message")

    def on_mount(self) -> None:
        table = self.query_one("#station-table", DataTable)
        for label, key, width in (
            ("St", "st", 2),
            ("Meter", "meter", METER_WIDTH),
            ("State", "state", 15),
            ("Last item", "item", 16),
            ("T °C", "temp", 5),
            ("Verdict", "verdict", 9),
        ):
            table.add_column(label, key=key, width=width)
        self.query_one("#line-body").display = False

    # -- plant ----------------------------------------------------------------------
    async def plant_changed(self) -> None:
        c = self.client
        table = self.query_one("#station-table", DataTable)
        table.clear()
        self.stations, self.units, self.paths = [], [], set()
        if c.plant.line:
            children = await c.browse("line")
            folders = {n.lower(): i for n, i, cls in children if cls == NODE_OBJECT}
            if "stations" in folders:
                found = await c.browse(folders["stations"])
                self.stations = sorted(i for _n, i, cls in found if cls == NODE_OBJECT)
            if "units" in folders:
                found = await c.browse(folders["units"])
                self.units = sorted(i for _n, i, cls in found if cls == NODE_OBJECT)
            names = {n for n, _i, cls in children if cls == NODE_VARIABLE}
            self.paths |= {f"line/{n}" for n in LINE_FIELDS if n in names}
            self.paths |= {f"line/batch/{n}" for n in BATCH_FIELDS}
            self.paths |= {f"line/metrics/{n}" for n in METRIC_FIELDS}
            self.paths |= {f"{u}/{n}" for u in self.units for n in ("state", "item")}
            self.paths |= {f"{s}/{n}" for s in self.stations for n in STATION_FIELDS}
            for station in self.stations:
                table.add_row(*self._cells(station), key=station)
            await c.watch(self.paths)
        self.query_one("#line-body").display = c.plant.line
        self._plant_shown(c.plant.line)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Commands the session may not give are not offered (hidden from the footer)."""
        if action in ("start_batch", "abort_batch"):
            return self.client.plant.line and self.client.can_command(action)
        return True

    # -- drawing --------------------------------------------------------------------
    def batch_start(self) -> datetime | None:
        """When the current batch started: its id was written then (ids are unique)."""
        r = self.client.get("line/batch/id")
        return r.source_time if _good(r) and r is not None else None

    def station(self, station: str) -> StationNow:
        c = self.client
        return station_now(
            c.get(f"{station}/state"),
            c.get(f"{station}/meter"),
            c.get(f"{station}/verdict"),
            self.batch_start(),
        )

    def _cells(self, station: str) -> list[Text | str]:
        c = self.client
        now = self.station(station)
        # Left over from an earlier batch: dim, and no verdict.
        old = "dim" if not now.in_batch else ""
        meter = show(c, f"{station}/meter", quiet_nodata=True, style=old)
        if len(meter.plain) > METER_WIDTH:
            # Batch barcodes share their beginning (the batch id): keep the end.
            meter = Text("…" + meter.plain[-(METER_WIDTH - 1) :], style=meter.style)
        # The last item with its own verdict in front: ✔ passed, ✖ not.
        item = Text()
        last = c.get(f"{station}/last_verdict")
        if now.in_batch and _good(last) and last is not None and last.value:
            ok = last.value == PASS
            item.append("✔ " if ok else "✖ ", "green" if ok else "red")
        item.append_text(show(c, f"{station}/last_item", quiet_nodata=True, style=old))
        if now.verdict is not None:
            verdict = Text(now.verdict, style="green" if now.verdict == PASS else "bold red")
        else:
            verdict = NOTHING_YET
        return [
            station.rsplit("/", 1)[-1],
            meter,
            show(c, f"{station}/state", quiet_nodata=True, style=old),
            item,
            show(c, f"{station}/temperature", digits=1),
            verdict,
        ]

    def batch_done(self) -> bool:
        """The batch ended and its counts are this batch's (the message names it)."""
        batch_id, message = self._value("line/batch/id"), self._value("line/batch/message")
        return (
            self._value("line/batch/state") == "done"
            and batch_id is not None
            and str(batch_id) in str(message or "")
        )

    def update_values(self, changed: set[str] | None) -> None:
        if changed is not None and not (changed & self.paths):
            return
        self.query_one("#line-status", Static).update(self._status())
        if not self.client.plant.line:
            return
        self.query_one("#line-mimic", Static).update(self._mimic())
        table = self.query_one("#station-table", DataTable)
        keys = ("st", "meter", "state", "item", "temp", "verdict")
        if changed is not None and "line/batch/id" in changed:
            changed = None  # a new batch: every station's leftovers are judged again
        for station in self.stations:
            if changed is not None and not any(p.startswith(f"{station}/") for p in changed):
                continue
            if station in table.rows:
                for key, cell in zip(keys, self._cells(station), strict=True):
                    table.update_cell(station, key, cell)

    def _status(self) -> Text:
        c = self.client
        out = Text()
        if not c.plant.line:
            out.append("Verification line: not available on this server.\n", style="bold")
            out.append("It has no 'line' node.", style="dim")
            return out
        state = self._value("line/state")
        out.append("Line ", style="bold")
        out.append_text(show(c, "line/state", style=STATE_STYLE.get(str(state), "bold")))
        scale = self._value("line/time_scale")
        if self._value("line/rig"):
            out.append(f"  rig {self._value('line/rig')}")
        if isinstance(scale, float) and scale != 1.0:
            out.append(f" ×{scale:g} time", style="yellow")
        if self._value("line/meter_type"):
            out.append(f"  type {self._value('line/meter_type')}")
        out.append("\n")
        out.append("Batch ", style="bold")
        batch_id = self._value("line/batch/id")
        if batch_id is None:
            out.append("none since the server started", style="dim")
        else:
            bstate = self._value("line/batch/state")
            out.append(f"{batch_id}  {self._value('line/batch/scheme') or ''}  ")
            out.append_text(
                show(c, "line/batch/state", style=BATCH_STATE_STYLE.get(str(bstate), "bold"))
            )
            out.append("  ")
            out.append_text(show(c, "line/batch/progress", digits=1))
            out.append(" %  meters ")
            out.append_text(show(c, "line/batch/meters"))
            if self.batch_done():
                out.append("  passed ")
                out.append_text(show(c, "line/batch/passed", style="green"))
                out.append(" failed ")
                failed = self._value("line/batch/failed")
                out.append_text(show(c, "line/batch/failed", style="bold red" if failed else ""))
        out.append("\n")
        for unit in self.units:
            out.append(f"Unit {unit.rsplit('/', 1)[-1]} ", style="bold")
            out.append_text(show(c, f"{unit}/state", quiet_nodata=True))
            item = self._value(f"{unit}/item")
            if item:
                out.append(f"  item {item}")
            out.append("   ")
        if self.units:
            out.append("\n")
        out.append("Tested ", style="bold")
        out.append_text(show(c, "line/metrics/meters_tested", quiet_nodata=True))
        out.append("  pass rate ")
        out.append_text(show(c, "line/metrics/pass_rate", digits=1, quiet_nodata=True))
        out.append(" %  items/h ")
        out.append_text(show(c, "line/metrics/items_per_hour", digits=0, quiet_nodata=True))
        message = self._value("line/batch/message")
        if message:
            out.append("\n")
            out.append(str(message), style="italic")
        return out

    def _mimic(self) -> Text:
        c = self.client
        out = Text()
        if not self.stations:
            return Text("No stations published.", style="dim")
        for start in range(0, len(self.stations), PER_ROW):
            row = self.stations[start : start + PER_ROW]
            out.append(f"{row[0].rsplit('/', 1)[-1]} ", style="bold")
            for station in row:
                kind = self.station(station).kind
                reading = c.get(f"{station}/state")
                symbol, style, _legend = SYMBOLS[kind]
                if reading is not None and c.is_stale(reading):
                    style = "dim italic"
                out.append(symbol, style=style)
                out.append(" ")
            out.append(f"{row[-1].rsplit('/', 1)[-1]}\n", style="bold")
        for symbol, style, legend in SYMBOLS.values():
            out.append(symbol, style=style)
            out.append(f" {legend}  ", style="dim")
        return out

    def _message(self, text: Text) -> None:
        self.query_one("#line-message", Static).update(text)

    # -- commands -------------------------------------------------------------------
    def action_start_batch(self) -> None:
        c = self.client
        if not c.can_command("start_batch"):
            return
        if self._value("line/state") not in (None, "idle"):
            self._message(Text("The line is busy: abort the running batch first.", "yellow"))
            return
        schemes = [s.strip() for s in str(self._value("line/schemes") or "").split(",")]
        schemes = [s for s in schemes if s]
        scheme_field = (
            FormField("scheme", "Scheme", choices=tuple((s, "") for s in schemes))
            if schemes
            else FormField("scheme", "Scheme", placeholder="test scheme name")
        )
        fields = [
            scheme_field,
            FormField(
                "meters",
                "Meters (barcodes or 12-digit addresses, comma separated)",
                placeholder="e.g. 000000001001, 000000001002   or a count for demo meters: 12",
            ),
        ]
        note = Text(f"Meter type {self._value('line/meter_type') or '?'}", style="dim")
        self.app.push_screen(
            FormDialog("Start a verification batch", fields, note), self._start_chosen
        )

    async def _start_chosen(self, form: dict[str, str] | None) -> None:
        if form is None:
            self._message(Text("Start batch cancelled.", style="dim"))
            return
        meters = split_meters(form["meters"])
        text = Text()
        text.append("Start a batch on the verification line\n", style="bold")
        text.append(f"Scheme {form['scheme']}\n")
        if len(meters) == 1 and meters[0].isdigit() and len(meters[0]) <= 3:
            text.append(f"{meters[0]} demo meters from the simulated rig\n", style="bold")
        else:
            shown = ", ".join(meters[:6]) + (f" … (+{len(meters) - 6})" if len(meters) > 6 else "")
            text.append(f"{len(meters)} meters: {shown}\n", style="bold")
        text.append(f"Reason: {form['reason']}")

        def started(outputs: list[Any]) -> None:
            self._message(Text(f"StartBatch sent: batch {outputs[0]}", style="green"))

        self._confirm_then_call(
            CommandConfirm("Confirm start batch", text, "Start"),
            declined=Text("Batch not started.", style="dim"),
            call=lambda: self.client.call(
                "line", "StartBatch", form["scheme"], meters, form["reason"]
            ),
            method="StartBatch",
            kind="start_batch",
            done=started,
        )

    def action_abort_batch(self) -> None:
        c = self.client
        if not c.can_command("abort_batch"):
            return
        batch_id = self._value("line/batch/id")
        if self._value("line/state") != "running" or not batch_id:
            self._message(Text("No batch is running.", style="dim"))
            return
        note = Text(f"Abort batch {batch_id}", style="bold")
        self.app.push_screen(FormDialog("Abort the batch", [], note), self._abort_chosen(batch_id))

    def _abort_chosen(self, batch_id: str) -> Any:
        async def chosen(form: dict[str, str] | None) -> None:
            if form is None:
                self._message(Text("Abort cancelled.", style="dim"))
                return
            text = Text()
            text.append("ABORT", style="bold reverse")
            text.append(f" batch {batch_id}\n\n")
            text.append("Sources off, stations to their safe state; running items are\n")
            text.append("recorded as interrupted. The batch does not resume by itself.\n")
            text.append(f"Reason: {form['reason']}")

            self._confirm_then_call(
                CommandConfirm("Confirm abort", text, "Abort batch"),
                declined=Text(f"Batch {batch_id} not aborted.", style="dim"),
                call=lambda: self.client.call("line", "AbortBatch", batch_id, form["reason"]),
                method="AbortBatch",
                kind="abort_batch",
                done=lambda _: self._message(Text(f"AbortBatch {batch_id} sent.", style="green")),
            )

        return chosen
