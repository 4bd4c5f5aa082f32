"""Modal dialogs: acknowledge, arm a command, confirm an armed command, command
forms (arguments and a reason), confirmations, help."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

# What each command does to the load, in the words the dialog uses.
KIND_EFFECT: dict[str, str] = {
    "trip": "OPEN the relay (the customer loses supply)",
    "close_allowed": "ALLOW the customer to close the relay",
    "close_direct": "CLOSE the relay (supply restored now)",
    "alarm_on": "turn the meter's alarm ON",
    "alarm_off": "turn the meter's alarm OFF",
    "keep_power_on": "set KEEP-POWER: no automatic trip until removed",
    "keep_power_off": "remove KEEP-POWER: automatic trips allowed again",
}


class AckDialog(ModalScreen[str | None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, alarm_id: str, message: str) -> None:
        super().__init__(classes="dialog-screen")
        self.alarm_id = alarm_id
        self.message = message

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Acknowledge alarm {self.alarm_id}", classes="dialog-title")
            yield Static(self.message)
            yield Input(placeholder="comment (audited)", id="ack-comment", max_length=500)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Acknowledge", id="ack-ok", variant="primary")
                yield Button("Cancel", id="ack-cancel")

    def on_input_submitted(self, _event: Input.Submitted) -> None:
        self.dismiss(self.query_one("#ack-comment", Input).value)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "ack-ok":
            self.dismiss(self.query_one("#ack-comment", Input).value)
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ArmDialog(ModalScreen[tuple[str, str] | None]):
    """Choose the command and give a reason; the next step arms it on the server."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, load: str, kinds: list[str], preselect: str | None = None) -> None:
        super().__init__(classes="dialog-screen")
        self.load = load
        self.kinds = kinds
        self.preselect = preselect

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Command for {self.load}", classes="dialog-title")
            yield OptionList(
                *[Option(f"{k:<15} {KIND_EFFECT.get(k, '')}", id=k) for k in self.kinds],
                id="arm-kind",
            )
            yield Input(placeholder="reason (required, audited)", id="arm-reason", max_length=200)
            yield Static(id="arm-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Arm", id="arm-ok", variant="warning")
                yield Button("Cancel", id="arm-cancel")

    def on_mount(self) -> None:
        options = self.query_one("#arm-kind", OptionList)
        if self.preselect in self.kinds:
            options.highlighted = self.kinds.index(self.preselect)
            self.query_one("#arm-reason", Input).focus()
        else:
            options.highlighted = 0
            options.focus()

    def on_option_list_option_selected(self, _event: OptionList.OptionSelected) -> None:
        self.query_one("#arm-reason", Input).focus()

    def _submit(self) -> None:
        options = self.query_one("#arm-kind", OptionList)
        reason = self.query_one("#arm-reason", Input).value.strip()
        if options.highlighted is None:
            self.query_one("#arm-error", Static).update(Text("Choose a command.", style="red"))
            return
        if not reason:
            self.query_one("#arm-error", Static).update(Text("A reason is required.", style="red"))
            self.query_one("#arm-reason", Input).focus()
            return
        self.dismiss((self.kinds[options.highlighted], reason))

    def on_input_submitted(self, _event: Input.Submitted) -> None:
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "arm-ok":
            self._submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmDialog(ModalScreen[bool]):
    """States exactly what will switch; Execute sends it, anything else cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, load: str, kind: str, reason: str, expires: datetime | None) -> None:
        super().__init__(classes="dialog-screen")
        self.load = load
        self.kind = kind
        self.reason = reason
        self.expires = expires

    def compose(self) -> ComposeResult:
        text = Text()
        text.append("Armed: ", style="bold")
        text.append(f"{self.kind.upper()}", style="bold reverse")
        text.append(f" on load {self.load}\n\n")
        text.append("This will ")
        text.append(KIND_EFFECT.get(self.kind, self.kind), style="bold")
        text.append(f"\nfor load {self.load}.\n")
        text.append(f"Reason: {self.reason}\n")
        if self.expires is not None:
            local = self.expires.replace(tzinfo=self.expires.tzinfo or UTC).astimezone()
            text.append(f"Execute before {local:%H:%M:%S} or the arm lapses.")
        with Vertical(classes="dialog confirm"):
            yield Label("Confirm command", classes="dialog-title")
            yield Static(text, id="confirm-text")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Execute", id="confirm-execute", variant="error")
                yield Button("Cancel", id="confirm-cancel", variant="primary")

    def on_mount(self) -> None:
        # Cancel has the focus: Enter alone never switches anything.
        self.query_one("#confirm-cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm-execute")

    def action_cancel(self) -> None:
        self.dismiss(False)


@dataclass(frozen=True, slots=True)
class FormField:
    """One argument of a command form: free text, or one of ``choices``."""

    key: str
    label: str
    placeholder: str = ""
    choices: tuple[tuple[str, str], ...] = ()  # (value, what it means)
    value: str = ""


class FormDialog(ModalScreen[dict[str, str] | None]):
    """A command's arguments and the reason (required, audited). Nothing is sent
    from here: the caller confirms what it will send before sending it."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, fields: list[FormField], note: Text | str = "") -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.fields = fields
        self.note = note

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog form"):
            yield Label(self.title_text, classes="dialog-title")
            if self.note:
                yield Static(self.note, classes="form-note")
            for f in self.fields:
                yield Label(f.label, classes="form-label")
                if f.choices:
                    yield OptionList(
                        *[Option(f"{v:<22} {what}", id=v) for v, what in f.choices],
                        id=f"form-{f.key}",
                        classes="form-choices",
                    )
                else:
                    yield Input(
                        f.value, placeholder=f.placeholder, id=f"form-{f.key}", max_length=4000
                    )
            yield Label("Reason", classes="form-label")
            yield Input(placeholder="required, audited", id="form-reason", max_length=200)
            yield Static(id="form-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Next", id="form-ok", variant="warning")
                yield Button("Cancel", id="form-cancel")

    def on_mount(self) -> None:
        for f in self.fields:
            if f.choices:
                options = self.query_one(f"#form-{f.key}", OptionList)
                values = [v for v, _w in f.choices]
                options.highlighted = values.index(f.value) if f.value in values else 0
        first = self.fields[0] if self.fields else None
        self.query_one(f"#form-{first.key}" if first else "#form-reason").focus()

    def on_option_list_option_selected(self, _event: OptionList.OptionSelected) -> None:
        self.focus_next()

    def _error(self, text: str, key: str) -> None:
        self.query_one("#form-error", Static).update(Text(text, style="bold red"))
        self.query_one(f"#form-{key}").focus()

    def _submit(self) -> None:
        out: dict[str, str] = {}
        for f in self.fields:
            if f.choices:
                options = self.query_one(f"#form-{f.key}", OptionList)
                if options.highlighted is None:
                    self._error(f"Choose the {f.label.lower()}.", f.key)
                    return
                out[f.key] = f.choices[options.highlighted][0]
            else:
                value = self.query_one(f"#form-{f.key}", Input).value.strip()
                if not value:
                    self._error(f"{f.label} is required.", f.key)
                    return
                out[f.key] = value
        reason = self.query_one("#form-reason", Input).value.strip()
        if not reason:
            self._error("A reason is required.", "reason")
            return
        out["reason"] = reason
        self.dismiss(out)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "form-reason":
            self._submit()
        else:
            self.focus_next()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "form-ok":
            self._submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class CommandConfirm(ModalScreen[bool]):
    """Says exactly what will be sent; only the action button sends it."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, text: Text, action: str) -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.text = text
        self.action = action

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog confirm"):
            yield Label(self.title_text, classes="dialog-title")
            yield Static(self.text, id="command-confirm-text")
            with Horizontal(classes="dialog-buttons"):
                yield Button(self.action, id="command-confirm-ok", variant="error")
                yield Button("Cancel", id="command-confirm-cancel", variant="primary")

    def on_mount(self) -> None:
        # Cancel has the focus: Enter alone never sends anything.
        self.query_one("#command-confirm-cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "command-confirm-ok")

    def action_cancel(self) -> None:
        self.dismiss(False)


HELP_TEXT = """\
[b]gridctl HMI[/b] — keys (the footer shows those of the current screen)

  1 … 6   Overview, Meters, Loads, Alarms, Line, Warehouse
  ?  this help    q  quit    Tab  next field    Esc  close a dialog

[b]Meters[/b]    /  filter    s  sort column    r  reverse    Enter  detail
[b]Loads[/b]     x  command…  t  trip …  (arm → confirm → execute)
          l  demand limit… (engineers)
[b]Alarms[/b]    a  acknowledge with a comment   v  show shelved
[b]Line[/b]      b  start batch…    a  abort batch…
[b]Warehouse[/b] o  create order…   d  cancel order…

[b]Values[/b]
  12.34     good                 12.34?  uncertain
  ✖ reason  bad: no value shown  12.34~  stale (link down or old connection)
  n/a       not on this server   —       nothing published yet

The top line always shows the connection; the HMI reconnects by itself.
Commands offered depend on your role; the server has the final word.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"),
        Binding("question_mark", "close", "Close"),
        Binding("q", "close", "Close"),
    ]

    def __init__(self) -> None:
        super().__init__(classes="dialog-screen")

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog help"):
            yield Static(HELP_TEXT, id="help-text")

    def action_close(self) -> None:
        self.dismiss(None)
