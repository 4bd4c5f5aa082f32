"""Setpoints: writable Modbus holding registers, written as confirmed commands.

A setpoint is a Modbus holding-register tag with ``writable = true``
(``drivers.config.ModbusTag.setpoint``); its ``write_role`` is the least OPC UA
role that may write it. Writable coils are not setpoints: they are load
outputs, switched only through the loads' Arm/Execute.

A ``write_setpoint`` request (an OPC UA Write, ``args = {"value": v}``, target =
the tag's process-image path) becomes a command record like any other:

1. journaled ``queued`` (the request token is the command id, so a repeated
   request is the same command);
2. a value the register cannot hold after scaling is ``refused``, naming the
   tag and its range; nothing is sent;
3. journaled ``sent`` before the bytes go out (write-ahead), then written on
   the bus's control lane and read back (FC 6/16, then FC 3, in one control
   slot);
4. ``confirmed`` when the registers read back equal the ones written,
   ``failed`` when they differ (a device that clamps the value or ignores
   writes in local mode still acknowledges them) or no read-back arrives in
   time.

The process image gets the value as read back, so an OPC UA client sees the
new value only once the device holds it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.api import WRITE_SETPOINT, CommandRefused, CommandRequest, RefusalReason
from controller.command_router import journal_request
from controller.commands import Command, CommandLog, CommandState, Resolution
from controller.process_image import Tag
from drivers.config import ModbusTag
from drivers.modbus_bus import ModbusBus, encode_tag, value_range
from opcua_server.config import Role, SetpointRule

_log = logging.getLogger("gridctl.setpoints")

PREFIX = "buses/"  # the command router's branch: setpoints live under buses/<bus>/devices/
# Write and read-back take two exchanges; a bus in retries or quarantine may take
# longer, and then the command has failed rather than hanging on.
CONFIRM_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class _Point:
    bus: ModbusBus
    device: str
    tag: ModbusTag
    rule: SetpointRule


class ModbusSetpoints:
    """The ``CommandSink`` for ``write_setpoint`` on the plant's Modbus setpoints."""

    def __init__(
        self,
        commands: CommandLog,
        buses: Mapping[str, Any],
        *,
        confirm_timeout_s: float = CONFIRM_TIMEOUT_S,
    ) -> None:
        self.commands = commands
        self.confirm_timeout_s = confirm_timeout_s
        self.points: dict[str, _Point] = {}
        for bus in buses.values():
            if not isinstance(bus, ModbusBus):
                continue
            for dev in bus.config.devices:
                for tag in dev.tags:
                    if tag.setpoint:
                        low, high = value_range(tag)
                        rule = SetpointRule(Role(tag.write_role), low, high)
                        path = f"buses/{bus.name}/devices/{dev.name}/{tag.name}"
                        self.points[path] = _Point(bus, dev.name, tag, rule)
        self._running: set[asyncio.Task[None]] = set()

    def rule(self, tag: Tag) -> SetpointRule | None:
        """Who may write ``tag`` and the values its register holds (None: read-only)."""
        point = self.points.get(tag.name)
        return point.rule if point is not None else None

    async def submit(self, request: CommandRequest) -> str:
        if request.kind != WRITE_SETPOINT:
            raise CommandRefused(
                RefusalReason.NOT_SUPPORTED,
                f"kind: {request.kind!r} is not a setpoint command ({WRITE_SETPOINT})",
            )
        point = self.points.get(request.target)
        if point is None:
            raise CommandRefused(
                RefusalReason.UNKNOWN_TARGET,
                f"target: {request.target!r} is not a setpoint (a writable holding register)",
            )
        value: Any = (request.args or {}).get("value")
        cmd = await journal_request(self.commands, WRITE_SETPOINT, request, {"value": value})
        if cmd.state is not CommandState.QUEUED:
            return cmd.id  # a repeated request: the first one acts, this one does not
        try:
            written = encode_tag(point.tag, value)
        except ValueError as exc:
            reason = f"{request.target}: {exc}"
            await self.commands.transition(cmd.id, CommandState.REFUSED, reason=reason)
            raise CommandRefused(RefusalReason.BAD_ARGUMENT, reason) from None
        await self.commands.transition(cmd.id, CommandState.SENT)
        # The request returns once the command is journaled as sent; the write and
        # its read-back run on the bus's control lane, and the outcome reaches the
        # client as the command's state.
        task = asyncio.get_running_loop().create_task(
            self._write(cmd.id, point, float(value), written), name=f"setpoint {cmd.id}"
        )
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return cmd.id

    async def _write(
        self, command_id: str, point: _Point, value: float, written: list[int]
    ) -> None:
        tag = point.tag
        # Shielded: a late read-back still lands in the image (it is the device's
        # value), while the command has already failed for lack of it.
        exchange = asyncio.ensure_future(point.bus.write_register(point.device, tag.name, value))
        exchange.add_done_callback(_consume)
        try:
            read = await asyncio.wait_for(asyncio.shield(exchange), self.confirm_timeout_s)
        except TimeoutError:
            state, reason = (
                CommandState.FAILED,
                f"no read-back within {self.confirm_timeout_s:g} s",
            )
        except Exception as exc:
            state, reason = CommandState.FAILED, f"write or read-back failed: {exc}"
        else:
            state, reason = _compare(tag, written, read)
        try:
            await self.commands.transition(command_id, state, reason=reason)
        except Exception:
            # the record keeps its `sent` state; the restart reconciles it by read-back
            _log.exception("setpoint %s: outcome %s not journaled", command_id, state.value)
            return
        level = logging.INFO if state is CommandState.CONFIRMED else logging.WARNING
        _log.log(level, "setpoint %s on %s: %s (%s)", command_id, tag.name, state.value, reason)

    async def reread(self, cmd: Command) -> Resolution | None:
        """Reconcile a write left pending by a previous run: read back, never re-send."""
        point = self.points.get(cmd.target)
        if point is None:
            return None
        try:
            written = encode_tag(point.tag, cmd.args.get("value"))
        except ValueError:
            return None
        read = await point.bus.read_register(point.device, point.tag.name)
        state, reason = _compare(point.tag, written, read)
        if state is not CommandState.CONFIRMED:
            return None
        return Resolution(CommandState.CONFIRMED, f"reconcile: {reason}")

    async def stop(self) -> None:
        """Cancel writes in flight; their records stay ``sent`` and are reconciled at restart."""
        tasks = list(self._running)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _compare(tag: ModbusTag, written: list[int], read: list[int]) -> tuple[CommandState, str]:
    if read == written:
        return CommandState.CONFIRMED, f"read back raw {read}"
    return (
        CommandState.FAILED,
        f"the device did not take the value: wrote raw {written}, read back raw {read}"
        f" ({tag.name}, {tag.type}, scale {tag.scale:g})",
    )


def _consume(future: asyncio.Future[Any]) -> None:
    # an exchange that ends after its command has (timed out, service stopping): its
    # error is the command's failure or the restart's reconcile, not an unhandled one
    if not future.cancelled():
        future.exception()
