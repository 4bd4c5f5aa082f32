"""The durable journal: one SQLite file in WAL mode, one writer thread.

Everything that must survive a crash goes through here: commands and their
state transitions, alarms and events, and the domain tables later parts add
(results, inventory, orders) through further migrations.

Writing
    Writes are *units* (a list of SQL statements applied atomically) queued to
    one writer thread, which merges up to ``batch_max`` units into one
    transaction (group commit), each unit in its own savepoint so a bad unit
    fails alone. The event loop never waits on the disk unless it asks to.

Durability
    In WAL mode ``synchronous=NORMAL`` survives a process crash (SIGKILL) but
    a power cut can lose the last commits, because the WAL is not fsynced at
    commit. That is fine for events, not for commands: a command must be on
    disk before its bytes go to a wire (write-ahead), and "confirmed" must
    never be taken back. So a batch holding any *durable* unit is committed
    with ``synchronous=FULL`` (WAL fsynced at commit); other batches use
    NORMAL. (SQLite refuses to change the level inside a transaction, so the
    level is set per batch, between transactions.)

Back-pressure
    The queue is bounded (``queue_limit``). ``post`` (events) drops and counts
    when it is full; ``commit`` (commands) raises ``JournalFull`` — a command
    is refused, never silently dropped.

Storage failure
    A disk that is full (or failing) is not a bad unit: no later write can be
    trusted to land either. The first such error marks the journal *failed*
    (``failure``, sticky until the journal is reopened): the whole batch is
    rolled back, every waiter gets ``JournalStorageError``, nothing half-written
    remains, and what was committed before stays as it was. The command log
    reads ``failure`` to close its intake, and ``CommandLog.check_journal``
    raises the ``journal_failed`` alarm from it, so new commands are refused
    with a reason rather than accepted on a promise the disk cannot keep.

Schema
    ``MIGRATIONS`` is the one ordered list of steps for every table of the
    file (commands, results, warehouse, loads); ``PRAGMA user_version`` is the
    number applied. Each runs in one transaction with its version bump. Later
    parts append to the list; never edit an applied step. A step is an SQL
    script, or a function of the connection returning one when what it does
    depends on the file (SQLite has no ``ADD COLUMN IF NOT EXISTS``). Steps
    that adopted tables older code created on its own are idempotent, so a
    file written by that code migrates forward like any other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.cpu_affinity import pin_current_thread
from controller.cycle import Series
from controller.loads_schema import LOADS_SCHEMA, tariff_registers_step
from controller.results_schema import RESULTS_SCHEMA
from controller.warehouse_schema import WAREHOUSE_SCHEMA

log = logging.getLogger("gridctl.journal")

Statement = tuple[str, Sequence[Any]]
# (name, SQL script or a function of the file returning one)
Migration = tuple[str, str | Callable[[sqlite3.Connection], str]]

MIGRATIONS: list[Migration] = [
    (
        "commands, alarms and events",
        """
        CREATE TABLE commands (
            id       TEXT PRIMARY KEY,
            kind     TEXT NOT NULL,
            target   TEXT NOT NULL,
            args     BLOB NOT NULL,          -- msgpack
            who      TEXT NOT NULL,
            why      TEXT NOT NULL,
            state    TEXT NOT NULL,
            reason   TEXT NOT NULL DEFAULT '',
            created  REAL NOT NULL,          -- epoch seconds
            updated  REAL NOT NULL,
            expires  REAL                    -- epoch seconds, NULL = no expiry
        );
        CREATE INDEX commands_pending ON commands(state)
            WHERE state NOT IN ('confirmed', 'failed', 'expired', 'refused');
        CREATE TABLE command_transitions (
            seq        INTEGER PRIMARY KEY,
            command_id TEXT NOT NULL REFERENCES commands(id),
            state      TEXT NOT NULL,
            reason     TEXT NOT NULL DEFAULT '',
            who        TEXT NOT NULL,
            at         REAL NOT NULL
        );
        CREATE INDEX command_transitions_by_command ON command_transitions(command_id, seq);
        CREATE TABLE alarms (
            key           TEXT PRIMARY KEY,  -- condition:source
            condition     TEXT NOT NULL,
            source        TEXT NOT NULL,
            severity      INTEGER NOT NULL,
            active        INTEGER NOT NULL,
            acked         INTEGER NOT NULL,
            shelved_until REAL,
            shelved_by    TEXT,
            message       TEXT NOT NULL DEFAULT '',
            raised_at     REAL,
            cleared_at    REAL,
            acked_at      REAL,
            acked_by      TEXT,
            ack_note      TEXT,
            updated       REAL NOT NULL
        );
        CREATE TABLE events (
            seq      INTEGER PRIMARY KEY,
            at       REAL NOT NULL,
            kind     TEXT NOT NULL,          -- alarm, command, service, ...
            source   TEXT NOT NULL,
            severity INTEGER NOT NULL DEFAULT 0,
            message  TEXT NOT NULL,
            data     BLOB                    -- msgpack or NULL
        );
        CREATE INDEX events_by_time ON events(at);
        """,
    ),
    # verification results (controller.verification.results owns the queries)
    *((f"verification results {n}", step) for n, step in enumerate(RESULTS_SCHEMA, start=1)),
    (
        "refused OPC UA logins",
        """
        CREATE TABLE login_failures (
            seq     INTEGER PRIMARY KEY,
            at      REAL NOT NULL,          -- epoch seconds
            user    TEXT NOT NULL,          -- the name the client gave
            peer    TEXT NOT NULL,          -- the client's host address
            reason  TEXT NOT NULL           -- opcua_server.login_failures.REASONS
        );
        CREATE INDEX login_failures_by_time ON login_failures(at);
        """,
    ),
    (
        "meters that refuse block DIs (drivers.block_fallback)",
        """
        CREATE TABLE meter_block_refusals (
            bus    TEXT NOT NULL,
            meter  TEXT NOT NULL,           -- 12-digit address
            di     TEXT NOT NULL,           -- the refused block DI, e.g. 0201FF00
            err    INTEGER NOT NULL,        -- the ERR byte of the refusal
            at     REAL NOT NULL,           -- epoch seconds
            PRIMARY KEY (bus, meter, di)
        );
        """,
    ),
    # The warehouse and the loads created these tables themselves before they
    # joined this list (the loads counting in ld_meta): the steps are idempotent.
    ("warehouse inventory, orders and crane tasks", WAREHOUSE_SCHEMA),
    *((f"loads {n}", step) for n, step in enumerate(LOADS_SCHEMA, start=1)),
    (f"loads {len(LOADS_SCHEMA) + 1}: tariff registers", tariff_registers_step),
]


class JournalError(RuntimeError):
    pass


def migrate(
    conn: sqlite3.Connection, where: str, migrations: Sequence[Migration] = MIGRATIONS
) -> int:
    """Apply the steps ``conn``'s file lacks (by ``user_version``); returns the version.

    Also for files of their own (a results export, a warehouse tool's file):
    one registry, whatever opens the file."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    known = len(migrations)
    if version > known:
        raise JournalError(
            f"{where}: schema version {version} is newer than this gridctl knows ({known})"
        )
    for number in range(version + 1, known + 1):
        name, step = migrations[number - 1]
        log.info("journal: migrating %s to version %d (%s)", where, number, name)
        # a function step reads the file as it is before its own transaction: migrations
        # run while the file is opened, before any other writer of this process starts
        script = step if isinstance(step, str) else step(conn)
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
            )
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise JournalError(f"{where}: migration {number} ({name}) failed: {exc}") from exc
    return known


