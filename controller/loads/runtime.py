"""Load switching in the service: the control-cycle program, persistence, the seams.

``LoadsRuntime`` owns the executor, one :class:`DemandGroup` per group and one
:class:`PrepaidAccount` per account. Every ``control`` cycle it

1. mirrors device state into ``loads/<name>/…`` tags and compares each
   relay's polled position with the one last commanded (``relay_mismatch``
   after ``mismatch_grace_s``);
2. steps each demand group with its members' signed active power from the image
   (a member without a Good reading: the group is Bad and holds);
3. bills new energy readings and steps each prepaid account;
4. hands the intents to the executor (interlocks → journal → control lane →
   read-back), or journals them as "would switch" in dry-run;
5. reports alarms and journals notes (deferrals, skipped trips).

Durable state lives in the journal's SQLite file, in tables of its own
(``controller.loads_schema``, steps of the journal's migrations): account balances and
baselines, the money ledger, maintenance lock-outs. Money is stored as
decimal text, never as a float.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from controller.alarms import AlarmEngine, Severity
from controller.api import CommandRefused
from controller.commands import CommandError, CommandLog, CommandState
from controller.journal import Journal, Statement
from controller.loads.config import TARIFF_REGISTERS, LoadsConfig, MemberConfig
from controller.loads.demand import DemandGroup, LoadView
from controller.loads.intents import Intent, StepResult
from controller.loads.interlocks import Lockout
from controller.loads.prepaid import FLAGGED, LedgerEntry, PrepaidAccount, PrepaidError
from controller.loads.switching import (
    KINDS as KIND_NAMES,
)
from controller.loads.switching import (
    LoadsError,
    SwitchingExecutor,
    actuators_for,
)
from controller.process_image import ProcessImage, Quality
from controller.quality_reason import Reason
from controller.subsystem_context import SubsystemContext

log = logging.getLogger("gridctl.loads")

# Alarm conditions this part reports (added to the engine's vocabulary).
CONDITIONS: dict[str, Severity] = {
    "demand_over_limit": Severity.HIGH,
    # a demand group's member has no Good power reading: the group neither sheds nor restores
    "demand_quality_bad": Severity.HIGH,
    "prepaid_low_balance": Severity.LOW,
    "prepaid_pre_trip": Severity.MEDIUM,
    FLAGGED: Severity.MEDIUM,
}


def _account_row(acc: PrepaidAccount, now: float) -> Statement:
    return (
        "INSERT OR REPLACE INTO ld_accounts(id, balance, last_reading, last_at, tripped, "
        "alarm_sent, updated, last_registers) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            acc.cfg.id,
            str(acc.balance),
            None if acc.last_reading is None else str(acc.last_reading),
            acc.last_at,
            int(acc.tripped),
            int(acc.alarm_sent),
            now,
            None if acc.last_registers is None else " ".join(map(str, acc.last_registers)),
        ),
    )


def _ledger_row(e: LedgerEntry) -> Statement:
    def s(x: Decimal | None) -> str | None:
        return None if x is None else str(x)

    return (
        "INSERT INTO ld_ledger(account, at, kind, amount, balance_after, energy_kwh, reading_kwh, "
        "price, ref, who, why) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            e.account,
            e.at,
            e.kind,
            str(e.amount),
            str(e.balance_after),
            s(e.energy_kwh),
            s(e.reading_kwh),
            s(e.price),
            e.ref,
            e.who,
            e.why,
        ),
    )


class LoadsRuntime:
    def __init__(
        self,
        config: LoadsConfig,
        commands: CommandLog,
        image: ProcessImage,
        *,
        alarms: AlarmEngine | None = None,
        plant: Any = None,
        actuators: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        local: Callable[[float], dt.datetime] = dt.datetime.fromtimestamp,
        executor: SwitchingExecutor | None = None,
    ) -> None:
        self.config = config
        self.commands = commands
        self.journal: Journal = commands.journal
        self.image = image
        self.alarms = alarms
        self._clock = clock
        self._local = local
        if alarms is not None:
            for cond, sev in CONDITIONS.items():
                alarms.conditions.setdefault(cond, sev)
        if executor is None:
            if actuators is None:
                actuators = actuators_for(config, plant, image)
            executor = SwitchingExecutor(
                config, commands, actuators, alarms=alarms, image=image, clock=clock
            )
        self.executor = executor
        self.groups = {g.name: DemandGroup(g) for g in config.groups}
        self.accounts: dict[str, PrepaidAccount] = {}
        for ai, a in enumerate(config.accounts):
            x = self.executor.loads[a.load]
            register = f"buses/{x.bus}/meters/{x.address}/energy_fwd_active_t1"
            if a.billing == "tariff_registers" and plant is not None and register not in image:
                # billing would wait for registers the plant never reads: say so at start
                raise ValueError(
                    f"loads.accounts[{ai}].billing: 'tariff_registers' but meter {x.address} "
                    f"on {x.bus} does not read its tariff registers (add 0001FF00 to one of "
                    "its poll groups, or set billing = 'reading_time')"
                )
            self.accounts[a.id] = PrepaidAccount(
                a, config.tariff(a.tariff), config.no_trip, balance=a.opening_balance
            )
        self._dispatches: set[asyncio.Task[Any]] = set()
        self._recharge_lock = asyncio.Lock()
        self.dry_runs = 0
        self.flags = 0
        self._define_tags()

    # -- tags -------------------------------------------------------------------------------
    def _define_tags(self) -> None:
        img = self.image
        for g in self.groups:
            p = f"demand/groups/{g}/"
            img.define(
                p + "average_kw", "kW", "demand: sliding-window average of the group's power"
            )
            img.define(p + "power_kw", "kW", "the group's power now: its members' signed sum")
            img.define(p + "quality", "", "good, or bad: a member has no reading (holding)")
            img.define(p + "shed_kw", "kW", "power the shed rounds took off, read at trip time")
            img.define(p + "limit_kw", "kW", "limit in force (override, schedule or default)")
            img.define(p + "limit_source", "", "where the limit comes from (override by whom)")
            img.define(p + "state", "", "normal, over_limit, shed, restoring")
            img.define(p + "rounds_shed", "", "rounds tripped and not yet restored")
        for a in self.accounts:
            p = f"prepaid/accounts/{a}/"
            img.define(p + "balance", "yuan", "balance (recharges − energy × price)")
            img.define(p + "level", "", "normal, alarm1, alarm2, trip")
            img.define(p + "deferred", "", "why a due trip is deferred ('' when not)")

    def _publish(self) -> None:
        img = self.image
        local = self._local(self._clock())
        for name, g in self.groups.items():
            p = f"demand/groups/{name}/"
            if g.bad_reason:
                why = f"group demand Bad: {g.bad_reason}"
                for t in ("average_kw", "power_kw"):
                    img.write(p + t, img.get(p + t).value, Quality.BAD, why)
            else:
                if g.average_kw is not None:
                    img.write(p + "average_kw", round(g.average_kw, 3))
                if g.power_kw is not None:
                    img.write(p + "power_kw", round(g.power_kw, 3))
            img.write(p + "quality", "bad" if g.bad_reason else "good")
            shed_kw = g.shed_power()
            if shed_kw is None:
                img.write(p + "shed_kw", None, Quality.BAD, "a shed load had no power reading")
            else:
                img.write(p + "shed_kw", round(shed_kw, 3))
            img.write(p + "limit_kw", float(g.limit_at(local)))
            img.write(p + "limit_source", g.limit_source(local))
            img.write(p + "state", g.status())
            img.write(p + "rounds_shed", len(g.shed))
        for aid, acc in self.accounts.items():
            p = f"prepaid/accounts/{aid}/"
            img.write(p + "balance", float(acc.balance))
            img.write(p + "level", acc.level)
            img.write(p + "deferred", acc.deferred)

    # -- start-up ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Tables, then the persisted balances and lock-outs."""
        for row in self.journal.query("SELECT * FROM ld_accounts"):
            acc = self.accounts.get(row["id"])
            if acc is None:
                continue  # an account removed from the config keeps its rows
            acc.balance = Decimal(row["balance"])
            acc.last_reading = None if row["last_reading"] is None else Decimal(row["last_reading"])
            acc.last_at = row["last_at"]
            acc.tripped = bool(row["tripped"])
            acc.alarm_sent = bool(row["alarm_sent"])
            regs = row["last_registers"]
            acc.last_registers = None if regs is None else tuple(map(Decimal, regs.split()))
        now = self._clock()
        new = [
            _account_row(a, now)
            for a in self.accounts.values()
            if not self.journal.query("SELECT 1 FROM ld_accounts WHERE id = ?", (a.cfg.id,))
        ]
        if new:
            await self.journal.commit(new)
        for row in self.journal.query("SELECT * FROM ld_lockouts"):
            if row["load"] in self.executor.loads:
                lo = Lockout(row["load"], row["who"], row["why"], row["since"])
                self.executor.lockouts[lo.load] = lo
                self.image.write(f"loads/{lo.load}/locked_out", True)
        self.executor.restore_commanded()
        for row in self.journal.query("SELECT * FROM ld_demand_overrides"):
            g = self.groups.get(row["grp"])
            if g is None:
                continue  # a group removed from the config keeps its row
            g.override_kw = float(row["limit_kw"])
            g.override_note = f"by {row['who']}: {row['why']}"
            log.info("loads: demand group %s: override %g kW restored", g.cfg.name, g.override_kw)
        self._publish()

    async def stop(self) -> None:
        for t in list(self._dispatches):
            t.cancel()
        await self.executor.stop()

    async def safe_state(self) -> None:
        """Drive outputs to their configured safe state at stop.

        Meter relays latch: their safe state is "hold" (nothing is sent).
        Terminal coils with ``safe_state = "open"``/``"closed"`` are written
        directly (the command log is already closed to new commands).
        """
        for x in self.config.loads:
            if x.type != "coil" or x.safe_state == "hold":
                continue
            act = self.executor.actuators.get(x.name)
            if act is None:
                continue
            try:
                await act.send("trip" if x.safe_state == "open" else "direct_close", 0.0)
                self.journal.event("loads", f"loads/{x.name}", f"safe state {x.safe_state}")
            except Exception as exc:
                log.error("loads: safe state of %s not reached: %s", x.name, exc)

    # -- operator actions -------------------------------------------------------------------
    async def recharge(
        self, account: str, amount: Decimal | str | int, *, ref: str, who: str, why: str
    ) -> Decimal:
        """Add money, durably (fsynced); the same ``ref`` again is the same recharge."""
        acc = self.accounts.get(account)
        if acc is None:
            raise PrepaidError(
                f"account: no account {account!r} (accounts: {', '.join(self.accounts) or 'none'})"
            )
        async with self._recharge_lock:
            seen = self.journal.query(
                "SELECT account, amount, balance_after FROM ld_ledger WHERE ref = ?", (ref,)
            )
            if seen:
                row = seen[0]
                if row["account"] != account or Decimal(row["amount"]) != Decimal(str(amount)):
                    raise PrepaidError(f"ref: {ref!r} already used for a different recharge")
                return acc.balance
            before = acc.balance
            entry = acc.recharge(amount, ref=ref, who=who, why=why, at=self._clock())
            try:
                await self.journal.commit(
                    [_ledger_row(entry), _account_row(acc, entry.at)], durable=True
                )
            except BaseException:
                acc.balance = before  # not on disk: not applied
                raise
        self.journal.event("loads", acc.source, f"recharge {entry.amount} by {who} ({why})")
        return acc.balance

    def _group(self, name: str) -> DemandGroup:
        g = self.groups.get(name)
        if g is None:
            known = ", ".join(self.groups) or "none"
            raise LoadsError(f"group: no demand group {name!r} (groups: {known})")
        return g

    async def set_demand_limit(
        self, group: str, limit_kw: float, *, who: str, why: str, ref: str = ""
    ) -> None:
        """Override a group's limit (and its schedule) until cleared; durable before applied."""
        g = self._group(group)
        if not who or not why:
            raise LoadsError("who and why: required (limit changes are audited)")
        try:
            limit = float(limit_kw)
        except (TypeError, ValueError):
            raise LoadsError(f"limit_kw: must be a number of kW (got {limit_kw!r})") from None
        try:
            g.check_override(limit)
        except ValueError as exc:
            raise LoadsError(str(exc)) from None
        now = self._clock()
        # fsynced first: an override the engineer was told about must survive a crash
        await self.journal.commit(
            [
                (
                    "INSERT OR REPLACE INTO ld_demand_overrides(grp, limit_kw, who, why, ref, since)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (group, limit, who, why, ref, now),
                )
            ],
            durable=True,
        )
        g.override_kw = limit
        g.override_note = f"by {who}: {why}"
        self.journal.event(
            "loads",
            g.source,
            f"demand limit set to {limit:g} kW by {who} ({why})" + (f" [{ref}]" if ref else ""),
        )
        self._publish()

    async def clear_demand_limit(self, group: str, *, who: str, why: str, ref: str = "") -> float:
        """Drop the override: back to the schedule / configured limit (returned, kW)."""
        g = self._group(group)
        if not who or not why:
            raise LoadsError("who and why: required (limit changes are audited)")
        if g.override_kw is None:
            raise LoadsError(f"group: demand group {group!r} has no limit override to clear")
        await self.journal.commit(
            [("DELETE FROM ld_demand_overrides WHERE grp = ?", (group,))], durable=True
        )
        was = g.override_kw
        g.override_kw = None
        g.override_note = ""
        limit = g.limit_at(self._local(self._clock()))
        self.journal.event(
            "loads",
            g.source,
            f"demand limit override {was:g} kW cleared by {who} ({why}), {limit:g} kW in force"
            + (f" [{ref}]" if ref else ""),
        )
        self._publish()
        return limit

    async def lock_out(self, load: str, *, who: str, why: str) -> None:
        lo = self.executor.lock_out(load, who=who, why=why)
        await self.journal.commit(
            [
                (
                    "INSERT OR REPLACE INTO ld_lockouts(load, who, why, since) VALUES (?, ?, ?, ?)",
                    (lo.load, lo.who, lo.why, lo.since),
                )
            ]
        )

    async def release_lock_out(self, load: str, *, who: str, why: str) -> None:
        self.executor.release_lock_out(load, who=who, why=why)
        await self.journal.commit([("DELETE FROM ld_lockouts WHERE load = ?", (load,))])

    # -- the control cycle ------------------------------------------------------------------
    @staticmethod
    def _power_tag(bus: str, address: str) -> str:
        return f"buses/{bus}/meters/{address}/power_active_total"

    def _meter_power(self, bus: str, address: str) -> tuple[float | None, str]:
        """A meter's active power (kW) if Good, else None and why."""
        tag = self._power_tag(bus, address)
        if tag not in self.image:
            return None, f"no tag {tag}"
        v = self.image.value(tag)
        if v is None:
            return None, self.image.get(tag).reason or "not Good"
        return float(v), ""

    def _load_meter(self, load: str) -> tuple[str, str] | None:
        """(bus, address) of the load's own meter; None for a load without one."""
        x = self.executor.loads[load]
        return None if x.type != "meter" or x.address is None else (x.bus, x.address)

    def _member_meter(self, m: MemberConfig) -> tuple[str, str] | None:
        if m.load is not None:
            return self._load_meter(m.load)
        assert m.meter is not None
        bus, address = m.meter.split("/")
        return bus, address

    def _load_power(self, load: str) -> tuple[float | None, str]:
        meter = self._load_meter(load)
        if meter is None:
            return None, f"{self.executor.loads[load].type} load without a meter"
        return self._meter_power(*meter)

    def _power(self, load: str) -> float | None:
        return self._load_power(load)[0]

    def _member_power(self, m: MemberConfig) -> tuple[float | None, str]:
        if m.load is not None:
            return self._load_power(m.load)
        meter = self._member_meter(m)
        assert meter is not None  # a meter member names its meter
        return self._meter_power(*meter)

    def _awaiting_first(self, m: MemberConfig) -> bool:
        """True when the member has a reading or has not been polled since start."""
        meter = self._member_meter(m)
        if meter is None or (tag := self._power_tag(*meter)) not in self.image:
            return False
        tv = self.image.get(tag)
        return tv.value is not None or tv.code == Reason.NOT_YET_POLLED

    def _group_power(self, g: DemandGroup) -> tuple[float | None, str]:
        """The members' signed sum (incoming minus outgoing), or None and the members without one."""
        total = 0.0
        missing: list[str] = []
        for m in g.cfg.members:
            kw, why = self._member_power(m)
            if kw is None:
                missing.append(f"{m.label}: {why}")
            else:
                total += m.sign * kw
        if missing:
            return None, "; ".join(missing)
        return total, ""

    def _views(self) -> dict[str, LoadView]:
        out = {}
        for name, act in self.executor.actuators.items():
            s = act.known()
            out[name] = LoadView(
                None if s.relay_open is None else not s.relay_open,
                s.keep_power,
                self._power(name) if name in self.executor.loads else None,
            )
        return out

    async def control(self, _deadline: float = 0.0) -> None:
        """The ``control`` cycle program."""
        now = self._clock()
        local = self._local(now)
        self.executor.mirror()
        self.executor.watch_relays()
        views = self._views() if self.groups else {}
        for g in self.groups.values():
            # a member without a trustworthy reading: the group is Bad (alarm, no
            # switching) rather than under-read
            total, bad = self._group_power(g)
            first = bool(bad) and all(self._awaiting_first(m) for m in g.cfg.members)
            self._apply(g, g.step(now, local, total, views, bad, awaiting_first=first))
        rows: list[Statement] = []
        for acc in self.accounts.values():
            entries = self._energy_reading(acc)
            if entries is not None:
                for entry in entries:
                    rows.append(_ledger_row(entry))
                    if entry.kind == "flag":
                        self.flags += 1
                        self._alarm(FLAGGED, acc.source, True, entry.why)
                rows.append(_account_row(acc, now))
            relay_open = self.executor.actuators[acc.cfg.load].known().relay_open
            self._apply(acc, acc.step(now, local, relay_open))
        if rows:
            # balance and baseline in one unit: after any crash they agree
            self.journal.post(rows)
        self._publish()

    def _energy_reading(self, acc: PrepaidAccount) -> list[LedgerEntry] | None:
        """Bill the account's meter reading if a new one is in the image (primary kWh).

        ``tariff_registers``: T1..T4 of one 0001FF00 read, all Good; until they
        are, nothing is billed and the baseline waits, so an outage's energy
        is billed when the registers come back, each at its own price."""
        x = self.executor.loads[acc.cfg.load]
        prefix = f"buses/{x.bus}/meters/{x.address}/"
        if acc.cfg.billing == "tariff_registers":
            tags = [f"{prefix}energy_fwd_active_{t}" for t in TARIFF_REGISTERS]
            if not all(t in self.image for t in tags):
                return None
            currents = [self.image.get(t) for t in tags]
            if any(c.quality is not Quality.GOOD or c.value is None for c in currents):
                return None
            src = min(c.source_time for c in currents)
            if acc.last_at is not None and src <= acc.last_at:
                return None
            return acc.registers_reading([c.value for c in currents], src)
        tag = prefix + "energy_fwd_active_total"
        value = self.image.value(tag) if tag in self.image else None
        if value is None:
            return None
        src = self.image.get(tag).source_time
        if acc.last_at is not None and src <= acc.last_at:
            return None
        entry = acc.reading(value, src, self._local(src))
        return [] if entry is None else [entry]

    def _alarm(self, condition: str, source: str, active: bool, message: str) -> None:
        if self.alarms is not None:
            self.alarms.set(condition, source, active, message)

    def _apply(self, machine: Any, res: StepResult) -> None:
        for a in res.alarms:
            self._alarm(a.condition, a.source, a.active, a.message)
        for note in res.notes:
            self.journal.event("loads", getattr(machine, "source", "loads"), note)
            log.info("%s", note)
        for intent in res.intents:
            self._dispatch(machine, intent)

    def _dispatch(self, machine: Any, intent: Intent) -> None:
        if intent.dry_run:
            self.dry_runs += 1
            self.journal.event(
                "loads",
                intent.source,
                f"dry run: would {intent.kind} {intent.load}: {intent.why}",
            )
            self._feedback(machine, intent, True)
            return
        task = asyncio.get_running_loop().create_task(self._execute(machine, intent))
        self._dispatches.add(task)
        task.add_done_callback(self._dispatches.discard)

    async def _execute(self, machine: Any, intent: Intent) -> None:
        ok = False
        try:
            cmd = await self.executor.submit(
                intent.kind,
                intent.load,
                who=intent.source,
                why=intent.why,
                source=intent.source,
                automation=True,
            )
            cmd = await self.executor.wait(cmd.id)
            ok = cmd.state is CommandState.CONFIRMED
        except (LoadsError, CommandError, CommandRefused) as exc:
            self.journal.event("loads", intent.source, f"{intent.kind} {intent.load}: {exc}")
        finally:
            self._feedback(machine, intent, ok)

    def _feedback(self, machine: Any, intent: Intent, ok: bool) -> None:
        if isinstance(machine, PrepaidAccount):
            machine.result(intent, ok, self._clock())
            self.journal.post([_account_row(machine, self._clock())])
        else:
            machine.result(intent, ok, self._clock())


