"""Start the simulator as a child process (`python -m controller sim --config PATH`)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from drivers.sim.cli import READY_PREFIX

log = logging.getLogger("gridctl.sim")

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0


class SimulatorError(RuntimeError):
    """The simulator did not start (its stderr is in the message)."""


class SimulatorProcess:
    def __init__(self, process: subprocess.Popen[str], info: dict[str, Any]) -> None:
        self.process = process
        self.info = info

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def control_socket(self) -> str:
        return str(self.info.get("control_socket", ""))

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        """SIGTERM, then kill after a grace period; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> SimulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_simulator(
    config_path: Path,
    *,
    fast: bool = False,
    cwd: Path | None = None,
    timeout: float = READY_TIMEOUT_S,
    cpus: frozenset[int] | None = None,
) -> SimulatorProcess:
    """Spawn the simulator and return once its ports and control socket are ready.

    ``cpus``: where the simulator runs (``[tasks] cpus`` keeps it off the
    controller's control CPUs); a refusal is logged and the child runs unpinned.
    """
    cmd = [sys.executable, "-m", "controller", "sim", "--config", str(config_path)]
    # A controller killed with SIGKILL cannot stop its children: the simulator
    # watches its parent so a crash test or a killed service leaves no orphan
    # holding the demo's ports.
    cmd += ["--exit-with-parent", str(os.getpid())]
    if fast:
        cmd.append("--fast")
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # stderr goes to a file: a pipe nobody reads would block a chatty child
    errlog = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the child
    process = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=errlog, text=True, cwd=cwd, env=env
    )
    if cpus:
        try:
            pin_process(process.pid, cpus)
        except OSError as exc:
            log.warning("simulator: process %d not moved to its CPUs (%s)", process.pid, exc)
    result: dict[str, Any] = {}

    def wait_ready() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith(READY_PREFIX):
                result["info"] = json.loads(line[len(READY_PREFIX) :])
                return

    reader = threading.Thread(target=wait_ready, daemon=True)
    reader.start()
    reader.join(timeout)
    if "info" not in result:
        process.kill()
        process.wait()
        errlog.seek(0)
        err = errlog.read()
        raise SimulatorError(
            f"simulator did not become ready within {timeout} s: {err.strip()[-2000:]}"
        )
    # keep draining stdout so the child never blocks on a full pipe
    threading.Thread(target=_drain, args=(process,), daemon=True).start()
    return SimulatorProcess(process, result["info"])


def pin_process(pid: int, cpus: frozenset[int]) -> None:
    """Every thread of process ``pid`` onto ``cpus``; OSError when the kernel refuses.

    ``sched_setaffinity(pid)`` moves only the thread whose id is ``pid``; a
    child that has already started threads of its own needs each one moved.
    """
    os.sched_setaffinity(pid, cpus)
    try:
        threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return  # the child has already gone
    for tid in threads:
        if tid != pid:
            # a thread that has just ended needs no moving
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(tid, cpus)


def _drain(process: subprocess.Popen[str]) -> None:
    if process.stdout is not None:
        for _ in process.stdout:
            pass
