"""Loads: relay state, keep-power, demand groups; commands with arm → confirm → execute.

Demand groups (``demand/groups/<name>``) show the sliding-window demand against
the limit in force, the group state and how many rounds are shed; engineers
may set a group's limit (SetDemandLimit, form → confirm → call).

A command's state is followed here by read-back: it is *confirmed* only when
the load's ``relay_open`` (or ``keep_power``) reads what was commanded, with
Good quality. Until then it is pending; after ``CONFIRM_TIMEOUT_S`` it is shown
as not confirmed. (The server does not expose command records yet.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Static

from ..client import NODE_VARIABLE, CommandError, Quality
from ..format import show
from .base import View
from .dialogs import ArmDialog, CommandConfirm, ConfirmDialog, FormDialog, FormField

LOAD_FIELDS = ("relay_open", "relay_commanded_open", "keep_power")
KINDS = (
    "trip",
    "close_direct",
    "close_allowed",
    "alarm_on",
    "alarm_off",
    "keep_power_on",
    "keep_power_off",
)
# kind -> (tag, value that confirms it)
EXPECT: dict[str, tuple[str, bool]] = {
    "trip": ("relay_open", True),
    "close_direct": ("relay_open", False),
    "keep_power_on": ("keep_power", True),
    "keep_power_off": ("keep_power", False),
}
CONFIRM_TIMEOUT_S = 60.0
# Group variables shown by name, in this order; any others follow generically.
GROUP_FIELDS = ("average_kw", "limit_kw", "state", "rounds_shed", "LastCommandState")
GROUP_STATE_STYLE = {"normal": "green", "over_limit": "bold yellow", "shed": "bold red"}


@dataclass(slots=True)
class CommandRecord:
    command_id: str
    load: str
    kind: str
    reason: str
    sent: float
    state: str = "sent"  # sent → confirmed | not confirmed | (no read-back for this kind)


class LoadsView(View):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("x", "command", "Command…"),
        Binding("t", "command('trip')", "Trip…"),
        Binding("c", "command('close_direct')", "Close…"),
        Binding("l", "set_limit", "Demand limit…"),
    ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: list[CommandRecord] = []
        self._group_paths: dict[str, list[str]] = {}  # group -> its variables
        # (group, limit sent, command id) until the group's limit_kw reads it back
        self.limit_sent: tuple[str, float, str] | None = None

    def compose(self) -> ComposeResult:
        yield DataTable(id="load-table", cursor_type="row", zebra_stripes=True)
        yield Static(id="load-groups")
        yield Static(id="load-commands")

    def on_mount(self) -> None:
        table = self.query_one("#load-table", DataTable)
        for label, key, width in (
            ("Load", "load", 14),
            ("Relay", "relay", 9),
            ("Commanded", "cmd", 9),
            ("Keep-power", "keep", 10),
            ("Last command", "last", 30),
        ):
            table.add_column(label, key=key, width=width)
        self.set_interval(1.0, self._tick)

    async def plant_changed(self) -> None:
        plant = self.client.plant
        table = self.query_one("#load-table", DataTable)
        table.clear()
        for load in plant.loads:
            table.add_row(*self._cells(load), key=load)
        paths = [f"{load}/{f}" for load in plant.loads for f in LOAD_FIELDS]
        self._group_paths = {}
        for group in plant.groups:
            names = [n for n, _i, cls in await self.client.browse(group) if cls == NODE_VARIABLE]
            known = [n for n in GROUP_FIELDS if n in names]
            others = sorted(n for n in names if n not in GROUP_FIELDS and n != "LastCommandId")
            self._group_paths[group] = [f"{group}/{n}" for n in known + others]
            paths += self._group_paths[group]
        await self.client.watch(paths)
        self._plant_shown()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Commands the session may not give are not offered (hidden from the footer)."""
        c = self.client
        if action == "set_limit":
            return bool(c.plant.groups) and c.can_command("set_demand_limit")
        if action == "command":
            return c.can_command()
        return True

    def _relay(self, path: str) -> Text:
        r = self.client.get(path)
        if r is None or r.quality is Quality.BAD:
            return show(self.client, path)
        return show(
            self.client,
            path,
            text="OPEN" if r.value else "closed",
            style="bold red" if r.value else "green",
        )

    def _cells(self, load: str) -> list[Text | str]:
        keep = self.client.get(f"{load}/keep_power")
        keep_cell = show(
            self.client,
            f"{load}/keep_power",
            text="KEEP" if keep is not None and keep.value else "-",
            style="bold yellow" if keep is not None and keep.value else "dim",
        )
        last = next((c for c in reversed(self.commands) if c.load == load), None)
        last_cell = Text("")
        if last is not None:
            style = {"confirmed": "green", "not confirmed": "bold red"}.get(last.state, "yellow")
            last_cell = Text(f"{last.kind} {last.command_id}: {last.state}", style=style)
        return [
            load.split("/", 1)[-1],
            self._relay(f"{load}/relay_open"),
            self._relay(f"{load}/relay_commanded_open"),
            keep_cell,
            last_cell,
        ]

    def update_values(self, changed: set[str] | None) -> None:
        self._check_confirmations()
        table = self.query_one("#load-table", DataTable)
        for load in self.client.plant.loads:
            if changed is not None and not any(p.startswith(f"{load}/") for p in changed):
                continue
            if load not in table.rows:
                continue
            for key, cell in zip(
                ("load", "relay", "cmd", "keep", "last"), self._cells(load), strict=True
            ):
                table.update_cell(load, key, cell)
        self._show_groups()
        self._show_commands()
        self._check_limit()

    def _show_groups(self) -> None:
        c = self.client
        out = Text()
        if not c.plant.groups:
            out.append("Demand groups: none on this server", style="dim")
        for group in c.plant.groups:
            out.append(f"Group {group.rsplit('/', 1)[-1]}", style="bold")
            paths = self._group_paths.get(group, [])
            demand, limit = c.get(f"{group}/average_kw"), c.get(f"{group}/limit_kw")
            if f"{group}/average_kw" in paths:
                out.append("  demand ")
                out.append_text(show(c, f"{group}/average_kw", digits=1))
            if f"{group}/limit_kw" in paths:
                out.append(" / limit ")
                out.append_text(show(c, f"{group}/limit_kw", digits=1))
                out.append(" kW")
            good = (demand, limit)
            if all(r is not None and r.quality is Quality.GOOD for r in good):
                assert demand is not None and limit is not None
                if isinstance(limit.value, float) and limit.value > 0:
                    share = 100.0 * float(demand.value) / limit.value
                    style = "bold red" if share >= 100 else "yellow" if share >= 80 else ""
                    out.append(f" ({share:.0f} %)", style=style)
            state = c.get(f"{group}/state")
            if f"{group}/state" in paths:
                out.append("  ")
                out.append_text(
                    show(
                        c,
                        f"{group}/state",
                        style=GROUP_STATE_STYLE.get(str(state.value) if state else "", "bold"),
                    )
                )
            if f"{group}/rounds_shed" in paths:
                out.append("  rounds shed ")
                out.append_text(show(c, f"{group}/rounds_shed"))
            for path in paths:
                name = path.rsplit("/", 1)[-1]
                if name in GROUP_FIELDS[:4]:
                    continue
                last = c.get(path)
                if name == "LastCommandState" and (
                    last is None or last.quality is not Quality.GOOD
                ):
                    continue  # no command yet
                out.append("\n  " if name == "LastCommandState" else "  ")
                out.append("last command " if name == "LastCommandState" else f"{name} ")
                out.append_text(show(c, path, digits=1))
            out.append("\n")
        self.query_one("#load-groups", Static).update(out)

    # -- demand limit ----------------------------------------------------------------
    def action_set_limit(self) -> None:
        c = self.client
        groups = c.plant.groups
        if not groups:
            return
        if not c.can_command("set_demand_limit"):
            self._show_commands(
                Text(f"Your role ({c.role}) may not set demand limits.", style="yellow")
            )
            return
        choices = []
        for g in groups:
            limit = c.get(f"{g}/limit_kw")
            now = f"limit now {limit.value:g} kW" if limit and limit.value is not None else ""
            choices.append((g.rsplit("/", 1)[-1], now))
        fields = [FormField("group", "Group", choices=tuple(choices))]
        fields.append(FormField("limit_kw", "New limit (kW)", placeholder="e.g. 15.0"))
        note = Text("SetDemandLimit: overrides the group's limit in force (engineer).", "dim")
        self.app.push_screen(FormDialog("Set demand limit", fields, note), self._limit_chosen)

    async def _limit_chosen(self, form: dict[str, str] | None) -> None:
        if form is None:
            self._show_commands(Text("Demand limit unchanged.", style="dim"))
            return
        group = next(g for g in self.client.plant.groups if g.endswith(f"/{form['group']}"))
        try:
            value = float(form["limit_kw"])
        except ValueError:
            self._show_commands(Text(f"{form['limit_kw']!r} is not a number.", style="bold red"))
            return
        old = self.client.get(f"{group}/limit_kw")
        text = Text()
        text.append(f"Set the demand limit of {form['group']}\n", style="bold")
        if old is not None and old.value is not None:
            text.append(f"from {old.value:g} kW ")
        text.append(f"to {value:g} kW", style="bold reverse")
        text.append(f"\nReason: {form['reason']}")

        def sent(outputs: list[Any]) -> None:
            command_id = outputs[0]
            self.limit_sent = (group, value, str(command_id))
            self._show_commands(
                Text(f"SetDemandLimit {form['group']} {value:g} kW: {command_id} sent", "yellow")
            )
            self._check_limit()

        self._confirm_then_call(
            CommandConfirm("Confirm demand limit", text, "Set limit"),
            declined=Text("Demand limit not sent.", style="dim"),
            call=lambda: self.client.call(group, "SetDemandLimit", f"{value:g}", form["reason"]),
            method="SetDemandLimit",
            kind="set_demand_limit",
            done=sent,
        )

    def _check_limit(self) -> None:
        """A limit is shown as applied only once the group's limit_kw reads it (Good)."""
        if self.limit_sent is None:
            return
        group, value, command_id = self.limit_sent
        r = self.client.get(f"{group}/limit_kw")
        if r is None or r.quality is not Quality.GOOD or self.client.is_stale(r):
            return
        if isinstance(r.value, float) and abs(r.value - value) < 1e-9:
            self.limit_sent = None
            name = group.rsplit("/", 1)[-1]
            self._show_commands(
                Text(f"SetDemandLimit {name}: limit reads {r.value:g} kW ({command_id})", "green")
            )

    def _message(self, text: Text) -> None:
        self._show_commands(text)

    def _show_commands(self, message: Text | None = None) -> None:
        out = Text()
        if message is not None:
            out.append_text(message)
            out.append("\n")
        for c in self.commands[-3:][::-1]:
            style = {"confirmed": "green", "not confirmed": "bold red"}.get(c.state, "yellow")
            out.append(f"{c.command_id} {c.kind} {c.load.split('/', 1)[-1]}: ")
            out.append(c.state, style=style)
            out.append(f"  ({c.reason})\n", style="dim")
        if message is not None or self.commands:
            self.query_one("#load-commands", Static).update(out)

    def _check_confirmations(self) -> None:
        now = time.monotonic()
        for c in self.commands:
            if c.state != "sent":
                continue
            expect = EXPECT.get(c.kind)
            if expect is None:
                c.state = "sent (no read-back for this kind)"
                continue
            tag, want = expect
            r = self.client.get(f"{c.load}/{tag}")
            if (
                r is not None
                and r.quality is Quality.GOOD
                and not self.client.is_stale(r)
                and bool(r.value) == want
                and r.received >= c.sent
            ):
                c.state = "confirmed"
            elif now - c.sent > CONFIRM_TIMEOUT_S:
                c.state = "not confirmed"

    def _tick(self) -> None:
        if any(c.state == "sent" for c in self.commands):
            self.update_values(None)

    # -- commands ------------------------------------------------------------------
    def selected_load(self) -> str | None:
        table = self.query_one("#load-table", DataTable)
        if table.row_count == 0:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def action_command(self, preselect: str | None = None) -> None:
        c = self.client
        load = self.selected_load()
        if load is None:
            self._show_commands(Text("No load selected.", style="dim"))
            return
        if c.role == "anonymous":
            self._show_commands(
                Text("Read-only session: log in with --user to issue commands.", style="yellow")
            )
            return
        kinds = [k for k in KINDS if c.can_command(k)]
        if not kinds:
            self._show_commands(
                Text(f"Your role ({c.role}) may not issue commands.", style="yellow")
            )
            return
        self.app.push_screen(ArmDialog(load, kinds, preselect), self._armed_choice(load))

    def _armed_choice(self, load: str) -> Any:
        async def chosen(choice: tuple[str, str] | None) -> None:
            if choice is None:
                self._show_commands(Text("Command cancelled.", style="dim"))
                return
            kind, reason = choice
            try:
                token, expires = await self.client.call(load, "Arm", kind, reason)
            except CommandError as err:
                if err.denied:
                    self.client.denied_kinds.add(kind)
                self._show_commands(Text(f"Arm {kind} on {load}: {err.message}", style="bold red"))
                return

            async def confirmed(ok: bool | None) -> None:
                if not ok:
                    self._show_commands(
                        Text(f"{kind} on {load} not executed (arm left to lapse).", style="dim")
                    )
                    return
                await self._execute(load, kind, reason, str(token))

            self.app.push_screen(ConfirmDialog(load, kind, reason, expires), confirmed)

        return chosen

    async def _execute(self, load: str, kind: str, reason: str, token: str) -> None:
        sent = time.monotonic()
        try:
            (command_id, *_rest) = await self.client.call(load, "Execute", token)
        except CommandError as err:
            self._show_commands(Text(f"Execute {kind} on {load}: {err.message}", style="bold red"))
            return
        self.commands.append(CommandRecord(str(command_id), load, kind, reason, sent))
        self.commands = self.commands[-50:]
        self.update_values(None)
