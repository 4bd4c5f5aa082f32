"""Verification line and warehouse.

Their OPC UA nodes (``line``, ``warehouse``) are being built. Until the server
has them these views say so plainly; when a node exists, its variables are
listed live (two levels deep) so the data is usable before the mimic lands.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from ..format import show
from .base import View

WHAT = {
    "line": (
        "Verification line",
        "stations (state, current item, temperature, verdicts), batches and results",
    ),
    "warehouse": (
        "Warehouse",
        "rack occupancy, crane position and task, conveyors and orders",
    ),
}


class AreaView(View):
    def __init__(self, client: Any, area: str, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.area = area
        self.paths: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static(id=f"{self.area}-status")
        yield DataTable(id=f"{self.area}-table", cursor_type="row")

    def on_mount(self) -> None:
        table = self.query_one(f"#{self.area}-table", DataTable)
        table.add_column("Item", key="item")
        table.add_column("Value", key="value")
        table.display = False

    def _present(self) -> bool:
        return bool(getattr(self.client.plant, self.area))

    async def plant_changed(self) -> None:
        title, what = WHAT[self.area]
        status = self.query_one(f"#{self.area}-status", Static)
        table = self.query_one(f"#{self.area}-table", DataTable)
        table.clear()
        self.paths = []
        if not self._present():
            status.update(
                Text.assemble(
                    (f"{title}: not available on this server.\n", "bold"),
                    (
                        f"It has no '{self.area}' node yet; when it does, this screen shows {what}.",
                        "dim",
                    ),
                )
            )
            table.display = False
            return
        # Generic live listing until the mimic for the final node layout is built.
        for _n, ident, cls in await self.client.browse(self.area):
            if cls == 2:
                self.paths.append(ident)
            else:
                self.paths += [i for _m, i, c in await self.client.browse(ident) if c == 2]
        status.update(Text(f"{title}: {len(self.paths)} values (generic view)", style="bold"))
        for path in self.paths:
            table.add_row(path.split("/", 1)[-1], show(self.client, path), key=path)
        table.display = True
        await self.client.watch(self.paths)

    def update_values(self, changed: set[str] | None) -> None:
        table = self.query_one(f"#{self.area}-table", DataTable)
        for path in self.paths:
            if (changed is None or path in changed) and path in table.rows:
                table.update_cell(path, "value", show(self.client, path))
