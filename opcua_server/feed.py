"""Controller side of the OPC UA process split: the image feed.

:class:`ImageFeed` listens on a Unix socket. The OPC UA server process
(``opcua_server.process``) connects and receives the tag definitions with their
current values, then a stream of change batches from a bounded process-image
subscription, periodic bus and task diagnostics, the alarm list when it
changes, and replies to its requests (submit a command, acknowledge or shelve
an alarm). Message types are listed in :mod:`opcua_server.channel`.

The feed runs on the controller's event loop, so it must never hold up a
cyclic task:

- it never awaits the reader: frames go into the transport's buffer, and above
  ``write_buffer_limit`` the feed stops sending changes and coalesces them per
  tag (latest value wins, counted) until the buffer drains;
- its work happens right after a fast-task cycle (``quiet_point``), one frame
  of at most ``batch_limit`` changes per step;
- the image subscription is bounded (``queue_size``, drop-oldest, counted);
  after a drop the feed re-sends every tag's current value, so the mirror is
  never left on a stale value.

Only the server process the controller spawned is served: the socket is 0600
in a 0700 directory, and a peer whose pid (SO_PEERCRED) is not
``expected_pid`` is closed before it gets a byte, counted in
``peers_refused``. A same-user process could otherwise take the server's place:
read every tag and submit commands under any user name it likes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, cast

from controller.api import (
    ArmRequest,
    CommandRefused,
    CommandRequest,
    CommandSink,
    CommandStatus,
    ExecuteRequest,
    RefusalReason,
    SelectBeforeOperate,
)
from controller.process_image import ChangeQueue, ProcessImage, Tag, TagValue
from controller.unix_socket import bind_listening_socket, peer_credentials, private_dir

from .channel import FrameDecoder, encode, error_message, error_name, error_reason
from .command_view import TERMINAL
from .config import SetpointRule
from .methods import AlarmShelving, AlarmSource

_log = logging.getLogger("gridctl.opcua.feed")

SUBSCRIPTION_NAME = "opcua-feed"
# Defaults; each is a named limit on the feed.
QUEUE_SIZE = 100_000  # image changes waiting for the next flush (drop-oldest)
BATCH_LIMIT = 2_000  # changes per frame, and per loop step
DEFINE_CHUNK = 2_000  # tag definitions per frame at connect
WRITE_BUFFER_LIMIT = 8 * 1024 * 1024  # bytes in the transport buffer before coalescing
FLUSH_INTERVAL_S = 0.02
STATUS_PERIOD_S = 1.0  # the server refreshes its diagnostics once a second
ALARM_PERIOD_S = 0.25
MAX_REQUESTS_IN_FLIGHT = 64
WATCHED_COMMANDS = 1024  # commands whose state changes are pushed to the server process
QUIET_WAIT_S = 0.1  # a stopped or stuck fast task must not stall the feed
SOCKET_MODE = 0o600
# ``expected_pid`` before a server process is spawned: pid 0 is refused anyway
# (a peer in another pid namespace reads as 0), so nothing is accepted.
NO_PEER = 0

QuietPoint = Callable[[], Awaitable[Any]]


@dataclasses.dataclass(slots=True)
class FeedStats:
    connections: int = 0
    changes_sent: int = 0
    frames_sent: int = 0
    dropped: int = 0  # changes lost at the full image subscription (then re-synced)
    coalesced: int = 0  # older changes superseded while the reader was slow
    resyncs: int = 0
    skipped_status: int = 0  # diagnostics frames not sent while the buffer was full
    requests: int = 0
    requests_refused: int = 0  # over MAX_REQUESTS_IN_FLIGHT
    peers_refused: int = 0  # connections from a process other than the expected server


class _Connection(asyncio.Protocol):
    """One connected server process; writes never wait (the buffer absorbs them)."""

    def __init__(self, feed: ImageFeed) -> None:
        self.feed = feed
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder()
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed = asyncio.Event()
        self.accepted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its API
        self.transport = cast(asyncio.Transport, transport)
        if not self.feed._accepts(self.transport):
            self.transport.close()
            return
        self.accepted = True
        limit = self.feed.write_buffer_limit
        self.transport.set_write_buffer_limits(high=limit, low=limit // 4)
        self.feed._connected(self)

    def data_received(self, data: bytes) -> None:
        if not self.accepted:
            return
        try:
            for message in self.decoder.feed(data):
                self.feed._received(self, message)
        except Exception as exc:
            _log.error("opcua channel: bad frame from the server process (%s); closing", exc)
            self.close()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()
        self.closed.set()
        if self.accepted:
            self.feed._lost(self)

    def send(self, message: dict[str, Any]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode(message))
            self.feed.counters.frames_sent += 1

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class ImageFeed:
    def __init__(
        self,
        image: ProcessImage,
        socket_path: Path,
        *,
        hello: dict[str, Any],
        expected_pid: int | None,
        commands: CommandSink | None = None,
        alarms: AlarmSource | None = None,
        bus_snapshots: Callable[[], Iterable[Any]] | None = None,
        task_stats: Callable[[], dict[str, dict[str, float]]] | None = None,
        quiet_point: QuietPoint | None = None,
        queue_size: int = QUEUE_SIZE,
        batch_limit: int = BATCH_LIMIT,
        write_buffer_limit: int = WRITE_BUFFER_LIMIT,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        status_period_s: float = STATUS_PERIOD_S,
        alarm_period_s: float = ALARM_PERIOD_S,
        on_login_failures: Callable[[dict[str, Any]], None] | None = None,
        setpoints: Callable[[Tag], SetpointRule | None] | None = None,
    ) -> None:
        """``hello``: what the server process cannot read itself besides the image;
        the feed adds the first diagnostics. The server process reads its
        ``[opcua]`` table (with the users' password hashes) from the config file:
        none of it crosses the channel.

        ``expected_pid``: the only process served (the spawned server process;
        update it for each spawn); :data:`NO_PEER` until there is one. ``None``
        serves any process of this user: only for tests that connect a channel
        by hand, never for a running controller.

        ``on_login_failures``: gets each ``login_failures`` frame (to journal it).

        ``setpoints``: who may write a tag and its range (None: read-only); sent
        with the tag's definition, since the server process has no field config.
        """
        self.image = image
        self.socket_path = Path(socket_path)
        self.hello = hello
        self.expected_pid = expected_pid
        self.commands = commands
        self.alarms = alarms
        self.bus_snapshots = bus_snapshots
        self.task_stats = task_stats
        self.quiet_point = quiet_point
        self.queue_size = queue_size
        self.batch_limit = batch_limit
        self.write_buffer_limit = write_buffer_limit
        self.flush_interval_s = flush_interval_s
        self.status_period_s = status_period_s
        self.alarm_period_s = alarm_period_s
        self.on_login_failures = on_login_failures
        self.setpoints = setpoints
        self.counters = FeedStats()
        self._server: asyncio.AbstractServer | None = None
        self._conn: _Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._requests: set[asyncio.Task[None]] = set()
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._queue: ChangeQueue | None = None
        self._ids: dict[str, int] = {}
        self._pending: dict[str, tuple[Tag, TagValue]] = {}
        self._seen_dropped = 0
        self._watched: dict[str, tuple[str, str] | None] = {}
        # Command states drained from the queue, each waiting for the pending
        # changes queued before it: [pending entries still ahead of it, states].
        self._marks: list[list[Any]] = []
        self._last_alarms: list[dict[str, Any]] | None = None
        # The server process's latest ``stats`` frame (values in its address space, …).
        self.server_stats: dict[str, Any] = {}

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        path = self.socket_path
        private_dir(path.parent)
        sock = bind_listening_socket(path, SOCKET_MODE)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_unix_server(lambda: _Connection(self), sock=sock)
        except BaseException:
            sock.close()
            raise

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._conn is not None:
            self._conn.close()
        self._detach()
        for task in list(self._requests):
            task.cancel()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def expect_ready(self) -> asyncio.Future[dict[str, Any]]:
        """A future for the next ``ready`` message (the server process's endpoint is up)."""
        self._ready = asyncio.get_running_loop().create_future()
        return self._ready

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def stats(self) -> dict[str, Any]:
        queue = self._queue
        conn = self._conn
        transport = conn.transport if conn is not None else None
        return {
            **dataclasses.asdict(self.counters),
            "queue_length": len(queue) if queue is not None else 0,
            "pending": len(self._pending),
            "buffered_bytes": transport.get_write_buffer_size() if transport is not None else 0,
        }

    # -- connection events (called by _Connection) -------------------------------------
    def _accepts(self, transport: asyncio.Transport) -> bool:
        """Is the peer the server process this feed serves? Logs and counts a refusal."""
        try:
            peer = peer_credentials(transport.get_extra_info("socket"))
        except (OSError, AttributeError) as exc:
            self.counters.peers_refused += 1
            _log.warning("opcua channel: peer credentials unreadable (%s); refused", exc)
            return False
        expected = self.expected_pid
        if peer.uid == os.getuid() and peer.pid > 0 and (expected is None or peer.pid == expected):
            return True
        self.counters.peers_refused += 1
        _log.warning(
            "opcua channel: refused a connection from pid %d (uid %d): not the OPC UA "
            "server process (pid %s)",
            peer.pid,
            peer.uid,
            expected if expected != NO_PEER else "none running",
        )
        return False

    def _connected(self, conn: _Connection) -> None:
        if self._conn is not None:
            # one server process at a time: a new one replaces a stale connection
            _log.warning("opcua channel: a new server process connected; closing the old channel")
            self._conn.close()
            self._detach()
        self._conn = conn
        self.counters.connections += 1
        self._task = asyncio.get_running_loop().create_task(self._session(conn), name="opcua-feed")

    def _lost(self, conn: _Connection) -> None:
        if conn is self._conn:
            self._detach()
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(ConnectionError("server process closed the channel"))

    def _detach(self) -> None:
        self._conn = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        if self._queue is not None:
            with contextlib.suppress(ValueError):
                self.image.unsubscribe(self._queue)
            self._queue = None
        self._pending.clear()
        self._marks.clear()
        self._ids.clear()
        self._watched.clear()
        self._last_alarms = None

    def _received(self, conn: _Connection, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "request":
            if len(self._requests) >= MAX_REQUESTS_IN_FLIGHT:
                self.counters.requests_refused += 1
                conn.send(
                    {
                        "t": "reply",
                        "id": message.get("id"),
                        "ok": False,
                        "error": "Busy",
                        "message": f"more than {MAX_REQUESTS_IN_FLIGHT} requests in flight",
                    }
                )
                return
            self.counters.requests += 1
            task = asyncio.get_running_loop().create_task(self._answer(conn, message))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)
        elif kind == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(message)
        elif kind == "stats":
            self.server_stats = message
        elif kind == "login_failures":
            if self.on_login_failures is not None:
                self.on_login_failures(message)
        else:
            _log.warning("opcua channel: unknown message type %r ignored", kind)

    # -- the session: snapshot, then changes and diagnostics ----------------------------
    async def _session(self, conn: _Connection) -> None:
        try:
            # Subscribe before reading the image, so no change can fall between
            # the snapshot and the first batch.
            self._queue = self.image.subscribe(SUBSCRIPTION_NAME, self.queue_size)
            self._seen_dropped = 0
            conn.send(
                {
                    "t": "hello",
                    **self.hello,
                    "buses": self._buses(),
                    "tasks": self.task_stats() if self.task_stats is not None else None,
                    "alarms": self._alarm_rows(),
                }
            )
            chunk: list[list[Any]] = []
            for tag in list(self.image.tags()):
                chunk.append(self._define(tag))
                if len(chunk) >= DEFINE_CHUNK:
                    await self._send_when_quiet(conn, {"t": "tags", "defs": chunk})
                    chunk = []
            if chunk:
                conn.send({"t": "tags", "defs": chunk})
            conn.send({"t": "synced"})
            await self._stream(conn)
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("opcua channel: feed failed; closing the channel")
            conn.close()

    async def _send_when_quiet(self, conn: _Connection, message: dict[str, Any]) -> None:
        await conn.writable.wait()
        await self._quiet()
        conn.send(message)

    async def _quiet(self) -> None:
        if self.quiet_point is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.quiet_point(), QUIET_WAIT_S)

    async def _stream(self, conn: _Connection) -> None:
        next_status = next_alarms = time.monotonic()
        while not conn.closed.is_set():
            if self._pending and conn.writable.is_set():
                # A backlog of more than one frame: the next frame goes at the next
                # quiet point (the end of the next fast cycle), not a flush interval
                # later, so the feed's rate is not capped at batch_limit per flush
                # interval; still one frame per loop step.
                if self.quiet_point is None:
                    await asyncio.sleep(0)
            else:
                await asyncio.sleep(self.flush_interval_s)
            await self._quiet()
            if conn.closed.is_set():
                return
            now = time.monotonic()
            if now >= next_status and self._queue is not None:
                # Seen now, so any tag change that led to it (a relay read back)
                # is already queued: the states go behind it (see _flush).
                states = self._command_changes()
                if states:
                    self._queue.mark(states)
            self._flush(conn)
            if now >= next_status:
                next_status = now + self.status_period_s
                if conn.writable.is_set():
                    conn.send(self._status())
                else:
                    self.counters.skipped_status += 1
            if now >= next_alarms:
                next_alarms = now + self.alarm_period_s
                rows = self._alarm_rows()
                if rows is not None and rows != self._last_alarms and conn.writable.is_set():
                    self._last_alarms = rows
                    conn.send({"t": "alarms", "list": rows})

    def _flush(self, conn: _Connection) -> None:
        """Move queued changes to the channel: one frame per call, at most batch_limit."""
        queue = self._queue
        if queue is None:
            return
        items = queue.drain()
        marks = queue.due_marks()
        popped = 0
        pending = self._pending
        if queue.dropped > self._seen_dropped:
            # Intermediate values are gone; the current ones are in the image.
            self.counters.dropped += queue.dropped - self._seen_dropped
            self._seen_dropped = queue.dropped
            self.counters.resyncs += 1
            for tag in self.image.tags():
                pending[tag.name] = (tag, tag.current)
        writable = conn.writable.is_set()
        if pending or not writable:
            # Slow reader (or a backlog): keep only each tag's latest change.
            self._hold(items)
            self._wait(marks)
            if not writable or not pending:
                self._send_marks(conn, 0)
                return
            # Oldest first; one pass over the dict's head (next(iter()) per item
            # would rescan the slots already popped).
            names = list(itertools.islice(pending, self.batch_limit))
            items = [pending.pop(name) for name in names]
            popped = len(names)
        elif len(items) > self.batch_limit:
            self._hold(items[self.batch_limit :])
            items = items[: self.batch_limit]
            self._wait(marks)
        else:
            self._wait(marks)
        if not items:
            self._send_marks(conn, popped)
            return
        ids = self._ids
        defs: list[list[Any]] = []
        rows: list[tuple[Any, ...]] = []
        for tag, v in items:
            ident = ids.get(tag.name)
            if ident is None:  # a tag defined after the snapshot
                defs.append(self._define(tag))
                ident = ids[tag.name]
            # [id, value, quality, reason, source_time, server_time, code]: a
            # TagValue's fields in order (msgpack writes Quality and Reason as ints).
            rows.append((ident, *v))
        if defs:
            conn.send({"t": "tags", "defs": defs})
        conn.send(
            {
                "t": "changes",
                "c": rows,
                "dropped": self.counters.dropped,
                "coalesced": self.counters.coalesced,
            }
        )
        self.counters.changes_sent += len(rows)
        self._send_marks(conn, popped)

    def _wait(self, marks: list[Any]) -> None:
        """Marks just drained wait for every change held back so far (the head of
        ``_pending``: a newer value of a held tag keeps its place, new tags go last)."""
        for states in marks:
            self._marks.append([len(self._pending), states])

    def _send_marks(self, conn: _Connection, popped: int) -> None:
        """After ``popped`` held changes went out: send the command states now due."""
        waiting = self._marks
        if not waiting:
            return
        for mark in waiting:
            mark[0] -= popped
        due: dict[str, list[str]] = {}
        while waiting and waiting[0][0] <= 0 and conn.writable.is_set():
            due.update(waiting.pop(0)[1])
        if due:
            conn.send({"t": "commands", "states": due})

    def _hold(self, items: list[tuple[Tag, TagValue]]) -> None:
        """Keep changes for a later frame, one per tag: a newer change replaces an
        older one in its place (oldest first), counted as coalesced."""
        pending = self._pending
        before = len(pending)
        for item in items:
            pending[item[0].name] = item
        self.counters.coalesced += len(items) - (len(pending) - before)

    def _define(self, tag: Tag) -> list[Any]:
        ident = self._ids.setdefault(tag.name, len(self._ids))
        v = tag.current
        rule = self.setpoints(tag) if self.setpoints is not None else None
        return [
            ident,
            tag.name,
            tag.unit,
            tag.description,
            v.value,
            int(v.quality),
            v.reason,
            v.source_time,
            v.server_time,
            int(v.code),
            None if rule is None else [rule.role.value, rule.minimum, rule.maximum],
        ]

    # -- diagnostics ---------------------------------------------------------------------
    def _buses(self) -> list[dict[str, Any]] | None:
        if self.bus_snapshots is None:
            return None
        return [dataclasses.asdict(snap) for snap in self.bus_snapshots()]

    def _status(self) -> dict[str, Any]:
        return {
            "t": "status",
            "buses": self._buses(),
            "tasks": self.task_stats() if self.task_stats is not None else None,
        }

    def _command_changes(self) -> dict[str, list[str]]:
        status = self.commands if isinstance(self.commands, CommandStatus) else None
        if status is None or not self._watched:
            return {}
        out: dict[str, list[str]] = {}
        for command_id, last in list(self._watched.items()):
            found = status.command_state(command_id)
            if found is None:
                continue
            if found != last:
                out[command_id] = [found[0], found[1]]
                self._watched[command_id] = found
            if found[0] in TERMINAL:
                del self._watched[command_id]
        return out

    def _watch(self, command_id: str, state: tuple[str, str] | None) -> None:
        watched = self._watched
        if len(watched) >= WATCHED_COMMANDS:
            del watched[next(iter(watched))]
        if state is None or state[0] not in TERMINAL:
            watched[command_id] = state

    def _alarm_rows(self) -> list[dict[str, Any]] | None:
        if self.alarms is None:
            return None
        return [dataclasses.asdict(a) for a in self.alarms.active_alarms()]

    # -- requests from the server process -------------------------------------------------
    async def _answer(self, conn: _Connection, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        try:
            result = await self._perform(str(message.get("op")), message)
            reply: dict[str, Any] = {"t": "reply", "id": request_id, "ok": True, "result": result}
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            name = error_name(exc)
            if name == "InternalError":
                _log.exception("opcua channel: request %s failed", message.get("op"))
            reply = {
                "t": "reply",
                "id": request_id,
                "ok": False,
                "error": name,
                "message": error_message(exc),
                "reason": error_reason(exc),
            }
        conn.send(reply)

    async def _perform(self, op: str, message: dict[str, Any]) -> Any:
        if op == "submit":
            if self.commands is None:
                raise ValueError("this controller takes no commands over OPC UA")
            fields = message.get("request")
            if not isinstance(fields, dict):
                raise ValueError("submit: 'request' must be a map of CommandRequest fields")
            try:
                request = CommandRequest(**fields)
            except TypeError as exc:
                raise ValueError(f"submit: bad request fields: {exc}") from None
            command_id = str(await self.commands.submit(request))
            state = (
                self.commands.command_state(command_id)
                if isinstance(self.commands, CommandStatus)
                else None
            )
            self._watch(command_id, state)
            return {"command_id": command_id, "state": list(state) if state else None}
        if op in ("arm", "execute"):
            sink = self.commands
            if not isinstance(sink, SelectBeforeOperate):
                raise CommandRefused(
                    RefusalReason.NOT_SUPPORTED, "this controller keeps no select-before-operate"
                )
            fields = message.get("request")
            if not isinstance(fields, dict):
                raise ValueError(f"{op}: 'request' must be a map of {op} request fields")
            try:
                if op == "arm":
                    selection = await sink.arm(ArmRequest(**fields))
                else:
                    selection = await sink.execute(ExecuteRequest(**fields))
            except TypeError as exc:
                raise ValueError(f"{op}: bad request fields: {exc}") from None
            state = None
            if op == "execute":
                state = (
                    sink.command_state(selection.token) if isinstance(sink, CommandStatus) else None
                )
                self._watch(selection.token, state)
            return {
                "selection": dataclasses.asdict(selection),
                "state": list(state) if state else None,
            }
        if op in ("acknowledge", "shelve"):
            alarms = self.alarms
            if alarms is None:
                raise ValueError("this controller has no alarms")
            alarm_id, user, comment = (
                str(message.get("alarm_id", "")),
                str(message.get("user", "")),
                str(message.get("comment", "")),
            )
            if op == "acknowledge":
                await alarms.acknowledge(alarm_id, user, comment)
            else:
                if not isinstance(alarms, AlarmShelving):
                    raise ValueError("this controller's alarms cannot be shelved")
                duration = message.get("duration_s")
                if not isinstance(duration, int | float):
                    raise ValueError("shelve: 'duration_s' must be a number of seconds")
                await alarms.shelve(alarm_id, user, float(duration), comment)
            # the new list travels with the reply, so the server's next poll sees the change
            rows = self._alarm_rows()
            self._last_alarms = rows
            return {"alarms": rows}
        raise ValueError(f"unknown request op {op!r} (submit, arm, execute, acknowledge, shelve)")
