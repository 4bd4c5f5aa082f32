"""What every tab view shares: access to the client and the update hooks."""

from __future__ import annotations

from textual.containers import Vertical

from ..client import GridClient


class View(Vertical):
    """A tab's content. The app calls :meth:`plant_changed` after each (re)connect
    and :meth:`values_changed` with the coalesced set of changed tag paths."""

    def __init__(self, client: GridClient, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.client = client
        self.active = False
        self._dirty = True

    async def plant_changed(self) -> None:
        """Subscribe to what this view shows (the client re-creates it on reconnect)."""

    def values_changed(self, changed: set[str]) -> None:
        if not self.active:
            self._dirty = True
            return
        self.update_values(changed)

    def update_values(self, changed: set[str] | None) -> None:
        """Redraw what changed (None: everything)."""

    def activate(self) -> None:
        self.active = True
        if self._dirty:
            self._dirty = False
            self.update_values(None)

    def deactivate(self) -> None:
        self.active = False
