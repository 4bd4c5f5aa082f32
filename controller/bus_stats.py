"""Read-only snapshot of one bus's counters, for publishers (metrics, OPC UA, HMI)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class BusSnapshot:
    name: str
    protocol: str  # "dlt645" | "modbus_rtu" | "modbus_tcp"
    connected: bool
    meters_total: int
    meters_quarantined: int
    # transactions by outcome: "ok", "timeout", "checksum", "exception", "io_error"
    transactions: dict[str, int] = field(default_factory=dict)
    busy_s: float = 0.0  # cumulative wire-busy seconds (utilisation = d(busy_s)/dt)
    uptime_s: float = 0.0
    poll_lateness_max_s: float = 0.0
    poll_lateness_mean_s: float = 0.0
    discarded_bytes: int = 0
    checksum_errors: int = 0
