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
from typing import Any

from asyncua import Server, ua

from controller.api import CommandSink
from controller.process_image import ChangeQueue, ProcessImage, Tag
from controller.task_stop import stop_task
from drivers.bus_stats import BusSnapshot
from opcua_server.ua_values import node_id, status_code, ua_time

from . import browse, connection_limits, publish_encoding
from . import nodes as N
from .access import ItemAccess, Setpoint
from .command_view import CommandStatePush, CommandStates, CommandTracker, build_event_type
from .conditions import AlarmConditions
from .config import OpcUaConfig, Role, SetpointRule, is_loopback_endpoint
from .events import Emitter, audit_method_event
from .history import GridHistoryManager, HistoryStore
from .methods import (
    COMMAND_METHODS,
    AlarmSource,
    MethodSpec,
    alarm_methods,
    bind,
    command_methods,
    load_methods,
    setpoint_writer,
    whoami_method,
)
from .model import BUS_DIAGNOSTICS, ModelBuilder, TypeNodes, VarEntry
from .nodes import Made, NodeFactory
from .pki import CertificateStore, ClientCertificateValidator
from .publisher import FeedRows, Publisher
from .security import ensure_certificate, install_client_certificate_checks, security_policies
from .session_guard import SessionGuard, close_sessions
from .subscription_limits import limit_publishing_interval
from .units import eu_range
from .users import (
    FailureSink,
    GridRuleset,
    UserStore,
    current_user,
    install_login_peer,
    login_peer,
)

_log = logging.getLogger(__name__)

PRODUCT_URI = "urn:gridctl"
MANUFACTURER = "gridctl"

SERVICE_DIAGNOSTICS: tuple[tuple[str, ua.NodeId, str, str], ...] = (
    ("Uptime", N.DT_DOUBLE, "s", "seconds since the OPC UA server started"),
    ("Published", N.DT_UINT64, "", "values written from the process image"),
    ("Dropped", N.DT_UINT64, "", "changes dropped by the bounded publisher queue (oldest first)"),
    ("Coalesced", N.DT_UINT64, "", "older changes superseded within one publish batch"),
    ("QueueLength", N.DT_UINT64, "", "changes waiting in the publisher queue"),
    ("QueueLimit", N.DT_UINT64, "", "publisher queue bound"),
    ("LastBatchLatency", N.DT_DOUBLE, "s", "image write → address space, oldest of the last batch"),
    ("ModelNodes", N.DT_UINT64, "", "nodes in the gridctl namespace"),
    ("ModelBuildTime", N.DT_DOUBLE, "s", "time to build the information model"),
    ("LateTags", N.DT_UINT64, "", "tags added to the model after start"),
    ("EventsSent", N.DT_UINT64, "", "events sent (alarms, audit, commands)"),
    ("HistoryDropped", N.DT_UINT64, "", "history values dropped by the bounded write buffer"),
)
# Cycle task statistics (keys of the task_stats callable) → variables per task.
TASK_FIELDS: tuple[tuple[str, str, ua.NodeId, str, str], ...] = (
    ("latency_p50_s", "latency_p50", N.DT_DOUBLE, "s", "wake-up latency, median"),
    ("latency_p99_s", "latency_p99", N.DT_DOUBLE, "s", "wake-up latency, 99th percentile"),
    ("latency_max_s", "latency_max", N.DT_DOUBLE, "s", "wake-up latency, maximum"),
    ("overruns", "overruns", N.DT_UINT64, "", "cycles that overran their deadline"),
)
# Variables kept in history by default (leaf name patterns): energy, power, voltage, temperatures.
HISTORY_PATTERNS: tuple[str, ...] = ("energy_*", "power_*", "voltage_*", "*temperature*")
TaskStats = Callable[[], dict[str, dict[str, float]]]


def _version() -> str:
    try:
        return metadata.version("gridctl")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


