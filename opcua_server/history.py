"""Historical access (HistoryRead raw, and events) from SQLite with a retention limit.

asyncua's own SQLite history makes a table per node, commits every single
value and subscribes to each node internally. Here:

- the publisher hands values of historized variables to :meth:`record`
  (no subscription): a bounded buffer (drop-oldest, counted) that a flush task
  writes in one transaction per period from a worker thread, so the event loop
  never waits on the disk;
- one ``samples`` table (node, time, value as OPC UA binary Variant, status)
  indexed by (node, time), and one ``events`` table whose rows keep every
  field of the event (name → binary Variant, msgpack), so a HistoryRead of
  events can answer any select clause;
- retention: rows older than ``retention_s`` are deleted on every prune, and
  each table is capped at ``max_rows`` (oldest first);
- reads run in a thread on their own connection (WAL lets them run beside the
  writer). A read is limited to ``NumValuesPerNode`` values (or
  ``max_read`` when the client sets none) with a continuation point at the
  next value's time.

HistoryRead on a node that is not historized answers
BadHistoryOperationUnsupported; ReadProcessed / ReadAtTime answer
BadHistoryOperationUnsupported too (raw and events only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
from asyncua import ua
from asyncua.common.events import Event
from asyncua.common.utils import Buffer
from asyncua.server.history import HistoryManager, HistoryStorageInterface
from asyncua.ua.ua_binary import variant_from_binary, variant_to_binary

from controller.task_stop import stop_task
from opcua_server.ua_values import node_id, status_code, ua_time

_log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    node   TEXT NOT NULL,
    t      REAL NOT NULL,       -- source time, epoch seconds
    st     REAL NOT NULL,       -- server time
    status INTEGER NOT NULL,
    value  BLOB                 -- OPC UA binary Variant
);
CREATE INDEX IF NOT EXISTS samples_by_node_time ON samples(node, t);
CREATE INDEX IF NOT EXISTS samples_by_time ON samples(t);
CREATE TABLE IF NOT EXISTS events (
    t      REAL NOT NULL,
    type   TEXT NOT NULL,
    fields BLOB NOT NULL        -- msgpack {field name: binary Variant}
);
CREATE INDEX IF NOT EXISTS events_by_time ON events(t);
"""

_EPOCH_MIN = datetime(1601, 1, 2, tzinfo=UTC)


