"""Block DIs a meter refuses, and the single DIs read in their place.

Many meters answer a block read (``FF`` in DI1, e.g. ``0201FF00`` = three
voltages) with ERR=02 "no requested data" although they have every element.
The bus then reads the block's single DIs for that meter (three frames
instead of one), remembers it, and records it in the journal table
``meter_block_refusals`` so a restart starts with the single DIs instead of
another refusal and a poll cycle of Bad values.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.config import PollItem

if TYPE_CHECKING:
    from controller.journal import Journal

# Block DI → its elements as single DIs, in the order the block reply lists them
# (DL/T 645-2007 appendix A: DI1 = FF stands for DI1 = 00 (total) or 01 (phase A) onwards).
BLOCK_SINGLES: dict[str, tuple[str, ...]] = {
    "0001FF00": ("00010000", "00010100", "00010200", "00010300", "00010400"),
    "0201FF00": ("02010100", "02010200", "02010300"),
    "0202FF00": ("02020100", "02020200", "02020300"),
    "0203FF00": ("02030000", "02030100", "02030200", "02030300"),
    "0206FF00": ("02060000", "02060100", "02060200", "02060300"),
}

# meter address → the block DIs it refuses
Refusals = dict[str, set[str]]


def meter_items(items: Iterable[PollItem], refused: set[str]) -> list[PollItem]:
    """A poll group's items as one meter is read: each refused block by its single DIs."""
    out: list[PollItem] = []
    for item in items:
        if item.di in refused and item.format is None and item.di in BLOCK_SINGLES:
            out += [PollItem(di=di) for di in BLOCK_SINGLES[item.di]]
        else:
            out.append(item)
    return out


def load_refusals(journal: Journal, bus: str) -> Refusals:
    """What the journal remembers for ``bus`` (block DIs outside the table are ignored)."""
    out: Refusals = {}
    for row in journal.query("SELECT meter, di FROM meter_block_refusals WHERE bus = ?", (bus,)):
        if row["di"] in BLOCK_SINGLES:
            out.setdefault(row["meter"], set()).add(row["di"])
    return out


def record_refusal(journal: Journal, bus: str, meter: str, di: str, err: int, at: float) -> bool:
    """Remember a refusal (fire and forget: losing it costs one more ERR=02 after a restart)."""
    singles = ", ".join(BLOCK_SINGLES[di])
    statements: list[tuple[str, Any]] = [
        (
            "INSERT OR REPLACE INTO meter_block_refusals(bus, meter, di, err, at) "
            "VALUES (?, ?, ?, ?, ?)",
            (bus, meter, di, err, at),
        ),
        (
            "INSERT INTO events(at, kind, source, severity, message) VALUES (?, ?, ?, ?, ?)",
            (
                at,
                "meter",
                f"buses/{bus}/meters/{meter}",
                0,
                f"refuses block DI {di} (ERR=0x{err:02X}); reading {singles} instead",
            ),
        ),
    ]
    return journal.post(statements)


def read_refusals(path: Path | str) -> dict[str, Refusals]:
    """Every bus's refusals from a journal file, read-only (``gridctl plan --journal``).

    Raises FileNotFoundError for a missing file, sqlite3.Error for one that is not a
    journal or predates the table."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"journal: no such file {file}")
    conn = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT bus, meter, di FROM meter_block_refusals").fetchall()
    finally:
        conn.close()
    out: dict[str, Refusals] = {}
    for bus, meter, di in rows:
        if di in BLOCK_SINGLES:
            out.setdefault(bus, {}).setdefault(meter, set()).add(di)
    return out


def refused_in(
    items: Iterable[PollItem], refused: Mapping[str, Iterable[str]], meter: str
) -> frozenset[str]:
    """The block DIs among ``items`` that ``meter`` refuses."""
    mine = set(refused.get(meter, ()))
    return frozenset(item.di for item in items if item.di in mine)
