"""The OPC UA server process: ``python -m opcua_server.process --socket PATH --config FILE``.

It connects to the controller's :class:`~opcua_server.feed.ImageFeed`, builds a
mirror :class:`~controller.process_image.ProcessImage` from the tag snapshot,
applies the change batches into it, and runs the unchanged
:class:`~opcua_server.server.OpcUaServer` on that mirror, with a command sink
and an alarm source that forward over the channel. asyncua's publish work thus
runs on this process's event loop, never on the one carrying the cyclic tasks.

It reads its ``[opcua]`` table (users with their password hashes included)
from ``--config`` itself; the channel carries only what it cannot read: tags,
values, diagnostics, alarms. It talks only to the controller that started it:
the socket's listener (SO_PEERCRED) must be its parent, the pid given as
``--exit-with-parent``, or it closes the channel unread.

It exits when the channel closes, when SIGTERM/SIGINT arrives, and when the
process named by ``--exit-with-parent`` is gone (a SIGKILLed controller cannot
stop its children).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import logging
import os
import signal
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from controller.api import (
    ArmRequest,
    CommandRefused,
    CommandRequest,
    ExecuteRequest,
    RefusalReason,
    Selection,
)
from controller.bus_stats import BusSnapshot
from controller.process_image import ChangeQueue, ProcessImage, Quality, TagValue
from controller.quality_reason import reason_from_wire
from controller.task_stop import stop_task
from controller.unix_socket import peer_credentials

from .channel import ChannelError, FrameDecoder, encode, raise_error
from .config import OpcUaConfig, Role, SetpointRule
from .login_failures import FailureOutbox
from .methods import AlarmInfo

_log = logging.getLogger("gridctl.opcua.process")
_QUALITIES = {int(q): q for q in Quality}

REQUEST_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0
PARENT_POLL_S = 0.5
READ_CHUNK = 256 * 1024
# Every value the server publishes allocates a few tracked objects (TagValue,
# Variant, DataValue, notifications); with the default 700-allocation threshold
# young collections run every ~150 values and cost ~20 % of the per-value CPU.
# The address space itself is frozen (gc.freeze) after the model is built.
GC_THRESHOLDS = (20_000, 20, 20)
# Mirror changes waiting for the publisher before the channel is read again.
BACKLOG_LIMIT = 4_000
STATS_PERIOD_S = 0.5  # the server's counters go back to the controller this often
# OpcUaServer.stats() entries sent back in ``stats`` frames (numbers only).
STATS_KEYS = (
    "published",
    "notified",
    "sampled_coalesced",
    "coalesced",
    "dropped",
    "queue_length",
    "batches",
    "last_batch_latency_s",
    "last_batch_duration_s",
)


class MirrorImage(ProcessImage):
    """The controller's tags, written only from the feed's frames.

    Until the OPC UA server subscribes, a row sets its tag's current value (the
    model is built from them). Once it has, the rows of a ``changes`` frame go
    to its queue as they came, one deque extend per frame: the address space is
    where their values land, so the mirror keeps a current value only for a
    tag the model does not have yet (:meth:`keep`, called by the publisher),
    for the model to add it with.
    """

    def __init__(self) -> None:
        super().__init__()
        self.names: dict[int, str] = {}
        self.setpoint_rules: dict[str, SetpointRule] = {}  # tag name -> rule
        self._rows: ChangeQueue[Sequence[Any]] | None = None

    def subscribe(self, name: str, maxsize: int = 10_000) -> ChangeQueue[Any]:
        if self._rows is not None:
            raise ValueError(f"{name}: the mirror feeds one subscriber, the OPC UA server")
        self._rows = ChangeQueue(name, maxsize)
        return self._rows

    def unsubscribe(self, queue: ChangeQueue[Any]) -> None:
        if queue is not self._rows:
            raise ValueError(f"{queue.name}: not subscribed to the mirror")
        self._rows = None

    def define_row(self, row: Sequence[Any]) -> None:
        ident, name, unit, description, value, quality, reason, source, server, code = row[:10]
        self.define(name, unit, description)
        # 11th field: who may write the tag (rows without it are read-only tags)
        spec = row[10] if len(row) > 10 else None
        if spec is not None:
            role, low, high = spec
            self.setpoint_rules[name] = SetpointRule(Role(role), low, high)
        else:
            self.setpoint_rules.pop(name, None)
        self.names[ident] = name
        change = (ident, value, quality, reason, source, server, code)
        if self._rows is None:
            self.keep(change)
        else:
            # A tag defined after the model (or a resync): its value reaches the
            # address space in order with the changes around it.
            self._rows.put_many([change])
        self.writes += 1

    def apply_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        """Apply one ``changes`` frame, in order."""
        names = self.names
        for row in rows:
            if len(row) != 7 or row[0] not in names:
                raise ChannelError(
                    f"change for tag id {row[0]}, which was never defined"
                    if len(row) == 7
                    else f"change row of {len(row)} fields (expected 7: id, value, "
                    "quality, reason, source_time, server_time, code)"
                )
        queue = self._rows
        if queue is not None:
            queue.put_many(list(rows))
        else:
            for row in rows:
                self.keep(row)
        self.writes += len(rows)

    def keep(self, row: Sequence[Any]) -> None:
        """Make a row its tag's current value."""
        ident, value, quality, reason, source, server, code = row
        tag = self._tags[self.names[ident]]
        tag.current = TagValue(
            value, _QUALITIES[quality], reason, source, server, reason_from_wire(code)
        )

    def backlog(self) -> int:
        """Changes waiting for the publisher."""
        return len(self._rows) if self._rows is not None else 0


