"""Meters: a table that stays fast at 10 000 rows, a filter, sorting, a detail pane.

Only changed cells are redrawn (``DataTable.update_cell``); the table itself
renders only the visible rows. Rows are re-ordered only when the operator asks
(``s``/``r``) so the row under the cursor does not jump while values change.

Only the rows on screen are subscribed, following scrolling: every monitored
item on a value that changes costs the server work per change, and 10 000
meters changing at 1 Hz are more than it can carry beside its other clients
(bench/hmi.py). Sorting by a value or quality and the ``bad`` filter need every
meter's values: they read them all once, when the operator asks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, ClassVar

from asyncua import ua
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.widgets import DataTable, Input, Sparkline, Static

from ..client import Quality, Reading
from ..format import NOT_AVAILABLE, show, show_reading
from .base import View

# (column key, label with unit, variable names that carry it, digits). The
# drivers name quantities after the DL/T 645 data items (``power_active_total``);
# the second names are those of the OPC UA MeterType declaration, used by
# servers that publish meters under the type's names.
TABLE_QUANTITIES: tuple[tuple[str, str, tuple[str, ...], int], ...] = (
    ("p", "P kW", ("power_active_total", "power_active"), 3),
    ("ua", "Ua V", ("voltage_a",), 1),
    ("ia", "Ia A", ("current_a",), 2),
    ("e", "E+ kWh", ("energy_fwd_active_total", "energy_forward_active"), 1),
)
COLUMN_KEYS = tuple(k for k, _l, _n, _d in TABLE_QUANTITIES)
LABELS = {k: label for k, label, _n, _d in TABLE_QUANTITIES} | {
    "meter": "meter",
    "bus": "bus",
    "quality": "quality",
}
DIGITS = {k: d for k, _l, _n, d in TABLE_QUANTITIES}
SORT_KEYS = ("meter", "bus", *COLUMN_KEYS, "quality")
TREND_COLUMN = "p"
TREND_POINTS = 120
_Q_RANK = {Quality.GOOD: 0, Quality.UNCERTAIN: 1, Quality.BAD: 2}


class MetersView(View):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "Filter"),
        Binding("s", "sort", "Sort"),
        Binding("r", "reverse", "Reverse"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.meters: dict[str, tuple[str, str]] = {}  # meter path -> (bus, address)
        self.shown: list[str] = []
        self.filter_text = ""
        self.sort_key = "meter"
        self.sort_reverse = False
        self.selected: str | None = None
        self.detail_paths: list[str] = []
        self.units: dict[str, str] = {}
        self.trend: deque[float] = deque(maxlen=TREND_POINTS)
        self._cell_of: dict[str, tuple[str, str]] = {}  # tag path -> (row key, column key)
        self.columns: dict[str, dict[str, str]] = {}  # bus -> column key -> variable name
        self._select_task: asyncio.Task[None] | None = None
        self._index: dict[str, int] = {}  # meter -> row index in the table
        self._deferred: set[str] = set()  # rows off screen whose cells are out of date
        self._paths_of: dict[str, list[str]] = {}  # meter -> its table cells' tag paths
        self._fast: set[str] = set()  # cells of the rows on screen, watched at the fast rate
        self._fast_task: asyncio.Task[None] | None = None
        self._fast_dirty = False
        self._refresh_task: asyncio.Task[None] | None = None

    def compose(self) -> ComposeResult:
        yield Input(placeholder="/ filter: address, bus, or 'bad'", id="meter-filter")
        yield Static(id="meter-status")
        yield DataTable(id="meter-table", cursor_type="row", zebra_stripes=True)
        with Vertical(id="meter-detail"):
            yield Static(id="meter-detail-text")
            yield Sparkline([], id="meter-trend", summary_function=max)

    def on_mount(self) -> None:
        table = self.query_one("#meter-table", DataTable)
        table.add_column("Meter", key="meter", width=12)
        table.add_column("Bus", key="bus", width=6)
        for key, label, _n, _d in TABLE_QUANTITIES:
            table.add_column(label, key=key, width=9)
        table.add_column("Quality", key="quality", width=10)
        self.watch(table, "scroll_y", self._scrolled, init=False)

    # -- plant ------------------------------------------------------------------
    async def plant_changed(self) -> None:
        plant = self.client.plant
        self.meters = {
            path: (bus, path.rsplit("/", 1)[-1])
            for bus, paths in plant.buses.items()
            for path in paths
        }
        # Each column reads the first of its names the bus's meters have.
        self.columns = {}
        for bus, leaves in plant.meter_leaves.items():
            self.columns[bus] = {
                key: next(n for n in names if n in leaves)
                for key, _l, names, _d in TABLE_QUANTITIES
                if any(n in leaves for n in names)
            }
        self._cell_of = {
            f"{m}/{leaf}": (m, key)
            for m, (bus, _a) in self.meters.items()
            for key, leaf in self.columns.get(bus, {}).items()
        }
        self._paths_of = {}
        for path, (meter, _key) in self._cell_of.items():
            self._paths_of.setdefault(meter, []).append(path)
        # `_fast` is kept: the client re-creates what it watched on a new connection,
        # and rows of a plant that changed are dropped by the next follow.
        self.refresh_rows()
        if self.selected is not None and self.selected in self.meters:
            await self._select(self.selected)

    # -- rows -------------------------------------------------------------------
    def path(self, meter: str, key: str) -> str | None:
        """Tag path of column ``key`` for ``meter`` (None: its meters do not have it)."""
        leaf = self.columns.get(self.meters[meter][0], {}).get(key)
        return None if leaf is None else f"{meter}/{leaf}"

    def _row_quality(self, meter: str) -> tuple[Quality, Reading | None]:
        worst, which = Quality.GOOD, None
        for key in COLUMN_KEYS:
            path = self.path(meter, key)
            r = None if path is None else self.client.get(path)
            if r is None or self.client.missing_code(r):
                continue
            if which is None or _Q_RANK[r.quality] > _Q_RANK[worst]:
                worst, which = r.quality, r
        return worst, which

    def _quality_cell(self, meter: str) -> Text:
        worst, reading = self._row_quality(meter)
        if reading is None:
            return Text("…", style="dim")
        if self.client.is_stale(reading):
            return Text("stale~", style="dim italic")
        if worst is Quality.GOOD:
            return Text("ok", style="green")
        if worst is Quality.UNCERTAIN:
            return Text(f"? {reading.status_text}"[:10], style="yellow")
        return Text(f"✖ {reading.status_text}"[:10], style="bold red")

    def _cells(self, meter: str) -> list[Text | str]:
        bus, addr = self.meters[meter]
        cells: list[Text | str] = [addr, bus]
        for key in COLUMN_KEYS:
            path = self.path(meter, key)
            cells.append(
                NOT_AVAILABLE if path is None else show(self.client, path, digits=DIGITS[key])
            )
        cells.append(self._quality_cell(meter))
        return cells

    def _matches(self, meter: str, needle: str) -> bool:
        if not needle:
            return True
        bus, addr = self.meters[meter]
        if needle == "bad":
            return self._row_quality(meter)[0] is Quality.BAD
        return needle in addr or needle == bus or needle in f"{bus}/{addr}"

    def _sort_value(self, meter: str) -> tuple[int, Any]:
        key = self.sort_key
        if key == "meter":
            return (0, self.meters[meter][1])
        if key == "bus":
            return (0, self.meters[meter])
        if key == "quality":
            return (-_Q_RANK[self._row_quality(meter)[0]], self.meters[meter][1])
        path = self.path(meter, key)
        r = None if path is None else self.client.get(path)
        if r is None or r.quality is Quality.BAD or not isinstance(r.value, int | float):
            return (1, 0.0)  # no value: always last
        return (0, r.value)

    def _needs_values(self) -> bool:
        return self.sort_key not in ("meter", "bus") or self.filter_text.strip().lower() == "bad"

    def _value_paths(self) -> list[str]:
        """The cells the order and the filter read: one column, or all for quality."""
        if self.sort_key in COLUMN_KEYS and self.filter_text.strip().lower() != "bad":
            key = self.sort_key
            return [p for p, (_m, k) in self._cell_of.items() if k == key and p not in self._fast]
        return [p for p in self._cell_of if p not in self._fast]

    def refresh_rows(self) -> None:
        """Rebuild; when the order or the filter depends on values, read them all first."""
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            self._refresh_task = None
        if not self._needs_values():
            self.rebuild()
            return
        self._refresh_task = asyncio.create_task(self._read_then_rebuild())

    async def _read_then_rebuild(self) -> None:
        try:
            await self.client.read(self._value_paths())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # shown as it is: the order uses the values at hand
            self.notify(f"reading the meters' values failed: {exc}", severity="warning")
        self.rebuild()

    def rebuild(self) -> None:
        """Filter and sort, then refill the table (used on filter/sort and connect)."""
        needle = self.filter_text.strip().lower()
        shown = [m for m in self.meters if self._matches(m, needle)]
        with_value = [m for m in shown if self._sort_value(m)[0] == 0]
        without = [m for m in shown if self._sort_value(m)[0] != 0]
        with_value.sort(key=self._sort_value, reverse=self.sort_reverse)
        self.shown = with_value + without
        self._index = {m: i for i, m in enumerate(self.shown)}
        self._deferred.clear()
        table = self.query_one("#meter-table", DataTable)
        table.clear()
        for meter in self.shown:
            table.add_row(*self._cells(meter), key=meter)
        if self.selected in self.shown:
            table.move_cursor(row=self.shown.index(self.selected), animate=False)
        self._status()
        self._follow_screen()

    def _status(self) -> None:
        arrow = "↓" if self.sort_reverse else "↑"
        text = Text()
        text.append(f"{len(self.shown)} of {len(self.meters)} meters", style="bold")
        text.append(f"  sort: {LABELS[self.sort_key]} {arrow}")
        if self.filter_text:
            text.append(f"  filter: {self.filter_text!r}", style="yellow")
        self.query_one("#meter-status", Static).update(text)

    def _visible(self) -> range:
        table = self.query_one("#meter-table", DataTable)
        top = int(table.scroll_y)
        return range(max(0, top - 2), top + table.size.height + 2)

    def _redraw_row(self, table: DataTable[Any], meter: str) -> None:
        keys = ("meter", "bus", *COLUMN_KEYS, "quality")
        for key, cell in zip(keys, self._cells(meter), strict=True):
            table.update_cell(meter, key, cell)

    def activate(self) -> None:
        super().activate()
        self.call_after_refresh(self._on_screen)

    def on_resize(self) -> None:
        self.call_after_refresh(self._on_screen)

    def _on_screen(self) -> None:
        self._follow_screen()
        self._redraw_deferred()

    def _follow_screen(self, settle: float = 0.0) -> None:
        """Watch the rows on screen (after ``settle`` s: scrolling settles first)."""
        if self._fast_task is None or self._fast_task.done():
            self._fast_task = asyncio.create_task(self._update_fast(settle))
        else:
            self._fast_dirty = True

    async def _update_fast(self, settle: float) -> None:
        if settle:
            await asyncio.sleep(settle)
        while True:
            self._fast_dirty = False
            try:
                visible = self._visible()
            except NoMatches:  # the view is gone (the app is closing)
                return
            shown = self.shown
            want = {
                p
                for i in range(max(0, visible.start), min(len(shown), visible.stop))
                for p in self._paths_of.get(shown[i], ())
            }
            add, drop = want - self._fast, self._fast - want
            self._fast = want
            if add:
                await self.client.watch(add)
            if drop:
                # Rows that left the screen are no longer kept current: redraw them
                # from the cache when they come back, not with the old text.
                self._deferred.update(self._cell_of[p][0] for p in drop if p in self._cell_of)
                # the detail pane still shows the selected meter's cells
                await self.client.unwatch(p for p in drop if p not in self.detail_paths)
            if not self._fast_dirty:
                return

    def _scrolled(self) -> None:
        # scrolling through rows must not subscribe to each row it passes
        self._follow_screen(settle=0.1)
        self._redraw_deferred()

    def _redraw_deferred(self) -> None:
        if not self._deferred:
            return
        table = self.query_one("#meter-table", DataTable)
        visible = self._visible()
        now = [m for m in self._deferred if self._index.get(m, -1) in visible]
        for meter in now:
            self._deferred.discard(meter)
            if meter in table.rows:
                self._redraw_row(table, meter)

    def update_values(self, changed: set[str] | None) -> None:
        # Only rows on screen are redrawn; the others are marked and redrawn
        # when scrolled into view (10 000 rows changing at 1 Hz stay cheap).
        table = self.query_one("#meter-table", DataTable)
        visible = self._visible()
        index = self._index
        if changed is None:
            for meter in self.shown:
                if index[meter] in visible:
                    self._redraw_row(table, meter)
                else:
                    self._deferred.add(meter)
            self._update_detail(None)
            return
        rows = table.rows
        touched: set[str] = set()
        cell_of = self._cell_of
        client = self.client
        deferred = self._deferred
        for path in changed:
            where = cell_of.get(path)
            if where is None:
                continue
            meter, q = where
            if meter not in rows:
                continue
            if index.get(meter, -1) not in visible:
                deferred.add(meter)
                continue
            table.update_cell(meter, q, show(client, path, digits=DIGITS[q]))
            touched.add(meter)
        for meter in touched:
            table.update_cell(meter, "quality", self._quality_cell(meter))
        self._update_detail(changed)

    # -- filter and sort ----------------------------------------------------------
    def action_filter(self) -> None:
        self.query_one("#meter-filter", Input).focus()

    def action_clear_filter(self) -> None:
        inp = self.query_one("#meter-filter", Input)
        inp.value = ""
        self.query_one("#meter-table", DataTable).focus()

    @on(Input.Changed, "#meter-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self.refresh_rows()

    @on(Input.Submitted, "#meter-filter")
    def _filter_done(self, _event: Input.Submitted) -> None:
        self.query_one("#meter-table", DataTable).focus()

    def action_sort(self) -> None:
        self.sort_key = SORT_KEYS[(SORT_KEYS.index(self.sort_key) + 1) % len(SORT_KEYS)]
        self.refresh_rows()

    def action_reverse(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self.refresh_rows()

    # -- detail --------------------------------------------------------------------
    @on(DataTable.RowHighlighted, "#meter-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        meter = event.row_key.value
        if meter is None or meter == self.selected:
            return
        if self._select_task is not None:
            self._select_task.cancel()
        self._select_task = asyncio.create_task(self._select(meter))

    async def _select(self, meter: str) -> None:
        # A short pause: scrolling through rows must not subscribe to each of them.
        await asyncio.sleep(0.15)
        old = [p for p in self.detail_paths if p not in self._fast]
        self.selected = meter
        self.trend.clear()
        names = [n for n, _i, cls in await self.client.browse(meter) if cls == 2]
        self.detail_paths = [f"{meter}/{n}" for n in sorted(names)]
        await self._load_units(names)
        if old:
            await self.client.unwatch(p for p in old if p not in self.detail_paths)
        await self.client.watch(self.detail_paths)
        trend_path = self.path(meter, TREND_COLUMN) if meter in self.meters else None
        r = None if trend_path is None else self.client.get(trend_path)
        if r is not None and r.quality is not Quality.BAD and isinstance(r.value, float):
            self.trend.append(r.value)
        self._update_detail(None)

    async def _load_units(self, names: list[str]) -> None:
        todo = [n for n in names if n not in self.units]
        if not todo or self.selected is None or self.client._client is None:
            return
        client = self.client._client
        params = ua.ReadParameters()
        for n in todo:
            rv = ua.ReadValueId()
            rv.NodeId = self.client.nid(f"{self.selected}/{n}.EngineeringUnits")
            rv.AttributeId = ua.AttributeIds.Value
            params.NodesToRead.append(rv)
        try:
            results = await client.uaclient.read(params)
        except Exception:
            return
        for n, dv in zip(todo, results, strict=True):
            eu = dv.Value.Value if dv.Value is not None else None
            text = getattr(getattr(eu, "DisplayName", None), "Text", None)
            self.units[n] = str(text) if text else ""

    def _update_detail(self, changed: set[str] | None) -> None:
        meter = self.selected
        if meter is None:
            self.query_one("#meter-detail-text", Static).update(
                Text("Select a meter for its detail.", style="dim")
            )
            return
        trend_path = self.path(meter, TREND_COLUMN) if meter in self.meters else None
        if changed is not None:
            if trend_path is not None and trend_path in changed:
                r = self.client.get(trend_path)
                if r is not None and r.quality is not Quality.BAD and isinstance(r.value, float):
                    self.trend.append(r.value)
            if not any(p in changed for p in self.detail_paths):
                return
        bus, addr = self.meters.get(meter, ("?", meter))
        text = Text()
        text.append(f"Meter {addr} on {bus}", style="bold")
        text.append("   P trend since selected:", style="dim")
        text.append("\n")
        for i, path in enumerate(self.detail_paths):
            name = path.rsplit("/", 1)[-1]
            text.append(f"{name[:23]:<23} ")
            cell = show(self.client, path, digits=3)
            text.append_text(cell)
            unit = self.units.get(name, "")
            text.append(f" {unit}".ljust(max(1, 13 - len(cell.plain))))
            text.append("\n" if i % 2 else "  ")
        self.query_one("#meter-detail-text", Static).update(text)
        self.query_one("#meter-trend", Sparkline).data = list(self.trend)


__all__ = ["MetersView", "show_reading"]