class JournalFull(JournalError):
    """The write queue is at its limit; the write was refused."""


class JournalClosed(JournalError):
    pass


class JournalStorageError(JournalError):
    """The disk refused a write (full, I/O error, read-only): the journal is failed."""


# SQLite primary result codes that mean the storage, not the statement, is at fault.
# (Extended codes carry the primary one in the low byte.)
_STORAGE_CODES = {
    8: "read-only",  # SQLITE_READONLY
    10: "I/O error",  # SQLITE_IOERR
    11: "corrupt",  # SQLITE_CORRUPT
    13: "disk full",  # SQLITE_FULL
    14: "cannot open",  # SQLITE_CANTOPEN
    26: "not a database",  # SQLITE_NOTADB
}


def storage_failure(exc: BaseException) -> str | None:
    """A short reason when ``exc`` is the disk failing rather than a bad statement."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _STORAGE_CODES:
            return f"{_STORAGE_CODES[code & 0xFF]}: {exc}"
        # older builds without error codes: the messages are stable
        text = str(exc)
        if "disk is full" in text or "disk I/O error" in text:
            return text
        return None
    if isinstance(exc, OSError):  # e.g. ENOSPC from the WAL or the directory
        return f"{exc.strerror or exc}"
    return None


@dataclass(slots=True)
class _Unit:
    statements: Sequence[Statement]
    durable: bool
    queued_at: float
    future: concurrent.futures.Future[None] | None


@dataclass(slots=True, frozen=True)
class JournalSnapshot:
    path: str
    schema_version: int
    queue_depth: int
    queue_limit: int
    units: int
    batches: int
    durable_batches: int
    dropped: int
    failed: int
    write_latency: Any  # cycle.Summary: enqueue → committed
    commit_time: Any  # cycle.Summary: one transaction incl. fsync
    failure: str | None = None  # storage failure (disk full, I/O error), sticky until reopened


class Journal:
    def __init__(
        self,
        path: Path | str,
        *,
        queue_limit: int = 10_000,
        batch_max: int = 256,
        migrations: Sequence[Migration] | None = None,
        writer_cpus: frozenset[int] | None = None,
    ) -> None:
        self.path = Path(path)
        # CPUs for the writer thread (``[tasks] cpus`` isolation): it is started
        # from whichever thread opens the journal and would inherit its mask.
        self.writer_cpus = writer_cpus
        self.queue_limit = queue_limit
        self.batch_max = batch_max
        self.migrations = MIGRATIONS if migrations is None else migrations
        self.schema_version = 0
        self._queue: deque[_Unit] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._read: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self.units = 0
        self.batches = 0
        self.durable_batches = 0
        self.dropped = 0
        self.failed = 0
        self.write_latency = Series(4096)
        self.commit_time = Series(4096)
        # set once by the writer thread, read by the loop: a str assignment is atomic
        self.failure: str | None = None
        self.failed_at: float | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 10000")
        return conn

    def open(self) -> int:
        """Create or migrate the file, start the writer; returns the schema version."""
        if self._thread is not None:
            raise JournalError("journal already open")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise JournalError(f"{self.path}: cannot enable WAL (journal_mode={mode})")
            self.schema_version = self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        conn.execute("PRAGMA synchronous = NORMAL")
        self._closing = False
        self.failure = self.failed_at = None
        self._thread = threading.Thread(
            target=self._writer, args=(conn,), name="journal-writer", daemon=True
        )
        self._thread.start()
        self._read = self._connect()
        # one writer to the file: the read side cannot write even by mistake (a write
        # here would contend with the writer thread for the file's lock on the loop)
        self._read.execute("PRAGMA query_only = ON")
        self._read.row_factory = sqlite3.Row
        return self.schema_version

    def _migrate(self, conn: sqlite3.Connection) -> int:
        return migrate(conn, str(self.path), self.migrations)

    def close(self, timeout: float = 5.0) -> bool:
        """Flush what is queued and stop the writer; True when everything was written."""
        thread = self._thread
        if thread is None:
            return True
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        thread.join(timeout)
        self._thread = None
        if self._read is not None:
            with self._read_lock:
                self._read.close()
            self._read = None
        return not thread.is_alive() and not self._queue

    @property
    def is_open(self) -> bool:
        return self._thread is not None and not self._closing

    @property
    def healthy(self) -> bool:
        """Open and no storage failure since it was opened."""
        return self.is_open and self.failure is None

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure, self.failed_at = reason, time.time()
            log.critical("journal %s failed: %s; new commands will be refused", self.path, reason)

    # -- writing ----------------------------------------------------------------------------
    def _enqueue(self, unit: _Unit, *, drop: bool) -> bool:
        with self._cond:
            if self._closing or self._thread is None:
                raise JournalClosed(f"{self.path}: journal is closed")
            if len(self._queue) >= self.queue_limit:
                if drop:
                    self.dropped += 1
                    return False
                raise JournalFull(f"journal queue full ({self.queue_limit} pending writes)")
            self._queue.append(unit)
            self._cond.notify()
        return True

    def submit(
        self, statements: Sequence[Statement], *, durable: bool = True
    ) -> concurrent.futures.Future[None]:
        """Queue a unit; the future resolves when it is committed (or fails)."""
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._enqueue(_Unit(statements, durable, time.perf_counter(), fut), drop=False)
        return fut

    async def commit(self, statements: Sequence[Statement], *, durable: bool = True) -> None:
        """Queue a unit and wait until it is on disk (fsynced when ``durable``)."""
        await asyncio.wrap_future(self.submit(statements, durable=durable))

    def post(self, statements: Sequence[Statement]) -> bool:
        """Fire and forget (events): False when dropped because the queue is full."""
        try:
            return self._enqueue(_Unit(statements, False, time.perf_counter(), None), drop=True)
        except JournalClosed:
            self.dropped += 1
            return False

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        await self.commit([], durable=False)

    def _writer(self, conn: sqlite3.Connection) -> None:
        if self.writer_cpus:
            try:
                pin_current_thread(self.writer_cpus)
            except OSError as exc:
                log.warning("journal: writer thread not moved to its CPUs (%s)", exc)
        sync_full = False
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait()
                    if not self._queue and self._closing:
                        return
                    n = min(len(self._queue), self.batch_max)
                    batch = [self._queue.popleft() for _ in range(n)]
                durable = any(u.durable for u in batch)
                if durable != sync_full:
                    conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                    sync_full = durable
                self._write_batch(conn, batch, durable)
        finally:
            conn.close()

    def _write_batch(self, conn: sqlite3.Connection, batch: list[_Unit], durable: bool) -> None:
        started = time.perf_counter()
        errors: list[BaseException | None] = [None] * len(batch)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for i, unit in enumerate(batch):
                conn.execute("SAVEPOINT unit")
                try:
                    for sql, params in unit.statements:
                        conn.execute(sql, params)
                except sqlite3.Error as exc:
                    if storage_failure(exc) is not None:
                        # not this unit's fault, and SQLite may already have rolled the
                        # transaction back: fail the whole batch with the real cause
                        raise
                    conn.execute("ROLLBACK TO unit")
                    errors[i] = exc
                conn.execute("RELEASE unit")
            conn.execute("COMMIT")
        except BaseException as exc:  # the whole batch failed (disk full, I/O error)
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error as rollback_exc:  # the rollback itself may hit the disk
                log.error("journal: rollback failed: %s", rollback_exc)
            log.error("journal: batch of %d writes failed: %s", len(batch), exc)
            reason = storage_failure(exc)
            if reason is not None:
                self._fail(reason)
                exc = JournalStorageError(f"journal storage failed: {reason}")
            errors = [exc] * len(batch)
        done = time.perf_counter()
        self.commit_time.add(done - started)
        self.batches += 1
        self.durable_batches += durable
        for unit, err in zip(batch, errors, strict=True):
            self.units += 1
            self.write_latency.add(done - unit.queued_at)
            if err is not None:
                self.failed += 1
                if unit.future is None:
                    log.error("journal: write failed: %s", err)
            if unit.future is not None and not unit.future.cancelled():
                if err is None:
                    unit.future.set_result(None)
                elif isinstance(err, JournalStorageError):
                    unit.future.set_exception(err)
                else:
                    unit.future.set_exception(JournalError(f"journal write failed: {err}"))

    # -- reading ----------------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Read committed data (a separate connection; WAL lets it run beside the writer)."""
        if self._read is None:
            raise JournalClosed(f"{self.path}: journal is closed")
        with self._read_lock:
            return self._read.execute(sql, params).fetchall()

    async def aquery(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return await asyncio.to_thread(self.query, sql, params)

    # -- publishing -------------------------------------------------------------------------
    def snapshot(self) -> JournalSnapshot:
        return JournalSnapshot(
            str(self.path),
            self.schema_version,
            len(self._queue),
            self.queue_limit,
            self.units,
            self.batches,
            self.durable_batches,
            self.dropped,
            self.failed,
            self.write_latency.summary(256),  # percentiles over the last 256 (cheap to sort)
            self.commit_time.summary(256),
            self.failure,
        )

    # -- refused logins ---------------------------------------------------------------------
    def login_failure(self, at: float, user: str, peer: str, reason: str) -> bool:
        """Record a refused OPC UA login (fire and forget, like events)."""
        return self.post(
            [
                (
                    "INSERT INTO login_failures(at, user, peer, reason) VALUES (?, ?, ?, ?)",
                    (at, user, peer, reason),
                )
            ]
        )

    # -- events -----------------------------------------------------------------------------
    def event(
        self,
        kind: str,
        source: str,
        message: str,
        *,
        severity: int = 0,
        data: bytes | None = None,
        at: float | None = None,
    ) -> bool:
        """Record an event (fire and forget)."""
        return self.post(
            [
                (
                    "INSERT INTO events(at, kind, source, severity, message, data) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (time.time() if at is None else at, kind, source, severity, message, data),
                )
            ]
        )
