"""The verification line as a subsystem of the running service.

``Service`` registers it when the config has an enabled ``[line]`` table.
At start it

- opens the results tables in the service's journal file (the journal's
  migrations create them), so ``gridctl results export BATCH --db JOURNAL``
  works on the running service's file;
- builds the rig (the simulated one, in this process, on a :class:`ScaledClock`
  when ``time_scale`` > 1), the sequencer (tags under ``line/``) and the
  temperature supervisor, attached to the ``fast`` task;
- registers the ``line/`` command sink (StartBatch, AbortBatch) with the router
  and a safe-state action (abort the running batch: sources off);
- settles its own commands left pending by the previous run and resumes the
  batch that was running when the service stopped or died.

A batch runs as one asyncio task on the service loop; the sequencer only
awaits the clock, the rig and its writes, so it never holds the fast task.
Results are written through the journal's writer thread, each unit fsynced
(``synchronous=FULL``: a result is a promise) and awaited before the line acts
on it; the line reads on a read-only connection of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from controller.alarms import AlarmError
from controller.api import CommandRefused, RefusalReason
from controller.commands import Command, CommandError, CommandState
from controller.subsystem_context import SubsystemContext
from controller.verification.clock import Clock, RealClock, ScaledClock
from controller.verification.config import LineConfig
from controller.verification.results import (
    RepositoryError,
    ResultsRepository,
    open_read_only,
)
from controller.verification.scheme import MeterType, Scheme, SchemeError, load_scheme
from controller.verification.sequencer import BatchError, MeterTask, Sequencer
from controller.verification.sink import (
    ABORT_BATCH,
    START_BATCH,
    BatchRequest,
    LineCommandSink,
)
from controller.verification.temperature import TemperatureSupervisor
from drivers.verification_rig import Rig

log = logging.getLogger("gridctl.line")

# The reason recorded on a batch the service stopped; such a batch resumes at the next start.
SERVICE_STOP = "service stopped; resumes at the next start"
SOURCE = "line"


class EngineAlarms:
    """The sequencer's and supervisor's ``AlarmSink`` on the service's alarm engine."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def raise_alarm(self, source: str, kind: str, severity: int, message: str) -> None:
        try:
            self.engine.set(kind, source, True, message, severity=severity)
        except AlarmError:
            log.exception("line: alarm %s on %s not raised", kind, source)


@dataclass(frozen=True, slots=True)
class FeedRequest:
    """The command request of a batch the warehouse fed (journaled like an operator's)."""

    target: str
    kind: str
    reason: str
    user: str
    token: str
    role: str = "system"
    armed_at: float = 0.0
    source: str = "warehouse"


class LinePlant(Protocol):
    """The physical side of the line as the service hands it over (the simulated
    plant, ``controller.line_sim``, or a site's): the rig, and the meters that
    reach it (a site's handling system reports them; the simulator creates them)."""

    def build(self, config: LineConfig, meter_type: MeterType, clock: Clock) -> Rig: ...

    def clear(self) -> None:
        """An empty line: what an aborted or failed batch left was taken off."""

    def arrive(self, meters: Iterable[tuple[str, str]]) -> None:
        """(barcode, address) of meters arriving on the infeed conveyor."""

    def on_station(self, station: int, barcode: str, address: str) -> None:
        """A meter still on its station after a restart."""


