"""Route OPC UA (and CLI) command requests to the subsystem that owns the target.

The OPC UA server knows one `CommandSink`; each subsystem (load switching,
verification line, warehouse) owns a top-level branch of the plant (``loads/``,
``line/``, ``warehouse/``) and registers its sink for that prefix here.
"""

from __future__ import annotations

from typing import Any

from controller.api import (
    ArmRequest,
    CommandRefused,
    CommandRequest,
    CommandSink,
    ExecuteRequest,
    RefusalReason,
    SelectBeforeOperate,
    Selection,
)
from controller.commands import Command, CommandError, CommandLog


async def journal_request(
    log: CommandLog, kind: str, request: CommandRequest, args: dict[str, Any]
) -> Command:
    """The command record of a request, journaled before anything acts on it.

    The request's token is the command id, so a repeated call (a client retrying
    after a lost answer) gets the first record back: act only while it is QUEUED.
    A record the log refuses is the request's refusal.
    """
    try:
        return await log.submit(
            kind,
            request.target,
            args,
            who=request.user or "anonymous",
            why=request.reason,
            command_id=f"opcua-{request.token[:48]}",
        )
    except CommandError as exc:
        raise CommandRefused(RefusalReason.BAD_ARGUMENT, str(exc)) from None


class CommandRouter:
    def __init__(self, log: CommandLog | None = None) -> None:
        self._sinks: dict[str, CommandSink] = {}
        # every subsystem journals its commands in the service's one command log
        self._log = log

    def register(self, prefix: str, sink: CommandSink) -> None:
        if not prefix.endswith("/"):
            raise ValueError(f"prefix must end with '/', got {prefix!r}")
        if prefix in self._sinks:
            raise ValueError(f"a command sink is already registered for {prefix!r}")
        self._sinks[prefix] = sink

    @property
    def prefixes(self) -> tuple[str, ...]:
        return tuple(self._sinks)

    def _sink_for(self, target: str) -> CommandSink:
        # longest prefix wins, so "loads/groups/" can be served apart from "loads/";
        # the branch's own root object ("line" for "line/") belongs to the branch
        for prefix in sorted(self._sinks, key=len, reverse=True):
            if target.startswith(prefix) or target == prefix[:-1]:
                return self._sinks[prefix]
        known = ", ".join(sorted(self._sinks)) or "none in this build"
        raise CommandRefused(
            RefusalReason.UNKNOWN_TARGET,
            f"target {target!r}: no subsystem takes commands for it (known: {known})",
        )

    def _selecting(self, target: str) -> SelectBeforeOperate:
        sink = self._sink_for(target)
        if not isinstance(sink, SelectBeforeOperate):
            raise CommandRefused(
                RefusalReason.NOT_SUPPORTED, f"target {target!r}: no select-before-operate here"
            )
        return sink

    async def submit(self, request: CommandRequest) -> str:
        return await self._sink_for(request.target).submit(request)

    async def arm(self, request: ArmRequest) -> Selection:
        return await self._selecting(request.target).arm(request)

    async def execute(self, request: ExecuteRequest) -> Selection:
        return await self._selecting(request.target).execute(request)

    def command_state(self, command_id: str) -> tuple[str, str] | None:
        """(state, reason) of a routed command, from the journal's command log."""
        if self._log is None:
            return None
        try:
            cmd = self._log.get(command_id)
        except CommandError:
            return None
        return cmd.state.value, cmd.reason