class LoadsSubsystem:
    """Load switching as a service subsystem (``Service.add_subsystem``).

    Built at ``start()`` (after the field plant): the runtime, its control-cycle
    program, the reconcile read-back hook, the ``loads/`` command sink and the
    safe-state action for terminal coils.
    """

    name = "loads"

    def __init__(self, service: SubsystemContext, config: LoadsConfig) -> None:
        self.service = service
        self.config = config
        self.runtime: LoadsRuntime | None = None

    async def start(self) -> None:
        from controller.loads.sink import DemandLimitSink, LoadsCommandSink

        svc = self.service
        if svc.plant is None:
            raise LoadsError("loads: no field plant running; loads need their buses")
        site_tz = svc.site_tz
        rt = LoadsRuntime(
            self.config,
            svc.commands,
            svc.image,
            alarms=svc.alarms,
            plant=svc.plant,
            # tariff periods, no-trip windows and demand schedules are site wall-clock times
            local=lambda t: dt.datetime.fromtimestamp(t, site_tz).replace(tzinfo=None),
        )
        await rt.start()
        self.runtime = rt
        svc.commands.kinds = svc.commands.kinds | set(KIND_NAMES)
        svc.reread = rt.executor.reread
        svc.control.attach("loads", rt.control)
        svc.router.register("loads/", LoadsCommandSink(rt.executor, rt))
        svc.router.register("demand/groups/", DemandLimitSink(rt))
        svc.add_safe_state("loads", rt.safe_state)
        log.info(
            "loads: %d loads, %d demand groups, %d prepaid accounts",
            len(self.config.loads),
            len(self.config.groups),
            len(self.config.accounts),
        )

    async def stop(self) -> None:
        if self.runtime is not None:
            await self.runtime.stop()
