"""Commands as durable records with a lifecycle.

A command (trip, close, set a limit, start a batch, an outbound order) is
journaled before anything acts on it, carries a unique id (a retry with the
same id is the same command, never a second one) and ends in exactly one
terminal state.

States::

    armed ──▶ queued ──▶ sent ──▶ confirmed
      │          │         ├────▶ failed    (with reason)
      │          │         └────▶ expired
      │          ├──▶ refused / failed / expired
      └──▶ refused / failed / expired

- ``armed``: selected by an operator (select-before-operate), waiting for execute.
  An armed command reserves its target: a second Arm of the same target, by
  anyone, is refused ``busy`` until it is executed or its arm timeout passes
  (then it expires, journaled). Execute must come from the user who armed it.
  It survives a restart of either process until its timeout.
- ``queued``: accepted and journaled; has not touched a wire.
- ``sent``: journaled as sent *before* the bytes go out (write-ahead). After a
  crash, a ``sent`` command may or may not have reached the device: it is
  reconciled by reading the device back, never by re-sending blindly.
- terminal: ``confirmed`` (read back as commanded), ``failed`` (reason),
  ``expired``, ``refused`` (interlock or intake closed).

Every state change is committed with ``synchronous=FULL`` before the call
returns, so whatever a caller has been told survives SIGKILL and power loss.
This module holds no switching logic: it is the record keeper.

When the journal's disk fails (full, I/O error) the log closes its intake:
a command it cannot record is a command it must not accept. Transitions of
commands already in flight are still attempted (a confirmation that cannot be
written raises, and the record keeps its last durable state, which the
restart reconciles by read-back). ``check_journal`` is the control-task hook
that also raises the ``journal_failed`` alarm.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum, StrEnum
from typing import Any

import msgpack

from controller.alarms import AlarmEngine, Severity
from controller.api import CommandRefused, RefusalReason, Selection
from controller.cycle import Series
from controller.journal import Journal, JournalStorageError, Statement

log = logging.getLogger("gridctl.commands")

# Alarm condition for a journal that can no longer write; registered on the engine by
# `CommandLog.check_journal` when the engine's vocabulary does not have it yet.
JOURNAL_FAILED = "journal_failed"
# the journaled reason of a selection that was not executed in time
ARM_LAPSED = "arm timeout passed; selection lapsed"


class CommandState(StrEnum):
    ARMED = "armed"
    QUEUED = "queued"
    SENT = "sent"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    EXPIRED = "expired"
    REFUSED = "refused"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset(
    {CommandState.CONFIRMED, CommandState.FAILED, CommandState.EXPIRED, CommandState.REFUSED}
)
_ENDS = {CommandState.FAILED, CommandState.EXPIRED, CommandState.REFUSED}
TRANSITIONS: dict[CommandState, frozenset[CommandState]] = {
    CommandState.ARMED: frozenset({CommandState.QUEUED, *_ENDS}),
    CommandState.QUEUED: frozenset({CommandState.SENT, *_ENDS}),
    CommandState.SENT: frozenset(
        {CommandState.CONFIRMED, CommandState.FAILED, CommandState.EXPIRED}
    ),
    **{s: frozenset() for s in TERMINAL},
}

# Kinds known today; later parts pass their own set to CommandLog. Kinds are a
# metric label, so the set must stay bounded.
DEFAULT_KINDS: frozenset[str] = frozenset(
    {
        "trip",
        "close_allowed",
        "direct_close",
        "alarm_on",
        "alarm_off",
        "keep_power_on",
        "keep_power_off",
        "set_limit",
        "clear_limit",
        "recharge",
        "start_batch",
        "abort_batch",
        "outbound_order",
        "inbound_order",
        "test",
    }
)


class CommandError(ValueError):
    """Bad command argument, unknown id or illegal transition; the message says which."""


class _Keep(Enum):
    KEEP = 0


def _utc(t: float | None) -> str:
    if t is None:
        return "no expiry"
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Transition:
    state: CommandState
    at: float
    reason: str
    who: str


@dataclass(slots=True)
class Command:
    id: str
    kind: str
    target: str
    args: dict[str, Any]
    who: str
    why: str
    state: CommandState
    reason: str
    created: float
    updated: float
    expires: float | None
    history: list[Transition] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def selection(self) -> Selection:
        """This command as the select-before-operate seam shows it (its id is the token)."""
        return Selection(
            token=self.id,
            target=self.target,
            kind=self.kind,
            user=self.who,
            armed_at=self.created,
            expires_at=self.expires if self.expires is not None else self.created,
        )


@dataclass(slots=True, frozen=True)
class Resolution:
    """What a reconcile read-back found for a pending command."""

    state: CommandState  # confirmed, failed or expired
    reason: str = ""


Reread = Callable[[Command], Awaitable[Resolution | None]]


@dataclass(slots=True)
class ReconcileReport:
    examined: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def count(self, state: CommandState) -> None:
        self.outcomes[state.value] = self.outcomes.get(state.value, 0) + 1


def _pack(args: dict[str, Any]) -> bytes:
    try:
        return msgpack.packb(args, use_bin_type=True)
    except (TypeError, ValueError) as exc:
        raise CommandError(f"args: not serialisable: {exc}") from None


class CommandLog:
    """The record keeper for commands; one per service, all calls on the event loop."""

    def __init__(
        self,
        journal: Journal,
        *,
        kinds: Iterable[str] = DEFAULT_KINDS,
        clock: Callable[[], float] = time.time,
        recent: int = 256,
    ) -> None:
        self.journal = journal
        self.kinds = frozenset(kinds)
        self._clock = clock
        self._pending: dict[str, Command] = {}
        # pending commands a subsystem resumed itself after a restart (it follows them
        # to their end); the generic reconcile leaves them alone
        self._adopted: set[str] = set()
        self._recent: deque[Command] = deque(maxlen=recent)
        self.accepting = True
        self.refusal = ""
        # target -> user, while an Arm of it is being journaled (the await would
        # otherwise let a second Arm of the same target past the reservation check)
        self._arming: dict[str, str] = {}
        # (kind, outcome) -> created→terminal latency; bounded by kinds × 4
        self.latency: dict[tuple[str, str], Series] = {}

    # -- start-up -----------------------------------------------------------------------------
    def load(self) -> int:
        """Load pending commands from the journal (at start-up); returns how many."""
        rows = self.journal.query(
            "SELECT * FROM commands WHERE state NOT IN ('confirmed', 'failed', 'expired', 'refused') "
            "ORDER BY created"
        )
        for row in rows:
            cmd = self._from_row(row)
            self._pending[cmd.id] = cmd
        return len(rows)

    def _from_row(self, row: Any) -> Command:
        cmd = Command(
            row["id"],
            row["kind"],
            row["target"],
            msgpack.unpackb(row["args"], raw=False),
            row["who"],
            row["why"],
            CommandState(row["state"]),
            row["reason"],
            row["created"],
            row["updated"],
            row["expires"],
        )
        for t in self.journal.query(
            "SELECT state, at, reason, who FROM command_transitions WHERE command_id = ? ORDER BY seq",
            (cmd.id,),
        ):
            cmd.history.append(Transition(CommandState(t["state"]), t["at"], t["reason"], t["who"]))
        return cmd

    # -- queries ----------------------------------------------------------------------------
    def get(self, command_id: str) -> Command:
        cmd = self._pending.get(command_id)
        if cmd is not None:
            return cmd
        for cmd in self._recent:
            if cmd.id == command_id:
                return cmd
        rows = self.journal.query("SELECT * FROM commands WHERE id = ?", (command_id,))
        if not rows:
            raise CommandError(f"unknown command id {command_id!r}")
        return self._from_row(rows[0])

    def adopt(self, command_id: str) -> None:
        """A subsystem follows this pending command to its end itself (after a restart,
        e.g. an order the warehouse still runs): ``reconcile`` skips it."""
        if command_id not in self._pending:
            raise CommandError(f"command {command_id}: not pending")
        self._adopted.add(command_id)

    def pending(self) -> list[Command]:
        return list(self._pending.values())

    def recent(self) -> list[Command]:
        return list(self._recent)

    # -- intake -----------------------------------------------------------------------------
    def close_intake(self, reason: str = "service stopping") -> None:
        """Refuse new commands from now on (orderly stop)."""
        self.accepting = False
        self.refusal = reason

    def _journal_failed(self) -> bool:
        """Close the intake when the journal has lost its disk; True when it has."""
        failure = self.journal.failure
        if failure is None:
            return False
        if self.accepting:
            self.close_intake(f"journal failed ({failure})")
            log.critical("commands: intake closed: %s", self.refusal)
        return True

    def check_journal(self, alarms: AlarmEngine | None = None) -> bool:
        """Control-task hook: on a journal storage failure, close the intake and raise
        the ``journal_failed`` alarm (kept active until the journal is reopened, since
        nothing after the failure is known to be on disk). True while failed."""
        failed = self._journal_failed()
        if alarms is not None:
            alarms.conditions.setdefault(JOURNAL_FAILED, Severity.CRITICAL)
            alarms.set(JOURNAL_FAILED, "journal", failed, self.journal.failure or "")
        return failed

    async def submit(
        self,
        kind: str,
        target: str,
        args: dict[str, Any] | None = None,
        *,
        who: str,
        why: str,
        command_id: str | None = None,
        expires_in_s: float | None = None,
        arm: bool = False,
    ) -> Command:
        """Create a command (``queued``, or ``armed`` for select-before-operate), durably.

        A known ``command_id`` with the same content returns the existing record
        (idempotent retry); with different content it is an error.
        """
        self._journal_failed()
        if not self.accepting:
            raise CommandRefused(
                RefusalReason.SERVICE_STOPPING, f"not accepting commands: {self.refusal}"
            )
        if kind not in self.kinds:
            raise CommandError(
                f"kind: must be one of {', '.join(sorted(self.kinds))} (got {kind!r})"
            )
        if not isinstance(target, str) or not 0 < len(target) <= 200:
            raise CommandError(
                f"target: must be a non-empty string of at most 200 characters (got {target!r})"
            )
        if not who or not isinstance(who, str):
            raise CommandError("who: required (every command is audited with its user)")
        if not why or not isinstance(why, str):
            raise CommandError("why: required (every command is audited with its reason)")
        if expires_in_s is not None and not expires_in_s > 0:
            raise CommandError(f"expires_in_s: must be > 0 (got {expires_in_s})")
        args = {} if args is None else args
        if not isinstance(args, dict):
            raise CommandError(f"args: must be a mapping (got {type(args).__name__})")
        blob = _pack(args)
        if command_id is not None:
            if not isinstance(command_id, str) or not 0 < len(command_id) <= 64:
                raise CommandError(f"command_id: must be 1..64 characters (got {command_id!r})")
            try:
                existing = self.get(command_id)
            except CommandError:
                existing = None
            if existing is not None:
                if (existing.kind, existing.target, existing.args) != (kind, target, args):
                    raise CommandError(
                        f"command id {command_id!r} already used for a different command"
                    )
                return existing
        cid = command_id or uuid.uuid4().hex
        now = self._clock()
        state = CommandState.ARMED if arm else CommandState.QUEUED
        expires = None if expires_in_s is None else now + expires_in_s
        cmd = Command(cid, kind, target, args, who, why, state, "", now, now, expires)
        cmd.history.append(Transition(state, now, "", who))
        try:
            await self.journal.commit(
                [
                    (
                        "INSERT INTO commands(id, kind, target, args, who, why, state, reason, "
                        "created, updated, expires) VALUES (?, ?, ?, ?, ?, ?, ?, '', ?, ?, ?)",
                        (cid, kind, target, blob, who, why, state.value, now, now, expires),
                    ),
                    self._transition_row(cid, state, "", who, now),
                ],
                durable=True,
            )
        except JournalStorageError as exc:
            # not recorded, so not accepted: the caller is told it was refused, and why
            self._journal_failed()
            raise CommandRefused(
                RefusalReason.SERVICE_STOPPING, f"not accepting commands: {self.refusal}"
            ) from exc
        self._pending[cid] = cmd
        return cmd

    @staticmethod
    def _transition_row(
        cid: str, state: CommandState, reason: str, who: str, at: float
    ) -> Statement:
        return (
            "INSERT INTO command_transitions(command_id, state, reason, who, at) VALUES (?, ?, ?, ?, ?)",
            (cid, state.value, reason, who, at),
        )

    # -- lifecycle --------------------------------------------------------------------------
    async def transition(
        self,
        command_id: str,
        state: CommandState | str,
        *,
        reason: str = "",
        who: str = "system",
        expires: float | _Keep | None = _Keep.KEEP,
    ) -> Command:
        """Move a pending command to ``state``; returns once the change is on disk.

        ``expires`` (epoch seconds, None for none) replaces the expiry: an executed
        selection trades its arm timeout for the command's own validity."""
        state = CommandState(state)
        cmd = self._pending.get(command_id)
        if cmd is None:
            known = self.get(command_id)  # raises for unknown ids
            raise CommandError(
                f"command {command_id}: already {known.state.value}; no further transitions"
            )
        if state not in TRANSITIONS[cmd.state]:
            allowed = ", ".join(sorted(s.value for s in TRANSITIONS[cmd.state]))
            raise CommandError(
                f"command {command_id}: cannot go from {cmd.state.value} to {state.value} (allowed: {allowed})"
            )
        if state in _ENDS and not reason:
            raise CommandError(f"command {command_id}: a reason is required for {state.value}")
        now = self._clock()
        new_expiry = cmd.expires if isinstance(expires, _Keep) else expires
        try:
            await self.journal.commit(
                [
                    (
                        "UPDATE commands SET state = ?, reason = ?, updated = ?, expires = ? "
                        "WHERE id = ?",
                        (state.value, reason, now, new_expiry, command_id),
                    ),
                    self._transition_row(command_id, state, reason, who, now),
                ],
                durable=True,
            )
        except JournalStorageError:
            # the record keeps its last durable state; a `sent` one is reconciled by
            # read-back at restart, never assumed either way
            self._journal_failed()
            raise
        cmd.state, cmd.reason, cmd.updated, cmd.expires = state, reason, now, new_expiry
        cmd.history.append(Transition(state, now, reason, who))
        if state in TERMINAL:
            del self._pending[command_id]
            self._adopted.discard(command_id)
            self._recent.append(cmd)
            key = (cmd.kind, state.value)
            series = self.latency.get(key)
            if series is None:
                series = self.latency[key] = Series(256)
            series.add(now - cmd.created)
        return cmd

    async def expire_due(self, now: float | None = None) -> list[Command]:
        """Expire armed/queued commands past their expiry (sent ones wait for read-back)."""
        if self._journal_failed():
            # runs every control cycle: this is what closes the intake within a second of a
            # failure even when nobody submits; an expiry could not be recorded anyway
            return []
        now = self._clock() if now is None else now
        due = [
            c
            for c in self._pending.values()
            if c.expires is not None and c.expires <= now and c.state is not CommandState.SENT
        ]
        return [
            await self.transition(
                c.id,
                CommandState.EXPIRED,
                reason=ARM_LAPSED if c.state is CommandState.ARMED else "expiry time passed",
            )
            for c in due
        ]

    # -- select-before-operate ------------------------------------------------------------
    async def selection_on(self, target: str) -> Command | None:
        """The armed command holding ``target``; one past its arm timeout is expired first."""
        now = self._clock()
        for cmd in list(self._pending.values()):
            if cmd.state is not CommandState.ARMED or cmd.target != target:
                continue
            if cmd.expires is None or cmd.expires <= now:
                await self.transition(cmd.id, CommandState.EXPIRED, reason=ARM_LAPSED)
                continue
            return cmd
        return None

    async def arm(
        self,
        kind: str,
        target: str,
        args: dict[str, Any] | None = None,
        *,
        who: str,
        why: str,
        timeout_s: float,
    ) -> Command:
        """Journal an ``armed`` command that reserves ``target`` for ``who`` for ``timeout_s``.

        Refused ``busy`` while another user's selection holds the target (naming its
        user and until when); the same user selecting again replaces their own
        selection (the old token expires, journaled), as after a client restart that
        lost its token. Its id is the token Execute names; it is random, since a
        client must not be able to guess another user's selection.
        """
        if not timeout_s > 0:
            raise CommandError(f"timeout_s: must be > 0 (got {timeout_s})")
        holder = await self.selection_on(target)
        if holder is not None and holder.who == who and target not in self._arming:
            await self.transition(
                holder.id, CommandState.EXPIRED, reason=f"superseded by a new selection by {who}"
            )
            holder = None
        if holder is not None:
            raise CommandRefused(
                RefusalReason.BUSY,
                f"target {target!r}: armed by {holder.who} until {_utc(holder.expires)}",
            )
        arming = self._arming.get(target)
        if arming is not None:
            raise CommandRefused(RefusalReason.BUSY, f"target {target!r}: being armed by {arming}")
        self._arming[target] = who
        try:
            return await self.submit(
                kind,
                target,
                args,
                who=who,
                why=why,
                command_id=secrets.token_urlsafe(16),
                expires_in_s=timeout_s,
                arm=True,
            )
        finally:
            del self._arming[target]

    async def execute_armed(
        self, command_id: str, *, target: str, who: str, expires_in_s: float | None
    ) -> Command:
        """Move ``who``'s selection ``command_id`` of ``target`` to ``queued`` ("executed").

        Refused ``not_armed`` for an unknown token, one armed for another target or
        by another user, or one already executed; ``expired`` past the arm timeout
        (journaled then, when the expiry sweep has not done it yet).
        ``expires_in_s`` is the executed command's own validity.
        """
        self._journal_failed()
        if not self.accepting:
            raise CommandRefused(
                RefusalReason.SERVICE_STOPPING, f"not accepting commands: {self.refusal}"
            )
        cmd = self._pending.get(command_id)
        if cmd is None:
            try:
                known = self.get(command_id)
            except CommandError:
                raise CommandRefused(
                    RefusalReason.NOT_ARMED, f"token: no armed command {command_id!r}"
                ) from None
            cmd = known
        if not cmd.history or cmd.history[0].state is not CommandState.ARMED:
            raise CommandRefused(RefusalReason.NOT_ARMED, f"token: no armed command {command_id!r}")
        if cmd.target != target:
            raise CommandRefused(
                RefusalReason.NOT_ARMED, f"token: armed for {cmd.target}, not {target}"
            )
        if cmd.who != who:
            raise CommandRefused(
                RefusalReason.NOT_ARMED, f"token: armed by {cmd.who}, not by {who or 'anonymous'}"
            )
        now = self._clock()
        if cmd.state is CommandState.ARMED and cmd.expires is not None and cmd.expires <= now:
            cmd = await self.transition(cmd.id, CommandState.EXPIRED, reason=ARM_LAPSED, who=who)
        if cmd.state is CommandState.EXPIRED:
            raise CommandRefused(
                RefusalReason.EXPIRED, f"token: the selection expired at {_utc(cmd.expires)}"
            )
        if cmd.state is not CommandState.ARMED:
            raise CommandRefused(
                RefusalReason.NOT_ARMED, f"token: command {cmd.id} is already {cmd.state.value}"
            )
        expires = None if expires_in_s is None else now + expires_in_s
        return await self.transition(
            cmd.id, CommandState.QUEUED, reason="executed", who=who, expires=expires
        )

    async def reconcile(self, reread: Reread) -> ReconcileReport:
        """Bring every pending command loaded at start-up to a terminal state.

        ``armed`` ones stay armed until their arm timeout (the selection is in the
        journal, not in a process); past it, or without one, they expire.
        ``queued`` and ``sent`` ones are resolved by ``reread`` — a read-back of
        the target, never a re-send. ``None`` from ``reread`` means the device
        does not show the command applied: a ``queued`` one is failed as not
        sent (write-ahead guarantees it never reached the wire), a ``sent`` one
        as not applied; either may be expired if past its expiry.
        """
        report = ReconcileReport()
        for cmd in list(self._pending.values()):
            if cmd.id in self._adopted:
                continue  # its subsystem settles it
            report.examined += 1
            if cmd.state is CommandState.ARMED:
                if cmd.expires is not None and cmd.expires > self._clock():
                    report.count(cmd.state)
                    continue
                done = await self.transition(
                    cmd.id, CommandState.EXPIRED, reason="armed before restart; selection lapsed"
                )
                report.count(done.state)
                continue
            try:
                res = await reread(cmd)
                err = ""
            except Exception as exc:
                res, err = None, f"read-back failed: {exc}"
            if res is None:
                expired = cmd.expires is not None and cmd.expires <= self._clock()
                if expired:
                    res = Resolution(CommandState.EXPIRED, "expired across restart; not re-sent")
                elif cmd.state is CommandState.QUEUED:
                    res = Resolution(CommandState.FAILED, "not sent before restart; not re-sent")
                else:
                    res = Resolution(
                        CommandState.FAILED,
                        err or "not applied per read-back after restart; not re-sent",
                    )
            if cmd.state is CommandState.QUEUED and res.state is CommandState.CONFIRMED:
                # the target already shows the commanded state; record the path honestly
                await self.transition(
                    cmd.id, CommandState.SENT, reason="reconcile: already applied"
                )
            done = await self.transition(cmd.id, res.state, reason=res.reason, who="reconcile")
            report.count(done.state)
        log.info(
            "commands: reconciled %d pending after restart: %s", report.examined, report.outcomes
        )
        return report
