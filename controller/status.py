"""`gridctl status`: what the running service is doing, asked over its control socket.

The service answers ``{"op": "status"}`` on the local control channel
(``[service] control_socket``) with plain data read from the same sources the
metrics endpoint reads: cycle tasks, buses, commands, alarms, journal. It needs
no OPC UA client and no HTTP, so it works on an edge box over SSH when nothing
else does, and it never takes a lock the control loop holds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from drivers.local_channel import ControlServer, request

if TYPE_CHECKING:
    from controller.alarms import AlarmEngine
    from controller.bus_stats import BusSnapshot
    from controller.commands import CommandLog
    from controller.config import GridConfig
    from controller.cycle import CycleTask
    from controller.journal import Journal
    from controller.metrics import MetricsServer

STATUS_TIMEOUT_S = 3.0


class StatusSource(Protocol):
    """What the status reads of the running service (`controller.service.Service`)."""

    @property
    def config(self) -> GridConfig: ...
    @property
    def tasks(self) -> Sequence[CycleTask]: ...
    @property
    def journal(self) -> Journal: ...
    @property
    def alarms(self) -> AlarmEngine: ...
    @property
    def commands(self) -> CommandLog: ...
    @property
    def subsystems(self) -> Sequence[Any]: ...
    @property
    def metrics(self) -> MetricsServer | None: ...
    @property
    def opcua(self) -> Any:
        """The OPC UA server (inline or its process), or None; only its endpoint is read."""

    def bus_snapshots(self) -> Sequence[BusSnapshot]: ...


class ServiceStatus:
    """Serves the status of one `controller.service.Service` on its control socket."""

    def __init__(self, service: StatusSource, path: Path, group: str = "") -> None:
        """``group``: ``[service] control_socket_group`` (socket 0660 with it; empty: 0600)."""
        self.service = service
        self.path = path
        self.started_at = time.time()
        self._server = ControlServer(path, self._handle, group=group, what="service.control_socket")

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()

    async def _handle(self, message: dict[str, Any]) -> dict[str, Any]:
        op = message.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "status":
            return {"ok": True, **self.collect()}
        raise ValueError(f"op must be one of 'ping', 'status', got {op!r}")

    def collect(self) -> dict[str, Any]:
        svc = self.service
        cfg = svc.config
        tasks = []
        for task in svc.tasks:
            snap = task.snapshot()
            tasks.append(
                {
                    "name": snap.name,
                    "period_s": snap.period_s,
                    "running": snap.running,
                    "cycles": snap.cycles,
                    "overruns": snap.overruns,
                    "errors": snap.errors,
                    "latency_p50_s": snap.latency.p50,
                    "latency_p99_s": snap.latency.p99,
                    "latency_max_s": snap.latency.max,
                    "execution_p99_s": snap.execution.p99,
                }
            )
        buses = []
        for bus in svc.bus_snapshots():
            done = sum(bus.transactions.values())
            buses.append(
                {
                    "name": bus.name,
                    "protocol": bus.protocol,
                    "connected": bus.connected,
                    "meters_total": bus.meters_total,
                    "meters_quarantined": bus.meters_quarantined,
                    "transactions": done,
                    "transactions_failed": done - bus.transactions.get("ok", 0),
                    "utilisation": bus.busy_s / bus.uptime_s if bus.uptime_s > 0 else 0.0,
                }
            )
        journal = svc.journal.snapshot()
        alarms = svc.alarms.counts()
        shelved = alarms.pop("shelved", 0)
        opcua = svc.opcua
        return {
            "service": {
                "name": cfg.service.name,
                "pid": os.getpid(),
                "uptime_s": time.time() - self.started_at,
                "accepting_commands": svc.commands.accepting,
                "subsystems": [s.name for s in svc.subsystems],
            },
            "tasks": tasks,
            "buses": buses,
            "commands": {"pending": len(svc.commands.pending())},
            "alarms": {
                "active": sum(v["active"] for v in alarms.values()),
                "unacknowledged": sum(v["unacked"] for v in alarms.values()),
                "shelved": shelved,
                "by_severity": alarms,
            },
            "journal": {
                "path": journal.path,
                "schema_version": journal.schema_version,
                "queue_depth": journal.queue_depth,
                "queue_limit": journal.queue_limit,
                "dropped": journal.dropped,
                "failed": journal.failed,
                "write_latency_p99_s": journal.write_latency.p99,
            },
            "opcua": getattr(opcua, "endpoint", None) if opcua is not None else None,
            "metrics": (
                f"http://{cfg.metrics.host}:{svc.metrics.port}/metrics"
                if svc.metrics is not None
                else None
            ),
        }


# -- rendering --------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}d {h:02d}:{m:02d}:{s:02d}" if d else f"{h:02d}:{m:02d}:{s:02d}"


def render(status: dict[str, Any]) -> str:
    """The status as an operator reads it: one block per concern, units on every number."""
    svc = status["service"]
    lines = [
        f"service   {svc['name']} (pid {svc['pid']}), up {_duration(svc['uptime_s'])}, "
        f"commands {'accepted' if svc['accepting_commands'] else 'REFUSED (stopping)'}",
        f"          subsystems: {', '.join(svc['subsystems']) or 'none'}",
    ]
    for t in status["tasks"]:
        lines.append(
            f"task      {t['name']:<8} period {_ms(t['period_s'])}, {t['cycles']} cycles, "
            f"{t['overruns']} overruns, wake-up p50 {_ms(t['latency_p50_s'])} "
            f"p99 {_ms(t['latency_p99_s'])} max {_ms(t['latency_max_s'])}, "
            f"execution p99 {_ms(t['execution_p99_s'])}"
        )
    for b in status["buses"]:
        lines.append(
            f"bus       {b['name']:<8} {b['protocol']:<10} {'up' if b['connected'] else 'DOWN':<4} "
            f"utilisation {b['utilisation'] * 100:5.1f} %, meters {b['meters_total']} "
            f"({b['meters_quarantined']} quarantined), transactions {b['transactions']} "
            f"({b['transactions_failed']} failed)"
        )
    a = status["alarms"]
    lines.append(
        f"alarms    {a['active']} active, {a['unacknowledged']} unacknowledged, "
        f"{a['shelved']} shelved"
    )
    lines.append(f"commands  {status['commands']['pending']} pending")
    j = status["journal"]
    lines.append(
        f"journal   {j['path']} (schema {j['schema_version']}), queue {j['queue_depth']} of "
        f"{j['queue_limit']}, write p99 {_ms(j['write_latency_p99_s'])}, "
        f"{j['dropped']} dropped, {j['failed']} failed"
    )
    lines.append(f"opcua     {status['opcua'] or 'disabled'}")
    lines.append(f"metrics   {status['metrics'] or 'disabled'}")
    return "\n".join(lines)


# -- CLI --------------------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    from controller.config import DEFAULT_CONFIG

    p = sub.add_parser("status", help="ask the running service for its status")
    p.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"config naming the control socket (default {DEFAULT_CONFIG})",
    )
    p.add_argument("--socket", type=Path, help="control socket path (overrides --config)")
    p.add_argument("--json", action="store_true", help="print the raw status as JSON")
    p.set_defaults(func=_status)


def _status(args: argparse.Namespace) -> int:
    import sys

    from controller.config import ConfigError, load_config

    path = args.socket
    if path is None:
        try:
            socket = load_config(args.config).service.control_socket
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        if not socket:
            print(
                f"{args.config}: service.control_socket is empty: no status channel",
                file=sys.stderr,
            )
            return 2
        path = Path(socket)
    try:
        reply = asyncio.run(request(path, {"op": "status"}, timeout=STATUS_TIMEOUT_S))
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"gridctl status: no service is listening on {path}", file=sys.stderr)
        return 1
    except (TimeoutError, ConnectionError) as exc:
        print(
            f"gridctl status: {path}: no reply within {STATUS_TIMEOUT_S} s ({exc})", file=sys.stderr
        )
        return 1
    if not reply.get("ok"):
        print(f"gridctl status: {reply.get('error', 'refused')}", file=sys.stderr)
        return 1
    reply.pop("ok")
    print(json.dumps(reply, indent=2) if args.json else render(reply))
    return 0
