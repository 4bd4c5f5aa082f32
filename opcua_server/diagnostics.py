"""The server's own diagnostics in the address space: ``@diag`` (publisher,
model, events, history), ``tasks/<task>/…`` (cycle task latency and overruns)
and ``buses/<bus>/@diag/…`` (bus counters and utilisation), refreshed once per
diagnostics period."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from asyncua import ua

from controller.bus_stats import BusSnapshot
from opcua_server.ua_values import status_code, ua_time

from . import nodes as N
from .model import BUS_DIAGNOSTICS, ModelBuilder, VarEntry
from .nodes import Made, NodeFactory
from .settings import TaskStats

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


async def set_value(entry: VarEntry, value: Any, now: datetime) -> None:
    """Write a server-made value (only when it changed) and notify monitored items."""
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


async def set_now(entry: VarEntry, value: Any) -> None:
    await set_value(entry, value, datetime.now(UTC))


def _diag_var(
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


class Diagnostics:
    """The diagnostics variables, built with the model, written by :meth:`update`.

    ``values``: the ``@diag`` values by SERVICE_DIAGNOSTICS name, asked for on
    each update (the server's counters live in the server)."""

    def __init__(
        self,
        *,
        values: Callable[[], dict[str, Any]],
        task_stats: TaskStats | None,
        bus_snapshots: Callable[[], list[BusSnapshot]] | None,
        on_nodes: Callable[[int], None],
    ) -> None:
        self._values = values
        self.task_stats = task_stats
        self.bus_snapshots = bus_snapshots
        # Told the namespace's node count whenever task variables are added.
        self._on_nodes = on_nodes
        self._factory: NodeFactory | None = None
        self._builder: ModelBuilder | None = None
        self._diag: dict[str, VarEntry] = {}
        self._tasks_folder: Made | None = None
        self._task_diag: dict[str, dict[str, VarEntry]] = {}
        self._bus_diag: dict[str, dict[str, VarEntry]] = {}
        self._bus_prev: dict[str, tuple[float, float]] = {}
        self._bus_util: dict[str, float] = {}

    def build(
        self, factory: NodeFactory, builder: ModelBuilder, root: Made, bus_type: ua.NodeId
    ) -> None:
        self._factory = factory
        self._builder = builder
        diag = factory.obj("@diag", "Diagnostics", root, description="gridctl OPC UA service")
        for name, dtype, unit, desc in SERVICE_DIAGNOSTICS:
            self._diag[name] = _diag_var(builder, f"@diag/{name}", name, diag, dtype, unit, desc)
        # Cycle tasks: gridctl/Diagnostics/Tasks/<task>/latency_p50… (NodeIds tasks/<task>/…).
        if self.task_stats is not None:
            self._tasks_folder = factory.folder(
                "tasks", "Tasks", diag, description="cyclic tasks: wake-up latency and overruns"
            )
            self._update_tasks_model(self.task_stats())
        # Bus diagnostics: a Diagnostics object in each bus (created if the bus has no tags).
        if self.bus_snapshots is not None:
            for snap in self.bus_snapshots():
                self._add_bus(factory, builder, root, bus_type, snap.name)

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
            n: _diag_var(builder, f"{path}/@diag/{n}", n, diag, dt, unit, desc)
            for n, dt, unit, desc in BUS_DIAGNOSTICS
        }

    async def update_service(self) -> None:
        now = datetime.now(UTC)
        for name, value in self._values().items():
            await set_value(self._diag[name], value, now)

    async def update_plant(self) -> None:
        """Task and bus variables (tasks seen for the first time get theirs)."""
        now = datetime.now(UTC)
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
                key: _diag_var(builder, f"tasks/{task}/{leaf}", leaf, obj, dt, unit, desc)
                for key, leaf, dt, unit, desc in TASK_FIELDS
            }
            self._on_nodes(factory.created)

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
                await set_value(entries[key], value, now)

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
            await set_value(entries[name], value, now)
