"""What a domain subsystem (loads, verification line, warehouse, line feed) may
use of the running service, and nothing more: `controller.service.Service`
satisfies it; a subsystem is given it at construction and uses it from
``start()`` on.

Read-only members are properties: a subsystem uses the image, journal,
command log, alarm engine, router and cyclic tasks, it does not replace them.
The one hook it sets is ``reread`` (load control's read-back for reconcile)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from controller.alarms import AlarmEngine
    from controller.command_router import CommandRouter
    from controller.commands import Command, CommandLog
    from controller.cycle import CycleTask
    from controller.journal import Journal
    from controller.process_image import ProcessImage
    from drivers.plant import FieldPlant

# Drives outputs to their safe state at service stop; may return an awaitable.
SafeState = Callable[[], Any]
# Reads back a pending command's effect at start-up (None: cannot tell).
Reread = Callable[["Command"], Any]


class SubsystemContext(Protocol):
    @property
    def image(self) -> ProcessImage:
        """Where the subsystem defines and writes its tags."""

    @property
    def journal(self) -> Journal:
        """Its file holds the subsystem's tables; events go to it."""

    @property
    def commands(self) -> CommandLog:
        """The command log: a subsystem adds its kinds, submits and transitions."""

    @property
    def alarms(self) -> AlarmEngine: ...

    @property
    def router(self) -> CommandRouter:
        """Register the command sink for the subsystem's branch of the plant."""

    @property
    def fast(self) -> CycleTask:
        """The fast task (scans; its quiet point ``after_cycle``)."""

    @property
    def control(self) -> CycleTask:
        """The control task (the subsystem's cyclic program)."""

    @property
    def site_tz(self) -> dt.tzinfo:
        """The site's zone (``[site] timezone``): meter-facing wall-clock times."""

    @property
    def plant(self) -> FieldPlant | None:
        """The field plant, once started (None without buses)."""

    reread: Reread | None

    def add_safe_state(self, name: str, action: SafeState) -> None:
        """Register an action driving the subsystem's outputs to their safe state at stop."""
