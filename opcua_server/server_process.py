"""The OPC UA server in its own process, as the controller runs it.

:class:`OpcUaServerProcess` owns the :class:`~opcua_server.feed.ImageFeed` and
the child ``python -m opcua_server.process``: it starts the child, waits until
the child's endpoint is up (its ``ready`` message), restarts it when it dies
(with a growing delay, reporting down/up so the service can raise an alarm)
and stops it within a budget.

The child gets its ``[opcua]`` table from a config file (the service's own, or
one written 0600 next to the feed socket when the config was built in memory),
so the users' password hashes never cross the channel; the feed serves only
the pid of the child spawned last.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from controller.api import CommandSink
from controller.cpu_affinity import pin_process
from controller.process_image import ProcessImage, Tag
from controller.task_stop import stop_task
from controller.unix_socket import SUN_PATH_MAX, short_socket_path

from .config import OpcUaConfig, SetpointRule
from .feed import NO_PEER, ImageFeed, QuietPoint
from .methods import AlarmSource

_log = logging.getLogger("gridctl.opcua")

READY_TIMEOUT_S = 60.0  # model build for a large plant plus interpreter start-up
STOP_GRACE_S = 2.5  # SIGTERM → exit; then SIGKILL
RESTART_DELAY_S = 1.0  # first restart delay, doubled per failed attempt
RESTART_DELAY_MAX_S = 30.0
STABLE_AFTER_S = 60.0  # a child that ran this long resets the restart delay
CONFIG_FILE_MODE = 0o600  # the [opcua] table written for the child holds password hashes


class OpcUaProcessError(RuntimeError):
    """The OPC UA server process did not come up (the message says how it failed)."""


def socket_path_for(path: Path) -> Path:
    """``path`` if a Unix socket can bind it, else a shorter equivalent: relative to
    the working directory (the child's too), or in the per-user runtime directory.

    Raises :class:`~controller.unix_socket.SocketPathError` naming the path and
    its length when none fits; never a name in the shared temporary directory.
    """
    if len(os.fsencode(str(path))) <= SUN_PATH_MAX:
        return path
    relative = Path(os.path.relpath(path))
    if len(os.fsencode(str(relative))) <= SUN_PATH_MAX:
        return relative
    return short_socket_path(path, "OPC UA feed socket")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are TOML basic-string escapes; TOML also wants DEL escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {type(value).__name__} {value!r}")


def write_opcua_table(config: OpcUaConfig, path: Path) -> None:
    """Write ``config`` as the ``[opcua]`` table of a config file, readable by its owner only."""
    lines = ["[opcua]"]
    # Defaults stay out: TOML has no null, and the model restores them.
    for key, value in config.model_dump(mode="json", exclude_defaults=True).items():
        lines.append(f"{key} = {_toml_value(value)}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, CONFIG_FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fd, CONFIG_FILE_MODE)  # an existing file keeps its old mode otherwise
        fh.write("\n".join(lines) + "\n")


def _exit_text(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


class OpcUaServerProcess:
    def __init__(
        self,
        config: OpcUaConfig,
        image: ProcessImage,
        *,
        state_dir: Path,
        config_path: Path | None = None,
        commands: CommandSink | None = None,
        alarms: AlarmSource | None = None,
        bus_snapshots: Callable[[], Iterable[Any]] | None = None,
        task_stats: Callable[[], dict[str, dict[str, float]]] | None = None,
        history_db: Path | None = None,
        quiet_point: QuietPoint | None = None,
        log_level: str = "INFO",
        on_down: Callable[[str], None] | None = None,
        on_up: Callable[[dict[str, Any]], None] | None = None,
        ready_timeout_s: float = READY_TIMEOUT_S,
        restart_delay_s: float = RESTART_DELAY_S,
        cpus: frozenset[int] | None = None,
        login_failures: Callable[[dict[str, Any]], None] | None = None,
        setpoints: Callable[[Tag], SetpointRule | None] | None = None,
    ) -> None:
        """``setpoints``: who may write a tag and its range (None: read-only); sent to
        the server process with the tag definitions."""
        self.config = config
        # CPUs for the child (``[tasks] cpus``): it would inherit the mask of the
        # loop thread that spawns it, the control CPUs it must stay off.
        self.cpus = cpus
        self.state_dir = Path(state_dir)
        self.history_db = history_db
        self.socket_path = socket_path_for(self.state_dir / "feed.sock")
        # The child reads its [opcua] table from here; a config built in memory
        # is written next to the feed socket when the feed starts.
        self._config_written = config_path is None
        self.config_path = (
            Path(config_path)
            if config_path is not None
            else self.socket_path.with_name(f"{self.socket_path.stem}-opcua.toml")
        )
        self.feed = ImageFeed(
            image,
            self.socket_path,
            hello={},
            expected_pid=NO_PEER,
            commands=commands,
            alarms=alarms,
            bus_snapshots=bus_snapshots,
            task_stats=task_stats,
            quiet_point=quiet_point,
            on_login_failures=login_failures,
            setpoints=setpoints,
        )
        self.log_level = log_level
        self.on_down = on_down
        self.on_up = on_up
        self.ready_timeout_s = ready_timeout_s
        self.restart_delay_s = restart_delay_s
        self.restarts = 0
        self.ready_info: dict[str, Any] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._started_at = 0.0
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def endpoint(self) -> str:
        return self.config.endpoint

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def stats(self) -> dict[str, Any]:
        return {
            **self.ready_info,
            "pid": self.pid,
            "restarts": self.restarts,
            "feed": self.feed.stats(),
        }

    async def start(self) -> dict[str, Any]:
        """Listen, start the child and return its ``ready`` message; raises OpcUaProcessError."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        await self.feed.start()
        try:
            if self._config_written:
                write_opcua_table(self.config, self.config_path)
            info = await self._spawn()
        except BaseException:
            await self.feed.stop()
            self._remove_written_config()
            raise
        self._watch = asyncio.get_running_loop().create_task(
            self._supervise(), name="opcua-process"
        )
        return info

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        self._stopping = True
        if self._watch is not None:
            await stop_task(self._watch)
            self._watch = None
        await self._terminate(grace_s)
        await self.feed.stop()
        self._remove_written_config()

    def _remove_written_config(self) -> None:
        if self._config_written:
            with contextlib.suppress(FileNotFoundError):
                self.config_path.unlink()

    async def _terminate(self, grace_s: float) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            _log.warning("opcua: server process %d ignored SIGTERM; killing it", proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _spawn(self) -> dict[str, Any]:
        ready = self.feed.expect_ready()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "opcua_server.process",
            *self._arguments(),
            stdin=asyncio.subprocess.DEVNULL,
            # Its own session: a Ctrl-C at the terminal reaches the controller,
            # which stops the child in order (it is not restarted meanwhile).
            start_new_session=True,
        )
        # Before the loop runs again: the child connects only after its imports.
        self.feed.expected_pid = proc.pid
        self._proc = proc
        self._started_at = time.monotonic()
        if self.cpus:
            try:
                pin_process(proc.pid, self.cpus)
            except OSError as exc:
                _log.warning("opcua: server process %d not moved to its CPUs (%s)", proc.pid, exc)
        exited = asyncio.ensure_future(proc.wait())
        try:
            done, _ = await asyncio.wait(
                (ready, exited), timeout=self.ready_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            exited.cancel()
        if ready in done and ready.exception() is None:
            self.ready_info = ready.result()
            return self.ready_info
        if ready in done:
            # The channel closes as the child exits: its exit code says more.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 3.0)
        if proc.returncode is not None:
            failure = f"{_exit_text(proc.returncode or 0)} before its endpoint was up"
        elif ready in done:
            failure = f"closed the channel before its endpoint was up ({ready.exception()})"
        else:
            failure = f"did not report its endpoint up within {self.ready_timeout_s:g} s"
        if not ready.done():
            ready.cancel()
        else:
            ready.exception()  # retrieved: no "never retrieved" warning
        await self._terminate(0.5)
        self.feed.expected_pid = NO_PEER
        raise OpcUaProcessError(
            f"OPC UA server process (pid {proc.pid}) {failure}; its log lines are above"
        )

    def _arguments(self) -> list[str]:
        args = [
            "--socket",
            str(self.socket_path),
            "--config",
            str(self.config_path.resolve()),
            "--state-dir",
            str(self.state_dir.resolve()),
            "--exit-with-parent",
            str(os.getpid()),
            "--log-level",
            self.log_level,
        ]
        if self.history_db is not None:
            args += ["--history-db", str(self.history_db.resolve())]
        return args

    async def _supervise(self) -> None:
        delay = self.restart_delay_s
        while not self._stopping:
            proc = self._proc
            assert proc is not None
            code = await proc.wait()
            self.feed.expected_pid = NO_PEER
            if self._stopping:
                return
            if time.monotonic() - self._started_at >= STABLE_AFTER_S:
                delay = self.restart_delay_s
            reason = f"OPC UA server process (pid {proc.pid}) {_exit_text(code)}"
            _log.error("opcua: %s; restarting in %g s", reason, delay)
            if self.on_down is not None:
                self.on_down(reason)
            while not self._stopping:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_DELAY_MAX_S)
                try:
                    info = await self._spawn()
                except OpcUaProcessError as exc:
                    _log.error("opcua: restart failed: %s; next attempt in %g s", exc, delay)
                    continue
                self.restarts += 1
                _log.info(
                    "opcua ready: %s (restarted, pid %d, restart %d)",
                    self.endpoint,
                    info.get("pid", 0),
                    self.restarts,
                )
                if self.on_up is not None:
                    self.on_up(info)
                break
