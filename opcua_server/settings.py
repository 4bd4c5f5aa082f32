"""What an :class:`~opcua_server.server.OpcUaServer` is wired to, besides its
``[opcua]`` config and the image: the runtime's sources and sinks (commands,
alarms, bus and task statistics, refused logins, setpoint rules), where its
state lives, and the few periods and bounds the tests and benches tune."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from controller.bus_stats import BusSnapshot
from controller.process_image import Tag

from .config import Role, SetpointRule
from .methods import AlarmSource, CommandSink
from .users import FailureSink

if TYPE_CHECKING:
    from controller.alarms import AlarmEngine
    from controller.commands import CommandLog

# Cycle task statistics: per task ``latency_p50_s``/``p99``/``max`` and ``overruns``.
TaskStats = Callable[[], dict[str, dict[str, float]]]
# The role that may write a tag, or the values its register can hold (None: read-only).
SetpointLookup = Callable[[Tag], Role | SetpointRule | None]
# Variables kept in history by default (leaf name patterns): energy, power, voltage, temperatures.
HISTORY_PATTERNS: tuple[str, ...] = ("energy_*", "power_*", "voltage_*", "*temperature*")


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """``commands``: a CommandSink, or a controller CommandLog (wrapped in the
    journal adapter); without one every method that commands is absent and
    every tag read-only. ``alarms``: an AlarmSource, or a controller
    AlarmEngine (wrapped); without one there is no ``@alarms`` object.
    ``history_db``: SQLite file for HistoryRead (None: no history).
    ``alarm_confirm``: acknowledged conditions wait for Confirm (Part 9) before
    they stop being retained. ``login_failures``: called with each refused
    login (to journal and count it). ``setpoints``: a Write to a tag it names
    becomes a ``write_setpoint`` command to ``commands``."""

    state_dir: Path
    commands: CommandSink | CommandLog | None = None
    alarms: AlarmSource | AlarmEngine | None = None
    bus_snapshots: Callable[[], list[BusSnapshot]] | None = None
    task_stats: TaskStats | None = None
    login_failures: FailureSink | None = None
    setpoints: SetpointLookup | None = None
    history_db: Path | None = None
    history_retention_s: float = 7 * 86400.0
    history_max_rows: int = 5_000_000
    history_patterns: Sequence[str] = HISTORY_PATTERNS
    # Diagnostics refresh, and the longest a tag defined after start waits for its node.
    diagnostics_period_s: float = 1.0
    recent_commands: int = 32
    # The alarm list is polled this often besides every alarms_changed().
    alarm_poll_s: float = 0.25
    alarm_confirm: bool = False
