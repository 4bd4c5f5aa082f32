"""`gridctl run`: the control runtime on one uvloop event loop (OPC UA beside it).

Start-up order (one log line per subsystem when it is ready):

1. journal (SQLite WAL, migrations) and the command log (pending commands loaded);
2. alarm engine (states restored);
3. simulated plant as child processes, when ``[sim] enabled``;
4. field plant: one bus owner per wire (``drivers.plant.FieldPlant``);
5. reconciliation of commands left pending by the previous run (read-back);
6. metrics endpoint;
7. OPC UA server (``opcua_server.OpcUaServer``), built from the process image:
   in its own process fed over a Unix socket (``[opcua] process = "separate"``,
   the default; restarted with an alarm when it dies) or on this loop ("inline");
8. ``gc.collect()`` + ``gc.freeze()`` (before the tasks start, so the
   collection does not cost the fast task an overrun);
9. cyclic tasks ``fast`` and ``control``.

SIGTERM / SIGINT stop it in order within ``stop_timeout_s``: refuse new
commands, stop the tasks, drive outputs to their safe state, stop the
publishers and the plant, flush and close the journal; exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import inspect
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller import deadline_timer
from controller.alarms import AlarmEngine
from controller.api import WRITE_SETPOINT
from controller.command_router import CommandRouter
from controller.commands import DEFAULT_KINDS, Command, CommandLog, Resolution
from controller.config import DEFAULT_CONFIG, ConfigError, GridConfig, load_config
from controller.cpu_affinity import CpuLayout, format_cpu_list
from controller.cycle import CycleTask
from controller.deadline_timer import DeadlineTimer
from controller.gc_pacing import QuietGc
from controller.journal import Journal
from controller.metrics import BasicAuth, MetricsServer, Sources, make_registry, tls_context
from controller.process_image import ProcessImage, Tag
from controller.setpoints import PREFIX as SETPOINT_PREFIX
from controller.setpoints import ModbusSetpoints
from controller.status import ServiceStatus
from controller.subsystem_context import SafeState
from controller.warehouse.subsystem import WarehouseSubsystem
from drivers.plant import FieldPlant
from drivers.sim.launch import start_simulator
from opcua_server import OpcUaServer
from opcua_server.adapters import EngineAlarmSource
from opcua_server.config import SetpointRule
from opcua_server.login_failures import LoginFailureLog
from opcua_server.server import ServerSettings, task_stats_from
from opcua_server.server_process import OpcUaProcessError, OpcUaServerProcess

log = logging.getLogger("gridctl.service")

# Alarm raised while the separate OPC UA server process is down (restarting).
OPCUA_DOWN = "publisher_down"
OPCUA_SOURCE = "opcua"
# Task latency percentiles published over OPC UA cover the last ~10 s of the
# fast task (as the metrics' *_recent gauges): sorting a whole large stats
# window every second is a step of tens of ms on the control loop.
OPCUA_TASK_SAMPLES = 1024


class Service:
    def __init__(self, config: GridConfig, *, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.image = ProcessImage()
        # `[tasks] cpus`: the loop thread on its own CPUs, everything else on the
        # rest (checked against this machine when the config was loaded).
        self.cpu_layout = CpuLayout.isolating(config.tasks.cpus) if config.tasks.cpus else None
        # Where the journal writer and the child processes go (None: not pinned).
        self._other_cpus = self.cpu_layout.others if self.cpu_layout is not None else None
        j = config.journal
        self.journal = Journal(
            j.path,
            queue_limit=j.queue_limit,
            batch_max=j.batch_max,
            writer_cpus=self._other_cpus,
        )
        # write_setpoint: OPC UA Writes to Modbus setpoints (controller/setpoints.py)
        self.commands = CommandLog(self.journal, kinds=DEFAULT_KINDS | {WRITE_SETPOINT})
        self.alarms = AlarmEngine(self.journal)
        # refused OPC UA logins (inline, or from the server process): journaled, counted
        self.login_failures = LoginFailureLog(self.journal)
        t = config.tasks
        self._timers: list[DeadlineTimer] = []
        self.fast = CycleTask(
            "fast",
            t.fast_period_ms / 1000,
            spin_s=t.fast_spin_us / 1e6,
            hold_s=t.fast_hold_us / 1e6,
            window=t.stats_window,
            sleep=self._coarse_sleep(t.timer),
        )
        self.control = CycleTask(
            "control",
            t.control_period_ms / 1000,
            spin_s=t.control_spin_us / 1e6,
            hold_s=t.control_hold_us / 1e6,
            window=t.stats_window,
            sleep=self._coarse_sleep(t.timer),
        )
        self.gc: QuietGc | None = None
        self.tasks = (self.fast, self.control)
        self.plant: Any = None
        self.setpoints: ModbusSetpoints | None = None
        self.simulator: Any = None
        self.metrics: MetricsServer | None = None
        self.status: ServiceStatus | None = None
        self.opcua: Any = None
        # Domain subsystems (load switching, verification line, warehouse): each has
        # `name`, `async start()` and `async stop()`; started after the field plant
        # (their tags exist before the OPC UA model is built), stopped before it.
        self.subsystems: list[Any] = []
        self.router = CommandRouter(self.commands)
        self.reread: Callable[[Command], Any] | None = None  # set by load control when it exists
        self._safe_state: list[tuple[str, SafeState]] = []
        self._stop_event = asyncio.Event()
        self._fast_overruns_seen = 0
        self._started = False
        if config.loads.enabled and config.loads.loads:
            from controller.loads.runtime import LoadsSubsystem

            self.add_subsystem(LoadsSubsystem(self, config.loads))
        line = None
        if config.line is not None and config.line.enabled:
            from controller.line_sim import SimulatedLinePlant
            from controller.verification.subsystem import VerificationLineSubsystem

            # the product drives the simulated line rig (the only rig driver so far)
            line = VerificationLineSubsystem(self, config.line, SimulatedLinePlant())
            self.add_subsystem(line)
        self.control.attach("alarms", self._control_alarms)
        self.control.attach("command-expiry", self._control_expiry)
        if config.warehouse is not None:
            warehouse = WarehouseSubsystem(self, config.warehouse)
            self.add_subsystem(warehouse)
            if line is not None and line.config.feed == "warehouse":
                # the line's batches come from the warehouse and go back to it; started
                # after both (it needs their state) and stopped before them
                from controller.warehouse.line_feed import LineFeed

                self.add_subsystem(LineFeed(self, line, warehouse))

    # -- hooks for the parts that come later ------------------------------------------------
    def add_subsystem(self, subsystem: Any) -> None:
        """Register a domain subsystem before `start()`."""
        self.subsystems.append(subsystem)

    def add_safe_state(self, name: str, action: SafeState) -> None:
        """Register an action driving outputs to their safe state at stop (sync or async)."""
        self._safe_state.append((name, action))

    # -- control-task programs --------------------------------------------------------------
    def _control_alarms(self, _deadline: float) -> None:
        if self.plant is not None:
            for snap in self.plant.snapshot():
                self.alarms.check_bus(snap)
            for bus, address, fault in self.plant.clock_faults():
                self.alarms.check_clock(bus, address, fault)
            for bus, address, online in self.plant.meters_online():
                self.alarms.check_meter(bus, address, online)
        fast = self.fast
        self.alarms.set(
            "cycle_overrun",
            "task/fast",
            fast.overruns > self._fast_overruns_seen,
            f"{fast.overruns} overruns",
        )
        self._fast_overruns_seen = fast.overruns
        self.commands.check_journal(self.alarms)
        js = self.journal.snapshot()
        self.alarms.set(
            "journal_backlog",
            "journal",
            js.queue_depth > js.queue_limit // 2,
            f"{js.queue_depth} queued",
        )
        self.alarms.tick()

    async def _control_expiry(self, _deadline: float) -> None:
        if self.commands.accepting:
            await self.commands.expire_due()

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        Path(cfg.service.state_dir).mkdir(parents=True, exist_ok=True)
        if self.cpu_layout is not None:
            # before the first to_thread: worker threads are started by the loop
            # thread and would inherit the control CPUs once it is pinned
            asyncio.get_running_loop().set_default_executor(self.cpu_layout.worker_executor())

        version = await asyncio.to_thread(self.journal.open)
        pending = self.commands.load()
        log.info(
            "journal ready: %s (schema %d, WAL), %d commands pending from the previous run",
            self.journal.path.resolve(),
            version,
            pending,
        )
        restored = self.alarms.load()
        log.info(
            "alarms ready: %d conditions known, %d alarms restored",
            len(self.alarms.conditions),
            restored,
        )

        if cfg.service.control_socket:
            self.status = ServiceStatus(
                self, Path(cfg.service.control_socket), cfg.service.control_socket_group
            )
            await self.status.start()
            log.info("control socket ready: %s (gridctl status)", self.status.path)

        await self._start_simulator()
        await self._start_plant()
        for subsystem in self.subsystems:
            await subsystem.start()
            log.info("%s ready", subsystem.name)
        await self._reconcile()

        if cfg.metrics.enabled:
            registry, collector = make_registry(
                Sources(
                    tasks=lambda: self.tasks,
                    buses=self.bus_snapshots,
                    commands=self.commands,
                    alarms=self.alarms,
                    journal=self.journal,
                    image=self.image,
                    gc=lambda: self.gc,
                    opcua_process=lambda: (
                        self.opcua if isinstance(self.opcua, OpcUaServerProcess) else None
                    ),
                    login_failures=lambda: self.login_failures.counts,
                    info={"name": cfg.service.name, "version": _version()},
                )
            )
            m = cfg.metrics
            self.metrics = MetricsServer(
                registry,
                collector,
                host=m.host,
                port=m.port,
                quiet_point=self.fast.after_cycle,
                min_render_interval_s=m.min_render_interval_s,
                max_connections=m.max_connections,
                header_timeout_s=m.header_timeout_s,
                max_header_bytes=m.max_header_bytes,
                auth=BasicAuth(m.auth_user, m.auth_password_hash) if m.auth_user else None,
                tls=tls_context(m.tls_cert, m.tls_key) if m.tls_cert and m.tls_key else None,
            )
            port = await self.metrics.start()
            log.info(
                "metrics ready: %s://%s:%d/metrics (%s)",
                "https" if m.tls_cert else "http",
                m.host,
                port,
                "basic auth" if m.auth_user else "no auth",
            )
            for warning in m.warnings():
                log.warning("%s", warning)
        else:
            log.info("metrics: disabled in config")

        await self._start_opcua()

        if cfg.tasks.gc_freeze:
            gc.collect()
            gc.freeze()
            log.info("gc: start-up objects frozen (%d)", gc.get_freeze_count())
        self._apply_cpu_layout()
        self._apply_realtime()
        # Phase: slower tasks wake half a fast period off the fast task's grid,
        # so their deadlines never coincide (1 s is a multiple of 10 ms).
        loop_t = time.monotonic()
        self.fast.start(loop_t + self.fast.period)
        self.control.start(loop_t + self.control.period + self.fast.period / 2)
        if cfg.tasks.gc == "quiet":
            self.gc = QuietGc(
                self.fast.after_cycle,
                young_threshold=cfg.tasks.gc_young_threshold,
                backstop=cfg.tasks.gc_backstop_threshold,
            )
            self.gc.start()
        log.info(
            "tasks ready: fast %g ms (%s timer, spin %d µs, hold %d µs), control %g ms "
            "(spin %d µs), overrun policy %s",
            self.fast.period * 1000,
            "timerfd" if self._timers else "loop",
            cfg.tasks.fast_spin_us,
            cfg.tasks.fast_hold_us,
            self.control.period * 1000,
            cfg.tasks.control_spin_us,
            cfg.tasks.overrun,
        )

        self._started = True
        self.journal.event("service", "service", f"started ({cfg.service.name})")
        log.info("service ready: %s (pid %d)", cfg.service.name, os.getpid())

    def _apply_cpu_layout(self) -> None:
        """The loop thread onto `[tasks] cpus`, the process's other threads onto the rest.

        Just before the tasks start, so every thread started during start-up
        (journal writer, workers, a metrics server thread) is there to be moved;
        the child processes were moved when they were spawned.
        """
        layout = self.cpu_layout
        if layout is None:
            log.info("cpus: not pinned (tasks.cpus empty)")
            return
        try:
            layout.pin_loop_thread()
            threads = layout.pin_other_threads()
        except OSError as exc:
            log.warning(
                "cpus: affinity %s refused (%s); running unpinned",
                format_cpu_list(layout.control),
                exc,
            )
            return
        children = [
            f"{name} (pid {pid})"
            for name, pid in (
                ("OPC UA server", getattr(self.opcua, "pid", None)),
                ("simulator", getattr(self.simulator, "pid", None)),
            )
            if isinstance(pid, int) and pid != os.getpid()
        ]
        log.info(
            "cpus: %s (%d other threads%s)",
            layout.describe(),
            threads,
            "; " + ", ".join(children) if children else "",
        )

    def _apply_realtime(self) -> None:
        switch_us = self.config.tasks.gil_switch_interval_us
        if switch_us:
            sys.setswitchinterval(switch_us / 1e6)
            log.info("GIL switch interval: %d µs", switch_us)
        prio = self.config.tasks.realtime_priority
        if not prio:
            log.info("scheduling: normal (tasks.realtime_priority = 0)")
            return
        try:
            # this thread only (threads started later inherit it); children do not (RESET_ON_FORK)
            os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(prio))
        except (OSError, AttributeError) as exc:
            log.warning(
                "scheduling: SCHED_FIFO %d refused (%s); running with normal scheduling", prio, exc
            )
            return
        log.info("scheduling: SCHED_FIFO priority %d for the loop thread", prio)

    def _coarse_sleep(self, kind: str) -> Callable[[float], Any]:
        """One timerfd per task where asked and available, else the loop's timers."""
        if kind == "timerfd":
            if deadline_timer.available():
                try:
                    timer = DeadlineTimer()
                except OSError as exc:
                    log.warning("tasks.timer: timerfd refused (%s); using the loop's timers", exc)
                else:
                    self._timers.append(timer)
                    return timer.sleep
            else:
                log.warning("tasks.timer: no timerfd on this platform; using the loop's timers")
        return asyncio.sleep

    def bus_snapshots(self) -> list[Any]:
        return list(self.plant.snapshot()) if self.plant is not None else []

    async def _start_simulator(self) -> None:
        cfg = self.config
        if not cfg.sim.enabled:
            log.info("simulators: not requested (sim.enabled = false)")
            return
        if self.config_path is None:
            log.warning("simulators: no config file path to hand to the simulator; not started")
            return
        self.simulator = await asyncio.to_thread(
            start_simulator,
            self.config_path,
            fast=cfg.sim.fast,
            cpus=self._other_cpus,
        )
        log.info("simulators ready: %s", getattr(self.simulator, "describe", lambda: "running")())

    async def _start_plant(self) -> None:
        self.plant = FieldPlant(
            self.config,
            self.image,
            journal=self.journal,
            site_tz=self.config.site.tz,
            commands=self.commands,
        )
        await self.plant.start()
        # Writable Modbus holding registers, written over OPC UA by their role.
        self.setpoints = ModbusSetpoints(self.commands, self.plant.buses)
        if self.setpoints.points:
            self.router.register(SETPOINT_PREFIX, self.setpoints)
        snaps = self.plant.snapshot()
        log.info(
            "field ready: %d buses (%s), %d meters",
            len(snaps),
            ", ".join(s.name for s in snaps) or "none",
            sum(s.meters_total for s in snaps),
        )

    async def _reconcile(self) -> None:
        if not self.commands.pending():
            return
        other = self.reread or _no_reread
        setpoints = self.setpoints

        async def reread(cmd: Command) -> Resolution | None:
            if cmd.kind == WRITE_SETPOINT and setpoints is not None:
                return await setpoints.reread(cmd)
            result: Resolution | None = await other(cmd)
            return result

        report = await self.commands.reconcile(reread)
        log.info("commands reconciled: %d examined, outcomes %s", report.examined, report.outcomes)

    async def _start_opcua(self) -> None:
        """The OPC UA server publishes the process image; it never owns state.

        ``[opcua] process = "separate"`` runs it in its own process fed over a
        Unix socket (``opcua_server.server_process``), so asyncua's publish work
        never delays the cyclic tasks; ``"inline"`` runs it on this loop.
        """
        cfg = self.config.opcua
        if not cfg.enabled:
            log.info("opcua: disabled in config")
            return
        state_dir = Path(self.config.service.state_dir) / "opcua"
        if cfg.process == "separate":
            await self._start_opcua_process(state_dir)
            return
        settings = ServerSettings(
            state_dir=state_dir,
            bus_snapshots=self.bus_snapshots,
            commands=self.router,
            alarms=self.alarms,
            task_stats=task_stats_from(lambda: self.tasks, last=OPCUA_TASK_SAMPLES),
            history_db=state_dir / "history.db",
            login_failures=self.login_failures.record,
            setpoints=self._setpoint_rule,
        )
        server = OpcUaServer(cfg, self.image, settings)
        await server.start()
        self.opcua = server
        stats = server.stats()
        log.info("opcua: inline, on the control loop (pid %d)", os.getpid())
        self._log_opcua_ready(stats)

    async def _start_opcua_process(self, state_dir: Path) -> None:
        cfg = self.config.opcua

        def down(reason: str) -> None:
            self.alarms.set(OPCUA_DOWN, OPCUA_SOURCE, True, reason)

        def up(_info: dict[str, Any]) -> None:
            self.alarms.set(OPCUA_DOWN, OPCUA_SOURCE, False, "OPC UA server process restarted")

        server = OpcUaServerProcess(
            cfg,
            self.image,
            state_dir=state_dir,
            config_path=self.config_path,
            commands=self.router,
            alarms=EngineAlarmSource(self.alarms),
            bus_snapshots=self.bus_snapshots,
            task_stats=task_stats_from(lambda: self.tasks, last=OPCUA_TASK_SAMPLES),
            history_db=state_dir / "history.db",
            quiet_point=self.fast.after_cycle,
            log_level=self.config.service.log_level,
            on_down=down,
            on_up=up,
            cpus=self._other_cpus,
            login_failures=self.login_failures.receive,
            setpoints=self._setpoint_rule,
        )
        # The child takes seconds to come up (interpreter, asyncua, model): a
        # stop requested meanwhile must not wait for it.
        starting = asyncio.ensure_future(server.start())
        stop_requested = asyncio.ensure_future(self._stop_event.wait())
        try:
            await asyncio.wait((starting, stop_requested), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_requested.cancel()
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, OpcUaProcessError):
                await starting
            await server.stop()
            log.info("opcua: start abandoned, stop requested")
            return
        try:
            info = starting.result()
        except OpcUaProcessError as exc:
            raise RuntimeError(f"opcua: {exc}") from None
        self.opcua = server
        # a server that was down when the previous run stopped is up now
        up(info)
        log.info(
            "opcua: separate process (pid %d), fed over %s", server.pid or 0, server.socket_path
        )
        self._log_opcua_ready(info)

    def _setpoint_rule(self, tag: Tag) -> SetpointRule | None:
        return self.setpoints.rule(tag) if self.setpoints is not None else None

    def _log_opcua_ready(self, stats: dict[str, Any]) -> None:
        if self.router.prefixes:
            log.info("opcua: commands accepted for %s", ", ".join(self.router.prefixes))
        log.info(
            "opcua ready: %s (%d nodes built in %.2f s)",
            self.config.opcua.endpoint,
            stats.get("model_nodes", 0),
            stats.get("model_build_s", 0.0),
        )

    @property
    def site_tz(self) -> dt.tzinfo:
        return self.config.site.tz

    def request_stop(self) -> None:
        self._stop_event.set()

    async def wait_stopped(self) -> None:
        await self._stop_event.wait()

    async def stop(self) -> bool:
        """Orderly stop within ``stop_timeout_s``; True when every step completed in time."""
        budget_end = time.monotonic() + self.config.service.stop_timeout_s - 0.3
        ok = True

        async def step(name: str, coro: Any) -> None:
            nonlocal ok
            remaining = max(0.05, budget_end - time.monotonic())
            try:
                await asyncio.wait_for(coro, remaining)
            except TimeoutError:
                ok = False
                log.error("stop: %s did not finish in time", name)
            except Exception:
                ok = False
                log.exception("stop: %s failed", name)

        self.commands.close_intake("service stopping")
        log.info("stopping: new commands refused")
        if self.gc is not None:  # before the fast task: its quiet points end with it
            await step("gc pacing", self.gc.stop())
        for task in self.tasks:
            await step(f"task {task.name}", task.stop())
        for timer in self._timers:
            timer.close()
        for name, action in self._safe_state:
            await step(f"safe state {name}", _call(action))
        log.info("outputs: %d safe-state actions run", len(self._safe_state))
        if self.opcua is not None:
            await step("opcua", _call(getattr(self.opcua, "stop", lambda: None)))
        if self.metrics is not None:
            await step("metrics", self.metrics.stop())
        for subsystem in reversed(self.subsystems):
            await step(subsystem.name, subsystem.stop())
        if self.plant is not None:
            if self.setpoints is not None:
                await step("setpoints", self.setpoints.stop())
            await step("field plant", self.plant.stop())
        if self.simulator is not None:
            await step("simulators", asyncio.to_thread(self.simulator.stop))
        if self.status is not None:
            await step("control socket", self.status.stop())
        if self.journal.is_open:
            self.journal.event("service", "service", "stopped")
            remaining = max(0.1, budget_end - time.monotonic())
            flushed = await asyncio.to_thread(self.journal.close, remaining)
            ok = ok and flushed
            log.info("journal %s", "flushed and closed" if flushed else "NOT fully flushed")
        log.info("service stopped%s", "" if ok else " (with errors)")
        return ok

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
        except BaseException:
            log.exception("start-up failed; stopping what was started")
            await self.stop()
            return 1
        await self.wait_stopped()
        log.info("stop requested")
        return 0 if await self.stop() else 1


async def _call(action: Any) -> None:
    result = action()
    if inspect.isawaitable(result):
        await result


async def _no_reread(cmd: Command) -> Resolution | None:
    """No read-back path exists yet (load control is a later part): say so, do not re-send."""
    raise LookupError(f"no read-back path for {cmd.kind} commands in this build")


def _version() -> str:
    from controller import __version__

    return __version__


# -- CLI --------------------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="run the controller service (default: the embedded demo)")
    p.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"TOML config (default {DEFAULT_CONFIG})",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import uvloop

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.service.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if config.service.log_level != "DEBUG":
        # asyncua logs every Publish and Read request at INFO: thousands of lines a
        # minute per client, written from the loop that carries the cyclic tasks.
        logging.getLogger("asyncua").setLevel(logging.WARNING)
    log.info("config %s: %s", args.config, _summary(config))
    service = Service(config, config_path=args.config)
    return uvloop.run(service.run())


def _summary(config: GridConfig) -> str:
    from controller.config import summary

    return summary(config)
