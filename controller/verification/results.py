"""Durable verification results, and their export.

The tables are steps of the journal's one migration list
(``controller.results_schema`` in ``controller.journal.MIGRATIONS``, counted
by ``PRAGMA user_version``); standalone, ``install`` applies the same list to
the repository's own file. On the journal's file construct it with
``install=False``: the journal has migrated it.

Writes: each mutator is one unit of work (one transaction) and returns a
``Written``. On the service's journal file the unit goes to the journal's
writer thread (fsynced: a result is a promise) and the caller awaits the
``Written`` before acting on it (touching the rig, reading it back), so the
loop never waits on the file's lock; the repository's own connection only
reads. Standalone (tests, tools) the unit commits on the repository's
connection before the mutator returns, and awaiting is a no-op.

Crash-safety rules:
- an item run is recorded as ``running`` before the rig is touched;
- its results and its ``done`` state are written in one transaction after the
  last sample, so a result exists only if it was measured to the end;
- on restart ``running`` runs become ``interrupted`` (kept, visible, for
  re-test) and the item runs again as a new attempt;
- results have one row per (batch, meter, item, point): a second report of the
  same measurement is refused by the primary key instead of overwriting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import csv
import io
import json
import sqlite3
from collections.abc import Generator, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from controller.journal import Journal, Statement, migrate
from controller.verification.scheme import MeterType, Scheme, scheme_from_json

# Item run states
RUNNING, DONE, INTERRUPTED = "running", "done", "interrupted"
# Result verdicts
PASS, FAIL, ABORTED, SKIPPED = "pass", "fail", "aborted", "skipped"


# keyword-only: nineteen fields, several of the same type, are never matched by position
@dataclass(slots=True, kw_only=True)
class ResultRow:
    batch_id: str
    barcode: str
    item_index: int
    point_index: int
    kind: str
    point: str
    station: int
    samples: list[dict[str, Any]]
    average: str | None
    rounded: str | None
    limit_low: str | None
    limit_high: str | None
    unit: str
    verdict: str
    reason: str
    started: float
    ended: float
    scheme_version: int
    attempt: int = 1


@dataclass(slots=True)
class MeterRecord:
    barcode: str
    address: str
    seq: int
    unit: int
    station: int
    state: str
    verdict: str


@dataclass(slots=True)
class BatchRecord:
    batch_id: str
    scheme: Scheme
    meter_type: MeterType
    state: str
    reason: str
    meters: list[MeterRecord] = field(default_factory=list)


class RepositoryError(ValueError):
    pass


def open_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to the journal file (WAL: a reader never waits on the writer)."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


class Written:
    """A unit of work handed to the writer: await it to know it is on disk."""

    __slots__ = ("_future",)

    def __init__(self, future: concurrent.futures.Future[None] | None = None) -> None:
        self._future = future

    def __await__(self) -> Generator[Any, None, None]:
        if self._future is not None:
            yield from asyncio.wrap_future(self._future).__await__()


class ResultsRepository:
    def __init__(
        self, conn: sqlite3.Connection, install: bool = True, journal: Journal | None = None
    ) -> None:
        self.conn = conn
        # with a journal, ``conn`` is a read-only connection and every write goes
        # through the journal's writer thread
        self.journal = journal
        if install:
            self.install(conn)

    def _write(self, statements: Sequence[Statement]) -> Written:
        """One unit of work in one transaction."""
        if self.journal is not None:
            return Written(self.journal.submit(statements, durable=True))
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                conn.execute(sql, params)
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
        return Written()

    @staticmethod
    def install(conn: sqlite3.Connection) -> None:
        """Bring the file to the journal's schema (standalone use)."""
        migrate(conn, str(conn.execute("PRAGMA database_list").fetchone()[2] or ":memory:"))

    # -- schemes and batches ---------------------------------------------------------
    def record_scheme(self, scheme: Scheme) -> Written:
        """Store a scheme version; the same name and version must mean the same content."""
        return self._write(self._scheme(scheme))

    def _scheme(self, scheme: Scheme) -> list[Statement]:
        row = self.conn.execute(
            "SELECT content_hash FROM vl_schemes WHERE name = ? AND version = ?",
            (scheme.name, scheme.version),
        ).fetchone()
        if row is not None:
            if row[0] != scheme.content_hash:
                raise RepositoryError(
                    f"scheme {scheme.name!r} version {scheme.version} is already recorded with "
                    "different content: raise 'version' when a scheme changes"
                )
            return []
        return [
            (
                "INSERT INTO vl_schemes VALUES (?, ?, ?, ?)",
                (scheme.name, scheme.version, scheme.content_hash, scheme.model_dump_json()),
            )
        ]

    def create_batch(
        self,
        batch_id: str,
        scheme: Scheme,
        meter_type: MeterType,
        meters: Sequence[tuple[str, str, int, int]],  # barcode, address, unit, station
        now: float,
    ) -> Written:
        if self.conn.execute("SELECT 1 FROM vl_batches WHERE batch_id = ?", (batch_id,)).fetchone():
            raise RepositoryError(f"batch_id: {batch_id!r} already exists")
        stmts = self._scheme(scheme)
        stmts.append(
            (
                "INSERT INTO vl_batches VALUES (?, ?, ?, ?, ?, 'created', '', ?, ?)",
                (
                    batch_id,
                    scheme.name,
                    scheme.version,
                    scheme.content_hash,
                    meter_type.model_dump_json(),
                    now,
                    now,
                ),
            )
        )
        stmts += [
            (
                "INSERT INTO vl_meters VALUES (?, ?, ?, ?, ?, ?, 'queued', '', ?)",
                (batch_id, b, a, seq, u, s, now),
            )
            for seq, (b, a, u, s) in enumerate(meters)
        ]
        return self._write(stmts)

    def batch(self, batch_id: str) -> BatchRecord:
        row = self.conn.execute(
            "SELECT b.state, b.reason, b.meter_type, s.body FROM vl_batches b JOIN vl_schemes s "
            "ON s.name = b.scheme_name AND s.version = b.scheme_version WHERE b.batch_id = ?",
            (batch_id,),
        ).fetchone()
        if row is None:
            raise RepositoryError(f"batch_id: unknown batch {batch_id!r}")
        rec = BatchRecord(
            batch_id,
            scheme_from_json(row[3]),
            MeterType.model_validate_json(row[2]),
            row[0],
            row[1],
        )
        rec.meters = [
            MeterRecord(*r)
            for r in self.conn.execute(
                "SELECT barcode, address, seq, unit, station, state, verdict FROM vl_meters "
                "WHERE batch_id = ? ORDER BY seq",
                (batch_id,),
            )
        ]
        return rec

    def batches(self) -> list[tuple[str, str]]:
        return list(self.conn.execute("SELECT batch_id, state FROM vl_batches ORDER BY created"))

    def set_batch_state(self, batch_id: str, state: str, now: float, reason: str = "") -> Written:
        return self._write(
            [
                (
                    "UPDATE vl_batches SET state = ?, reason = ?, updated = ? WHERE batch_id = ?",
                    (state, reason, now, batch_id),
                )
            ]
        )

    def set_meter_states(
        self, batch_id: str, states: Iterable[tuple[str, str, str | None]], now: float
    ) -> Written:
        """(barcode, state, verdict or None to keep) for several meters in one transaction."""
        return self._write(
            [
                (
                    "UPDATE vl_meters SET state = ?, verdict = COALESCE(?, verdict), updated = ? "
                    "WHERE batch_id = ? AND barcode = ?",
                    (state, verdict, now, batch_id, barcode),
                )
                for barcode, state, verdict in states
            ]
        )

    # -- item runs ---------------------------------------------------------------------
    def begin_item(
        self, batch_id: str, barcodes: Sequence[str], item_index: int, kind: str, now: float
    ) -> tuple[dict[str, int], Written]:
        """Record the item as running for these meters: each one's attempt number, and the
        write to await before the rig is touched (the previous attempt of the item was
        awaited, so the read sees it)."""
        attempts: dict[str, int] = {}
        stmts: list[Statement] = []
        for b in barcodes:
            row = self.conn.execute(
                "SELECT COALESCE(MAX(attempt), 0) FROM vl_item_runs "
                "WHERE batch_id = ? AND barcode = ? AND item_index = ?",
                (batch_id, b, item_index),
            ).fetchone()
            attempts[b] = row[0] + 1
            stmts.append(
                (
                    "INSERT INTO vl_item_runs VALUES (?, ?, ?, ?, ?, ?, '', ?, NULL)",
                    (batch_id, b, item_index, attempts[b], kind, RUNNING, now),
                )
            )
        return attempts, self._write(stmts)

    def finish_item(self, rows: Sequence[ResultRow], now: float) -> Written:
        """Write the results and close their runs, atomically."""
        stmts = self._insert(rows)
        closed: set[tuple[str, str, int, int]] = set()
        for r in rows:
            key = (r.batch_id, r.barcode, r.item_index, r.attempt)
            if key in closed:
                continue
            closed.add(key)
            stmts.append(
                (
                    "UPDATE vl_item_runs SET state = ?, reason = ?, ended = ? WHERE batch_id = ? "
                    "AND barcode = ? AND item_index = ? AND attempt = ?",
                    (DONE, r.reason if r.verdict in (ABORTED, SKIPPED) else "", now, *key),
                )
            )
        return self._write(stmts)

    def record_skipped(self, rows: Sequence[ResultRow]) -> Written:
        return self._write(self._insert(rows))

    def _insert(self, rows: Sequence[ResultRow]) -> list[Statement]:
        return [
            (
                "INSERT INTO vl_results VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    r.batch_id,
                    r.barcode,
                    r.item_index,
                    r.point_index,
                    r.attempt,
                    r.kind,
                    r.point,
                    r.station,
                    msgpack.packb(r.samples),
                    r.average,
                    r.rounded,
                    r.limit_low,
                    r.limit_high,
                    r.unit,
                    r.verdict,
                    r.reason,
                    r.started,
                    r.ended,
                    r.scheme_version,
                ),
            )
            for r in rows
        ]

    def mark_interrupted(self, batch_id: str, now: float) -> Written:
        """Runs left ``running`` by a crash become ``interrupted`` (they will be re-tested)."""
        return self._write(
            [
                (
                    "UPDATE vl_item_runs SET state = ?, reason = 'controller restart', ended = ? "
                    "WHERE batch_id = ? AND state = ?",
                    (INTERRUPTED, now, batch_id, RUNNING),
                )
            ]
        )

    def completed_items(self, batch_id: str) -> set[tuple[str, int]]:
        """(barcode, item_index) pairs that have their results (measured, skipped or aborted)."""
        return {
            (b, i)
            for b, i in self.conn.execute(
                "SELECT DISTINCT barcode, item_index FROM vl_results WHERE batch_id = ?",
                (batch_id,),
            )
        }

    def item_runs(self, batch_id: str) -> list[tuple[str, int, int, str]]:
        return list(
            self.conn.execute(
                "SELECT barcode, item_index, attempt, state FROM vl_item_runs WHERE batch_id = ? "
                "ORDER BY barcode, item_index, attempt",
                (batch_id,),
            )
        )

    def results(self, batch_id: str) -> list[ResultRow]:
        rows = self.conn.execute(
            "SELECT batch_id, barcode, item_index, point_index, kind, point, station, samples, "
            "average, rounded, limit_low, limit_high, unit, verdict, reason, started, ended, "
            "scheme_version, attempt FROM vl_results r WHERE batch_id = ? "
            "ORDER BY (SELECT seq FROM vl_meters m WHERE m.batch_id = r.batch_id "
            "AND m.barcode = r.barcode), item_index, point_index",
            (batch_id,),
        )
        names = [d[0] for d in rows.description]  # the SELECT list spells the field names
        out = []
        for r in rows:
            values = dict(zip(names, r, strict=True))
            values["samples"] = msgpack.unpackb(values["samples"])
            out.append(ResultRow(**values))
        return out

    def last_time(self) -> float:
        row = self.conn.execute(
            "SELECT MAX(t) FROM (SELECT MAX(updated) AS t FROM vl_batches UNION ALL "
            "SELECT MAX(ended) FROM vl_item_runs UNION ALL SELECT MAX(started) FROM vl_item_runs)"
        ).fetchone()
        return float(row[0] or 0.0)

    # -- export ------------------------------------------------------------------------
    EXPORT_FIELDS = (
        "batch_id",
        "barcode",
        "station",
        "item_index",
        "kind",
        "point_index",
        "point",
        "samples",
        "average",
        "rounded",
        "limit_low",
        "limit_high",
        "unit",
        "verdict",
        "reason",
        "started",
        "ended",
        "scheme_version",
        "attempt",
    )

    def export_json(self, batch_id: str) -> str:
        batch = self.batch(batch_id)
        doc = {
            "batch_id": batch_id,
            "state": batch.state,
            "scheme": {
                "name": batch.scheme.name,
                "version": batch.scheme.version,
                "content_hash": batch.scheme.content_hash,
            },
            "meter_type": json.loads(batch.meter_type.model_dump_json()),
            "meters": [asdict(m) for m in batch.meters],
            "results": [asdict(r) for r in self.results(batch_id)],
        }
        return json.dumps(doc, indent=1, sort_keys=False)

    def export_csv(self, batch_id: str) -> str:
        self.batch(batch_id)  # unknown batch -> RepositoryError
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.EXPORT_FIELDS)
        for r in self.results(batch_id):
            d = asdict(r)
            d["samples"] = " ".join(_sample_text(s) for s in r.samples)
            writer.writerow([d[f] for f in self.EXPORT_FIELDS])
        return buf.getvalue()


def _sample_text(sample: dict[str, Any]) -> str:
    return ";".join(f"{k}={v}" for k, v in sample.items())
