"""Durable inventory: boxes, meters, slot reservations, orders, crane tasks, events.

The tables are created by the journal's migrations
(``controller.warehouse_schema``, a step of ``controller.journal.MIGRATIONS``);
a file of its own gets the same steps from :meth:`Inventory.create_schema`.

Write-ahead discipline: a crane task's intent (source, target, barcode) is
committed before the crane moves, and each completed step (picked, put) is
committed after the plant confirms it. A box therefore always has exactly one
recorded place, and after a crash the only open question is whether the last
commanded step happened, which the plant's state (fork load sensor, barcode at
the fork, crane position) answers.

A partial unique index makes the database itself refuse two boxes in one slot
or on one fork.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from controller.journal import migrate
from controller.warehouse.rack import BoxClass, BoxInfo, Location, Rack

# task states: queued -> active -> done | failed | cancelled; active <-> held
# task steps (write-ahead): '' (not started), 'intent', 'picked', 'put'
OPEN_TASK_STATES = ("queued", "active", "held")


class InventoryError(RuntimeError):
    pass


@dataclass(slots=True)
class TaskRow:
    id: int
    order_id: int | None
    aisle: int
    kind: str
    barcode: str
    src: str
    dst: str | None
    priority: int
    state: str
    step: str
    created_at: float
    reason: str = ""


@dataclass(slots=True)
class MeterRow:
    address: str
    box: str
    type: str
    state: str
    verified_at: float | None
    batch: str | None
    district: str | None


def open_db(path: str) -> sqlite3.Connection:
    """A connection set up like the journal's command batches: WAL, fsynced commits.

    A crane intent is a promise (the target is reserved and the crane will
    move), so it is committed with ``synchronous=FULL``: WAL + NORMAL survives
    a process kill but a power cut can take back the last commits, and the
    plant would then hold a box the journal never promised to move."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class Inventory:
    """Repository over a ``sqlite3.Connection``; every public mutator is one transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def create_schema(self) -> None:
        """Bring the file to the journal's schema (a no-op on the service's journal)."""
        migrate(
            self.conn, str(self.conn.execute("PRAGMA database_list").fetchone()[2] or ":memory:")
        )

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One atomic step; nested use joins the outer transaction."""
        if self.conn.in_transaction:
            yield self.conn
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.rollback()
            raise
        self.conn.commit()

    # -- events ------------------------------------------------------------------
    def event(
        self,
        t: float,
        kind: str,
        detail: str = "",
        order_id: int | None = None,
        task_id: int | None = None,
        barcode: str | None = None,
    ) -> None:
        with self.tx() as c:
            c.execute(
                "INSERT INTO wh_event (t, kind, order_id, task_id, barcode, detail) VALUES (?,?,?,?,?,?)",
                (t, kind, order_id, task_id, barcode, detail),
            )

    def events(self, kind: str | None = None) -> list[tuple[Any, ...]]:
        q = "SELECT t, kind, order_id, task_id, barcode, detail FROM wh_event"
        if kind:
            return self.conn.execute(q + " WHERE kind=? ORDER BY id", (kind,)).fetchall()
        return self.conn.execute(q + " ORDER BY id").fetchall()

    # -- boxes and meters ----------------------------------------------------------
    def add_box(
        self,
        barcode: str,
        klass: BoxClass,
        location: str,
        t: float,
        meters: list[tuple[str, str, str]],
        verified_at: float | None = None,
        order_id: int | None = None,
        batch: str | None = None,
    ) -> None:
        """Record a box entering the warehouse with its meters (address, type, state)."""
        with self.tx() as c:
            row = c.execute("SELECT location FROM wh_box WHERE barcode=?", (barcode,)).fetchone()
            if row is not None and not _outside(row[0]):
                raise InventoryError(f"box {barcode} is already in the warehouse at {row[0]}")
            # the places that hold one box (the wh_box_place index): slots and forks
            other = c.execute(
                "SELECT barcode FROM wh_box WHERE location=? AND barcode<>?"
                " AND (location GLOB 'R*' OR location GLOB 'CRANE:*')",
                (location, barcode),
            ).fetchone()
            if other is not None:
                # a REPLACE would delete the other box's row to make room: refuse instead
                raise InventoryError(f"{location}: already holds box {other[0]}")
            # a box that left and comes back keeps its barcode's row (replaced, not added)
            c.execute("DELETE FROM wh_box WHERE barcode=?", (barcode,))
            c.execute(
                "INSERT INTO wh_box (barcode, klass, location, arrived_at, verified_at,"
                " order_id, updated_at) VALUES (?,?,?,?,?,?,?)",
                (barcode, klass.value, location, t, verified_at, order_id, t),
            )
            for address, mtype, state in meters:
                c.execute(
                    "INSERT INTO wh_meter (address, box, type, state, verified_at, batch)"
                    " VALUES (?,?,?,?,?,?) ON CONFLICT(address) DO UPDATE SET box=excluded.box,"
                    " type=excluded.type, state=excluded.state, verified_at=excluded.verified_at,"
                    " batch=excluded.batch",
                    (address, barcode, mtype, state, verified_at, batch),
                )

    def set_location(self, barcode: str, location: str, t: float) -> None:
        with self.tx() as c:
            cur = c.execute(
                "UPDATE wh_box SET location=?, updated_at=? WHERE barcode=?", (location, t, barcode)
            )
            if cur.rowcount != 1:
                raise InventoryError(f"unknown box {barcode}")

    def set_box_order(self, barcode: str, order_id: int | None) -> None:
        with self.tx() as c:
            c.execute("UPDATE wh_box SET order_id=? WHERE barcode=?", (order_id, barcode))

    def box(self, barcode: str) -> BoxInfo | None:
        row = self.conn.execute(_BOX_SELECT + " WHERE b.barcode=?", (barcode,)).fetchone()
        return _box(row) if row else None

    def boxes(self, location_glob: str | None = None) -> list[BoxInfo]:
        if location_glob:
            rows = self.conn.execute(
                _BOX_SELECT + " WHERE b.location GLOB ? ORDER BY b.updated_at, b.barcode",
                (location_glob,),
            ).fetchall()
        else:
            rows = self.conn.execute(_BOX_SELECT + " ORDER BY b.barcode").fetchall()
        return [_box(r) for r in rows]

    def box_at(self, location: str) -> str | None:
        row = self.conn.execute(
            "SELECT barcode FROM wh_box WHERE location=?", (location,)
        ).fetchone()
        return row[0] if row else None

    def meters(self, box: str | None = None) -> list[MeterRow]:
        q = "SELECT address, box, type, state, verified_at, batch, district FROM wh_meter"
        if box is None:
            rows = self.conn.execute(q + " ORDER BY address").fetchall()
        else:
            rows = self.conn.execute(q + " WHERE box=? ORDER BY address", (box,)).fetchall()
        return [MeterRow(*r) for r in rows]

    def meter(self, address: str) -> MeterRow | None:
        row = self.conn.execute(
            "SELECT address, box, type, state, verified_at, batch, district FROM wh_meter"
            " WHERE address=?",
            (address,),
        ).fetchone()
        return MeterRow(*row) if row else None

    def update_meters(self, addresses: list[str], **fields: Any) -> None:
        allowed = {"state", "verified_at", "batch", "district", "box"}
        bad = set(fields) - allowed
        if bad:
            raise InventoryError(
                f"meter fields {sorted(bad)} not updatable; allowed {sorted(allowed)}"
            )
        sets = ", ".join(f"{k}=?" for k in fields)
        with self.tx() as c:
            for a in addresses:
                c.execute(f"UPDATE wh_meter SET {sets} WHERE address=?", (*fields.values(), a))

    def rack_classes(self) -> dict[str, str]:
        """Slot code → class of the box stored there."""
        return dict(
            self.conn.execute("SELECT location, klass FROM wh_box WHERE location GLOB 'R*'")
        )

    def totals(self) -> dict[str, int]:
        """Counts for consistency checks and the process image."""
        out: dict[str, int] = {}
        for klass, n in self.conn.execute(
            "SELECT klass, count(*) FROM wh_box WHERE location GLOB 'R*' GROUP BY klass"
        ):
            out[f"slots_{klass}"] = n
        out["in_racks"] = sum(v for k, v in out.items() if k.startswith("slots_"))
        for name, glob in (("on_cranes", "CRANE:*"), ("on_conveyors", "CONV:*")):
            out[name] = self.conn.execute(
                "SELECT count(*) FROM wh_box WHERE location GLOB ?", (glob,)
            ).fetchone()[0]
        out["meters_in_stock"] = self.conn.execute(
            "SELECT count(*) FROM wh_meter m JOIN wh_box b ON m.box=b.barcode"
            " WHERE b.location GLOB 'R*' OR b.location GLOB 'CRANE:*' OR b.location GLOB 'CONV:*'"
        ).fetchone()[0]
        return out

    # -- slots -------------------------------------------------------------------------
    def reserve_slot(self, code: str, task_id: int) -> None:
        with self.tx() as c:
            c.execute(
                "INSERT INTO wh_slot (code, reserved_by) VALUES (?, ?)"
                " ON CONFLICT(code) DO UPDATE SET reserved_by=excluded.reserved_by",
                (code, task_id),
            )

    def release_slot(self, code: str, task_id: int) -> None:
        with self.tx() as c:
            c.execute(
                "UPDATE wh_slot SET reserved_by=NULL WHERE code=? AND reserved_by=?",
                (code, task_id),
            )

    def block_slot(self, code: str, reason: str) -> None:
        with self.tx() as c:
            c.execute(
                "INSERT INTO wh_slot (code, blocked) VALUES (?, ?)"
                " ON CONFLICT(code) DO UPDATE SET blocked=excluded.blocked, reserved_by=NULL",
                (code, reason),
            )

    def load_rack(self, rack: Rack) -> None:
        """Mirror slot contents, reservations and blocks into the in-memory rack."""
        for s in rack.slots.values():
            s.box, s.reserved_by, s.blocked = None, None, ""
        for code, barcode in self.conn.execute(
            "SELECT location, barcode FROM wh_box WHERE location GLOB 'R*'"
        ):
            rack.slot(Location.parse(code)).box = barcode
        for code, reserved_by, blocked in self.conn.execute(
            "SELECT code, reserved_by, blocked FROM wh_slot"
        ):
            s = rack.slot(Location.parse(code))
            s.reserved_by, s.blocked = reserved_by, blocked

    # -- tasks ----------------------------------------------------------------------------
    def create_task(
        self,
        t: float,
        aisle: int,
        kind: str,
        barcode: str,
        src: str,
        dst: str | None = None,
        order_id: int | None = None,
        priority: int = 0,
    ) -> int:
        with self.tx() as c:
            cur = c.execute(
                "INSERT INTO wh_task (order_id, aisle, kind, barcode, src, dst, priority, state,"
                " created_at, updated_at) VALUES (?,?,?,?,?,?,?,'queued',?,?)",
                (order_id, aisle, kind, barcode, src, dst, priority, t, t),
            )
            task_id = int(cur.lastrowid or 0)
            c.execute(
                "INSERT INTO wh_event (t, kind, order_id, task_id, barcode, detail) VALUES (?,?,?,?,?,?)",
                (t, "task_created", order_id, task_id, barcode, f"{kind} {src} -> {dst or '?'}"),
            )
        return task_id

    def update_task(self, task_id: int, t: float, **fields: Any) -> None:
        allowed = {"state", "step", "dst", "src", "reason", "barcode"}
        bad = set(fields) - allowed
        if bad:
            raise InventoryError(
                f"task fields {sorted(bad)} not updatable; allowed {sorted(allowed)}"
            )
        sets = ", ".join(f"{k}=?" for k in fields)
        with self.tx() as c:
            c.execute(
                f"UPDATE wh_task SET {sets}, updated_at=? WHERE id=?",
                (*fields.values(), t, task_id),
            )

    def task(self, task_id: int) -> TaskRow | None:
        row = self.conn.execute(_TASK_SELECT + " WHERE id=?", (task_id,)).fetchone()
        return TaskRow(*row) if row else None

    def open_tasks(self, aisle: int | None = None) -> list[TaskRow]:
        q = _TASK_SELECT + " WHERE state IN ('queued','active','held')"
        args: tuple[Any, ...] = ()
        if aisle is not None:
            q += " AND aisle=?"
            args = (aisle,)
        rows = self.conn.execute(q + " ORDER BY priority DESC, id", args).fetchall()
        return [TaskRow(*r) for r in rows]

    def tasks(self, order_id: int) -> list[TaskRow]:
        rows = self.conn.execute(_TASK_SELECT + " WHERE order_id=? ORDER BY id", (order_id,))
        return [TaskRow(*r) for r in rows.fetchall()]

    # -- orders (storage only; the lifecycle lives in orders.py) ------------------------
    def insert_order(
        self, kind: str, state: str, priority: int, params: dict[str, Any], t: float
    ) -> int:
        with self.tx() as c:
            cur = c.execute(
                "INSERT INTO wh_order (kind, state, priority, params, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?)",
                (kind, state, priority, json.dumps(params, sort_keys=True), t, t),
            )
            order_id = int(cur.lastrowid or 0)
            c.execute(
                "INSERT INTO wh_event (t, kind, order_id, detail) VALUES (?,?,?,?)",
                (t, "order_created", order_id, kind),
            )
        return order_id

    def order_row(self, order_id: int) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.conn.execute(
            "SELECT id, kind, state, priority, params, created_at, updated_at, reason"
            " FROM wh_order WHERE id=?",
            (order_id,),
        ).fetchone()
        return row

    def order_rows(self, states: tuple[str, ...] | None = None) -> list[tuple[Any, ...]]:
        q = "SELECT id, kind, state, priority, params, created_at, updated_at, reason FROM wh_order"
        if states:
            q += f" WHERE state IN ({','.join('?' * len(states))})"
            return self.conn.execute(q + " ORDER BY priority DESC, id", states).fetchall()
        return self.conn.execute(q + " ORDER BY id").fetchall()

    def set_order_state(self, order_id: int, state: str, t: float, reason: str = "") -> None:
        with self.tx() as c:
            c.execute(
                "UPDATE wh_order SET state=?, updated_at=?, reason=? WHERE id=?",
                (state, t, reason, order_id),
            )
            c.execute(
                "INSERT INTO wh_event (t, kind, order_id, detail) VALUES (?,?,?,?)",
                (t, "order_state", order_id, f"{state} {reason}".strip()),
            )

    def set_order_params(self, order_id: int, params: dict[str, Any]) -> None:
        with self.tx() as c:
            c.execute(
                "UPDATE wh_order SET params=? WHERE id=?",
                (json.dumps(params, sort_keys=True), order_id),
            )

    def set_line(self, order_id: int, barcode: str, state: str) -> None:
        with self.tx() as c:
            c.execute(
                "INSERT INTO wh_order_box (order_id, barcode, state) VALUES (?,?,?)"
                " ON CONFLICT(order_id, barcode) DO UPDATE SET state=excluded.state",
                (order_id, barcode, state),
            )

    def lines(self, order_id: int) -> dict[str, str]:
        return dict(
            self.conn.execute(
                "SELECT barcode, state FROM wh_order_box WHERE order_id=? ORDER BY rowid",
                (order_id,),
            ).fetchall()
        )

    def line_order(self, barcode: str, states: tuple[str, ...]) -> int | None:
        """The open order expecting this barcode in one of ``states``."""
        row = self.conn.execute(
            f"SELECT ob.order_id FROM wh_order_box ob JOIN wh_order o ON o.id=ob.order_id"
            f" WHERE ob.barcode=? AND ob.state IN ({','.join('?' * len(states))})"
            f" AND o.state IN ('released','in_progress') ORDER BY ob.order_id LIMIT 1",
            (barcode, *states),
        ).fetchone()
        return int(row[0]) if row else None


def _outside(location: str) -> bool:
    """Locations that are no longer in the warehouse (shipped, at the line)."""
    return location.startswith(("LINE:", "DOCK:", "GONE:"))


_BOX_SELECT = (
    "SELECT b.barcode, b.klass, b.location, b.arrived_at, b.verified_at, b.order_id,"
    " (SELECT count(*) FROM wh_meter m WHERE m.box=b.barcode) FROM wh_box b"
)
_TASK_SELECT = (
    "SELECT id, order_id, aisle, kind, barcode, src, dst, priority, state, step, created_at, reason"
    " FROM wh_task"
)


def _box(row: tuple[Any, ...]) -> BoxInfo:
    return BoxInfo(row[0], BoxClass(row[1]), row[2], row[3], row[4], row[5], row[6])
