"""What every tab view shares: access to the client and the update hooks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from rich.text import Text
from textual.containers import Vertical
from textual.screen import ModalScreen

from ..client import CommandError, GridClient, Quality


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

    def _value(self, path: str) -> Any:
        """The value at ``path``; None when there is none or it is Bad (never shown as good)."""
        r = self.client.get(path)
        return r.value if r is not None and r.quality is not Quality.BAD else None

    def _plant_shown(self, present: bool = True) -> None:
        """The end of every :meth:`plant_changed`: offer only the commands the session
        may give, say so when it may give none, and redraw."""
        self.refresh_bindings()
        c = self.client
        if present and not c.can_command():
            who = "anonymous" if c.role == "anonymous" else f"role {c.role}"
            self._message(Text(f"Read-only ({who}): no commands offered.", style="dim"))
        self._dirty = True
        if self.active:
            self.activate()

    # -- commands -------------------------------------------------------------------
    def _message(self, text: Text) -> None:
        """Tell the operator what became of a command (each view has a line for it)."""

    def _refused(self, method: str, kind: str, err: CommandError) -> None:
        if err.denied:
            # the server said this role may not: stop offering the command
            self.client.denied_kinds.add(kind)
            self.refresh_bindings()
        self._message(Text(f"{method}: {err.message}", style="bold red"))

    def _confirm_then_call(
        self,
        dialog: ModalScreen[bool],
        *,
        declined: Text,
        call: Callable[[], Awaitable[list[Any]]],
        method: str,
        kind: str,
        done: Callable[[list[Any]], None],
    ) -> None:
        """Show ``dialog``; only on its confirmation make the call, then report the
        outcome: ``declined``, the refusal (see :meth:`_refused`) or ``done(outputs)``."""

        async def confirmed(ok: bool | None) -> None:
            if not ok:
                self._message(declined)
                return
            try:
                outputs = await call()
            except CommandError as err:
                self._refused(method, kind, err)
                return
            done(outputs)

        self.app.push_screen(dialog, confirmed)