class OpcUaServer:
    def __init__(
        self,
        config: OpcUaConfig,
        image: ProcessImage,
        *,
        state_dir: Path,
        bus_snapshots: Callable[[], list[BusSnapshot]] | None = None,
        commands: Any = None,
        alarms: Any = None,
        diagnostics_period_s: float = 1.0,
        task_stats: TaskStats | None = None,
        alarm_engine: Any = None,
        history_db: Path | None = None,
        history_retention_s: float = 7 * 86400.0,
        history_max_rows: int = 5_000_000,
        history_patterns: Sequence[str] = HISTORY_PATTERNS,
        recent_commands: int = 32,
        alarm_poll_s: float = 0.25,
        alarm_confirm: bool = False,
        login_failures: FailureSink | None = None,
        setpoints: Callable[[Tag], Role | SetpointRule | None] | None = None,
    ) -> None:
        """``commands``: a CommandSink (or a controller CommandLog, wrapped);
        ``alarms``: an AlarmSource (or a controller AlarmEngine, wrapped);
        ``alarm_engine``: an AlarmEngine when ``alarms`` is not given;
        ``task_stats``: per cycle task ``latency_p50_s``/``p99``/``max`` and ``overruns``;
        ``history_db``: SQLite file for HistoryRead (None: no history);
        ``alarm_confirm``: acknowledged conditions wait for Confirm (Part 9) before
        they stop being retained;
        ``login_failures``: called with each refused login (to journal and count it);
        ``setpoints``: the role that may write a tag, or a ``SetpointRule`` with
        the values the device can hold (None: read-only, the default for every
        tag); a Write becomes a ``write_setpoint`` command
        to ``commands`` (no sink: every tag is read-only)."""
        self.config = config
        self.image = image
        self.state_dir = Path(state_dir)
        self.bus_snapshots = bus_snapshots
        self.commands: CommandSink | None = _as_sink(commands)
        self.alarms: AlarmSource | None = _as_alarm_source(
            alarms if alarms is not None else alarm_engine
        )
        self.diagnostics_period_s = diagnostics_period_s
        self.task_stats = task_stats
        self.history_db = Path(history_db) if history_db is not None else None
        self.history_retention_s = history_retention_s
        self.history_max_rows = history_max_rows
        self.history_patterns = tuple(history_patterns)
        self.recent_commands = recent_commands
        self.alarm_poll_s = alarm_poll_s
        self.alarm_confirm = alarm_confirm
        self.setpoints = setpoints
        self.access: ItemAccess | None = None
        self.history: HistoryStore | None = None
        self.emitter: Emitter | None = None
        self.conditions: AlarmConditions | None = None
        self.tracker: CommandTracker | None = None
        self.late_tags = 0
        self._types: TypeNodes | None = None
        self._root: Made | None = None
        self._factory: NodeFactory | None = None
        self._sink: CommandSink | None = None
        self._tasks_folder: Made | None = None
        self._task_diag: dict[str, dict[str, VarEntry]] = {}
        self._alarm_list: VarEntry | None = None
        self._alarm_task: asyncio.Task[None] | None = None
        self._alarm_kick = asyncio.Event()
        self._late_kick = asyncio.Event()
        self._late_task: asyncio.Task[None] | None = None
        self._load_specs: list[MethodSpec] = []
        self._command_specs: dict[str, list[MethodSpec]] = {}
        self.users = UserStore.from_config(config, on_failure=login_failures)
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
        self._diag: dict[str, VarEntry] = {}
        self._bus_diag: dict[str, dict[str, VarEntry]] = {}
        self._bus_prev: dict[str, tuple[float, float]] = {}
        self._bus_util: dict[str, float] = {}
        self._diag_task: asyncio.Task[None] | None = None
        self._started_mono = 0.0

    # -- lifecycle --------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        server = Server(user_manager=self.users)  # type: ignore[arg-type]
        # asyncua's ConditionRefresh(2) replays the retained condition events we send.
        server.iserver.bind_condition_methods = True
        history_manager = GridHistoryManager(server.iserver)
        server.iserver.history_manager = history_manager
        if self.history_db is not None:
            self.history = HistoryStore(
                self.history_db,
                ns=lambda: self.namespace_index,
                retention_s=self.history_retention_s,
                max_rows=self.history_max_rows,
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
            on_unknown=self._late_kick.set,
            sampling_interval_s=cfg.sampling_interval_ms / 1000,
            # The server process's mirror queues the feed's rows as they came.
            rows=self.image if isinstance(self.image, FeedRows) else None,
            on_mark=self._apply_command_states,
        )
        self._publisher.start()
        if self.history is not None:
            self.history.start()
        if self.conditions is not None:
            await self.conditions.poll()
            self._alarm_task = asyncio.create_task(self._alarm_loop(), name="opcua-alarms")
        self._late_task = asyncio.create_task(self._late_loop(), name="opcua-late-tags")
        self._diag_task = asyncio.create_task(self._diagnostics_loop(), name="opcua-diagnostics")

    async def stop(self) -> None:
        for name in ("_diag_task", "_alarm_task", "_late_task"):
            await stop_task(getattr(self, name))
            setattr(self, name, None)
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
        patterns = self.history_patterns if self.history is not None else ()
        builder = ModelBuilder(
            factory,
            max_children=self.config.max_children,
            on_object=self._on_object,
            historize=(lambda tag: _matches(tag, patterns)) if patterns else None,
            writable=self.setpoints if self.commands is not None else None,
            on_setpoint=self._on_setpoint,
        )
        self._builder = builder
        if self.history is not None:
            self.history.historized = builder.historized  # shared: late tags join it
        types = builder.build_types()
        self._types = types
        objects = factory.existing(node_id(ua.ObjectIds.ObjectsFolder))
        root = factory.obj(
            "@gridctl", "gridctl", objects, reftype=N.REF_ORGANIZES, description="gridctl plant"
        )
        self._root = root

        # Events: sent from the Server object (its EventNotifier), kept in history.
        self.emitter = Emitter(self._trigger, self.history)
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
            size=self.recent_commands,
            emitter=self.emitter,
            event_type=command_event.nodeid,
            setter=self._set_now,
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
        if self.alarms is not None:
            alarms_obj = factory.obj("@alarms", "Alarms", root, description="alarm handling")
            var = factory.variable(
                "@alarms/Active",
                "Active",
                alarms_obj,
                ua.DataValue(ua.Variant("[]", ua.VariantType.String)),
                N.DT_STRING,
                description="alarms not in the normal state, JSON list of {id, source, "
                "message, severity, active, acknowledged, shelved, time}",
            )
            self._alarm_list = VarEntry(
                var.data.attributes[ua.AttributeIds.Value], ua.VariantType.String
            )
            specs = alarm_methods(self.alarms)
            for spec in specs:
                self.methods[spec.name] = spec
            self._add_methods(factory, alarms_obj, "@alarms", specs)
            self.conditions = AlarmConditions(
                self.alarms,
                self.emitter,
                factory,
                alarms_obj,
                resolve_source=self._alarm_source_node,
                set_list=self._set_alarm_list,
                confirm=self.alarm_confirm,
                audit=self._audit_condition,
            )
            self.conditions.bind(aspace)

        # Service diagnostics.
        diag = factory.obj("@diag", "Diagnostics", root, description="gridctl OPC UA service")
        for name, dtype, unit, desc in SERVICE_DIAGNOSTICS:
            self._diag[name] = self._diag_var(
                builder, f"@diag/{name}", name, diag, dtype, unit, desc
            )
        # Cycle tasks: gridctl/Diagnostics/Tasks/<task>/latency_p50… (NodeIds tasks/<task>/…).
        if self.task_stats is not None:
            self._tasks_folder = factory.folder(
                "tasks", "Tasks", diag, description="cyclic tasks: wake-up latency and overruns"
            )
            self._update_tasks_model(self.task_stats())

        # Bus diagnostics: a Diagnostics object in each bus (created if the bus has no tags).
        if self.bus_snapshots is not None:
            for snap in self.bus_snapshots():
                self._add_bus(factory, builder, root, types.nodeid("BusType"), snap.name)
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

    def _alarm_source_node(self, source: str) -> ua.NodeId:
        """Alarm sources (``bus/bus1/meter/0001``) → the plant object when it exists."""
        parts = source.split("/")
        mapped = []
        for i, part in enumerate(parts):
            mapped.append(
                {"bus": "buses", "meter": "meters", "load": "loads"}.get(part, part)
                if i % 2 == 0
                else part
            )
        for candidate in (source, "/".join(mapped)):
            node = self._source_node(candidate)
            if node.NamespaceIndex == self.namespace_index:
                return node
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

    async def _audit_condition(self, method: str, alarm_id: str, status: int, comment: str) -> None:
        standard = {
            "Acknowledge": ua.ObjectIds.AcknowledgeableConditionType_Acknowledge,
            "Confirm": ua.ObjectIds.AcknowledgeableConditionType_Confirm,
        }
        await self._audit(
            method,
            f"@alarms/{alarm_id}",
            current_user.get(),
            [comment],
            status,
            "",
            [],
            node_id(standard[method]) if method in standard else None,
        )

    async def _set_alarm_list(self, text: str) -> None:
        if self._alarm_list is not None:
            await _set(self._alarm_list, text, datetime.now(UTC))

    async def _set_now(self, entry: VarEntry, value: Any) -> None:
        await _set(entry, value, datetime.now(UTC))

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
        self._alarm_kick.set()

    async def _alarm_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._alarm_kick.wait(), self.alarm_poll_s)
            self._alarm_kick.clear()
            try:
                assert self.conditions is not None
                await self.conditions.poll()
            except Exception:
                _log.exception("OPC UA alarm update failed")

    # -- tags defined after start -----------------------------------------------------
    async def _late_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._late_kick.wait(), self.diagnostics_period_s)
            self._late_kick.clear()
            try:
                self.add_late_tags()
            except Exception:
                _log.exception("OPC UA model update for new tags failed")

    def add_late_tags(self) -> int:
        """Add tags defined in the image since the model was built; returns how many."""
        builder, root, types = self._builder, self._root, self._types
        if builder is None or root is None or types is None or self._factory is None:
            return 0
        if len(self.image) <= len(builder.vars):
            return 0
        new = [t for t in self.image.tags() if t.name not in builder.vars]
        if not new:
            return 0
        added = builder.build_instances(root, new, types)
        self.late_tags += added
        self.model_nodes = self._factory.created
        _log.info("OPC UA model: %d tags added after start", added)
        return added

    def _diag_var(
        self,
        builder: ModelBuilder,
        ident: str,
        name: str,
        parent: Made,
        dtype: ua.NodeId,
        unit: str,
        desc: str,
    ) -> VarEntry:
        initial = ua.DataValue(StatusCode=status_code(ua.StatusCodes.BadWaitingForInitialData))
        var = builder.analog(ident, name, parent, unit, initial, dtype, desc)
        return VarEntry(var.data.attributes[ua.AttributeIds.Value], N.VARIANT_FOR_DATATYPE[dtype])

    def _add_bus(
        self,
        factory: NodeFactory,
        builder: ModelBuilder,
        root: Made,
        bus_type: ua.NodeId,
        name: str,
    ) -> None:
        path = f"buses/{name}"
        found = builder.objects.get(path)
        if found is not None:
            bus = found[1]
        else:
            folder_id = factory.nid("buses")
            folder = (
                factory.existing(folder_id)
                if folder_id in factory.aspace
                else factory.folder("buses", "Buses", root)
            )
            bus = factory.obj(path, name, folder, typedef=bus_type)
            builder.objects[path] = ("BusType", bus)
        diag = factory.obj(f"{path}/@diag", "Diagnostics", bus)
        self._bus_diag[name] = {
            n: self._diag_var(builder, f"{path}/@diag/{n}", n, diag, dt, unit, desc)
            for n, dt, unit, desc in BUS_DIAGNOSTICS
        }

    # -- diagnostics ----------------------------------------------------------------
    async def _diagnostics_loop(self) -> None:
        while True:
            try:
                await self.update_diagnostics()
            except Exception:
                _log.exception("OPC UA diagnostics update failed")
            await asyncio.sleep(self.diagnostics_period_s)

    async def update_diagnostics(self) -> None:
        now = datetime.now(UTC)
        s = self.stats()
        values: dict[str, Any] = {
            "Uptime": time.monotonic() - self._started_mono,
            "Published": s["published"],
            "Dropped": s["dropped"],
            "Coalesced": s["coalesced"],
            "QueueLength": s["queue_length"],
            "QueueLimit": self.config.queue_size,
            "LastBatchLatency": s["last_batch_latency_s"],
            "ModelNodes": self.model_nodes,
            "ModelBuildTime": self.model_build_s,
            "LateTags": self.late_tags,
            "EventsSent": s["events_sent"],
            "HistoryDropped": s["history_dropped"],
        }
        for name, value in values.items():
            await _set(self._diag[name], value, now)
        if self.tracker is not None:
            self.command_states_changed(self.tracker.poll())
        if self.task_stats is not None:
            await self._update_tasks(now)
        if self.bus_snapshots is None or not self._bus_diag:
            return
        for snap in self.bus_snapshots():
            entries = self._bus_diag.get(snap.name)
            if entries is None:
                continue  # a bus added after start appears on the next model build
            await self._update_bus(entries, snap, now)

    def _update_tasks_model(self, stats: dict[str, dict[str, float]]) -> None:
        """Create the variables of tasks not seen yet."""
        factory, builder, folder = self._factory, self._builder, self._tasks_folder
        if factory is None or builder is None or folder is None:
            return
        for task in stats:
            if task in self._task_diag or not task or "/" in task:
                continue
            obj = factory.obj(f"tasks/{task}", task, folder, description=f"cyclic task {task}")
            self._task_diag[task] = {
                key: self._diag_var(builder, f"tasks/{task}/{leaf}", leaf, obj, dt, unit, desc)
                for key, leaf, dt, unit, desc in TASK_FIELDS
            }
            self.model_nodes = factory.created

    async def _update_tasks(self, now: datetime) -> None:
        assert self.task_stats is not None
        stats = self.task_stats()
        self._update_tasks_model(stats)
        for task, values in stats.items():
            entries = self._task_diag.get(task)
            if entries is None:
                continue
            for key, _leaf, dt, _unit, _desc in TASK_FIELDS:
                value = values.get(key)
                if value is not None and dt == N.DT_UINT64:
                    value = max(0, int(value))
                elif value is not None:
                    value = float(value)
                await _set(entries[key], value, now)

    async def _update_bus(
        self, entries: dict[str, VarEntry], snap: BusSnapshot, now: datetime
    ) -> None:
        # Utilisation over the last diagnostics period (d busy / d uptime); the
        # first sample, or a restarted bus, falls back to the lifetime average.
        prev = self._bus_prev.get(snap.name)
        util: float | None = self._bus_util.get(snap.name)
        if prev is not None and snap.uptime_s > prev[0]:
            util = 100.0 * (snap.busy_s - prev[1]) / (snap.uptime_s - prev[0])
        elif (prev is None or snap.uptime_s < prev[0]) and snap.uptime_s > 0:
            util = 100.0 * snap.busy_s / snap.uptime_s
        if prev is None or snap.uptime_s != prev[0]:
            self._bus_prev[snap.name] = (snap.uptime_s, snap.busy_s)
        if util is not None:
            util = max(0.0, min(100.0, util))
            self._bus_util[snap.name] = util
        tx = snap.transactions
        values: dict[str, Any] = {
            "Connected": snap.connected,
            "Protocol": snap.protocol,
            "Utilisation": util,
            "MetersTotal": snap.meters_total,
            "MetersQuarantined": snap.meters_quarantined,
            "TransactionsOk": tx.get("ok", 0),
            "Timeouts": tx.get("timeout", 0),
            "ChecksumErrors": snap.checksum_errors + tx.get("checksum", 0),
            "Exceptions": tx.get("exception", 0),
            "IoErrors": tx.get("io_error", 0),
            "DiscardedBytes": snap.discarded_bytes,
            "PollLatenessMax": snap.poll_lateness_max_s,
            "PollLatenessMean": snap.poll_lateness_mean_s,
        }
        for name, value in values.items():
            await _set(entries[name], value, now)


