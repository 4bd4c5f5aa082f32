"""The gridctl operator HMI: a Textual app that is an OPC UA client of gridctl."""

from __future__ import annotations

import time
from typing import ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.widgets import Footer, Static, TabbedContent, TabPane

from .client import Conn, GridClient
from .screens.alarms import AlarmsView
from .screens.base import View
from .screens.dialogs import HelpScreen
from .screens.line import LineView
from .screens.loads import LoadsView
from .screens.meters import MetersView
from .screens.overview import OverviewView
from .screens.warehouse import WarehouseView

TABS: tuple[tuple[str, str], ...] = (
    ("overview", "1 Overview"),
    ("meters", "2 Meters"),
    ("loads", "3 Loads"),
    ("alarms", "4 Alarms"),
    ("line", "5 Line"),
    ("warehouse", "6 Warehouse"),
)


class ConnectionBar(Static):
    """Always visible: connection state, server, user and role."""

    def show_state(self, client: GridClient) -> None:
        text = Text()
        state = client.state
        self.set_class(state in (Conn.RECONNECTING, Conn.LOGIN_FAILED, Conn.STOPPED), "down")
        self.set_class(state is Conn.CONNECTING, "waiting")
        if state is Conn.CONNECTED:
            text.append("● CONNECTED ", style="bold")
        elif state is Conn.CONNECTING:
            text.append("◌ CONNECTING ", style="bold")
        elif state is Conn.RECONNECTING:
            text.append(f"▲ RECONNECTING (try {client.attempts}) — DATA STALE ", style="bold")
        else:
            text.append(f"✖ {state.value.upper()} ", style="bold")
        who = client.user or "anonymous"
        role = client.role or "?"
        text.append(f"{who} ({role}) ")
        if client.error and state is not Conn.CONNECTED:
            text.append(f"{client.error} ")
        elif state is Conn.CONNECTED:
            up = int(time.monotonic() - client.connected_since)
            text.append(f"up {up // 60}m{up % 60:02d}s ")
        text.append(client.url, style="dim")
        self.update(text)


class HmiApp(App[None]):
    TITLE = "gridctl HMI"
    CSS_PATH = "hmi.tcss"
    # textual declares this one without ClassVar (its annotation nests it in a union)
    HORIZONTAL_BREAKPOINTS = [  # noqa: RUF012
        (0, "-narrow"),
        (120, "-wide"),
    ]
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "tab('overview')", "Overview", show=False),
        Binding("2", "tab('meters')", "Meters", show=False),
        Binding("3", "tab('loads')", "Loads", show=False),
        Binding("4", "tab('alarms')", "Alarms", show=False),
        Binding("5", "tab('line')", "Line", show=False),
        Binding("6", "tab('warehouse')", "Warehouse", show=False),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, client: GridClient, *, start_client: bool = True) -> None:
        super().__init__()
        self.client = client
        self.start_client = start_client
        self._epoch_seen = 0
        # Held, not queried: app.query_one searches the active screen, which is a
        # dialog while one is open.
        self.conn_bar = ConnectionBar(id="conn")
        self.views: dict[str, View] = {
            "overview": OverviewView(client, id="view-overview"),
            "meters": MetersView(client, id="view-meters"),
            "loads": LoadsView(client, id="view-loads"),
            "alarms": AlarmsView(client, id="view-alarms"),
            "line": LineView(client, id="view-line"),
            "warehouse": WarehouseView(client, id="view-warehouse"),
        }

    def compose(self) -> ComposeResult:
        yield self.conn_bar
        with TabbedContent(initial="overview"):
            for key, title in TABS:
                with TabPane(title, id=key):
                    yield self.views[key]
        yield Footer()

    async def on_mount(self) -> None:
        self.client.on_state(self._state_changed)
        self.client.on_change(self._values_changed)
        self.views["overview"].activate()
        self._state_changed(self.client)
        self.set_interval(1.0, self._tick)
        if self.start_client:
            await self.client.start()

    async def on_unmount(self) -> None:
        if self.start_client:
            await self.client.stop()

    # -- client → views --------------------------------------------------------------
    def _state_changed(self, client: GridClient) -> None:
        if not self.conn_bar.is_mounted:  # starting or shutting down
            return
        self.conn_bar.show_state(client)
        if client.state is Conn.CONNECTED and client.epoch != self._epoch_seen:
            self._epoch_seen = client.epoch
            self.run_worker(self._plant_changed(), exclusive=True, group="plant")

    async def _plant_changed(self) -> None:
        try:
            for view in self.views.values():
                await view.plant_changed()
            for view in self.views.values():
                if view.active:
                    view.update_values(None)
        except NoMatches:  # the app is closing: its widgets are already gone
            return

    def _values_changed(self, changed: set[str]) -> None:
        for view in self.views.values():
            view.values_changed(changed)

    def _tick(self) -> None:
        if self.conn_bar.is_mounted:
            self.conn_bar.show_state(self.client)

    # -- navigation --------------------------------------------------------------------
    def action_tab(self, key: str) -> None:
        self.query_one(TabbedContent).active = key

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        key = event.pane.id or ""
        for name, view in self.views.items():
            if name == key:
                view.activate()
            else:
                view.deactivate()
        focus = {
            "meters": "#meter-table",
            "loads": "#load-table",
            "alarms": "#alarm-table",
            "line": "#station-table",
            "warehouse": "#order-table",
        }
        if key in focus:
            self.views[key].query_one(focus[key]).focus()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())