class VerificationLineSubsystem:
    name = "verification line"

    def __init__(self, service: SubsystemContext, config: LineConfig, plant: LinePlant) -> None:
        self.service = service
        self.config = config
        self.plant = plant
        self.stations = len(config.station_ids)
        self.meter_type_name = config.default_meter_type
        self.schemes: dict[str, Scheme] = {}
        self.clock: Clock = (
            ScaledClock(config.time_scale) if config.time_scale != 1.0 else RealClock()
        )
        self.conn: sqlite3.Connection | None = None
        self.repo: ResultsRepository | None = None
        self.rig: Rig | None = None
        self.seq: Sequencer | None = None
        self.supervisor: TemperatureSupervisor | None = None
        self.sink = LineCommandSink(self)
        self.batch_id = ""
        self._task: asyncio.Task[None] | None = None
        self._abort_reason = ""
        # called with (batch id, final state) when a batch ends (done, failed, aborted)
        self.batch_ended: list[Callable[[str, str], None]] = []

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        svc = self.service
        cfg = self.config
        self._load_schemes()
        mt = cfg.meter_type(self.meter_type_name)
        usable = sorted({s.name for s in self.schemes.values() if not s.problems_for(mt)})
        # one writer to the file: the results' writes go through the journal's writer
        # thread (the loop never waits on the file's lock); this connection only reads,
        # and in WAL mode a reader never waits on the writer
        self.conn = open_read_only(svc.journal.path)
        self.repo = ResultsRepository(self.conn, install=False, journal=svc.journal)
        self.rig = self.plant.build(cfg, mt, self.clock)
        alarms = EngineAlarms(svc.alarms)
        self.seq = Sequencer(
            cfg, self.rig, self.repo, self.clock, svc.image, alarms, site_tz=svc.site_tz
        )
        self.supervisor = TemperatureSupervisor(
            self.rig.stations,
            cfg.temperature.limit_c,
            on_trip=self.seq.on_over_temperature,
            image=svc.image,
            alarms=alarms,
            deadband_c=cfg.temperature.publish_deadband_c,
        )
        svc.fast.attach("line temperature", self._scan)
        svc.router.register(f"{SOURCE}/", self.sink)
        svc.add_safe_state("line sources off", self.safe_state)
        self._define_tags(usable)

        scale = cfg.time_scale
        log.info(
            "line: simulated rig, %d units, %d stations, meter type %s, schemes usable: %s",
            len(cfg.units),
            self.stations,
            self.meter_type_name,
            ", ".join(usable) or "none",
        )
        if scale != 1.0:
            log.warning(
                "line: SCALED TIME: the simulated rig and the sequencer run %g times faster "
                "than real time (line.time_scale = %g, published as line/time_scale); "
                "result records carry real wall-clock times",
                scale,
                scale,
            )
        await self._settle_commands()
        self._resume()

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    async def safe_state(self) -> None:
        """Service stop: abort the running batch (it resumes at the next start), sources off."""
        if self._task is not None and not self._task.done():
            assert self.seq is not None
            log.info("line: stopping batch %s (%s)", self.batch_id, SERVICE_STOP)
            self._abort(SERVICE_STOP)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(self._task)
        if self.rig is not None:
            for unit in self.rig.units.values():
                await unit.off()

    def _scan(self, _deadline: float) -> None:
        assert self.supervisor is not None
        self.supervisor.scan()

    # -- schemes, tags -------------------------------------------------------------------------
    def _scheme_dir(self) -> Path:
        """``scheme_dir`` as given (absolute, or relative to the working directory like the
        journal); a relative one not found there is looked up in the installed tree, where
        the demo's ``config/schemes`` ships."""
        given = Path(self.config.scheme_dir)
        tried = [given]
        if not given.is_absolute():
            tried.append(Path(__file__).resolve().parents[2] / given)
        for folder in tried:
            if folder.is_dir() and any(folder.glob("*.toml")):
                return folder
        raise SchemeError(
            "line.scheme_dir",
            [f"no *.toml schemes in {' or '.join(str(p) for p in tried)}"],
        )

    def _load_schemes(self) -> None:
        folder = self._scheme_dir()
        files = sorted(folder.glob("*.toml"))
        log.info("line: schemes from %s", folder.resolve())
        for path in files:
            scheme = load_scheme(path)  # a broken scheme stops the start, naming file and field
            for key in (scheme.name, path.stem):
                other = self.schemes.get(key)
                if other is not None and other is not scheme:
                    raise SchemeError(str(path), [f"name: {key!r} already used by another scheme"])
                self.schemes[key] = scheme

    def _define_tags(self, usable: list[str]) -> None:
        img = self.service.image
        for name, unit, desc in (
            ("line/time_scale", "", "rig seconds per real second (1 = real time; >1 simulation)"),
            ("line/rig", "", "rig the line drives (sim = simulated in the service)"),
            ("line/state", "", "idle / running / aborting"),
            ("line/schemes", "", "schemes StartBatch accepts for the line's meter type"),
            ("line/meter_type", "", "meter type of batches started by command"),
            ("line/batch/meters", "", "meters in the batch"),
            ("line/batch/passed", "", "meters that passed (batch done)"),
            ("line/batch/failed", "", "meters that did not pass (batch done)"),
            ("line/batch/message", "", "last outcome or error of the line"),
        ):
            img.define(name, unit, desc)
        img.write("line/time_scale", float(self.config.time_scale))
        img.write("line/rig", self.config.rig)
        img.write("line/state", "idle")
        img.write("line/schemes", ", ".join(usable))
        img.write("line/meter_type", self.meter_type_name)

    def _write(self, tag: str, value: Any) -> None:
        self.service.image.write(tag, value)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- commands ------------------------------------------------------------------------------
    async def _submit(
        self, kind: str, request: Any, args: dict[str, Any], cid: str | None
    ) -> Command:
        try:
            return await self.service.commands.submit(
                kind,
                request.target,
                args,
                who=request.user or "anonymous",
                why=request.reason or f"{kind} (no reason given)",
                command_id=cid,
            )
        except CommandError as exc:
            raise CommandRefused(RefusalReason.BAD_ARGUMENT, str(exc)) from None

    async def _refuse(
        self, cmd: Command, reason: str, code: RefusalReason = RefusalReason.INVALID_STATE
    ) -> None:
        await self.service.commands.transition(cmd.id, CommandState.REFUSED, reason=reason)
        raise CommandRefused(code, reason)

    async def start_fed_batch(
        self, batch_id: str, scheme: str, meter_type: str, meters: list[MeterTask], why: str
    ) -> bool:
        """Start a batch of meters the warehouse delivered; False when the line cannot now.

        True as well when the batch already exists (started before a restart):
        the line resumes its own batches.
        """
        assert self.repo is not None
        try:
            self.repo.batch(batch_id)
            return True
        except RepositoryError:
            pass
        if self.running:
            return False
        request = FeedRequest(f"{SOURCE}/", START_BATCH, why, "warehouse feed", batch_id)
        try:
            await self.start_batch(
                request,
                batch_id,
                BatchRequest(self.schemes[scheme], meters, False),
                meter_type=meter_type,
            )
        except CommandRefused as exc:
            log.warning("line: fed batch %s not started: %s", batch_id, exc)
            return False
        return True

    async def start_batch(
        self, request: Any, batch_id: str, batch: BatchRequest, meter_type: str = ""
    ) -> str:
        assert self.seq is not None and self.repo is not None and self.rig is not None
        mt = self.config.meter_type(meter_type or self.meter_type_name)
        problems = batch.scheme.problems_for(mt)
        if problems:
            raise CommandRefused(
                RefusalReason.BAD_ARGUMENT,
                f"scheme: {batch.scheme.name!r} cannot run on meter type {mt.name!r}: "
                + "; ".join(problems),
            )
        cmd = await self._submit(START_BATCH, request, batch.args(batch_id, mt.name), batch_id)
        if cmd.terminal or len(cmd.history) > 1:
            return cmd.id  # a retry of a request already handled
        if self.running:
            await self._refuse(
                cmd, f"line busy: batch {self.batch_id} is running", RefusalReason.BUSY
            )
        try:
            await self.seq.create_batch(batch_id, batch.scheme, mt.name, batch.meters)
        except (BatchError, RepositoryError, SchemeError, KeyError) as exc:
            await self.service.commands.transition(cmd.id, CommandState.FAILED, reason=str(exc))
            raise CommandRefused(RefusalReason.INVALID_STATE, str(exc)) from None
        await self.service.commands.transition(cmd.id, CommandState.SENT, reason="batch created")
        # The simulated plant: the meters of the batch arrive on the infeed conveyor of an
        # empty line (what an aborted or failed batch left was taken off first).
        self.plant.clear()
        self.plant.arrive((m.barcode, m.address) for m in batch.meters)
        self._launch(batch_id, len(batch.meters))
        await self.service.commands.transition(
            cmd.id,
            CommandState.CONFIRMED,
            reason=f"batch {batch_id} started: {len(batch.meters)} meters, "
            f"scheme {batch.scheme.name} v{batch.scheme.version}",
        )
        log.info(
            "line: batch %s started by %s: %d meters, scheme %s v%d",
            batch_id,
            cmd.who,
            len(batch.meters),
            batch.scheme.name,
            batch.scheme.version,
        )
        return cmd.id

    async def abort_batch(self, request: Any, batch_id: str) -> str:
        assert self.seq is not None
        running = self.batch_id if self.running else ""
        cid = getattr(request, "token", "") or None
        cmd = await self._submit(ABORT_BATCH, request, {"batch": batch_id or running}, cid)
        if cmd.terminal or len(cmd.history) > 1:
            return cmd.id
        if not running:
            await self._refuse(cmd, "no batch is running")
        if batch_id and batch_id != running:
            await self._refuse(
                cmd,
                f"batch_id: {batch_id!r} is not running (running: {running})",
                RefusalReason.BAD_ARGUMENT,
            )
        await self.service.commands.transition(cmd.id, CommandState.SENT, reason="abort requested")
        self._write("line/state", "aborting")
        self._abort(f"aborted by {cmd.who}: {cmd.why}")
        assert self._task is not None
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.shield(self._task)
        assert self.repo is not None
        state = self.repo.batch(running).state
        if state == "aborted":
            await self.service.commands.transition(
                cmd.id, CommandState.CONFIRMED, reason=f"batch {running} aborted; sources off"
            )
        else:
            await self.service.commands.transition(
                cmd.id, CommandState.FAILED, reason=f"batch {running} ended {state} first"
            )
        return cmd.id

    def command_state(self, command_id: str) -> tuple[str, str] | None:
        try:
            cmd = self.service.commands.get(command_id)
        except CommandError:
            return None
        return cmd.state.value, cmd.reason

    # -- running a batch -----------------------------------------------------------------------
    def _abort(self, reason: str) -> None:
        assert self.seq is not None
        self._abort_reason = reason  # for a batch task that has not begun yet
        self.seq.abort(reason)

    def _launch(self, batch_id: str, meters: int) -> None:
        self.batch_id = batch_id
        self._abort_reason = ""
        self._write("line/state", "running")
        self._write("line/batch/meters", meters)
        self._write("line/batch/message", f"batch {batch_id} running")
        self._task = asyncio.get_running_loop().create_task(
            self._run(batch_id), name=f"line batch {batch_id}"
        )

    async def _run(self, batch_id: str) -> None:
        assert self.seq is not None and self.repo is not None and self.rig is not None
        if self._abort_reason:  # aborted before the task began: nothing was touched
            now = self.clock.now()
            await self.repo.mark_interrupted(batch_id, now)
            await self.repo.set_batch_state(batch_id, "aborted", now, self._abort_reason)
            self._write("line/batch/state", "aborted")
            self._write("line/state", "idle")
            return
        try:
            summary = await self.seq.run(batch_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # a handling timeout or a fault: sources off, the batch stays for a re-start by hand
            log.exception("line: batch %s failed", batch_id)
            for unit in self.rig.units.values():
                await unit.off()
            message = f"batch {batch_id} failed: {exc}"
            await self.repo.set_batch_state(batch_id, "failed", self.clock.now(), str(exc))
            self._write("line/batch/state", "failed")
            self._write("line/batch/message", message)
            self.service.journal.event("line", SOURCE, message, severity=700)
            self._ended(batch_id, "failed")
            return
        finally:
            self._write("line/state", "idle")
        if summary.state == "done":
            message = (
                f"batch {batch_id} done: {len(summary.passed)} passed, {len(summary.failed)} failed"
            )
            self._write("line/batch/passed", len(summary.passed))
            self._write("line/batch/failed", len(summary.failed))
        else:
            message = f"batch {batch_id} {summary.state}: {self.repo.batch(batch_id).reason}"
        self._write("line/batch/message", message)
        self.service.journal.event("line", SOURCE, message)
        log.info("line: %s", message)
        self._ended(batch_id, summary.state)

    def _ended(self, batch_id: str, state: str) -> None:
        for listener in self.batch_ended:
            try:
                listener(batch_id, state)
            except Exception:  # a listener's bug must not fail the batch record
                log.exception("line: batch-end listener failed for %s", batch_id)

    # -- restart ---------------------------------------------------------------------------------
    async def _settle_commands(self) -> None:
        """Bring this line's commands left pending by the previous run to an end (before the
        service's generic reconcile, which has no read-back for them)."""
        assert self.repo is not None
        log_ = self.service.commands
        for cmd in list(log_.pending()):
            if cmd.kind not in (START_BATCH, ABORT_BATCH) or not cmd.target.startswith(
                f"{SOURCE}/"
            ):
                continue
            batch_id = str(cmd.args.get("batch", ""))
            try:
                rec = self.repo.batch(batch_id) if batch_id else None
            except RepositoryError:
                rec = None
            if cmd.kind == START_BATCH:
                if rec is None:
                    await log_.transition(
                        cmd.id,
                        CommandState.FAILED,
                        reason="not started before restart; not re-sent",
                        who="reconcile",
                    )
                    continue
                if cmd.state is CommandState.QUEUED:
                    await log_.transition(cmd.id, CommandState.SENT, reason="batch created")
                await log_.transition(
                    cmd.id,
                    CommandState.CONFIRMED,
                    reason=f"batch {batch_id} exists ({rec.state}) after restart",
                    who="reconcile",
                )
                continue
            # abort_batch: the operator wanted this batch stopped; never resume it
            if rec is not None and rec.state not in ("done", "failed", "aborted"):
                now = self.clock.now()
                await self.repo.mark_interrupted(batch_id, now)
                await self.repo.set_batch_state(
                    batch_id, "aborted", now, f"aborted by {cmd.who}: {cmd.why}"
                )
            if cmd.state is CommandState.QUEUED:
                await log_.transition(cmd.id, CommandState.SENT, reason="abort requested")
            await log_.transition(
                cmd.id,
                CommandState.CONFIRMED,
                reason=f"batch {batch_id} aborted across restart",
                who="reconcile",
            )

    def _resume(self) -> None:
        """Resume the batch the previous run left running (crash) or stopped (service stop)."""
        assert self.conn is not None and self.repo is not None and self.rig is not None
        row = self.conn.execute(
            "SELECT batch_id, state FROM vl_batches WHERE state IN ('created', 'running') "
            "OR (state = 'aborted' AND reason = ?) ORDER BY created DESC LIMIT 1",
            (SERVICE_STOP,),
        ).fetchone()
        if row is None:
            return
        batch_id, state = row
        rec = self.repo.batch(batch_id)
        # The simulated plant kept its meters while the controller was down: loaded ones
        # are still on their stations, the rest wait on the infeed.
        for m in rec.meters:
            if m.state == "queued":
                self.plant.arrive([(m.barcode, m.address)])
            elif m.state != "boxed":
                self.plant.on_station(m.station, m.barcode, m.address)
        log.info("line: resuming batch %s (was %s)", batch_id, state)
        self._launch(batch_id, len(rec.meters))
