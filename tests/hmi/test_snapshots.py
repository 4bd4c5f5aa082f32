"""Text snapshots of the main screens at 80×24 against the demo plant.

pytest-textual-snapshot is not used: its syrupy dependency pins pytest < 9,
and gridctl is on pytest 9. These compare the rendered screen as plain text
(what an operator reads); volatile parts (port, uptime, times, latency) are
masked. Regenerate after an intended change with ``HMI_SNAPSHOT_UPDATE=1``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from hmi.textshot import screen_text

from .conftest import make_app, ready, wait_for

SNAPSHOTS = Path(__file__).parent / "snapshots"
MASKS = (
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:PORT"),
    (re.compile(r"up \d+m\d\ds"), "up XmXXs"),
    (re.compile(r"publish latency [\d.]+ ms"), "publish latency X ms"),
    (re.compile(r"before \d\d:\d\d:\d\d"), "before HH:MM:SS"),
    # the tab underline slides under the active tab: its frame depends on timing
    (re.compile(r"(?m)^[━╸╺ ]{20,}$"), "<tab underline>"),
)


def masked(text: str) -> str:
    for pattern, repl in MASKS:
        text = pattern.sub(repl, text)
    return text + "\n"


def check(name: str, text: str) -> None:
    path = SNAPSHOTS / f"{name}.txt"
    text = masked(text)
    if os.environ.get("HMI_SNAPSHOT_UPDATE") or not path.exists():
        path.write_text(text, encoding="utf-8")
        if not os.environ.get("HMI_SNAPSHOT_UPDATE"):
            pytest.skip(f"snapshot {name} created")
        return
    assert text == path.read_text(encoding="utf-8"), f"screen {name} changed"


async def test_snapshots_main_screens(plant):
    app = make_app(plant, "otto")
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, app)
        await wait_for(pilot, lambda: "Err % 60s" in screen_text(app))
        await pilot.pause(0.6)
        check("overview", screen_text(app))
        await pilot.press("2")
        await wait_for(pilot, lambda: "frequency" in screen_text(app))
        # the table subscribes the rows on screen when it is shown
        await wait_for(pilot, lambda: "7.400" in screen_text(app))
        await pilot.pause(0.3)
        check("meters", screen_text(app))
        await pilot.press("3")
        await wait_for(pilot, lambda: "Group feeder1" in screen_text(app))
        check("loads", screen_text(app))
        await pilot.press("t", *"demand test", "enter")
        await wait_for(pilot, lambda: "Confirm command" in screen_text(app))
        check("confirm", screen_text(app))
        await pilot.press("escape")
        await pilot.press("4")
        await wait_for(pilot, lambda: "UNACK" in screen_text(app))
        check("alarms", screen_text(app))
        await pilot.press("5")
        await wait_for(pilot, lambda: "Line idle" in screen_text(app))
        await pilot.pause(0.3)
        check("line", screen_text(app))
        await pilot.press("6")
        await wait_for(pilot, lambda: "Crane 1 idle" in screen_text(app))
        await pilot.pause(0.3)
        check("warehouse", screen_text(app))


async def test_snapshots_running_line_and_forms(plant):
    from .plant import line_running

    line_running(plant.image)
    app = make_app(plant, "emma")
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, app)
        await pilot.press("5")
        await wait_for(pilot, lambda: "Line running" in screen_text(app))
        await pilot.pause(0.3)
        check("line-running", screen_text(app))
        await pilot.press("3", "l")
        await wait_for(pilot, lambda: "Set demand limit" in screen_text(app))
        check("demand-limit", screen_text(app))
        await pilot.press("escape", "6", "o")
        await wait_for(pilot, lambda: "Create warehouse order" in screen_text(app))
        check("create-order", screen_text(app))
