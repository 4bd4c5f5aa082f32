"""The OPC UA server in its own process, as the controller runs it.

:class:`OpcUaServerProcess` owns the :class:`~opcua_server.feed.ImageFeed` and
the child ``python -m opcua_server.process``: it starts the child, waits until
the child's endpoint is up (its ``ready`` message), restarts it when it dies
(with a growing delay, reporting down/up so the service can raise an alarm)
and stops it within a budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from controller.cpu_affinity import pin_process
from controller.process_image import ProcessImage
from controller.task_stop import stop_task

from .config import OpcUaConfig
from .feed import ImageFeed, QuietPoint
from .methods import AlarmSource, CommandSink

_log = logging.getLogger("gridctl.opcua")

READY_TIMEOUT_S = 60.0  # model build for a large plant plus interpreter start-up
STOP_GRACE_S = 2.5  # SIGTERM → exit; then SIGKILL
RESTART_DELAY_S = 1.0  # first restart delay, doubled per failed attempt
RESTART_DELAY_MAX_S = 30.0
STABLE_AFTER_S = 60.0  # a child that ran this long resets the restart delay
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux


class OpcUaProcessError(RuntimeError):
    """The OPC UA server process did not come up (the message says how it failed)."""


def socket_path_for(path: Path) -> Path:
    """``path`` if a Unix socket can bind it, else a shorter equivalent."""
    if len(str(path)) < SOCKET_PATH_MAX:
        return path
    relative = Path(os.path.relpath(path))
    if len(str(relative)) < SOCKET_PATH_MAX:
        return relative
    return Path(tempfile.gettempdir()) / f"gridctl-opcua-{os.getpid()}.sock"


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
    ) -> None:
        self.config = config
        # CPUs for the child (``[tasks] cpus``): it would inherit the mask of the
        # loop thread that spawns it, the control CPUs it must stay off.
        self.cpus = cpus
        self.state_dir = Path(state_dir)
        self.socket_path = socket_path_for(self.state_dir / "feed.sock")
        self.feed = ImageFeed(
            image,
            self.socket_path,
            hello={
                "config": config.model_dump(mode="json"),
                "state_dir": str(self.state_dir.resolve()),
                "history_db": str(history_db.resolve()) if history_db is not None else None,
            },
            commands=commands,
            alarms=alarms,
            bus_snapshots=bus_snapshots,
            task_stats=task_stats,
            quiet_point=quiet_point,
            on_login_failures=login_failures,
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
            info = await self._spawn()
        except BaseException:
            await self.feed.stop()
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
            "--socket",
            str(self.socket_path),
            "--exit-with-parent",
            str(os.getpid()),
            "--log-level",
            self.log_level,
            stdin=asyncio.subprocess.DEVNULL,
            # Its own session: a Ctrl-C at the terminal reaches the controller,
            # which stops the child in order (it is not restarted meanwhile).
            start_new_session=True,
        )
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
        raise OpcUaProcessError(
            f"OPC UA server process (pid {proc.pid}) {failure}; its log lines are above"
        )

    async def _supervise(self) -> None:
        delay = self.restart_delay_s
        while not self._stopping:
            proc = self._proc
            assert proc is not None
            code = await proc.wait()
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
