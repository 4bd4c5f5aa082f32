"""How values look: quality and staleness are always visible, never only by colour.

- Good: the value.
- Uncertain: the value followed by ``?`` (yellow).
- Bad: ``✖`` and the reason (red); a Bad value is never shown as a number.
- Stale (connection lost, or the value predates the current connection): the
  value followed by ``~`` (dim).
- Not on this server: ``n/a`` (dim).
- Never written since the server started (BadWaitingForInitialData): where
  "nothing yet" is the normal state (a verdict before the test, an idle
  unit's item) screens may ask for a dim ``—`` instead of ``✖ NoData``.
"""

from __future__ import annotations

from typing import Any

from asyncua import ua
from rich.text import Text

from .client import GridClient, Quality, Reading

WAITING = Text("…", style="dim")
NOT_AVAILABLE = Text("n/a", style="dim")
NOTHING_YET = Text("—", style="dim")


def number(value: Any, digits: int = 2) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if value is None:
        return "—"
    return str(value)


def show(
    client: GridClient,
    path: str,
    *,
    digits: int = 2,
    text: str | None = None,
    style: str = "",
    quiet_nodata: bool = False,
) -> Text:
    """A cell for the value at ``path`` with its quality and staleness marked."""
    reading = client.get(path)
    if reading is None:
        return NOT_AVAILABLE if client.missing(path) else WAITING
    if quiet_nodata and reading.status == ua.StatusCodes.BadWaitingForInitialData:
        return NOTHING_YET
    return show_reading(client, reading, digits=digits, text=text, style=style)


def show_reading(
    client: GridClient,
    reading: Reading,
    *,
    digits: int = 2,
    text: str | None = None,
    style: str = "",
) -> Text:
    stale = client.is_stale(reading)
    quality = reading.quality
    if quality is Quality.BAD:
        if client.missing_code(reading):
            return NOT_AVAILABLE
        out = Text(f"✖ {reading.status_text}", style="bold red")
        if stale:
            out.append("~", style="dim")
        return out
    body = text if text is not None else number(reading.value, digits)
    if stale:
        return Text(f"{body}~", style="dim italic")
    if quality is Quality.UNCERTAIN:
        return Text(f"{body}?", style="yellow")
    return Text(body, style=style)


def severity_style(severity: int) -> tuple[str, str]:
    """(label, style) for an OPC UA severity 1..1000."""
    if severity >= 800:
        return "CRIT", "bold white on red"
    if severity >= 600:
        return "HIGH", "bold red"
    if severity >= 300:
        return "MED", "yellow"
    return "LOW", "cyan"
