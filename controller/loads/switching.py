"""The confirmed command executor: interlocks → journal → control lane → read-back.

Every switching action — an operator's Arm/Execute, a demand-limit round, a
prepaid trip — goes through :class:`SwitchingExecutor`:

1. ``submit`` journals the command (``queued``; an operator's ``arm`` journals
   it ``armed``, reserving the load and checking the interlocks at select
   time, and ``execute`` moves it to ``queued``) with who and why, *before*
   anything else. A command id seen before is the same command: it is never
   run twice.
2. The interlocks are checked (keep-power, lock-out, one command per load);
   a refusal is a terminal ``refused`` state with the reason.
3. The feeder's rate limiter books a slot (mass switching is spread out).
4. ``sent`` is journaled (fsynced) before the frame goes out on the bus's
   control lane, ahead of every cyclic poll.
5. Confirmation is by read-back only: status word 3 (DL/T 645) or the coil
   (Modbus) must show the commanded state within ``confirm.timeout_s`` and
   ``confirm.max_rereads`` re-reads. A 9C acknowledgement is *not* a
   confirmation, and a missing 9C does not prove failure (the reply may have
   been lost): the read-back decides. Not confirmed → ``failed`` and a
   ``relay_mismatch`` alarm (commanded ≠ observed).

After a restart, commands left ``sent`` are reconciled with :meth:`reread`
(read the relay, never re-send).

Between commands, :meth:`SwitchingExecutor.watch_relays` (every control
cycle) compares each relay's polled position with the one last commanded and
raises ``relay_mismatch`` when they disagree for ``mismatch_grace_s``.

Actuators use only the buses' public relay API: ``Dlt645Bus.control`` (1C and
status word 3 read-back in one control slot), ``read_relay_status`` and
``relay_status``; ``ModbusBus.write_coil`` (write + read-back) and ``read_coil``.

A meter configured ``security = "esam"`` gets its 1C sealed by the bus's ESAM
adapter (``drivers/esam.py``); a meter that wants authentication it did not
get refuses (ERR 0x04) and the command fails with "authentication required".
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from controller.alarms import AlarmEngine
from controller.api import CommandRefused, RefusalReason
from controller.commands import Command, CommandLog, CommandState, Resolution
from controller.cycle import Series
from controller.loads.config import LoadConfig, LoadsConfig
from controller.loads.interlocks import LoadFacts, Lockout, RateLimiter, check
from controller.process_image import ProcessImage, Quality
from controller.quality_reason import Reason

if TYPE_CHECKING:
    from drivers.dlt645_bus import RelayStatus

log = logging.getLogger("gridctl.loads")

# command kinds (the CommandLog vocabulary) and what confirms each
KINDS = (
    "trip",
    "close_allowed",
    "direct_close",
    "alarm_on",
    "alarm_off",
    "keep_power_on",
    "keep_power_off",
)
COIL_KINDS = ("trip", "close_allowed", "direct_close")
# DL/T 645-2007 1C N1 codes
N1 = {
    "trip": 0x1A,
    "close_allowed": 0x1B,
    "direct_close": 0x1C,
    "alarm_on": 0x2A,
    "alarm_off": 0x2B,
    "keep_power_on": 0x3A,
    "keep_power_off": 0x3B,
}
OUTCOMES = ("confirmed", "failed", "expired", "refused")
# The relay position (True = open) a command leaves the load in once it is sent,
# for the periodic mismatch watch. None: no expectation — after close-allowed
# the customer closes by hand (bit 4 follows whenever they do), and keep-power
# on may close the relay itself. Kinds not listed leave the expectation alone.
EXPECTED_OPEN: dict[str, bool | None] = {
    "trip": True,
    "direct_close": False,
    "close_allowed": None,
    "keep_power_on": None,
}


class LoadsError(ValueError):
    """A bad argument (unknown load, unsupported kind); the message names it."""


@dataclass(slots=True, frozen=True)
class RelayState:
    """A read-back; None where the device does not say."""

    relay_open: bool | None
    commanded_open: bool | None = None
    alarm: bool | None = None
    keep_power: bool | None = None


def satisfied(kind: str, s: RelayState | None) -> bool:
    """Does the read-back show ``kind`` applied?

    trip / direct close: the relay's *actual* state (status word 3 bit 4).
    close-allowed: the *commanded* state (bit 6) is closed — the customer
    closes the relay by hand, so bit 4 follows later (coils: closed at once).
    """
    if s is None:
        return False
    if kind == "trip":
        return s.relay_open is True
    if kind == "direct_close":
        return s.relay_open is False
    if kind == "close_allowed":
        if s.commanded_open is None:
            return s.relay_open is False
        return s.commanded_open is False
    if kind in ("alarm_on", "alarm_off"):
        return s.alarm is (kind == "alarm_on")
    if kind in ("keep_power_on", "keep_power_off"):
        return s.keep_power is (kind == "keep_power_on")
    return False


def describe(s: RelayState | None) -> str:
    if s is None:
        return "no read-back"
    parts = []
    if s.relay_open is not None:
        parts.append(f"relay {'open' if s.relay_open else 'closed'}")
    if s.commanded_open is not None:
        parts.append(f"commanded {'open' if s.commanded_open else 'closed'}")
    if s.alarm is not None:
        parts.append(f"alarm {'on' if s.alarm else 'off'}")
    if s.keep_power is not None:
        parts.append(f"keep-power {'on' if s.keep_power else 'off'}")
    return ", ".join(parts) or "nothing readable"


# -- actuators ------------------------------------------------------------------------------


class Actuator(Protocol):
    """One switchable output, as the executor sees it."""

    kinds: tuple[str, ...]

    async def send(self, kind: str, valid_until: float) -> RelayState | None:
        """Put the command on the control lane; return on the device's acknowledgement,
        with the state read back straight after it when the device allows."""
        ...

    async def read(self) -> RelayState:
        """Read the state now (control lane, ahead of polls); raise when it cannot."""
        ...

    def known(self) -> RelayState:
        """The last state in the process image (no wire); None fields where not Good."""
        ...


def _good(image: ProcessImage, name: str) -> Any:
    if name not in image:
        return None
    return image.value(name)


class MeterRelay:
    """A DL/T 645 meter relay behind a ``Dlt645Bus`` (its public control API only)."""

    kinds: tuple[str, ...] = KINDS

    def __init__(self, bus: Any, address: str, image: ProcessImage) -> None:
        self.bus = bus
        self.address = address
        self.image = image
        # the read-backs land in these tags even when no poll group reads status word 3
        bus.define_relay_tags(address)

    async def send(self, kind: str, valid_until: float) -> RelayState | None:
        """1C on the control lane and, in the same control slot, the status read-back.

        Returns the state read, or None when only the read-back failed (the
        confirmation loop reads again).
        """
        result = await self.bus.control(
            # an instant (aware UTC); the bus puts it on the wire in the site's zone
            self.address,
            N1[kind],
            valid_until=dt.datetime.fromtimestamp(valid_until, dt.UTC),
        )
        return None if result.status is None else _relay_state(result.status)

    async def read(self) -> RelayState:
        # on the control lane: the read-back is the next frame after the 1C,
        # not queued behind the cyclic polls
        return _relay_state(await self.bus.read_relay_status(self.address))

    def known(self) -> RelayState:
        status = self.bus.relay_status(self.address)
        if status is None:
            return RelayState(None)
        return _relay_state(status)


def _relay_state(status: RelayStatus) -> RelayState:
    """A ``drivers.dlt645_bus.RelayStatus`` (status word 3) as the executor sees it."""
    return RelayState(
        status.relay_open, status.commanded_open, status.pre_trip_alarm, status.keep_power
    )


class TerminalCoil:
    """A coil on a Modbus load-control terminal (True = load supplied)."""

    kinds: tuple[str, ...] = COIL_KINDS

    def __init__(self, bus: Any, device: str, coil: str, image: ProcessImage) -> None:
        self.bus = bus
        self.device = device
        self.coil = coil
        self.image = image
        self.tag = bus.coil_tag(device, coil)

    @staticmethod
    def _state(closed: bool) -> RelayState:
        # a terminal coil has no keep-power of its own: trips are never blocked by it
        return RelayState(not closed, not closed, keep_power=False)

    async def send(self, kind: str, valid_until: float) -> RelayState | None:
        # write and read-back in one control slot; the read-back decides, not the echo
        return self._state(await self.bus.write_coil(self.device, self.coil, kind != "trip"))

    async def read(self) -> RelayState:
        return self._state(await self.bus.read_coil(self.device, self.coil))

    def known(self) -> RelayState:
        closed = _good(self.image, self.tag)
        if closed is None:
            return RelayState(None, keep_power=False)
        return self._state(bool(closed))


def actuators_for(
    config: LoadsConfig,
    plant: Any,
    image: ProcessImage,
) -> dict[str, Actuator]:
    """Actuators for every configured load on a ``FieldPlant``; errors name the load."""
    out: dict[str, Actuator] = {}
    for i, load in enumerate(config.loads):
        try:
            bus = plant.bus(load.bus)
        except KeyError as exc:
            raise LoadsError(f"loads[{i}].bus: {exc.args[0]}") from None
        if load.type == "meter":
            assert load.address is not None
            if load.address not in getattr(bus, "meters", {}):
                raise LoadsError(f"loads[{i}].address: no meter {load.address} on bus {load.bus}")
            out[load.name] = MeterRelay(bus, load.address, image)
        else:
            assert load.device is not None and load.coil is not None
            if not hasattr(bus, "coil_tag"):
                raise LoadsError(f"loads[{i}].bus: {load.bus} is not a Modbus bus (coil loads)")
            try:
                out[load.name] = TerminalCoil(bus, load.device, load.coil, image)
            except (KeyError, ValueError) as exc:
                raise LoadsError(f"loads[{i}].coil: {exc.args[0]}") from None
    return out


# -- the executor ---------------------------------------------------------------------------


Sleep = Callable[[float], Awaitable[object]]


class SwitchingExecutor:
    def __init__(
        self,
        config: LoadsConfig,
        commands: CommandLog,
        actuators: dict[str, Actuator],
        *,
        alarms: AlarmEngine | None = None,
        image: ProcessImage | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.config = config
        self.commands = commands
        self.actuators = actuators
        self.alarms = alarms
        self.image = image
        self._clock = clock
        self._mono = monotonic
        self._sleep = sleep
        self.loads: dict[str, LoadConfig] = {x.name: x for x in config.loads}
        self.limiter = RateLimiter(config.rate_limit.per_feeder_per_s, config.rate_limit.burst)
        self.lockouts: dict[str, Lockout] = {}
        self._busy: dict[str, str] = {}  # load -> command id in progress
        self._claims: dict[str, asyncio.Future[Command]] = {}  # command id -> its run
        self._tasks: set[asyncio.Task[Any]] = set()
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.latency: dict[str, Series] = {}  # kind -> request→terminal of confirmed commands
        self.sent_frames = 0
        # the periodic mismatch watch: load -> relay position last commanded
        # (True = open) and the command that did it; mismatch start (monotonic)
        self.commanded: dict[str, bool | None] = {}
        self._commanded_by: dict[str, str] = {}
        self._mismatch_since: dict[str, float] = {}
        # load -> what the active relay_mismatch alarm is about: "relay" (the
        # position) or the kind of a failed non-switching command, which the
        # position watch must not clear
        self._mismatch_cause: dict[str, str] = {}
        for load in config.loads:
            self._define_tags(load.name)

    # -- image ------------------------------------------------------------------------------
    def _define_tags(self, load: str) -> None:
        if self.image is None:
            return
        p = f"loads/{load}/"
        for name, desc in (
            ("relay_open", "relay actual state read back: true = open"),
            ("relay_commanded_open", "relay commanded state"),
            ("keep_power", "keep-power (保电) active: trips blocked"),
            ("pre_trip_alarm", "pre-trip alarm on the meter"),
            ("locked_out", "maintenance lock-out: cannot close"),
            ("last_command", "id of the last command"),
            ("last_outcome", "state and reason of the last command"),
        ):
            self.image.define(p + name, "", desc)
        self.image.write(p + "locked_out", False)

    def mirror(self) -> None:
        """Copy each load's device state into ``loads/<name>/…`` (control cycle)."""
        if self.image is None:
            return
        for name in self.actuators:
            self._mirror_load(name)

    def _mirror_load(self, name: str) -> None:
        act = self.actuators.get(name)
        p = f"loads/{name}/"
        if self.image is None or act is None or p + "relay_open" not in self.image:
            return
        s = act.known()
        for tag, value in (
            ("relay_open", s.relay_open),
            ("relay_commanded_open", s.commanded_open),
            ("keep_power", s.keep_power),
            ("pre_trip_alarm", s.alarm),
        ):
            if value is None:
                # The device's state is not Good now: the last one read stays
                # visible as such, and logic (image.value) no longer trusts it.
                cur = self.image.get(p + tag)
                if cur.quality is Quality.GOOD:
                    self.image.write(
                        p + tag,
                        cur.value,
                        Quality.UNCERTAIN,
                        "last value read; the device's state is not Good now",
                        cur.source_time,
                        Reason.STALE,
                    )
            else:
                self.image.write(p + tag, value)

    def _note(self, cmd: Command) -> None:
        if self.image is None:
            return
        load = cmd.args.get("load", "")
        if f"loads/{load}/last_command" in self.image:
            self.image.write(f"loads/{load}/last_command", cmd.id)
            text = cmd.state.value + (f": {cmd.reason}" if cmd.reason else "")
            self.image.write(f"loads/{load}/last_outcome", text)

    # -- queries ----------------------------------------------------------------------------
    def facts(self, load: str) -> LoadFacts:
        act = self.actuators[load]
        return LoadFacts(act.known().keep_power, self.lockouts.get(load), self._busy.get(load))

    def busy(self, load: str) -> str | None:
        return self._busy.get(load)

    def _check_args(self, kind: str, load: str) -> None:
        if load not in self.loads:
            known = ", ".join(sorted(self.loads)) or "none configured"
            raise LoadsError(f"load: no load named {load!r} (loads: {known})")
        if load not in self.actuators:
            raise LoadsError(f"load: {load!r} has no actuator (its bus is not running)")
        kinds = self.actuators[load].kinds
        if kind not in kinds:
            raise LoadsError(
                f"kind: {kind!r} is not possible on load {load!r} (allowed: {', '.join(kinds)})"
            )

    # -- intake -----------------------------------------------------------------------------
    async def submit(
        self,
        kind: str,
        load: str,
        *,
        who: str,
        why: str,
        command_id: str | None = None,
        source: str = "operator",
        automation: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> Command:
        """Journal a command and start it; returns the record (not waiting for confirmation).

        The same ``command_id`` again returns the same record and does nothing
        more. An operator's select-before-operate goes through :meth:`arm` and
        :meth:`execute` instead.
        """
        self._check_args(kind, load)
        if command_id is not None:
            claim = self._claims.get(command_id)
            if claim is not None:
                return await asyncio.shield(claim)
        args: dict[str, Any] = {
            "load": load,
            "feeder": self.loads[load].feeder,
            "source": source,
            "automation": automation,
            **(extra or {}),
        }
        # a claim covers the journal write, so a concurrent retry with the same
        # id waits for this one instead of racing it into the journal
        fut: asyncio.Future[Command] = asyncio.get_running_loop().create_future()
        if command_id is not None:
            self._claims[command_id] = fut
        try:
            cmd = await self.commands.submit(
                kind,
                f"loads/{load}",
                args,
                who=who,
                why=why,
                command_id=command_id,
                expires_in_s=self.config.confirm.valid_for_s,
            )
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: a retry that never came must not warn
            raise
        else:
            fut.set_result(cmd)
        finally:
            if command_id is not None:
                self._claims.pop(command_id, None)
        return await self._start(cmd, load, automation)

    # -- select-before-operate ----------------------------------------------------------------
    async def arm(
        self, kind: str, load: str, *, who: str, why: str, source: str, role: str
    ) -> Command:
        """Select ``kind`` on ``load``: a journaled ``armed`` record reserving the load.

        Refused (CommandRefused) ``busy`` while a command runs on the load or
        another selection holds it, ``interlock`` when the interlocks forbid the
        command now (journaled as refused, so the attempt is audited).
        """
        self._check_args(kind, load)
        running = self._busy.get(load)
        if running is not None:
            raise CommandRefused(
                RefusalReason.BUSY, f"load {load!r}: command {running} is in progress"
            )
        now = self._clock()
        args = {
            "load": load,
            "feeder": self.loads[load].feeder,
            "source": source,
            "automation": False,
            "role": role,
            "armed_at": now,
        }
        cmd = await self.commands.arm(
            kind,
            f"loads/{load}",
            args,
            who=who,
            why=why,
            timeout_s=self.config.confirm.arm_timeout_s,
        )
        refusal = check(kind, self.facts(load), automation=False)
        if refusal:
            log.info("arm %s %s on %s refused: %s", cmd.id, kind, load, refusal)
            await self._end(cmd, CommandState.REFUSED, refusal, who=who)
            raise CommandRefused(RefusalReason.INTERLOCK, f"load {load!r}: {refusal}")
        return cmd

    async def execute(self, command_id: str, load: str, *, who: str) -> Command:
        """Operate ``who``'s selection of ``load``: queued, interlocks again, then run."""
        cmd = await self.commands.execute_armed(
            command_id,
            target=f"loads/{load}",
            who=who,
            expires_in_s=self.config.confirm.valid_for_s,
        )
        return await self._start(cmd, load, automation=False)

    async def _start(self, cmd: Command, load: str, automation: bool) -> Command:
        if cmd.state is not CommandState.QUEUED or cmd.id in self._running_ids():
            return cmd  # a retry of a known command: it is not run again
        # interlocks at once, so the caller learns of a refusal synchronously
        refusal = check(cmd.kind, self.facts(load), automation=automation)
        if refusal:
            log.info("command %s %s on %s refused: %s", cmd.id, cmd.kind, load, refusal)
            return await self._end(cmd, CommandState.REFUSED, refusal)
        self._busy[load] = cmd.id
        task = asyncio.get_running_loop().create_task(self._run(cmd), name=f"cmd-{cmd.id}")
        task.cmd_id = cmd.id  # type: ignore[attr-defined]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return cmd

    def _running_ids(self) -> set[str]:
        return {getattr(t, "cmd_id", "") for t in self._tasks}

    async def wait(self, command_id: str, timeout: float | None = None) -> Command:
        """Wait until the command's run has ended; returns the record."""
        for t in list(self._tasks):
            if getattr(t, "cmd_id", None) == command_id:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(t)
        return self.commands.get(command_id)

    async def run(self, kind: str, load: str, **kw: Any) -> Command:
        """Submit and wait for the terminal state."""
        cmd = await self.submit(kind, load, **kw)
        return await self.wait(cmd.id)

    # -- lock-out ---------------------------------------------------------------------------
    def lock_out(self, load: str, *, who: str, why: str) -> Lockout:
        if load not in self.loads:
            raise LoadsError(f"load: no load named {load!r}")
        if not who or not why:
            raise LoadsError("who and why: required (lock-outs are audited)")
        lo = Lockout(load, who, why, self._clock())
        self.lockouts[load] = lo
        if self.image is not None:
            self.image.write(f"loads/{load}/locked_out", True)
        self._event(f"loads/{load}", f"maintenance lock-out by {who}: {why}")
        return lo

    def release_lock_out(self, load: str, *, who: str, why: str) -> None:
        if self.lockouts.pop(load, None) is None:
            raise LoadsError(f"load: {load!r} is not locked out")
        if self.image is not None:
            self.image.write(f"loads/{load}/locked_out", False)
        self._event(f"loads/{load}", f"lock-out released by {who}: {why}")

    def _event(self, source: str, message: str, severity: int = 0) -> None:
        j = self.commands.journal
        if j.is_open:
            j.event("loads", source, message, severity=severity)

    # -- the run ----------------------------------------------------------------------------
    async def _end(
        self, cmd: Command, state: CommandState, reason: str, who: str = "system"
    ) -> Command:
        # The load's relay tags show the read-back before the command is confirmed
        # by it (the control cycle would mirror it only later).
        self._mirror_load(cmd.args.get("load", ""))
        cmd = await self.commands.transition(cmd.id, state, reason=reason, who=who)
        self.outcomes[(cmd.kind, state.value)] += 1
        if state is CommandState.CONFIRMED:
            series = self.latency.setdefault(cmd.kind, Series(1024))
            series.add(cmd.updated - cmd.created)
        self._note(cmd)
        return cmd

    async def _run(self, cmd: Command) -> Command:
        load = cmd.args["load"]
        automation = bool(cmd.args.get("automation"))
        try:
            return await self._operate(cmd, load, automation)
        except asyncio.CancelledError:
            raise  # service stopping: the command stays pending and is reconciled at restart
        except Exception as exc:
            log.exception("command %s: unexpected error", cmd.id)
            cur = self.commands.get(cmd.id)
            if not cur.terminal:
                return await self._end(cur, CommandState.FAILED, f"internal error: {exc}")
            return cur
        finally:
            if self._busy.get(load) == cmd.id:
                del self._busy[load]

    async def _operate(self, cmd: Command, load: str, automation: bool) -> Command:
        cfg = self.config
        act = self.actuators[load]
        feeder = self.loads[load].feeder
        wait = self.limiter.reserve(feeder, self._mono())
        if wait > cfg.rate_limit.max_wait_s:
            self.limiter.release(feeder, self._mono())
            return await self._end(
                cmd,
                CommandState.FAILED,
                f"rate limit: feeder {feeder} has no slot within {cfg.rate_limit.max_wait_s:g} s",
            )
        if wait > 0:
            await self._sleep(wait)
        # the state may have changed while waiting for the slot
        facts = LoadFacts(act.known().keep_power, self.lockouts.get(load), None)
        refusal = check(cmd.kind, facts, automation=automation)
        if refusal:
            self.limiter.release(feeder, self._mono())
            return await self._end(cmd, CommandState.REFUSED, refusal)
        now = self._clock()
        if cmd.expires is not None and cmd.expires <= now:
            return await self._end(cmd, CommandState.EXPIRED, "expiry time passed before sending")
        valid_until = cmd.expires if cmd.expires is not None else now + cfg.confirm.valid_for_s
        # write-ahead: "sent" is on disk before the frame is on the wire
        await self.commands.transition(cmd.id, CommandState.SENT, reason=f"feeder {feeder}")
        self.sent_frames += 1
        before = (self.commanded.get(load), self._commanded_by.get(load, ""))
        self._commanded(load, cmd.kind, cmd.id)
        send_error = ""
        first: RelayState | None = None
        try:
            first = await act.send(cmd.kind, valid_until)
        except Exception as exc:
            from drivers.errors import (
                CommandRejected,
                EsamError,
                MeterException,
                MeterUnauthorised,
            )

            if isinstance(exc, MeterException | CommandRejected | EsamError | LoadsError):
                # refused by the meter or never sent: nothing was commanded
                self.commanded[load], self._commanded_by[load] = before
            if isinstance(exc, MeterUnauthorised):
                # ERR 0x04: plaintext to an ESAM meter, a bad MAC or a wrong password
                return await self._end(cmd, CommandState.FAILED, f"authentication required: {exc}")
            if isinstance(exc, MeterException):
                # the meter answered and refused: it did not act
                return await self._end(cmd, CommandState.FAILED, f"meter refused: {exc}")
            if isinstance(exc, CommandRejected | EsamError | LoadsError):
                return await self._end(cmd, CommandState.FAILED, f"not sent: {exc}")
            # no (valid) acknowledgement: it may still have acted; the read-back decides
            send_error = f"no acknowledgement ({exc})"
        return await self._confirm(cmd, act, load, send_error, first)

    async def _confirm(
        self,
        cmd: Command,
        act: Actuator,
        load: str,
        send_error: str,
        first: RelayState | None = None,
    ) -> Command:
        c = self.config.confirm
        deadline = self._mono() + c.timeout_s
        reads = 0
        state: RelayState | None = None
        read_error = ""
        while True:
            if first is not None:
                state, first = first, None  # read in the same control slot as the command
            else:
                try:
                    state = await act.read()
                    read_error = ""
                except Exception as exc:
                    state, read_error = None, str(exc)
            reads += 1
            if satisfied(cmd.kind, state):
                note = f"read back after {reads} read(s): {describe(state)}"
                if send_error:
                    note += f"; {send_error}"
                self._mismatch(load, cmd, False, note)
                return await self._end(cmd, CommandState.CONFIRMED, note)
            left = deadline - self._mono()
            if reads > c.max_rereads or left <= 0:
                break
            await self._sleep(min(c.reread_interval_s, left))
        what = f"read-back failed: {read_error}" if read_error else describe(state)
        reason = f"not confirmed after {reads} read-back(s): {what}"
        if send_error:
            reason += f"; {send_error}"
        self._mismatch(load, cmd, True, reason)
        return await self._end(cmd, CommandState.FAILED, reason)

    def _mismatch(self, load: str, cmd: Command, active: bool, message: str) -> None:
        if self.alarms is None:
            return
        relay = cmd.kind in ("trip", "direct_close", "close_allowed")
        if not relay and not active:
            return
        if active:
            self._mismatch_cause[load] = "relay" if relay else cmd.kind
        else:
            self._mismatch_cause.pop(load, None)
            self._mismatch_since.pop(load, None)
        self.alarms.set(
            "relay_mismatch",
            f"loads/{load}",
            active,
            f"{cmd.kind} {cmd.id}: commanded ≠ observed: {message}" if active else message,
        )

    # -- the periodic mismatch watch --------------------------------------------------------
    def _commanded(self, load: str, kind: str, command_id: str) -> None:
        if kind in EXPECTED_OPEN:
            self.commanded[load] = EXPECTED_OPEN[kind]
            self._commanded_by[load] = f"{kind} {command_id}"
            self._mismatch_since.pop(load, None)

    def restore_commanded(self) -> int:
        """At start-up: each load's last commanded relay position, from the command log.

        A command counts once it may have reached the relay: confirmed, still
        ``sent`` (the reconcile reads it back) or failed because the read-back
        disagreed. Refused, expired, "meter refused" and "not sent" ones never
        acted. Returns the number of loads with an expectation.
        """
        j = self.commands.journal
        if not j.is_open:
            return 0
        kinds = tuple(EXPECTED_OPEN)
        rows = j.query(
            "SELECT id, kind, target, state, reason FROM commands "
            f"WHERE target LIKE 'loads/%' AND kind IN ({', '.join('?' * len(kinds))}) "
            "ORDER BY created, rowid",
            kinds,
        )
        for row in rows:
            load = row["target"].removeprefix("loads/")
            if load not in self.actuators:
                continue
            state, reason = row["state"], row["reason"] or ""
            acted = state in ("confirmed", "sent") or (
                state == "failed" and reason.startswith("not confirmed")
            )
            if acted:
                self._commanded(load, row["kind"], row["id"])
        return sum(1 for v in self.commanded.values() if v is not None)

    def watch_relays(self) -> None:
        """Compare each load's polled relay position with the one last commanded (control cycle).

        A relay that moves by itself (operated by hand on site, a meter's own
        protection, a failed late read-back) is otherwise noticed only at the
        next command. Disagreement for ``mismatch_grace_s`` raises
        ``relay_mismatch``; agreement clears it. A load with a command in
        flight is left to its confirmation. Unknown or Bad quality (meter
        offline) neither raises nor clears: that is the offline alarm's business.
        """
        if self.alarms is None:
            return
        now = self._mono()
        grace = self.config.mismatch_grace_s
        for load, expected in self.commanded.items():
            if expected is None:
                continue
            if load in self._busy:
                self._mismatch_since.pop(load, None)
                continue
            observed = self.actuators[load].known().relay_open
            if observed is None:
                continue
            if observed == expected:
                self._mismatch_since.pop(load, None)
                if self._mismatch_cause.get(load) == "relay":
                    del self._mismatch_cause[load]
                    self.alarms.set(
                        "relay_mismatch",
                        f"loads/{load}",
                        False,
                        f"relay reads {'open' if observed else 'closed'} as commanded "
                        f"({self._commanded_by.get(load, '')})",
                    )
                continue
            since = self._mismatch_since.setdefault(load, now)
            if now - since < grace or self._mismatch_cause.get(load) is not None:
                continue
            self._mismatch_cause[load] = "relay"
            self.alarms.set(
                "relay_mismatch",
                f"loads/{load}",
                True,
                f"commanded ≠ observed: {self._commanded_by.get(load, '')} commanded "
                f"{'open' if expected else 'closed'}, relay reads "
                f"{'open' if observed else 'closed'} for {now - since:.0f} s "
                "(no command since)",
            )

    # -- restart ----------------------------------------------------------------------------
    async def reread(self, cmd: Command) -> Resolution | None:
        """Reconcile a command left pending by a previous run: read back, never re-send."""
        load = cmd.args.get("load")
        act = self.actuators.get(load) if isinstance(load, str) else None
        if act is None:
            return None
        last: Exception | None = None
        for attempt in range(3):
            try:
                state = await act.read()
            except Exception as exc:
                last = exc
                await self._sleep(0.5 * (attempt + 1))
                continue
            if satisfied(cmd.kind, state):
                self.outcomes[(cmd.kind, "confirmed")] += 1
                return Resolution(
                    CommandState.CONFIRMED, f"reconcile: read back as commanded ({describe(state)})"
                )
            self.outcomes[(cmd.kind, "failed")] += 1
            return None
        assert last is not None
        raise last

    async def stop(self) -> None:
        """Cancel runs in progress (they stay pending in the journal; reconciled at restart)."""
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
