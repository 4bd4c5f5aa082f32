"""The gridctl OPC UA server: model, publisher, diagnostics, methods, security."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

from controller.process_image import ChangeQueue, ProcessImage
from drivers.bus_stats import BusSnapshot

from . import nodes as N
from .config import OpcUaConfig
from .methods import (
    AlarmSource,
    ArmRegistry,
    CommandSink,
    MethodSpec,
    alarm_methods,
    bind,
    load_methods,
)
from .model import BUS_DIAGNOSTICS, ModelBuilder, VarEntry
from .nodes import Made, NodeFactory
from .publisher import Publisher
from .security import ensure_certificate, security_policies
from .users import GridRuleset, UserStore

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
)


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
        commands: CommandSink | None = None,
        alarms: AlarmSource | None = None,
        diagnostics_period_s: float = 1.0,
    ) -> None:
        self.config = config
        self.image = image
        self.state_dir = Path(state_dir)
        self.bus_snapshots = bus_snapshots
        self.commands = commands
        self.alarms = alarms
        self.diagnostics_period_s = diagnostics_period_s
        self.arms = ArmRegistry(timeout_s=config.arm_timeout_s)
        self.users = UserStore(config.users, anonymous=config.anonymous == "read-only")
        self.ruleset = GridRuleset()
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
        await server.init()
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
        self._publisher = Publisher(self._queue, self._builder.vars, batch_limit=cfg.publish_batch)
        self._publisher.start()
        self._diag_task = asyncio.create_task(self._diagnostics_loop(), name="opcua-diagnostics")

    async def stop(self) -> None:
        if self._diag_task is not None:
            self._diag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._diag_task
            self._diag_task = None
        if self._publisher is not None:
            await self._publisher.stop()
            self._publisher = None
        if self._queue is not None:
            with contextlib.suppress(ValueError):
                self.image.unsubscribe(self._queue)
        if self.server is not None:
            await self.server.stop()
            self.server = None

    def stats(self) -> dict[str, Any]:
        pub = self._publisher
        queue = self._queue
        return {
            "dropped": queue.dropped if queue is not None else 0,
            "queue_length": len(queue) if queue is not None else 0,
            "published": pub.stats.published if pub else 0,
            "coalesced": pub.stats.coalesced if pub else 0,
            "unknown_tags": pub.stats.unknown if pub else 0,
            "batches": pub.stats.batches if pub else 0,
            "last_batch_latency_s": pub.stats.last_batch_latency_s if pub else 0.0,
            "last_batch_duration_s": pub.stats.last_batch_duration_s if pub else 0.0,
            "model_nodes": self.model_nodes,
            "model_build_s": self.model_build_s,
            "logins_rejected": self.users.rejected,
            "requests_denied": self.ruleset.denied,
            "method_calls": {name: spec.calls for name, spec in self.methods.items()},
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
            trusted = self.state_dir / "pki" / "trusted"
            trusted.mkdir(parents=True, exist_ok=True)
            store = TrustStore([trusted], [])
            await store.load()
            validator = CertificateValidator(
                CertificateValidatorOptions.BASIC_VALIDATION | CertificateValidatorOptions.TRUSTED,
                store,
            )
            server.set_certificate_validator(validator)  # type: ignore[arg-type]

    # -- model -----------------------------------------------------------------------
    def _build_model(self, server: Server) -> None:
        aspace = server.iserver.aspace
        factory = NodeFactory(aspace, self.namespace_index)
        builder = ModelBuilder(factory, max_children=self.config.max_children)
        self._builder = builder
        types = builder.build_types()
        objects = factory.existing(ua.NodeId(ua.ObjectIds.ObjectsFolder))
        root = factory.obj(
            "@gridctl", "gridctl", objects, reftype=N.REF_ORGANIZES, description="gridctl plant"
        )
        builder.build_instances(root, self.image.tags(), types)

        # Methods on every LoadType instance (select-before-operate).
        load_specs = load_methods(self.commands, self.arms)
        for spec in load_specs:
            self.methods[spec.name] = spec
        for path, (type_name, made) in builder.objects.items():
            if type_name == "LoadType":
                self._add_methods(factory, made, path, load_specs)

        # Alarms: Acknowledge (the alarm model proper comes with A&C later).
        if self.alarms is not None:
            alarms_obj = factory.obj("@alarms", "Alarms", root, description="alarm handling")
            specs = alarm_methods(self.alarms)
            for spec in specs:
                self.methods[spec.name] = spec
            self._add_methods(factory, alarms_obj, "@alarms", specs)

        # Service diagnostics.
        diag = factory.obj("@diag", "Diagnostics", root, description="gridctl OPC UA service")
        for name, dtype, unit, desc in SERVICE_DIAGNOSTICS:
            self._diag[name] = self._diag_var(
                builder, f"@diag/{name}", name, diag, dtype, unit, desc
            )

        # Bus diagnostics: a Diagnostics object in each bus (created if the bus has no tags).
        if self.bus_snapshots is not None:
            for snap in self.bus_snapshots():
                self._add_bus(factory, builder, root, types.nodeid("BusType"), snap.name)
        self.model_nodes = factory.created

    def _add_methods(
        self, factory: NodeFactory, parent: Made, path: str, specs: list[MethodSpec]
    ) -> None:
        for spec in specs:
            factory.method(
                f"{path}/{spec.name}",
                spec.name,
                parent,
                bind(spec, path),
                [a.ua_argument() for a in spec.inputs],
                list(spec.outputs),
                spec.description,
            )

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
        initial = ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadWaitingForInitialData))
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
        }
        for name, value in values.items():
            await _set(self._diag[name], value, now)
        if self.bus_snapshots is None or not self._bus_diag:
            return
        for snap in self.bus_snapshots():
            entries = self._bus_diag.get(snap.name)
            if entries is None:
                continue  # a bus added after start appears on the next model build
            await self._update_bus(entries, snap, now)

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
            StatusCode=ua.StatusCode(ua.StatusCodes.BadWaitingForInitialData),
            SourceTimestamp=now,
            ServerTimestamp=now,
        )
    else:
        dv = ua.DataValue(ua.Variant(value, entry.vtype), SourceTimestamp=now, ServerTimestamp=now)
    if old is not None and old.Value == dv.Value and old.StatusCode == dv.StatusCode:
        return
    entry.attr.value = dv
    for handle, callback in list(entry.attr.datachange_callbacks.items()):
        await callback(handle, dv)


def _build_date() -> datetime:
    # The installed package's files date the build (editable installs: this module).
    try:
        stamp = Path(__file__).stat().st_mtime
    except OSError:
        stamp = time.time()
    return datetime.fromtimestamp(stamp, UTC)
