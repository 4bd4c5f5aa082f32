"""The OPC UA server's ``CommandSink``: Arm/Execute on a LoadType node → the executor.

The server has already checked the caller's role and the arm token; this
side maps the request onto a journaled command record whose history shows
the select-before-operate path (``armed`` → ``queued`` "executed" → ``sent`` →
``confirmed``), with the user and reason audited. The arm token is the
command id, so a repeated Execute cannot act twice. Interlocks are enforced
here, in the controller: a refused command is journaled as ``refused`` and the
method call fails with the reason.
"""

from __future__ import annotations

from controller.commands import CommandError, CommandState
from controller.commands import CommandRefused as LogRefused
from controller.loads.switching import LoadsError, SwitchingExecutor
from opcua_server.methods import CommandRefused, CommandRequest

# OPC UA kind names → command kinds
KIND_MAP = {
    "trip": "trip",
    "close_allowed": "close_allowed",
    "close_direct": "direct_close",
    "direct_close": "direct_close",
    "alarm_on": "alarm_on",
    "alarm_off": "alarm_off",
    "keep_power_on": "keep_power_on",
    "keep_power_off": "keep_power_off",
}


class LoadsCommandSink:
    def __init__(self, executor: SwitchingExecutor) -> None:
        self.executor = executor

    async def submit(self, request: CommandRequest) -> str:
        kind = KIND_MAP.get(request.kind)
        if kind is None:
            raise CommandRefused(
                f"kind: {request.kind!r} is not a load command ({', '.join(KIND_MAP)})"
            )
        if not request.target.startswith("loads/"):
            raise CommandRefused(f"target: {request.target!r} is not a load (loads/<name>)")
        load = request.target.removeprefix("loads/")
        try:
            cmd = await self.executor.submit(
                kind,
                load,
                who=request.user or "anonymous",
                why=request.reason,
                command_id=request.token[:64],
                source=request.source,
                armed_at=request.armed_at,
                extra={"role": request.role, "armed_at": request.armed_at},
            )
        except (LoadsError, LogRefused, CommandError) as exc:
            raise CommandRefused(str(exc)) from None
        if cmd.state is CommandState.REFUSED:
            raise CommandRefused(f"command {cmd.id}: {cmd.reason}")
        return cmd.id