async def _set(entry: VarEntry, value: Any, now: datetime) -> None:
    """Write a diagnostic value (only when it changed) and notify monitored items."""
    old = entry.attr.value
    if value is None:
        dv = ua.DataValue(
            StatusCode=status_code(ua.StatusCodes.BadWaitingForInitialData),
            SourceTimestamp=ua_time(now),
            ServerTimestamp=ua_time(now),
        )
    else:
        variant = ua.Variant(value, entry.vtype) if entry.vtype else ua.Variant(value)
        dv = ua.DataValue(
            variant,
            SourceTimestamp=ua_time(now),
            ServerTimestamp=ua_time(now),
        )
    if old is not None and old.Value == dv.Value and old.StatusCode == dv.StatusCode:
        return
    entry.attr.value = dv
    for handle, callback in list(entry.attr.datachange_callbacks.items()):
        await callback(handle, dv)


def _matches(tag: Tag, patterns: Sequence[str]) -> bool:
    leaf = tag.name.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(leaf, p) for p in patterns)


def _as_sink(commands: Any) -> CommandSink | None:
    """A CommandSink; a controller CommandLog is wrapped in the journal adapter."""
    if commands is None:
        return None
    from controller.commands import CommandLog

    if isinstance(commands, CommandLog):
        from .adapters import CommandLogSink

        return CommandLogSink(commands)
    return commands  # type: ignore[no-any-return]


def _as_alarm_source(alarms: Any) -> AlarmSource | None:
    if alarms is None:
        return None
    from controller.alarms import AlarmEngine

    if isinstance(alarms, AlarmEngine):
        from .adapters import EngineAlarmSource

        return EngineAlarmSource(alarms)
    return alarms  # type: ignore[no-any-return]


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
    server = OpcUaServer(
        cfg,
        service.image,
        state_dir=state_dir,
        bus_snapshots=getattr(service, "bus_snapshots", None),
        commands=service.commands,
        alarms=service.alarms,
        task_stats=task_stats_from(lambda: service.tasks),
        history_db=state_dir / "history.db",
    )
    await server.start()
    return server
