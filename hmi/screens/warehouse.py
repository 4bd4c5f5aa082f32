"""Warehouse (AS/RS): rack occupancy map, cranes, conveyors, orders; create and
cancel orders.

What the warehouse publishes under ``warehouse/``:

- ``slots/{occupied,free,reserved,blocked,unverified,qualified,rejected}``:
  slot counts;
- ``cranes/<aisle>/{state,x,y,task,fork_loaded,fork_barcode,door_open,fault}``;
- ``conveyors/<aisle>-in|out/{loads,eyes,motors,jam}``: ``loads`` is the load
  id per zone, comma separated; ``eyes`` and ``motors`` are bit masks by zone;
- ``orders/<state>``: how many orders are in each state.

The rack map needs the state of every slot. It is drawn from one String per
rack row and level, ``warehouse/racks/<row>/L<level>``, one character per bay
(``.`` free, ``U`` unverified, ``Q`` qualified, ``X`` rejected, ``*`` reserved,
``#`` blocked). A server without those shows the counts only and says so.

Orders are listed from the server's ring of recent commands
(``@commands/Recent``): a ``create_order`` command's reason names its order
(``order 12``, then ``order 12 completed`` …). Orders created elsewhere (CLI,
marketing system) appear in the counts only; cancel takes any order number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import DataTable, Static

from ..client import NODE_OBJECT, NODE_VARIABLE, Quality, Reading
from ..format import show
from .base import View
from .dialogs import CommandConfirm, FormDialog, FormField

SLOT_COUNTS = ("occupied", "free", "unverified", "qualified", "rejected", "reserved", "blocked")
ORDER_STATES = ("created", "released", "in_progress", "held", "completed", "failed", "cancelled")
CRANE_FIELDS = ("state", "x", "y", "task", "fork_loaded", "fork_barcode", "door_open", "fault")
CONVEYOR_FIELDS = ("loads", "eyes", "motors", "jam")
# slot code -> (map character, style, legend); the same order as the counts.
SLOT_CODES: dict[str, tuple[str, str, str]] = {
    ".": ("·", "dim", "free"),
    "U": ("U", "yellow", "unverified"),
    "Q": ("Q", "green", "qualified"),
    "X": ("X", "bold red", "rejected"),
    "*": ("*", "bold cyan", "reserved"),
    "#": ("#", "bold white on red", "blocked"),
}
OCCUPIED_CODES = frozenset("UQX")
MAP_BAND = 46  # characters of rack rows drawn side by side before the next band
# (kind, what its items are). inbound takes structured parameters that
# CreateOrder(kind, items, reason) cannot carry; the line feed creates the
# qualified-return orders itself.
ORDER_KINDS: tuple[tuple[str, str], ...] = (
    ("outbound_verification", "items: batch id, number of boxes"),
    ("distribution_outbound", "items: district, number of boxes"),
    ("inventory_count", "items: slot codes, e.g. R01-B001-L01"),
    ("relocation", "items: box barcode [, target slot]"),
    ("rejected_outbound", "items: number of rejected boxes"),
)
ORDER_REASON = re.compile(r"^order (\d+)(?: (\w+))?(?::\s*(.*))?$")


@dataclass(frozen=True, slots=True)
class OrderRow:
    order_id: str
    state: str  # open, completed, failed, cancelled … as the command record says
    command_id: str
    user: str
    detail: str

    @property
    def open(self) -> bool:
        return self.state == "open"


def _good(reading: Reading | None) -> bool:
    return reading is not None and reading.quality is not Quality.BAD


class WarehouseView(View):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("o", "create_order", "Create order…"),
        Binding("d", "cancel_order", "Cancel order…"),
    ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cranes: list[str] = []
        self.conveyors: list[str] = []
        self.racks: dict[str, list[str]] = {}  # rack row object -> level tags, top level first
        self.paths: set[str] = set()
        self.orders: list[OrderRow] = []
        self.kinds: dict[str, str] = {}  # command id -> order kind (orders made here)

    def compose(self) -> ComposeResult:
        yield Static(id="wh-status")
        with Horizontal(id="wh-top"):
            yield Static(id="wh-map")
            yield Static(id="wh-equipment")
        yield Static(id="wh-orders")
        yield DataTable(id="order-table", cursor_type="row", zebra_stripes=True)
        yield Static(id="wh-message")

    def on_mount(self) -> None:
        table = self.query_one("#order-table", DataTable)
        for label, key, width in (
            ("Order", "order", 6),
            ("State", "state", 10),
            ("Kind", "kind", 21),
            ("By", "user", 9),
            ("Detail", "detail", 20),
        ):
            table.add_column(label, key=key, width=width)

    # -- plant ------------------------------------------------------------------------
    async def plant_changed(self) -> None:
        c = self.client
        self.cranes, self.conveyors, self.racks, self.paths = [], [], {}, set()
        if c.plant.warehouse:
            children = await c.browse("warehouse")
            folders = {i.rsplit("/", 1)[-1]: i for _n, i, cls in children if cls == NODE_OBJECT}
            if "cranes" in folders:
                found = await c.browse(folders["cranes"])
                self.cranes = sorted(i for _n, i, cls in found if cls == NODE_OBJECT)
            if "conveyors" in folders:
                found = await c.browse(folders["conveyors"])
                self.conveyors = sorted(i for _n, i, cls in found if cls == NODE_OBJECT)
            if "racks" in folders:
                for _n, row, cls in sorted(await c.browse(folders["racks"])):
                    if cls != NODE_OBJECT:
                        continue
                    levels = [i for n, i, k in await c.browse(row) if k == NODE_VARIABLE]
                    self.racks[row] = sorted(levels, reverse=True)
            self.paths |= {f"warehouse/slots/{n}" for n in SLOT_COUNTS}
            self.paths |= {f"warehouse/orders/{n}" for n in ORDER_STATES}
            self.paths |= {f"{cr}/{n}" for cr in self.cranes for n in CRANE_FIELDS}
            self.paths |= {f"{cv}/{n}" for cv in self.conveyors for n in CONVEYOR_FIELDS}
            self.paths |= {lv for levels in self.racks.values() for lv in levels}
            self.paths |= set(c.command_ring_paths())
            await c.watch(self.paths)
        for widget in ("#wh-top", "#wh-orders", "#order-table"):
            self.query_one(widget).display = c.plant.warehouse
        self._plant_shown(c.plant.warehouse)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Commands the session may not give are not offered (hidden from the footer)."""
        if action in ("create_order", "cancel_order"):
            return self.client.plant.warehouse and self.client.can_command(action)
        return True

    # -- drawing ----------------------------------------------------------------------
    def update_values(self, changed: set[str] | None) -> None:
        if changed is not None and not (changed & self.paths):
            return
        self.query_one("#wh-status", Static).update(self._status())
        if not self.client.plant.warehouse:
            return
        self.query_one("#wh-map", Static).update(self.rack_map())
        self.query_one("#wh-equipment", Static).update(self._equipment())
        self.query_one("#wh-orders", Static).update(self._order_counts())
        self._show_orders()

    def _status(self) -> Text:
        c = self.client
        out = Text()
        if not c.plant.warehouse:
            out.append("Warehouse: not available on this server.\n", style="bold")
            out.append("It has no 'warehouse' node.", style="dim")
            return out
        out.append("Slots ", style="bold")
        out.append_text(show(c, "warehouse/slots/occupied", style="bold"))
        total = [self._value(f"warehouse/slots/{n}") for n in ("occupied", "free")]
        if all(isinstance(v, int) for v in total):
            out.append(f"/{sum(total)} occupied")
        else:
            out.append(" occupied")
        for name, (char, style, legend) in zip(SLOT_COUNTS[1:], _legend_order(), strict=True):
            out.append("  ")
            out.append(char, style=style)
            out.append(f" {legend} ")
            out.append_text(show(c, f"warehouse/slots/{name}"))
        return out

    def rack_map(self) -> Text:
        """Rows × bays × levels, one character per slot; the top level on top."""
        c = self.client
        if not self.racks:
            return Text(
                "No rack map: the server does not\n"
                "publish each slot's state\n"
                "(warehouse/racks/<row>/L<level>);\n"
                "the counts above are all there is.",
                style="dim",
            )
        out = Text()
        rows = list(self.racks)
        width = max((len(str(self._value(lv) or "")) for lv in self.paths_of(rows)), default=0)
        per_band = max(1, MAP_BAND // (max(width, 3) + 2))
        for start in range(0, len(rows), per_band):
            band = rows[start : start + per_band]
            out.append("    ")
            for row in band:
                out.append(f"R{row.rsplit('/', 1)[-1]}".ljust(width + 2), style="bold")
            out.append("\n")
            depth = max(len(self.racks[r]) for r in band)
            for i in range(depth):
                level = next(
                    (self.racks[r][i].rsplit("/", 1)[-1] for r in band if i < len(self.racks[r])),
                    "",
                )
                out.append(f"{level:<4}", style="bold")
                for row in band:
                    levels = self.racks[row]
                    if i >= len(levels):
                        out.append(" " * (width + 2))
                        continue
                    reading = c.get(levels[i])
                    out.append_text(self._map_cells(reading, width))
                    out.append("  ")
                out.append("\n")
        return out

    def paths_of(self, rows: list[str]) -> list[str]:
        return [lv for r in rows for lv in self.racks[r]]

    def _map_cells(self, reading: Reading | None, width: int) -> Text:
        c = self.client
        if reading is None or reading.quality is Quality.BAD or not isinstance(reading.value, str):
            return Text("?" * width, style="dim")  # unknown slots are never drawn as free
        stale = c.is_stale(reading)
        out = Text()
        for code in reading.value.ljust(width, "?"):
            char, style, _legend = SLOT_CODES.get(code, ("?", "dim", ""))
            out.append(char, style="dim italic" if stale else style)
        return out

    def map_counts(self) -> dict[str, int]:
        """Slots per code as drawn on the map (what the tests compare with the counts)."""
        counts: dict[str, int] = {}
        for lv in self.paths_of(list(self.racks)):
            value = self._value(lv)
            for code in str(value or ""):
                counts[code] = counts.get(code, 0) + 1
        return counts

    def _equipment(self) -> Text:
        c = self.client
        out = Text()
        for crane in self.cranes:
            fault = self._value(f"{crane}/fault")
            state = self._value(f"{crane}/state")
            out.append(f"Crane {crane.rsplit('/', 1)[-1]} ", style="bold")
            style = "bold red" if fault else "green" if state == "idle" else "bold yellow"
            out.append_text(show(c, f"{crane}/state", style=style))
            if fault:
                out.append(f" fault {fault}", style="bold red")
            out.append("\n  x ")
            out.append_text(show(c, f"{crane}/x", digits=1))
            out.append(" m  y ")
            out.append_text(show(c, f"{crane}/y", digits=1))
            out.append(" m  task ")
            task = self._value(f"{crane}/task")
            out.append_text(show(c, f"{crane}/task", text=str(task) if task else "—"))
            out.append("\n  fork ")
            loaded = self._value(f"{crane}/fork_loaded")
            barcode = self._value(f"{crane}/fork_barcode")
            out.append_text(
                show(
                    c,
                    f"{crane}/fork_loaded",
                    text=(str(barcode) or "loaded") if loaded else "empty",
                    style="bold" if loaded else "dim",
                )
            )
            door = self._value(f"{crane}/door_open")
            out.append("  door ")
            out.append_text(
                show(
                    c,
                    f"{crane}/door_open",
                    text="OPEN" if door else "closed",
                    style="bold red" if door else "",
                )
            )
            out.append("\n")
        if self.conveyors:
            out.append("Conveyors", style="bold")
            out.append("  ■ load  ▪ eye  · empty\n", style="dim")
        for conv in self.conveyors:
            out.append(f"  {conv.rsplit('/', 1)[-1]:<6}")
            out.append_text(self._zones(conv))
            out.append("\n")
        return out

    def _zones(self, conv: str) -> Text:
        c = self.client
        loads_r = c.get(f"{conv}/loads")
        if not _good(loads_r) or loads_r is None:
            return show(c, f"{conv}/loads")
        ids = str(loads_r.value or "").split(",")
        eyes = self._value(f"{conv}/eyes") or 0
        motors = self._value(f"{conv}/motors") or 0
        out = Text()
        for z, ident in enumerate(ids):
            if ident:
                out.append("■", style="bold yellow")
            elif int(eyes) >> z & 1:
                out.append("▪", style="yellow")
            else:
                out.append("·", style="dim")
        out.append(" moving" if motors else " stopped", style="" if motors else "dim")
        if self._value(f"{conv}/jam"):
            out.append(" JAM", style="bold white on red")
        first = next((i for i in ids if i), "")
        if first:
            out.append(f" {first}", style="dim")
        return out

    def _order_counts(self) -> Text:
        """Orders per state; states with none are left out so the line fits 80 columns."""
        c = self.client
        out = Text("Orders ", style="bold")
        shown = 0
        for state in ORDER_STATES:
            path = f"warehouse/orders/{state}"
            n = self._value(path)
            if n == 0:
                continue
            shown += 1
            style = "bold red" if state == "failed" else ""
            out.append(f"{state.replace('_', ' ')} ", style=style)
            out.append_text(show(c, path, style=style or "bold"))
            out.append("  ")
        if not shown:
            out.append("none in the warehouse's book", style="dim")
        return out

    def _show_orders(self) -> None:
        rows: list[OrderRow] = []
        for cmd in self.client.recent_commands():
            if cmd.kind != "create_order":
                continue
            match = ORDER_REASON.match(cmd.reason)
            if match is None:  # not released (refused, failed before an order existed)
                continue
            order_id, word, detail = match.groups()
            state = "open" if word is None else word
            if cmd.state in ("failed", "refused", "expired") and word is None:
                state = cmd.state
            rows.append(OrderRow(order_id, state, cmd.command_id, cmd.user, detail or ""))
        if rows == self.orders:
            return
        self.orders = rows
        table = self.query_one("#order-table", DataTable)
        cursor = table.cursor_row
        table.clear()
        styles = {"open": "bold yellow", "completed": "green", "cancelled": "dim"}
        for row in rows:
            table.add_row(
                row.order_id,
                Text(row.state, style=styles.get(row.state, "bold red")),
                self.kinds.get(row.command_id, "—"),
                row.user,
                row.detail,
                key=row.command_id,
            )
        if rows:
            table.move_cursor(row=min(cursor, len(rows) - 1))

    def _message(self, text: Text) -> None:
        self.query_one("#wh-message", Static).update(text)

    # -- commands -------------------------------------------------------------------
    def action_create_order(self) -> None:
        if not self.client.can_command("create_order"):
            return
        fields = [
            FormField("kind", "Kind", choices=ORDER_KINDS),
            FormField("items", "Items (comma separated)", placeholder="e.g. B-0001, 2"),
        ]
        note = Text(
            "inbound orders take parameters this form cannot send.",
            style="dim",
        )
        self.app.push_screen(
            FormDialog("Create warehouse order", fields, note), self._create_chosen
        )

    async def _create_chosen(self, form: dict[str, str] | None) -> None:
        if form is None:
            self._message(Text("No order created.", style="dim"))
            return
        items = [i.strip() for i in form["items"].split(",") if i.strip()]
        text = Text()
        text.append(f"Create order: {form['kind']}\n", style="bold")
        text.append(f"Items: {', '.join(items)}\n")
        text.append(f"Reason: {form['reason']}")

        def created(outputs: list[Any]) -> None:
            command_id = outputs[0]
            self.kinds[str(command_id)] = form["kind"]
            self._message(Text(f"CreateOrder sent: command {command_id}", style="green"))
            self.orders = []  # redraw with the kind
            self.update_values(None)

        self._confirm_then_call(
            CommandConfirm("Confirm order", text, "Create"),
            declined=Text("No order created.", style="dim"),
            call=lambda: self.client.call(
                "warehouse", "CreateOrder", form["kind"], items, form["reason"]
            ),
            method="CreateOrder",
            kind="create_order",
            done=created,
        )

    def selected_order(self) -> OrderRow | None:
        table = self.query_one("#order-table", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((o for o in self.orders if o.command_id == key), None)

    def action_cancel_order(self) -> None:
        if not self.client.can_command("cancel_order"):
            return
        row = self.selected_order()
        value = row.order_id if row is not None and row.open else ""
        fields = [FormField("order_id", "Order number", placeholder="e.g. 12", value=value)]
        self.app.push_screen(FormDialog("Cancel warehouse order", fields), self._cancel_chosen)

    async def _cancel_chosen(self, form: dict[str, str] | None) -> None:
        if form is None:
            self._message(Text("No order cancelled.", style="dim"))
            return
        order_id = form["order_id"]
        text = Text()
        text.append("CANCEL", style="bold reverse")
        text.append(f" warehouse order {order_id}\n\n")
        text.append("Only a created or released order none of whose boxes has moved\n")
        text.append("can be cancelled; the warehouse refuses the others.\n")
        text.append(f"Reason: {form['reason']}")

        self._confirm_then_call(
            CommandConfirm("Confirm cancel", text, "Cancel order"),
            declined=Text(f"Order {order_id} not cancelled.", style="dim"),
            call=lambda: self.client.call("warehouse", "CancelOrder", order_id, form["reason"]),
            method="CancelOrder",
            kind="cancel_order",
            done=lambda _: self._message(Text(f"CancelOrder {order_id} sent.", style="green")),
        )


def _legend_order() -> list[tuple[str, str, str]]:
    """Legend entries in the order of SLOT_COUNTS[1:] (free … blocked)."""
    by_legend = {legend: (char, style, legend) for char, style, legend in SLOT_CODES.values()}
    return [by_legend[name] for name in SLOT_COUNTS[1:]]
