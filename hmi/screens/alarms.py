"""Alarms: the list with severity colours, acknowledge with a comment, shelved ones apart."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Static

from ..client import ALARM_ACK, ALARM_LIST, CommandError, Quality
from ..format import severity_style, show
from .base import View
from .dialogs import AckDialog


@dataclass(frozen=True, slots=True)
class Alarm:
    alarm_id: str
    source: str
    message: str
    severity: int
    active: bool
    acknowledged: bool
    shelved: bool
    time: str


def parse_alarms(value: Any) -> list[Alarm]:
    """The ``@alarms/Active`` JSON list; anything malformed is skipped, not guessed."""
    try:
        items = json.loads(value) if isinstance(value, str) else []
    except ValueError:
        return []
    out: list[Alarm] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or "id" not in item:
            continue
        out.append(
            Alarm(
                alarm_id=str(item["id"]),
                source=str(item.get("source", "")),
                message=str(item.get("message", "")),
                severity=int(item.get("severity", 0)),
                active=bool(item.get("active", True)),
                acknowledged=bool(item.get("acknowledged", False)),
                shelved=bool(item.get("shelved", False)),
                time=str(item.get("time", "")),
            )
        )
    out.sort(key=lambda a: (a.acknowledged, -a.severity, a.time))
    return out


class AlarmsView(View):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "acknowledge", "Acknowledge"),
        Binding("v", "toggle_shelved", "Shelved"),
    ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.show_shelved = False
        self.alarms: list[Alarm] = []

    def compose(self) -> ComposeResult:
        yield Static(id="alarm-status")
        yield DataTable(id="alarm-table", cursor_type="row")
        yield Static(id="alarm-message")

    def on_mount(self) -> None:
        table = self.query_one("#alarm-table", DataTable)
        for label, key in (
            ("Sev", "sev"),
            ("State", "state"),
            ("Time", "time"),
            ("Source", "source"),
            ("Message", "message"),
            ("Id", "id"),
        ):
            table.add_column(label, key=key)

    async def plant_changed(self) -> None:
        if self.client.plant.has_alarm_list:
            await self.client.watch([ALARM_LIST])
        self._dirty = True
        if self.active:
            self.activate()

    def update_values(self, changed: set[str] | None) -> None:
        if changed is not None and ALARM_LIST not in changed:
            return
        c = self.client
        status = self.query_one("#alarm-status", Static)
        table = self.query_one("#alarm-table", DataTable)
        if not c.plant.has_alarm_list:
            status.update(
                Text(
                    "Alarm list not available on this server (no @alarms/Active node).",
                    style="dim",
                )
            )
            table.clear()
            return
        reading = c.get(ALARM_LIST)
        if reading is None or reading.quality is Quality.BAD:
            status.update(Text("Alarm list: ").append_text(show(c, ALARM_LIST)))
            return
        self.alarms = parse_alarms(reading.value)
        shown = [a for a in self.alarms if a.shelved == self.show_shelved]
        head = Text("Shelved alarms" if self.show_shelved else "Active alarms", style="bold")
        head.append(f"  {len(shown)} shown", style="")
        n_shelved = sum(1 for a in self.alarms if a.shelved)
        if not self.show_shelved:
            head.append(f"  ({n_shelved} shelved: v)", style="dim")
        if c.is_stale(reading):
            head.append("  STALE — not connected", style="bold red")
        status.update(head)
        cursor = table.cursor_row
        table.clear()
        for a in shown:
            label, style = severity_style(a.severity)
            state = Text(
                "ack" if a.acknowledged else "UNACK",
                style="dim" if a.acknowledged else "bold",
            )
            table.add_row(
                Text(f"{label} {a.severity}", style=style),
                state,
                a.time[11:19] if len(a.time) >= 19 else a.time,
                a.source,
                Text(a.message, style="" if a.acknowledged else "bold"),
                a.alarm_id,
                key=a.alarm_id,
            )
        if shown:
            table.move_cursor(row=min(cursor, len(shown) - 1))

    def selected(self) -> Alarm | None:
        table = self.query_one("#alarm-table", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((a for a in self.alarms if a.alarm_id == key), None)

    def action_toggle_shelved(self) -> None:
        self.show_shelved = not self.show_shelved
        self.update_values(None)

    def action_acknowledge(self) -> None:
        c = self.client
        msg = self.query_one("#alarm-message", Static)
        if not c.plant.has_acknowledge:
            msg.update(Text("Acknowledge is not available on this server.", style="dim"))
            return
        if not c.can_command():
            msg.update(Text(f"Your role ({c.role}) cannot acknowledge alarms.", style="yellow"))
            return
        alarm = self.selected()
        if alarm is None:
            msg.update(Text("No alarm selected.", style="dim"))
            return
        if alarm.acknowledged:
            msg.update(Text(f"{alarm.alarm_id} is already acknowledged.", style="dim"))
            return

        async def done(comment: str | None) -> None:
            if comment is None:
                msg.update(Text("Acknowledge cancelled.", style="dim"))
                return
            try:
                await c.call(ALARM_ACK.rsplit("/", 1)[0], "Acknowledge", alarm.alarm_id, comment)
            except CommandError as err:
                msg.update(Text(f"{alarm.alarm_id}: {err.message}", style="bold red"))
                return
            msg.update(Text(f"{alarm.alarm_id} acknowledged.", style="green"))

        self.app.push_screen(AckDialog(alarm.alarm_id, alarm.message), done)