def command_states(raw: Any) -> dict[str, tuple[str, str]]:
    """A ``commands`` frame's states, checked: ``{command id: [state, reason]}``."""
    if not isinstance(raw, dict):
        raise ChannelError(
            f"commands: 'states' must be a map of command id to [state, reason], "
            f"not {type(raw).__name__}"
        )
    out: dict[str, tuple[str, str]] = {}
    for command_id, entry in raw.items():
        if (
            not isinstance(command_id, str)
            or not isinstance(entry, list | tuple)
            or len(entry) != 2
            or not all(isinstance(part, str) for part in entry)
        ):
            raise ChannelError(
                f"commands: the state of {command_id!r} must be [state, reason] "
                f"(two strings), not {entry!r}"
            )
        out[command_id] = (entry[0], entry[1])
    return out


class ControllerChannel:
    """The server process's end of the channel: messages in, requests out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self.closed = False

    def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            raise ChannelError("channel to the controller is closed")
        self.writer.write(encode(message))

    async def messages(self) -> Any:
        """Yield messages until the controller closes the channel."""
        while True:
            data = await self.reader.read(READ_CHUNK)
            if not data:
                return
            for message in self.decoder.feed(data):
                if message.get("t") == "reply":
                    self._resolve(message)
                else:
                    yield message

    def _resolve(self, message: dict[str, Any]) -> None:
        fut = self._waiting.pop(message.get("id", -1), None)
        if fut is not None and not fut.done():
            fut.set_result(message)

    async def request(self, op: str, **fields: Any) -> Any:
        """Send a request and return its result; raises the error the controller named."""
        request_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = fut
        try:
            self.send({"t": "request", "id": request_id, "op": op, **fields})
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                reply = await fut
        except TimeoutError:
            raise ChannelError(
                f"{op}: no reply from the controller within {REQUEST_TIMEOUT_S} s"
            ) from None
        finally:
            self._waiting.pop(request_id, None)
        if not reply.get("ok"):
            raise_error(str(reply.get("error")), str(reply.get("message", "")), reply.get("reason"))
        return reply.get("result")

    def close(self) -> None:
        self.closed = True
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ChannelError("channel to the controller closed"))
        self._waiting.clear()
        self.writer.close()


class ChannelCommandSink:
    """CommandSink (with command states) forwarding to the controller's command router."""

    def __init__(self, channel: ControllerChannel) -> None:
        self.channel = channel
        # states pushed by the controller for commands submitted here
        self.states: dict[str, tuple[str, str]] = {}

    async def submit(self, request: CommandRequest) -> str:
        try:
            result = await self.channel.request("submit", request=asdict(request))
        except ChannelError as exc:
            # Not known to be journaled: the token is the idempotency key for a retry.
            raise CommandRefused(
                RefusalReason.UNAVAILABLE,
                f"controller unreachable ({exc}); retry with the same token",
            ) from None
        command_id = str(result["command_id"])
        state = result.get("state")
        if state:
            self.states[command_id] = (str(state[0]), str(state[1]))
        return command_id

    async def _select(self, op: str, request: ArmRequest | ExecuteRequest) -> Selection:
        # the selection lives in the controller's journal; nothing of it is kept here
        try:
            result = await self.channel.request(op, request=asdict(request))
        except ChannelError as exc:
            raise CommandRefused(
                RefusalReason.UNAVAILABLE, f"{op}: controller unreachable ({exc})"
            ) from None
        state = result.get("state")
        selection = Selection(**result["selection"])
        if state:
            self.states[selection.token] = (str(state[0]), str(state[1]))
        return selection

    async def arm(self, request: ArmRequest) -> Selection:
        return await self._select("arm", request)

    async def execute(self, request: ExecuteRequest) -> Selection:
        return await self._select("execute", request)

    def command_state(self, command_id: str) -> tuple[str, str] | None:
        return self.states.get(command_id)

    def update(self, states: Mapping[str, Sequence[str]]) -> None:
        for command_id, (state, reason) in states.items():
            self.states[command_id] = (state, reason)
        if len(self.states) > 4096:  # only recent commands are tracked by the server
            for key in list(self.states)[: len(self.states) - 4096]:
                del self.states[key]


