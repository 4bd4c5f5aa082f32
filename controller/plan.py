"""`gridctl plan`: will the configured poll plan fit the buses?

Per bus, the Rust planner turns frame sizes, baud, character format, the
meters' response delay and the send interval into predicted utilisation and
the worst-case cycle (every job once, back to back), and we warn when a bus
cannot meet its periods.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Mapping

from controller import _core_rs as core
from drivers.block_fallback import Refusals, meter_items, read_refusals, refused_in
from drivers.config import (
    ConfigFileError,
    Dlt645BusConfig,
    FieldConfig,
    ModbusBusConfig,
    load_field_config,
)
from drivers.dlt645_bus import CLOCK_ITEMS, read_reply_bytes, read_request_bytes
from drivers.modbus_blocks import plan_device_reads

# Assumed Modbus RTU slave response delay.
MODBUS_RESPONSE_DELAY_S = 0.02
# Modbus RTU: request = id fc addr(2) count(2) crc(2); reply = id fc n data crc(2)
MODBUS_RTU_REQUEST = 8
MODBUS_RTU_REPLY_OVERHEAD = 5


def plan_dlt645(
    bus: Dlt645BusConfig,
    config: FieldConfig,
    delay: float | None = None,
    refused: Mapping[str, set[str]] | None = None,
) -> core.BusPlan:
    """``refused``: block DIs meters are known to refuse (the journal's), read by their
    single DIs on those meters, as the bus does."""
    delay = bus.response_delay_s if delay is None else delay
    refused = refused or {}
    # meters of a group that read it the same way (same refused blocks) are one job
    users: dict[tuple[str, frozenset[str]], int] = {}
    for meter in bus.meters:
        for g in meter.groups:
            key = (g, refused_in(config.poll_groups[g].items, refused, meter.address))
            users[key] = users.get(key, 0) + 1
    jobs = []
    request = read_request_bytes(bus.preamble)
    for (name, blocks), count in users.items():
        group = config.poll_groups[name]
        # a clock check is one read of date and time together (0400010C)
        items = meter_items(group.items, set(blocks)) if group.kind == "read" else list(CLOCK_ITEMS)
        # meters reading singly get their own jobs, named so in the biggest-jobs line
        suffix = " (single DIs)" if blocks else ""
        for item in items:
            jobs.append(
                core.PlanJob(
                    f"{name}:{item.di}{suffix}",
                    request,
                    read_reply_bytes(item),
                    group.period_s,
                    delay,
                    count,
                    bus.send_interval_s,
                )
            )
    return core.plan_bus(bus.baud, bus.bits_per_char, jobs)


def plan_modbus_rtu(bus: ModbusBusConfig, delay: float | None = None) -> core.BusPlan:
    delay = MODBUS_RESPONSE_DELAY_S if delay is None else delay
    _t15, t35 = core.modbus_rtu_timing(bus.baud, bus.bits_per_char)
    jobs = []
    for device in bus.devices:
        for read in plan_device_reads(device):
            data = (
                (read.count + 7) // 8
                if read.table in ("coil", "discrete_input")
                else 2 * read.count
            )
            jobs.append(
                core.PlanJob(
                    f"{device.name}:{read.table}@{read.start}",
                    MODBUS_RTU_REQUEST,
                    MODBUS_RTU_REPLY_OVERHEAD + data,
                    device.period_s,
                    delay,
                    1,
                    t35,
                )
            )
    return core.plan_bus(bus.baud, bus.bits_per_char, jobs)


def render(
    config: FieldConfig,
    delay: float | None,
    refused: Mapping[str, Refusals] | None = None,
) -> tuple[str, bool]:
    """``refused``: per bus, the block DIs each meter refuses (``--journal``)."""
    lines = [
        f"{'bus':<14} {'protocol':<11} {'link':<10} {'delay ms':>8} {'jobs':>5} {'util':>7} "
        f"{'cycle s':>9} {'max tx/s':>9}  verdict",
    ]
    ok = True
    for bus in config.buses:
        link = f"{bus.baud} {bus.byte_size}{bus.parity}{bus.stop_bits}" if not bus.is_tcp else "tcp"
        if isinstance(bus, Dlt645BusConfig):
            plan = plan_dlt645(bus, config, delay, (refused or {}).get(bus.name))
            used = bus.response_delay_s if delay is None else delay
        elif bus.protocol == "modbus_rtu":
            plan = plan_modbus_rtu(bus, delay)
            used = MODBUS_RESPONSE_DELAY_S if delay is None else delay
        else:
            lines.append(
                f"{bus.name:<14} {bus.protocol:<11} {link:<10} {'-':>8} {'-':>5} {'-':>7} {'-':>9} "
                f"{'-':>9}  not wire-limited"
            )
            continue
        verdict = "ok"
        if not plan.feasible or plan.utilisation > 1.0:
            verdict = "WARNING: cannot meet its periods"
            ok = False
        elif plan.utilisation > getattr(bus, "max_utilisation", 0.95):
            verdict = "warning: above max_utilisation, periods will stretch"
        lines.append(
            f"{bus.name:<14} {bus.protocol:<11} {link:<10} {used * 1000:>8.0f} {len(plan.jobs):>5} "
            f"{plan.utilisation * 100:>6.1f}% {plan.worst_case_cycle_s:>9.2f} "
            f"{plan.max_transactions_per_s:>9.2f}  {verdict}"
        )
        if not ok and verdict.startswith("WARNING"):
            worst = sorted(plan.jobs, key=lambda j: j.utilisation, reverse=True)[:3]
            lines.append(
                "    biggest: " + ", ".join(f"{j.name} {j.utilisation * 100:.0f}%" for j in worst)
            )
    return "\n".join(lines), ok


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan", help="predict bus utilisation and cycle for the configured poll plan"
    )
    p.add_argument("--config", default="config/demo.toml")
    p.add_argument(
        "--response-delay-ms",
        type=float,
        default=None,
        help="meter response delay to assume for every bus (default: each bus's response_delay_s)",
    )
    p.add_argument(
        "--journal",
        default=None,
        help="a service journal (SQLite): plan meters that refused block DIs with their "
        "single DIs, as the buses poll them",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        config = load_field_config(args.config)
    except ConfigFileError as exc:
        print(f"gridctl plan: {exc}", file=sys.stderr)
        return 2
    delay = None if args.response_delay_ms is None else args.response_delay_ms / 1000.0
    if delay is not None and not 0.0 <= delay <= 2.0:
        print("gridctl plan: --response-delay-ms must be 0..2000", file=sys.stderr)
        return 2
    refused: dict[str, Refusals] = {}
    if args.journal is not None:
        try:
            refused = read_refusals(args.journal)
        except (OSError, sqlite3.Error) as exc:
            print(f"gridctl plan: --journal {args.journal}: {exc}", file=sys.stderr)
            return 2
    text, ok = render(config, delay, refused)
    print(text)
    return 0 if ok else 1
