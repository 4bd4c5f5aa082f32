"""The loads' command sink: Arm/Execute on a LoadType node → the executor.

The OPC UA server has already checked the caller's role; this side keeps the
selection: Arm journals an ``armed`` command record that reserves the load and
runs the interlocks at select time, Execute (same user, before the arm
timeout) moves it on, so its history shows the select-before-operate path
(``armed`` → ``queued`` "executed" → ``sent`` → ``confirmed``), with the user
and reason audited. The record id is the token, so a repeated Execute cannot
act twice. Interlocks are enforced here, in the controller: a refused command
is journaled as ``refused`` and the method call fails with the reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from controller.api import (
    ArmRequest,
    CommandRefused,
    CommandRequest,
    ExecuteRequest,
    RefusalReason,
    Selection,
)
from controller.command_router import journal_request
from controller.commands import CommandError, CommandLog, CommandState
from controller.loads.prepaid import PrepaidError
from controller.loads.switching import LoadsError, SwitchingExecutor

if TYPE_CHECKING:
    from controller.loads.runtime import LoadsRuntime

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
    def __init__(self, executor: SwitchingExecutor, runtime: LoadsRuntime | None = None) -> None:
        self.executor = executor
        self.runtime = runtime

    async def _recharge(self, request: CommandRequest) -> str:
        """Recharge(amount) on a load: a durable ledger entry on the load's prepaid account.

        The arm-free method's request token is the ledger reference, so a
        repeated call records one purchase, not two."""
        runtime = self.runtime
        if runtime is None:
            raise CommandRefused(
                RefusalReason.INVALID_STATE, "recharge: prepaid control is not running"
            )
        load = request.target.removeprefix("loads/")
        accounts = [a for a in runtime.accounts.values() if a.cfg.load == load]
        if not accounts:
            raise CommandRefused(
                RefusalReason.UNKNOWN_TARGET, f"target: load {load!r} has no prepaid account"
            )
        amount = (request.args or {}).get("amount")
        account = accounts[0].cfg.id

        async def record() -> str:
            await runtime.recharge(
                account,
                str(amount),
                ref=f"opcua-{request.token[:48]}",
                who=request.user or "anonymous",
                why=request.reason,
            )
            return f"{amount} yuan recorded on account {account}"

        return await run_audited(
            self.executor.commands, "recharge", request, {"amount": amount}, record
        )

    def _load(self, target: str) -> str:
        if not target.startswith("loads/"):
            raise CommandRefused(
                RefusalReason.UNKNOWN_TARGET, f"target: {target!r} is not a load (loads/<name>)"
            )
        load = target.removeprefix("loads/")
        if load not in self.executor.loads:
            known = ", ".join(sorted(self.executor.loads)) or "none configured"
            raise CommandRefused(
                RefusalReason.UNKNOWN_TARGET, f"load: no load named {load!r} (loads: {known})"
            )
        return load

    async def submit(self, request: CommandRequest) -> str:
        if request.kind == "recharge":
            return await self._recharge(request)
        raise CommandRefused(
            RefusalReason.NOT_SUPPORTED,
            f"kind: {request.kind!r} on a load is selected with Arm and operated with Execute",
        )

    async def arm(self, request: ArmRequest) -> Selection:
        kind = KIND_MAP.get(request.kind)
        if kind is None:
            raise CommandRefused(
                RefusalReason.BAD_ARGUMENT,
                f"kind: {request.kind!r} is not a load command ({', '.join(KIND_MAP)})",
            )
        load = self._load(request.target)
        try:
            cmd = await self.executor.arm(
                kind,
                load,
                who=request.user or "anonymous",
                why=request.reason,
                source=request.source,
                role=request.role,
            )
        except (LoadsError, CommandError) as exc:
            raise CommandRefused(RefusalReason.BAD_ARGUMENT, str(exc)) from None
        return cmd.selection()

    async def execute(self, request: ExecuteRequest) -> Selection:
        load = self._load(request.target)
        try:
            cmd = await self.executor.execute(request.token, load, who=request.user or "anonymous")
        except (LoadsError, CommandError) as exc:
            raise CommandRefused(RefusalReason.BAD_ARGUMENT, str(exc)) from None
        if cmd.state is CommandState.REFUSED:
            raise CommandRefused(RefusalReason.INTERLOCK, f"command {cmd.id}: {cmd.reason}")
        return cmd.selection()


class DemandLimitSink:
    """SetDemandLimit on a demand group (``demand/groups/<name>``), engineer role.

    ``set_demand_limit`` (``limit_kw``) overrides the group's limit and schedule,
    durably, until ``clear_demand_limit`` returns it to the schedule / config.
    """

    def __init__(self, runtime: LoadsRuntime) -> None:
        self.runtime = runtime

    async def submit(self, request: CommandRequest) -> str:
        if request.kind not in ("set_demand_limit", "clear_demand_limit"):
            raise CommandRefused(
                RefusalReason.NOT_SUPPORTED,
                f"kind: {request.kind!r} is not a demand-group command "
                "(set_demand_limit, clear_demand_limit)",
            )
        name = request.target.removeprefix("demand/groups/")
        who = request.user or "anonymous"
        ref = f"opcua-{request.token[:48]}"
        runtime = self.runtime
        if request.kind == "clear_demand_limit":

            async def clear() -> str:
                limit = await runtime.clear_demand_limit(name, who=who, why=request.reason, ref=ref)
                return f"override cleared, {limit:g} kW in force"

            return await run_audited(runtime.executor.commands, "clear_limit", request, {}, clear)
        limit = (request.args or {}).get("limit_kw")
        if isinstance(limit, bool) or not isinstance(limit, int | float):
            raise CommandRefused(
                RefusalReason.BAD_ARGUMENT, f"limit_kw: a number of kW is required (got {limit!r})"
            )

        async def set_limit() -> str:
            await runtime.set_demand_limit(name, float(limit), who=who, why=request.reason, ref=ref)
            return f"{float(limit):g} kW in force"

        return await run_audited(
            runtime.executor.commands, "set_limit", request, {"limit_kw": float(limit)}, set_limit
        )


async def run_audited(
    log: CommandLog,
    kind: str,
    request: CommandRequest,
    args: dict[str, Any],
    action: Callable[[], Awaitable[str]],
) -> str:
    """A command that acts inside the controller (no wire): journaled like any other, so
    its user, reason and outcome are in the command log and its state reaches the
    client. The request token is the command id: a repeated call returns the first
    record and does not act again."""
    cmd = await journal_request(log, kind, request, args)
    if cmd.state is not CommandState.QUEUED:
        return cmd.id
    try:
        detail = await action()
    except (LoadsError, PrepaidError) as exc:
        await log.transition(cmd.id, CommandState.REFUSED, reason=str(exc))
        raise CommandRefused(RefusalReason.BAD_ARGUMENT, str(exc)) from None
    await log.transition(cmd.id, CommandState.SENT)
    await log.transition(cmd.id, CommandState.CONFIRMED, reason=detail)
    return cmd.id