class ChannelAlarmSource:
    """AlarmSource (with shelving) over the alarm list the controller pushes."""

    def __init__(self, channel: ControllerChannel) -> None:
        self.channel = channel
        self.alarms: list[AlarmInfo] = []

    def update(self, rows: Sequence[dict[str, Any]] | None) -> None:
        self.alarms = [AlarmInfo(**row) for row in rows or ()]

    def active_alarms(self) -> list[AlarmInfo]:
        return self.alarms

    async def acknowledge(self, alarm_id: str, user: str, comment: str) -> None:
        result = await self.channel.request(
            "acknowledge", alarm_id=alarm_id, user=user, comment=comment
        )
        self.update(result.get("alarms"))

    async def shelve(self, alarm_id: str, user: str, duration_s: float, comment: str) -> None:
        result = await self.channel.request(
            "shelve", alarm_id=alarm_id, user=user, duration_s=duration_s, comment=comment
        )
        self.update(result.get("alarms"))


class Diagnostics:
    """The latest bus snapshots and task statistics pushed by the controller."""

    def __init__(self) -> None:
        self.buses: list[BusSnapshot] = []
        self.tasks: dict[str, dict[str, float]] = {}

    def update(self, buses: Any, tasks: Any) -> None:
        if buses is not None:
            self.buses = [BusSnapshot(**b) for b in buses]
        if tasks is not None:
            self.tasks = tasks

    def bus_snapshots(self) -> list[BusSnapshot]:
        return self.buses

    def task_stats(self) -> dict[str, dict[str, float]]:
        return self.tasks


class OpcUaConfigError(ValueError):
    """The ``[opcua]`` table of the config file cannot be used (the message names the file)."""


def load_opcua_table(path: Path) -> OpcUaConfig:
    """The ``[opcua]`` table of a gridctl config file, validated by the same model
    the service's config loader uses for it (the other tables are not the
    server's business and are not read)."""
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise OpcUaConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise OpcUaConfigError(f"{path}: not a TOML config: {exc}") from None
    table = data.get("opcua", {})
    if not isinstance(table, dict):
        raise OpcUaConfigError(f"{path}: opcua must be a table")
    try:
        return OpcUaConfig.model_validate(table)
    except ValidationError as exc:
        problems = [
            f"{path}: opcua.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in exc.errors()
        ]
        raise OpcUaConfigError("\n".join(problems)) from None