def _ts(dt: datetime | None) -> float | None:
    """Epoch seconds, or None for an unspecified time (null / DateTime.MinValue)."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    if dt < _EPOCH_MIN:
        return None
    return dt.timestamp()


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


class HistoryStore(HistoryStorageInterface):
    def __init__(
        self,
        path: Path | str,
        *,
        ns: Callable[[], int],
        retention_s: float = 7 * 86400.0,
        max_rows: int = 5_000_000,
        flush_period_s: float = 1.0,
        max_pending: int = 100_000,
        max_read: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(max_history_data_response_size=max_read)
        self.path = Path(path)
        self._ns = ns
        self.retention_s = retention_s
        self.max_rows = max_rows
        self.flush_period_s = flush_period_s
        self.max_pending = max_pending
        self.max_read = max_read
        self.clock = clock
        self.historized: set[str] = set()
        self.event_sources: set[ua.NodeId] = {node_id(ua.ObjectIds.Server)}
        self._samples: deque[tuple[str, float, float, int, bytes | None]] = deque()
        self._events: deque[tuple[float, str, bytes]] = deque()
        self.dropped = 0
        self.written = 0
        self._write: sqlite3.Connection | None = None
        self._read: sqlite3.Connection | None = None
        self._read_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._last_prune = 0.0

    # -- lifecycle -----------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        conn.execute("PRAGMA busy_timeout = 10000")
        return conn

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(SCHEMA)
        self._write = conn
        self._read = self._connect()
        self._last_prune = self.clock()

    def start(self) -> None:
        if self._write is None:
            self.open()
        self._task = asyncio.create_task(self._flush_loop(), name="opcua-history")

    async def init(self) -> None:  # HistoryStorageInterface: opened by start()
        return None

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)
        if self._write is not None:
            with contextlib.suppress(Exception):
                await self.flush()
            self._write.close()
            self._write = None
        if self._read is not None:
            self._read.close()
            self._read = None

    # -- recording -----------------------------------------------------------------------
    def record(self, name: str, dv: ua.DataValue) -> None:
        """Queue one value of a historized variable (called from the publisher)."""
        if len(self._samples) >= self.max_pending:
            self._samples.popleft()
            self.dropped += 1
        st = dv.ServerTimestamp or dv.SourceTimestamp or datetime.now(UTC)
        src = dv.SourceTimestamp or st
        value = dv.Value
        blob = (
            None
            if value is None or value.VariantType is ua.VariantType.Null
            else variant_to_binary(value)
        )
        status = dv.StatusCode.value if dv.StatusCode is not None else 0
        self._samples.append((name, src.timestamp(), st.timestamp(), status, blob))

    def record_event(self, event: Event) -> None:
        if len(self._events) >= self.max_pending:
            self._events.popleft()
            self.dropped += 1
        fields = {}
        for name, vtype in event.data_types.items():
            value = getattr(event, name, None)
            if value is None:
                continue
            try:
                fields[name] = variant_to_binary(ua.Variant(value, vtype))
            except Exception:  # a field that does not encode is left out, not the event
                _log.debug("event field %s not stored", name, exc_info=True)
        t = getattr(event, "Time", None)
        at = t.timestamp() if isinstance(t, datetime) else self.clock()
        etype = getattr(event, "EventType", ua.NodeId())
        self._events.append((at, etype.to_string(), msgpack.packb(fields, use_bin_type=True)))

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_period_s)
            try:
                await self.flush()
            except Exception:
                _log.exception("history flush failed")

    async def flush(self) -> None:
        """Write what is queued; prune by age and row cap at most once per minute."""
        samples = list(self._samples)
        self._samples.clear()
        events = list(self._events)
        self._events.clear()
        now = self.clock()
        prune = now - self._last_prune >= 60.0
        if prune:
            self._last_prune = now
        if not samples and not events and not prune:
            return
        async with self._write_lock:
            await asyncio.to_thread(self._write_batch, samples, events, now if prune else None)
        self.written += len(samples) + len(events)

    def _write_batch(
        self,
        samples: list[tuple[str, float, float, int, bytes | None]],
        events: list[tuple[float, str, bytes]],
        prune_at: float | None,
    ) -> None:
        conn = self._write
        if conn is None:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            if samples:
                conn.executemany(
                    "INSERT INTO samples(node, t, st, status, value) VALUES (?, ?, ?, ?, ?)",
                    samples,
                )
            if events:
                conn.executemany("INSERT INTO events(t, type, fields) VALUES (?, ?, ?)", events)
            if prune_at is not None:
                self._prune(conn, prune_at)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _prune(self, conn: sqlite3.Connection, now: float) -> None:
        cutoff = now - self.retention_s
        conn.execute("DELETE FROM samples WHERE t < ?", (cutoff,))
        conn.execute("DELETE FROM events WHERE t < ?", (cutoff,))
        for table in ("samples", "events"):
            (count,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            excess = count - self.max_rows
            if excess > 0:
                conn.execute(
                    f"DELETE FROM {table} WHERE rowid IN "
                    f"(SELECT rowid FROM {table} ORDER BY t LIMIT ?)",
                    (excess,),
                )

    async def prune(self) -> None:
        """Apply retention now (normally once a minute with the flush)."""
        await self.flush()
        async with self._write_lock:
            await asyncio.to_thread(self._prune_now)

    def _prune_now(self) -> None:
        conn = self._write
        if conn is None:
            return
        conn.execute("BEGIN IMMEDIATE")
        self._prune(conn, self.clock())
        conn.execute("COMMIT")

    # -- reading -------------------------------------------------------------------------
    def node_name(self, node_id: ua.NodeId) -> str | None:
        if node_id.NamespaceIndex != self._ns() or not isinstance(node_id.Identifier, str):
            return None
        name = node_id.Identifier
        return name if name in self.historized else None

    def _range(
        self, start: datetime | None, end: datetime | None, nb: int
    ) -> tuple[float, float, bool, int]:
        s, e = _ts(start), _ts(end)
        reverse = False
        if s is None and e is None:
            raise ValueError("start and end both unspecified")
        if s is None:  # only an end: values before it, newest first
            reverse, lo, hi = True, float("-inf"), e
        elif e is None:
            lo, hi = s, float("inf")
        elif s > e:
            reverse, lo, hi = True, e, s
        else:
            lo, hi = s, e
        limit = nb if nb and nb > 0 else self.max_read
        return lo, hi, reverse, min(limit, self.max_read)  # type: ignore[return-value]

    async def read_node_history(
        self, node_id: ua.NodeId, start: datetime | None, end: datetime | None, nb_values: int
    ) -> tuple[list[ua.DataValue], datetime | None]:
        name = self.node_name(node_id)
        if name is None:
            return [], None
        await self.flush()  # what was recorded is readable at once
        lo, hi, reverse, limit = self._range(start, end, nb_values)
        order = "DESC" if reverse else "ASC"
        rows = await self._query(
            f"SELECT t, st, status, value FROM samples WHERE node = ? AND t >= ? AND t <= ? "
            f"ORDER BY t {order}, rowid {order} LIMIT ?",
            (name, lo, hi, limit + 1),
        )
        cont = None
        if len(rows) > limit:
            cont = _dt(rows[limit][0])
            rows = rows[:limit]
        out = []
        for t, st, status, blob in rows:
            variant = variant_from_binary(Buffer(blob)) if blob is not None else ua.Variant()
            out.append(
                ua.DataValue(
                    variant,
                    ua.StatusCode(status),
                    SourceTimestamp=ua_time(_dt(t)),
                    ServerTimestamp=ua_time(_dt(st)),
                )
            )
        return out, cont

    async def read_event_history(
        self,
        source_id: ua.NodeId,
        start: datetime | None,
        end: datetime | None,
        nb_values: int,
        evfilter: Any,
    ) -> tuple[list[Event], datetime | None]:
        if source_id not in self.event_sources:
            return [], None
        await self.flush()
        lo, hi, reverse, limit = self._range(start, end, nb_values)
        order = "DESC" if reverse else "ASC"
        rows = await self._query(
            f"SELECT t, fields FROM events WHERE t >= ? AND t <= ? "
            f"ORDER BY t {order}, rowid {order} LIMIT ?",
            (lo, hi, limit + 1),
        )
        cont = None
        if len(rows) > limit:
            cont = _dt(rows[limit][0])
            rows = rows[:limit]
        events = []
        for _t, blob in rows:
            ev = Event()
            for name, raw in msgpack.unpackb(blob, raw=False).items():
                v = variant_from_binary(Buffer(raw))
                ev.add_property(name, v.Value, v.VariantType)
            events.append(ev)
        return events, cont

    async def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        conn = self._read
        if conn is None:
            return []
        async with self._read_lock:
            return await asyncio.to_thread(lambda: conn.execute(sql, params).fetchall())

    async def count(self, table: str = "samples") -> int:
        assert table in ("samples", "events")
        await self.flush()
        rows = await self._query(f"SELECT count(*) FROM {table}", ())
        return int(rows[0][0])

    # -- HistoryStorageInterface parts not used (values come through record()) -----------
    async def new_historized_node(self, node_id: ua.NodeId, period: Any, count: int = 0) -> None:
        return None

    async def save_node_value(self, node_id: ua.NodeId, datavalue: ua.DataValue) -> None:
        name = self.node_name(node_id)
        if name is not None:
            self.record(name, datavalue)

    async def new_historized_event(
        self, source_id: ua.NodeId, evtypes: Any, period: Any, count: int = 0
    ) -> None:
        self.event_sources.add(source_id)

    async def save_event(self, event: Any) -> None:
        self.record_event(event)


class GridHistoryManager(HistoryManager):
    """HistoryRead with precise refusals for nodes and read kinds we do not historize."""

    store: HistoryStore | None = None

    async def _read_history(self, details: Any, rv: ua.HistoryReadValueId) -> ua.HistoryReadResult:
        store = self.store
        bad = status_code(ua.StatusCodes.BadHistoryOperationUnsupported)
        if store is None:
            return ua.HistoryReadResult(StatusCode=bad)
        if isinstance(details, ua.ReadRawModifiedDetails):
            if store.node_name(rv.NodeId) is None:
                return ua.HistoryReadResult(StatusCode=bad)
            if details.IsReadModified:
                return ua.HistoryReadResult(StatusCode=bad)
        elif isinstance(details, ua.ReadEventDetails):
            if rv.NodeId not in store.event_sources:
                return ua.HistoryReadResult(StatusCode=bad)
        else:
            return ua.HistoryReadResult(StatusCode=bad)
        try:
            return await super()._read_history(details, rv)
        except ValueError as exc:  # both times unspecified
            _log.info("HistoryRead refused: %s", exc)
            return ua.HistoryReadResult(
                StatusCode=status_code(ua.StatusCodes.BadInvalidTimestampArgument)
            )
