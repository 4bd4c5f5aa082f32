"""Adapters from the runtime's alarm engine and command log to the server's seams.

The OPC UA server depends only on the :class:`~opcua_server.methods.AlarmSource`
and ``controller.api`` command protocols; these classes wrap
``controller.alarms.AlarmEngine`` and ``controller.commands.CommandLog`` to
provide them, translating their errors into the server's refusals.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from controller.alarms import Alarm, AlarmEngine, AlarmError, AlarmState
from controller.api import (
    ArmRequest,
    CommandRefused,
    CommandRequest,
    ExecuteRequest,
    RefusalReason,
    Selection,
)
from controller.commands import Command, CommandError, CommandLog

from .methods import AlarmInfo

_log = logging.getLogger(__name__)


class EngineAlarmSource:
    """AlarmSource (with shelving) over an ``AlarmEngine``; alarm ids are its keys."""

    def __init__(self, engine: AlarmEngine, clock: Callable[[], float] | None = None) -> None:
        self.engine = engine
        # The engine's own clock by default, so "shelved" is judged in its time.
        engine_clock: Callable[[], float] = getattr(engine, "_clock", time.time)
        self._clock = clock if clock is not None else engine_clock

    @staticmethod
    def info(a: Alarm, now: float) -> AlarmInfo:
        return AlarmInfo(
            alarm_id=a.key,
            source=a.source,
            message=a.message,
            severity=a.severity,
            active=a.active,
            acknowledged=a.acked,
            shelved=a.shelved(now),
            time=a.updated,  # the last state change (raised, cleared, acked, shelved)
            condition=a.condition,
            acked_by=a.acked_by or "",
            comment=a.ack_note or "",
        )

    def active_alarms(self) -> list[AlarmInfo]:
        now = self._clock()
        return [self.info(a, now) for a in self.engine if a.state is not AlarmState.NORMAL]

    async def acknowledge(self, alarm_id: str, user: str, comment: str) -> None:
        try:
            self.engine.get(alarm_id)
        except AlarmError:
            raise KeyError(alarm_id) from None
        try:
            self.engine.acknowledge(alarm_id, user, comment)
        except AlarmError as exc:
            raise ValueError(str(exc)) from None

    async def shelve(self, alarm_id: str, user: str, duration_s: float, comment: str) -> None:
        try:
            self.engine.get(alarm_id)
        except AlarmError:
            raise KeyError(alarm_id) from None
        try:
            self.engine.shelve(alarm_id, user, duration_s, comment)
        except AlarmError as exc:
            raise ValueError(str(exc)) from None


# OPC UA command kinds → command log kinds (the log's vocabulary is a metric label).
KIND_MAP: dict[str, str] = {
    "close_direct": "direct_close",
    "set_demand_limit": "set_limit",
}


class CommandLogSink:
    """CommandSink that journals the command (write-ahead) and hands it on.

    ``dispatch(command)`` — when given — is called after the record is durable,
    with the ``controller.commands.Command``; the subsystem that executes it
    moves it through its states in the log. Without ``dispatch`` the command
    stays ``queued`` for whoever polls the log. A kind the log does not know is
    refused as not supported.
    """

    def __init__(
        self,
        log: CommandLog,
        *,
        dispatch: Callable[[Any], Any] | None = None,
        kind_map: dict[str, str] | None = None,
        arm_expiry_s: float = 30.0,
    ) -> None:
        self.log = log
        self.dispatch = dispatch
        self.kind_map = KIND_MAP if kind_map is None else kind_map
        self.arm_expiry_s = arm_expiry_s

    async def submit(self, request: CommandRequest) -> str:
        kind = self.kind_map.get(request.kind, request.kind)
        if kind not in self.log.kinds:
            raise CommandRefused(
                RefusalReason.NOT_SUPPORTED, f"{request.kind} is not handled by this controller"
            )
        args = dict(request.args)
        args["_role"] = request.role
        args["_source"] = request.source
        try:
            cmd = await self.log.submit(
                kind,
                request.target,
                args,
                who=request.user,
                why=request.reason,
                command_id=request.token[:64] or None,
            )
        except CommandError as exc:
            raise CommandRefused(RefusalReason.BAD_ARGUMENT, str(exc)) from None
        await self._dispatch(cmd)
        return cmd.id

    async def _dispatch(self, cmd: Command) -> None:
        if self.dispatch is not None:
            result = self.dispatch(cmd)
            if hasattr(result, "__await__"):
                await result

    async def arm(self, request: ArmRequest) -> Selection:
        """An ``armed`` record in the log, reserving the target for ``arm_expiry_s``."""
        kind = self.kind_map.get(request.kind, request.kind)
        if kind not in self.log.kinds:
            raise CommandRefused(
                RefusalReason.NOT_SUPPORTED, f"{request.kind} is not handled by this controller"
            )
        try:
            cmd = await self.log.arm(
                kind,
                request.target,
                {"_role": request.role, "_source": request.source},
                who=request.user,
                why=request.reason,
                timeout_s=self.arm_expiry_s,
            )
        except CommandError as exc:
            raise CommandRefused(RefusalReason.BAD_ARGUMENT, str(exc)) from None
        return cmd.selection()

    async def execute(self, request: ExecuteRequest) -> Selection:
        cmd = await self.log.execute_armed(
            request.token, target=request.target, who=request.user, expires_in_s=None
        )
        await self._dispatch(cmd)
        return cmd.selection()

    def command_state(self, command_id: str) -> tuple[str, str] | None:
        try:
            cmd = self.log.get(command_id)
        except CommandError:
            return None
        return cmd.state.value, cmd.reason