def controller_refusal(writer: asyncio.StreamWriter, parent: int) -> str | None:
    """Why the other end of the channel is not the controller that started us (None: it is)."""
    try:
        peer = peer_credentials(writer.get_extra_info("socket"))
    except (OSError, AttributeError) as exc:
        return f"its credentials are unreadable ({exc})"
    ppid = os.getppid()
    if peer.pid != parent or peer.pid != ppid:
        return (
            f"it is served by pid {peer.pid}, not by the controller that started this "
            f"process (pid {parent}, parent pid {ppid})"
        )
    if peer.uid != os.getuid():
        return f"it is served by uid {peer.uid}, not by this user (uid {os.getuid()})"
    return None


async def _connect(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    end = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        try:
            return await asyncio.open_unix_connection(path, limit=READ_CHUNK)
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.1)


async def _watch_parent(pid: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if os.getppid() != pid:
            _log.warning("parent %d is gone; stopping", pid)
            stop.set()
            return
        await asyncio.sleep(PARENT_POLL_S)


def _rss() -> int:
    """Resident set size of this process in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


async def _report(
    channel: ControllerChannel, server: Any, image: MirrorImage, logins: FailureOutbox
) -> None:
    """Send the server's counters to the controller every STATS_PERIOD_S.

    The controller cannot see the address space; these counters are how it
    (and the benchmark) knows how many values actually reached it.
    """
    while not channel.closed:
        await asyncio.sleep(STATS_PERIOD_S)
        stats = server.stats()
        with contextlib.suppress(ChannelError):
            channel.send(
                {
                    "t": "stats",
                    "time": time.time(),
                    "applied": image.writes,
                    **{k: stats[k] for k in STATS_KEYS if k in stats},
                    "rss_bytes": _rss(),
                }
            )
            failures = logins.frame()
            if failures is not None:
                channel.send(failures)


async def serve(
    socket_path: str,
    parent: int,
    config: OpcUaConfig,
    state_dir: Path,
    history_db: Path | None = None,
) -> int:
    """Connect, mirror, serve; returns the exit code.

    ``parent``: the controller's pid, the only process the channel is taken from.
    """
    from .server import OpcUaServer, ServerSettings

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watchdog = asyncio.create_task(_watch_parent(parent, stop))
    try:
        reader, writer = await _connect(socket_path)
    except OSError as exc:
        _log.error("cannot connect to the controller at %s: %s", socket_path, exc)
        watchdog.cancel()
        return 1
    refusal = controller_refusal(writer, parent)
    if refusal is not None:
        _log.error("refusing the channel at %s: %s", socket_path, refusal)
        writer.close()
        watchdog.cancel()
        return 2
    channel = ControllerChannel(reader, writer)
    image = MirrorImage()
    sink = ChannelCommandSink(channel)
    alarms = ChannelAlarmSource(channel)
    diag = Diagnostics()
    logins = FailureOutbox()
    server: OpcUaServer | None = None
    synced = asyncio.Event()
    hello: dict[str, Any] = {}
    failure: list[BaseException] = []

    async def receive() -> None:
        try:
            async for message in channel.messages():
                kind = message["t"]
                if kind == "changes":
                    image.apply_rows(message["c"])
                    # Read no further than the publisher keeps up with: a backlog
                    # here only adds latency (and drops at the mirror's bounded
                    # queue), while one in the socket makes the feed coalesce per tag.
                    while image.backlog() > BACKLOG_LIMIT:
                        await asyncio.sleep(0)
                elif kind == "tags":
                    for row in message["defs"]:
                        image.define_row(row)
                elif kind == "status":
                    diag.update(message.get("buses"), message.get("tasks"))
                elif kind == "commands":
                    # behind the changes frames before it: the publisher applies
                    # them once it has written those
                    states = command_states(message.get("states"))
                    if server is not None:
                        server.command_states_changed(states)
                    else:
                        sink.update(states)
                elif kind == "alarms":
                    alarms.update(message.get("list"))
                    if server is not None:
                        server.alarms_changed()
                elif kind == "hello":
                    hello.update(message)
                    diag.update(message.get("buses"), message.get("tasks"))
                    alarms.update(message.get("alarms"))
                elif kind == "synced":
                    synced.set()
                else:
                    _log.warning("unknown message type %r ignored", kind)
            _log.info("the controller closed the channel; stopping")
        except Exception as exc:
            _log.exception("channel failed; stopping")
            failure.append(exc)
        finally:
            stop.set()

    receiver = asyncio.create_task(receive(), name="opcua-channel")
    code = 0
    try:
        waits = [asyncio.create_task(stop.wait()), asyncio.create_task(synced.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            task.cancel()
        if not synced.is_set():
            return 1 if failure else 0
        settings = ServerSettings(
            state_dir=state_dir,
            bus_snapshots=diag.bus_snapshots if hello.get("buses") is not None else None,
            commands=sink,
            alarms=alarms if hello.get("alarms") is not None else None,
            task_stats=diag.task_stats if hello.get("tasks") is not None else None,
            history_db=history_db,
            login_failures=logins.add,
            setpoints=lambda tag: image.setpoint_rules.get(tag.name),
        )
        server = OpcUaServer(config, image, settings)
        gc.collect()
        rss_before = _rss()
        await server.start()
        rss_model = _rss() - rss_before
        stats = server.stats()
        # The address space is ~10⁵ long-lived objects: keep them out of full collections.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        channel.send(
            {
                "t": "ready",
                "endpoint": config.endpoint,
                "pid": os.getpid(),
                "model_nodes": stats.get("model_nodes", 0),
                "model_build_s": stats.get("model_build_s", 0.0),
                "model_rss_bytes": rss_model,
            }
        )
        _log.info("serving %s for the controller (pid %d)", config.endpoint, parent)
        reporter = asyncio.create_task(_report(channel, server, image, logins), name="opcua-stats")
        try:
            await stop.wait()
        finally:
            reporter.cancel()
        code = 1 if failure else 0
    except Exception:
        _log.exception("OPC UA server process failed")
        code = 1
    finally:
        if server is not None:
            try:
                await asyncio.wait_for(server.stop(), 3.0)
            except Exception:
                _log.exception("OPC UA server stop failed")
        await stop_task(receiver)
        watchdog.cancel()
        channel.close()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m opcua_server.process",
        description="the gridctl OPC UA server, fed by the controller over a Unix socket",
    )
    p.add_argument("--socket", required=True, help="the controller's feed socket")
    p.add_argument(
        "--config",
        type=Path,
        required=True,
        help="gridctl config file; only its [opcua] table is read",
    )
    p.add_argument(
        "--state-dir", type=Path, required=True, help="the server's state (certificates, ...)"
    )
    p.add_argument("--history-db", type=Path, help="SQLite file for historical values")
    p.add_argument(
        "--exit-with-parent",
        type=int,
        required=True,
        metavar="PID",
        help="the controller that started us: the only process the channel is taken "
        "from; stop when it is gone",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.log_level != "DEBUG":
        # asyncua logs every standard node it cannot place at INFO (a thousand
        # lines at start-up); the service log keeps gridctl's own lines.
        logging.getLogger("asyncua").setLevel(logging.WARNING)
    try:
        config = load_opcua_table(args.config)
    except OpcUaConfigError as exc:
        _log.error("%s", exc)
        return 1
    import uvloop

    return uvloop.run(
        serve(args.socket, args.exit_with_parent, config, args.state_dir, args.history_db)
    )


if __name__ == "__main__":
    sys.exit(main())
