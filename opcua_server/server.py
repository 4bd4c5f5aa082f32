"""The gridctl OPC UA server: model, publisher, diagnostics, methods, security."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import gc
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asyncua import Server, ua

from controller.api import CommandSink
from controller.process_image import ChangeQueue, ProcessImage, Tag
from controller.task_stop import stop_task
from opcua_server.ua_values import node_id

from . import browse, connection_limits, publish_encoding
from . import nodes as N
from .access import ItemAccess, Setpoint
from .alarm_list import AlarmList
from .command_view import CommandStatePush, CommandStates, CommandTracker, build_event_type
from .conditions import AlarmConditions
from .config import OpcUaConfig, SetpointRule, is_loopback_endpoint
from .diagnostics import Diagnostics, set_now
from .events import Emitter, audit_method_event
from .history import GridHistoryManager, HistoryStore
from .late_tags import LateTags
from .methods import (
    COMMAND_METHODS,
    AlarmSource,
    MethodSpec,
    bind,
    command_methods,
    load_methods,
    setpoint_writer,
    whoami_method,
)
from .model import ModelBuilder
from .nodes import Made, NodeFactory
from .pki import CertificateStore, ClientCertificateValidator
from .publisher import FeedRows, Publisher
from .security import ensure_certificate, install_client_certificate_checks, security_policies
from .session_guard import SessionGuard, close_sessions
from .settings import HISTORY_PATTERNS, ServerSettings, TaskStats
from .subscription_limits import limit_publishing_interval
from .units import eu_range
from .users import GridRuleset, UserStore, install_login_peer, login_peer

if TYPE_CHECKING:
    from controller.alarms import AlarmEngine
    from controller.commands import CommandLog

__all__ = [
    "HISTORY_PATTERNS",
    "OpcUaServer",
    "ServerSettings",
    "TaskStats",
    "start",
    "task_stats_from",
]

_log = logging.getLogger(__name__)

PRODUCT_URI = "urn:gridctl"
MANUFACTURER = "gridctl"


def _version() -> str:
    try:
        return metadata.version("gridctl")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


class OpcUaServer:
    """The asyncua server over one process image: ``config`` is the ``[opcua]``
    table, ``settings`` what the server is wired to (see :class:`ServerSettings`).
    The parts with their own state live beside it: ``diagnostics``,
    ``alarm_list`` (None without an alarm source) and ``late`` (tags added
    after start)."""

    def __init__(self, config: OpcUaConfig, image: ProcessImage, settings: ServerSettings) -> None:
        self.config = config
        self.image = image
        self.settings = settings
        self.state_dir = Path(settings.state_dir)
        self.commands: CommandSink | None = _as_sink(settings.commands)
        self.alarms: AlarmSource | None = _as_alarm_source(settings.alarms)
        self.access: ItemAccess | None = None
        self.history: HistoryStore | None = None
        self.emitter: Emitter | None = None
        self.tracker: CommandTracker | None = None
        self.diagnostics = Diagnostics(
            values=self._diagnostic_values,
            task_stats=settings.task_stats,
            bus_snapshots=settings.bus_snapshots,
            on_nodes=self._count_nodes,
        )
        self.alarm_list = (
            AlarmList(
                self.alarms,
                poll_s=settings.alarm_poll_s,
                confirm=settings.alarm_confirm,
                namespace_index=lambda: self.namespace_index,
                resolve=self._source_node,
                audit=self._audit,
            )
            if self.alarms is not None
            else None
        )
        self.late = LateTags(
            image, period_s=settings.diagnostics_period_s, on_nodes=self._count_nodes
        )
        self._sink: CommandSink | None = None
        self._load_specs: list[MethodSpec] = []
        self._command_specs: dict[str, list[MethodSpec]] = {}
        self.users = UserStore.from_config(config, on_failure=settings.login_failures)
        self.peer_limit: connection_limits.PeerLimit | None = None
        self.ruleset = GridRuleset()
        self.session_guard = SessionGuard(
            allow_plaintext_on_loopback=config.allow_plaintext_password_on_loopback,
            endpoint_is_loopback=is_loopback_endpoint(config.endpoint),
            failures=self.users,
        )
        self.server: Server | None = None
        self.namespace_index = 0
        self.methods: dict[str, MethodSpec] = {}
        self.model_build_s = 0.0
        self.model_nodes = 0
        self._queue: ChangeQueue | None = None
        self._publisher: Publisher | None = None
        self._builder: ModelBuilder | None = None
        self._factory: NodeFactory | None = None
        self._diag_task: asyncio.Task[None] | None = None
        self._started_mono = 0.0

    @property
    def conditions(self) -> AlarmConditions | None:
        return self.alarm_list.conditions if self.alarm_list is not None else None

    @property
    def late_tags(self) -> int:
        return self.late.added

    def _count_nodes(self, created: int) -> None:
        self.model_nodes = created

    # -- lifecycle --------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        server = Server(user_manager=self.users)  # type: ignore[arg-type]
        # asyncua's ConditionRefresh(2) replays the retained condition events we send.
        server.iserver.bind_condition_methods = True
        history_manager = GridHistoryManager(server.iserver)
        server.iserver.history_manager = history_manager
        settings = self.settings
        if settings.history_db is not None:
            self.history = HistoryStore(
                Path(settings.history_db),
                ns=lambda: self.namespace_index,
                retention_s=settings.history_retention_s,
                max_rows=settings.history_max_rows,
            )
            self.history.open()
            history_manager.set_storage(self.history)
            history_manager.store = self.history
        await server.init()
        # Security patches, before any client can connect: the peer of each
        # login, random session tokens and checked reconnects, the connection
        # limits, the smallest publishing interval.
        install_login_peer()
        self.session_guard.attach(server.iserver)
        self.peer_limit = connection_limits.apply(server.iserver, cfg)
        limit_publishing_interval(server.iserver, cfg.min_publishing_interval_ms)
        # Call and Write answered per item, UserAccessLevel per session, Browse
        # paged with continuation points (Part 4 §5.8, §5.10.4, §5.11).
        self.access = ItemAccess(server.iserver.aspace, self.ruleset)
        self.access.install(server.iserver)
        browse.install(server.iserver)
        # Data changes go out written from each value's bytes, packed once for
        # every client watching it (asyncua's encoder packs them per item).
        publish_encoding.install()
        server.set_endpoint(cfg.endpoint)
        server.set_server_name(cfg.server_name)
        server.product_uri = PRODUCT_URI
        server.manufacturer_name = MANUFACTURER
        server.application_type = ua.ApplicationType.Server
        await server.set_application_uri(cfg.application_uri)
        await self._setup_security(server)
        self.namespace_index = await server.register_namespace(cfg.namespace)
        self.server = server

        # Subscribe before reading the image for the model, so no change can
        # fall between the snapshot and the first publish.
        self._queue = self.image.subscribe("opcua", cfg.queue_size)
        # The model is ~10⁵ long-lived objects: with the collector on, building
        # it triggers repeated full collections over the whole address space
        # (more than half the build time). Nothing here makes reference cycles
        # that need collecting. The service should gc.freeze() after start-up.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        t0 = time.perf_counter()
        try:
            self._build_model(server)
        finally:
            self.model_build_s = time.perf_counter() - t0
            if gc_was_enabled:
                gc.enable()
        _log.info(
            "OPC UA model: %d nodes for %d tags in %.3f s",
            self.model_nodes,
            len(self.image),
            self.model_build_s,
        )
        await server.set_build_info(
            product_uri=PRODUCT_URI,
            manufacturer_name=MANUFACTURER,
            product_name="gridctl",
            software_version=_version(),
            build_number=_version(),
            build_date=_build_date(),
        )
        await server.start()
        self._started_mono = time.monotonic()
        assert self._builder is not None
        self._publisher = Publisher(
            self._queue,
            self._builder.vars,
            batch_limit=cfg.publish_batch,
            history=self.history.record if self.history is not None else None,
            historized=self._builder.historized,
            on_unknown=self.late.kick,
            sampling_interval_s=cfg.sampling_interval_ms / 1000,
            # The server process's mirror queues the feed's rows as they came.
            rows=self.image if isinstance(self.image, FeedRows) else None,
            on_mark=self._apply_command_states,
        )
        self._publisher.start()
        if self.history is not None:
            self.history.start()
        if self.alarm_list is not None:
            await self.alarm_list.start()
        self.late.start()
        self._diag_task = asyncio.create_task(self._diagnostics_loop(), name="opcua-diagnostics")

    async def stop(self) -> None:
        await stop_task(self._diag_task)
        self._diag_task = None
        if self.alarm_list is not None:
            await self.alarm_list.stop()
        await self.late.stop()
        if self._publisher is not None:
            await self._publisher.stop()
            self._publisher = None
        if self._queue is not None:
            with contextlib.suppress(ValueError):
                self.image.unsubscribe(self._queue)
        if self.server is not None:
            await close_sessions(self.server.iserver)
            await self.server.stop()
            self.server = None
        if self.history is not None:
            await self.history.stop()

    def stats(self) -> dict[str, Any]:
        pub = self._publisher
        queue = self._queue
        return {
            "dropped": queue.dropped if queue is not None else 0,
            "queue_length": len(queue) if queue is not None else 0,
            "published": pub.stats.published if pub else 0,
            "coalesced": pub.stats.coalesced if pub else 0,
            "notified": pub.stats.notified if pub else 0,
            "sampled_coalesced": pub.stats.sampled_coalesced if pub else 0,
            "unknown_tags": pub.stats.unknown if pub else 0,
            "batches": pub.stats.batches if pub else 0,
            "last_batch_latency_s": pub.stats.last_batch_latency_s if pub else 0.0,
            "last_batch_duration_s": pub.stats.last_batch_duration_s if pub else 0.0,
            "model_nodes": self.model_nodes,
            "model_build_s": self.model_build_s,
            "logins_rejected": self.users.rejected,
            "login_failures": dict(self.users.failures),
            "connections_refused_per_peer": self.peer_limit.refused if self.peer_limit else 0,
            "connections_peak_per_peer": self.peer_limit.peak if self.peer_limit else 0,
            "requests_denied": self.ruleset.denied,
            "method_calls": {name: spec.calls for name, spec in self.methods.items()},
            "late_tags": self.late_tags,
            "events_sent": self.emitter.sent if self.emitter is not None else 0,
            "history_dropped": self.history.dropped if self.history is not None else 0,
        }

    @property
    def endpoint(self) -> str:
        return self.config.endpoint

    # -- security ------------------------------------------------------------------
    async def _setup_security(self, server: Server) -> None:
        cfg = self.config
        policies = security_policies(cfg)
        if any(p is not ua.SecurityPolicyType.NoSecurity for p in policies):
            cert, key = ensure_certificate(cfg, self.state_dir)
            await server.load_certificate(str(cert))
            await server.load_private_key(str(key))
        server.set_security_policy(policies, permission_ruleset=self.ruleset)  # type: ignore[arg-type]
        tokens: list[type] = [ua.UserNameIdentityToken]
        if cfg.anonymous == "read-only":
            tokens.insert(0, ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        if cfg.client_certificates == "trust-list":
            install_client_certificate_checks()
            # Refuses untrusted, expired and not-yet-valid certificates at the
            # channel open and a wrong application URI at CreateSession; rereads
            # pki/trusted when it changes (`gridctl certs trust`).
            validator = ClientCertificateValidator(CertificateStore(self.state_dir / "pki"))
            # A refused certificate is a refused login too (journaled, counted).
            validator.on_refused = lambda: self.users.record_failure(
                "", login_peer.get(), "untrusted_certificate"
            )
            server.set_certificate_validator(validator)

    # -- model -----------------------------------------------------------------------
    def _build_model(self, server: Server) -> None:
        aspace = server.iserver.aspace
        factory = NodeFactory(aspace, self.namespace_index)
        self._factory = factory
        patterns = tuple(self.settings.history_patterns) if self.history is not None else ()
        builder = ModelBuilder(
            factory,
            max_children=self.config.max_children,
            on_object=self._on_object,
            historize=(lambda tag: _matches(tag, patterns)) if patterns else None,
            writable=self.settings.setpoints if self.commands is not None else None,
            on_setpoint=self._on_setpoint,
        )
        self._builder = builder
        if self.history is not None:
            self.history.historized = builder.historized  # shared: late tags join it
        types = builder.build_types()
        objects = factory.existing(node_id(ua.ObjectIds.ObjectsFolder))
        root = factory.obj(
            "@gridctl", "gridctl", objects, reftype=N.REF_ORGANIZES, description="gridctl plant"
        )
        self.late.attach(factory, builder, root, types)

        # Events: sent from the Server object (its EventNotifier), kept in history.
        emitter = self.emitter = Emitter(self._trigger, self.history)
        server_node = aspace[node_id(ua.ObjectIds.Server)]
        notifier = ua.EventNotifier.SubscribeToEvents.mask
        if self.history is not None:
            notifier |= ua.EventNotifier.HistoryRead.mask
        server_node.attributes[ua.AttributeIds.EventNotifier].value = ua.DataValue(
            ua.Variant(notifier, ua.VariantType.Byte)
        )
        base_event = factory.existing(node_id(ua.ObjectIds.BaseEventType))
        command_event = build_event_type(factory, base_event)

        # WhoAmI on the root object (read-only: anonymous may call it too).
        whoami = whoami_method()
        self.methods[whoami.name] = whoami
        self._add_methods(factory, root, "@gridctl", [whoami])
        self.ruleset.public_methods.update(
            {
                factory.nid("@gridctl/WhoAmI"),
                node_id(ua.ObjectIds.ConditionType_ConditionRefresh),
                node_id(ua.ObjectIds.ConditionType_ConditionRefresh2),
            }
        )

        # Command records: bounded ring + per-target variables; the sink is wrapped
        # so every accepted command is tracked.
        self.tracker = CommandTracker(
            factory,
            root,
            size=self.settings.recent_commands,
            emitter=self.emitter,
            event_type=command_event.nodeid,
            setter=set_now,
            resolve=self._source_node,
        )
        self._sink = self.tracker.wrap(self.commands) if self.commands is not None else None
        if self._sink is not None and self.access is not None:
            self.access.writer = setpoint_writer(self._sink)
        load_specs = load_methods(self._sink)
        for spec in load_specs:
            self.methods[spec.name] = spec
        self._load_specs = load_specs
        self._command_specs = {
            type_name: command_methods(self._sink, type_name) for type_name in COMMAND_METHODS
        }
        for specs in self._command_specs.values():
            for spec in specs:
                self.methods[spec.name] = spec

        builder.build_instances(root, self.image.tags(), types)

        # Alarms: the list for the HMI, Acknowledge/Shelve, and the A&C conditions.
        if self.alarm_list is not None:
            self.alarm_list.build(factory, root, aspace, emitter, self._add_methods)
            for spec in self.alarm_list.methods:
                self.methods[spec.name] = spec

        self.diagnostics.build(factory, builder, root, types.nodeid("BusType"))
        self.model_nodes = factory.created

    def _on_object(self, path: str, type_name: str | None, made: Made) -> None:
        """Methods and command variables for instances of command-taking types."""
        factory = self._factory
        assert factory is not None
        specs: list[MethodSpec] = []
        if type_name == "LoadType":
            specs.extend(self._load_specs)
        if type_name is not None:
            specs.extend(self._command_specs.get(type_name, ()))
        if not specs:
            return
        self._add_methods(factory, made, path, specs)
        if self.tracker is not None and self.commands is not None:
            self.tracker.add_target(path, made)

    def _on_setpoint(self, tag: Tag, var: Made, rule: SetpointRule, vtype: ua.VariantType) -> None:
        if self.access is None:
            return
        # A write must fit both the unit's physical range and the device's register.
        rng = eu_range(tag.unit, tag.name.rsplit("/", 1)[-1]) if tag.unit else None
        lows = [b for b in (rng.Low if rng else None, rule.minimum) if b is not None]
        highs = [b for b in (rng.High if rng else None, rule.maximum) if b is not None]
        self.access.setpoints[var.nodeid] = Setpoint(
            tag.name,
            rule.role,
            vtype,
            minimum=max(lows) if lows else None,
            maximum=min(highs) if highs else None,
        )

    def _add_methods(
        self, factory: NodeFactory, parent: Made, path: str, specs: list[MethodSpec]
    ) -> None:
        for spec in specs:
            if spec.role is not None and self.access is not None:
                self.access.method_roles[factory.nid(f"{path}/{spec.name}")] = spec.role
            factory.method(
                f"{path}/{spec.name}",
                spec.name,
                parent,
                bind(spec, path, self._audit),
                [a.ua_argument() for a in spec.inputs],
                list(spec.outputs),
                spec.description,
            )

    # -- events ---------------------------------------------------------------------
    async def _trigger(self, event: Any) -> None:
        if self.server is not None:
            await self.server.iserver.subscription_service.trigger_event(event)

    def _source_node(self, path: str) -> ua.NodeId:
        nodeid = node_id(path, self.namespace_index)
        if self.server is not None and nodeid in self.server.iserver.aspace:
            return nodeid
        return node_id(ua.ObjectIds.Server)

    async def _audit(
        self,
        method: str,
        target: str,
        user: Any,
        inputs: list[Any],
        status: int,
        message: str,
        outputs: list[Any],
        method_id: ua.NodeId | None = None,
    ) -> None:
        """An AuditUpdateMethodEvent for every method call, accepted or refused."""
        if self.emitter is None:
            return
        ev = audit_method_event(
            method=method,
            method_id=method_id or node_id(f"{target}/{method}", self.namespace_index),
            source_node=self._source_node(target),
            target=target,
            user=(user.name if user is not None else None) or "anonymous",
            inputs=inputs,
            outputs=outputs,
            status=status,
            message=message,
            server_id=self.config.application_uri,
        )
        await self.emitter.emit(ev)

    def command_states_changed(self, states: CommandStates) -> None:
        """Publish these command states behind every tag change queued by now: the
        image was written (a relay read back) before a command could be confirmed."""
        if not states:
            return
        if self._queue is None or self._publisher is None:
            # no publisher yet: nothing queued to keep order with
            if isinstance(self.commands, CommandStatePush):
                self.commands.update(states)
            return
        self._queue.mark(states)

    async def _apply_command_states(self, states: CommandStates) -> None:
        if isinstance(self.commands, CommandStatePush):
            self.commands.update(states)
        if self.tracker is not None:
            await self.tracker.apply(states)

    def alarms_changed(self) -> None:
        """Tell the server the alarm source changed (it also polls every alarm_poll_s)."""
        if self.alarm_list is not None:
            self.alarm_list.changed()

    # -- tags defined after start -----------------------------------------------------
    def add_late_tags(self) -> int:
        """Add tags defined in the image since the model was built; returns how many."""
        return self.late.add()

    # -- diagnostics ----------------------------------------------------------------
    async def _diagnostics_loop(self) -> None:
        while True:
            try:
                await self.update_diagnostics()
            except Exception:
                _log.exception("OPC UA diagnostics update failed")
            await asyncio.sleep(self.settings.diagnostics_period_s)

    def _diagnostic_values(self) -> dict[str, Any]:
        s = self.stats()
        return {
            "Uptime": time.monotonic() - self._started_mono,
            "Published": s["published"],
            "Dropped": s["dropped"],
            "Coalesced": s["coalesced"],
            "QueueLength": s["queue_length"],
            "QueueLimit": self.config.queue_size,
            "LastBatchLatency": s["last_batch_latency_s"],
            "ModelNodes": self.model_nodes,
            "ModelBuildTime": self.model_build_s,
            "LateTags": self.late.added,
            "EventsSent": s["events_sent"],
            "HistoryDropped": s["history_dropped"],
        }

    async def update_diagnostics(self) -> None:
        await self.diagnostics.update_service()
        if self.tracker is not None:
            self.command_states_changed(self.tracker.poll())
        await self.diagnostics.update_plant()


def _matches(tag: Tag, patterns: Sequence[str]) -> bool:
    leaf = tag.name.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(leaf, p) for p in patterns)


def _as_sink(commands: CommandSink | CommandLog | None) -> CommandSink | None:
    """A CommandSink; a controller CommandLog is wrapped in the journal adapter."""
    if commands is None:
        return None
    from controller.commands import CommandLog

    if isinstance(commands, CommandLog):
        from .adapters import CommandLogSink

        return CommandLogSink(commands)
    return commands


def _as_alarm_source(alarms: AlarmSource | AlarmEngine | None) -> AlarmSource | None:
    if alarms is None:
        return None
    from controller.alarms import AlarmEngine

    if isinstance(alarms, AlarmEngine):
        from .adapters import EngineAlarmSource

        return EngineAlarmSource(alarms)
    return alarms


def _build_date() -> datetime:
    # The installed package's files date the build (editable installs: this module).
    try:
        stamp = Path(__file__).stat().st_mtime
    except OSError:
        stamp = time.time()
    return datetime.fromtimestamp(stamp, UTC)


def task_stats_from(
    tasks: Callable[[], Sequence[Any]] | Sequence[Any], last: int | None = None
) -> TaskStats:
    """A ``task_stats`` callable over ``controller.cycle.CycleTask`` objects.

    ``last``: percentiles over that many recent samples (default: the task's
    window). Each call sorts them, on the caller's loop: a bounded ``last``
    keeps that step short however large the window is."""

    def stats() -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for task in tasks() if callable(tasks) else tasks:
            snap = task.snapshot(last)
            out[snap.name] = {
                "latency_p50_s": snap.latency.p50,
                "latency_p99_s": snap.latency.p99,
                "latency_max_s": snap.latency.max,
                "overruns": float(snap.overruns),
            }
        return out

    return stats


async def start(service: Any) -> OpcUaServer:
    """The service's seam (``controller.service.Service._start_opcua``).

    Takes the image, command log, alarm engine, bus snapshots and cycle tasks
    from the service; state (certificates, history) goes under
    ``<state_dir>/opcua``. The controller's ``[opcua]`` table may be this
    package's :class:`OpcUaConfig` or a subset of its fields.
    """
    cfg = service.config.opcua
    if not isinstance(cfg, OpcUaConfig):
        known = set(OpcUaConfig.model_fields)
        cfg = OpcUaConfig(**{k: v for k, v in cfg.model_dump().items() if k in known})
    state_dir = Path(service.config.service.state_dir) / "opcua"
    settings = ServerSettings(
        state_dir=state_dir,
        bus_snapshots=getattr(service, "bus_snapshots", None),
        commands=service.commands,
        alarms=service.alarms,
        task_stats=task_stats_from(lambda: service.tasks),
        history_db=state_dir / "history.db",
    )
    server = OpcUaServer(cfg, service.image, settings)
    await server.start()
    return server
