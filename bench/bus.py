"""Bus throughput: how close the BusOwner gets to the wire limit, and at what CPU cost.

8 simulated RS-485 lines × 32 meters at 2400 8E1, 20 ms meter response delay,
wire timing on (the simulator clocks every byte at 11 bits / 2400 baud). Every
bus is kept saturated (poll periods far below what the wire can do, so the
scheduler stretches them and there is always a job due).

Prints per mode:
- η = achieved transactions/s ÷ wire limit, per bus; the wire limit is
  1 / transaction_time(request + reply bytes at 11 bits, + response delay);
- controller CPU seconds per transaction and % of one core;
- the ratio against the PyPI `dlt645` async client polling the same simulated
  meters one by one (one client per bus, all buses in parallel). That client's
  serial transport needs pyserial-asyncio, so both sides of the comparison run
  over the simulator's TCP (transparent serial server) wires, same timing.

Run: `make bench` or `.venv/bin/python bench/bus.py [--seconds 15]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from controller import _core_rs as core  # noqa: E402
from controller.process_image import ProcessImage  # noqa: E402
from drivers.config import load_field_config  # noqa: E402
from drivers.plant import FieldPlant  # noqa: E402
from drivers.sim.launch import SimulatorProcess, start_simulator  # noqa: E402

BUSES = 8
METERS = 32
BAUD = 2400
BITS = 11
DELAY_S = 0.02
PREAMBLE = 4
MODES = {
    # name: (DI, value bytes)
    "single": ("02010100", 2),
    "block": ("0201FF00", 6),
}


def write_config(tmp: Path, di: str, tcp_base: int | None) -> Path:
    lines = [
        "[poll_groups.bench]",
        "period_s = 1.0",  # far faster than the wire: every bus saturated
        f'items = ["{di}"]',
        "",
    ]
    for b in range(1, BUSES + 1):
        port = f"tcp://127.0.0.1:{tcp_base + b}" if tcp_base else str(tmp / "tty" / f"bus{b}")
        lines += [
            "[[buses]]",
            f'name = "bus{b}"',
            'protocol = "dlt645"',
            f'port = "{port}"',
            f"baud = {BAUD}",
            'parity = "E"',
            f"preamble = {PREAMBLE}",
            "send_interval_s = 0.0",
            # no headroom: the bench wants every bus saturated (service configs keep 5 %)
            "max_utilisation = 1.0",
            f"response_delay_s = {DELAY_S}",
            "response_timeout_s = 0.5",
            "byte_timeout_s = 0.1",
            f'meter_block = {{ first_address = "0000{b:04d}0001", count = {METERS}, groups = ["bench"] }}',
            "",
        ]
    lines += [
        "[sim]",
        "enabled = true",
        f'control_socket = "{tmp / "sim.sock"}"',
        f"response_delay_s = {DELAY_S}",
    ]
    path = tmp / f"bench-{di}-{'tcp' if tcp_base else 'pty'}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def wire_limit(value_bytes: int) -> float:
    request = 12 + 4 + PREAMBLE
    reply = 12 + 4 + value_bytes
    return 1.0 / core.transaction_time(BAUD, BITS, request, reply, DELAY_S, 0.0)


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_ours(
    config_path: Path, seconds: float, warmup: float = 3.0
) -> tuple[list[float], float, int]:
    config = load_field_config(config_path)
    plant = FieldPlant(config, ProcessImage())
    await plant.start()
    await asyncio.sleep(warmup)
    before = {b.name: b.transactions["ok"] for b in plant.buses.values()}
    cpu0, t0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, t1 = time.process_time(), time.monotonic()
    rates = [(b.transactions["ok"] - before[b.name]) / (t1 - t0) for b in plant.buses.values()]
    total = sum(b.transactions["ok"] - before[b.name] for b in plant.buses.values())
    errors = sum(
        b.transactions["timeout"] + b.transactions["checksum"] for b in plant.buses.values()
    )
    await plant.stop()
    if errors:
        print(f"  ({errors} timeouts/checksum errors during the run)")
    return rates, cpu1 - cpu0, total


async def run_baseline(tcp_base: int, seconds: float) -> tuple[float, float] | None:
    try:
        from dlt645.aio import AsyncMeterClientService
    except ImportError:
        print("  PyPI dlt645 not installed (make bench installs it): no baseline")
        return None
    import logging

    logging.disable(logging.CRITICAL)
    counts = [0] * BUSES
    stop = asyncio.Event()

    async def poll(b: int) -> None:
        client = AsyncMeterClientService.new_tcp_client("127.0.0.1", tcp_base + b + 1, timeout=0.5)
        await client.connect()
        # this client sends the address string's bytes as given, so hand it the
        # wire order (low byte first, DL/T 645-2007 §4.1)
        addresses = [
            bytes.fromhex(f"0000{b + 1:04d}{i:04d}")[::-1].hex() for i in range(1, METERS + 1)
        ]
        while not stop.is_set():
            for address in addresses:
                client.set_address(address)
                item = await client.read_02(0x02010100)
                if item is not None:
                    counts[b] += 1
                if stop.is_set():
                    break
        await client.disconnect()

    tasks = [asyncio.create_task(poll(b)) for b in range(BUSES)]
    await asyncio.sleep(2.0)
    c0, t0, cpu0 = sum(counts), time.monotonic(), time.process_time()
    await asyncio.sleep(seconds)
    c1, t1, cpu1 = sum(counts), time.monotonic(), time.process_time()
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return (c1 - c0) / (t1 - t0), (cpu1 - cpu0) / max(c1 - c0, 1)


def start(path: Path) -> SimulatorProcess:
    return start_simulator(path, cwd=REPO)


def report(
    name: str,
    limit: float,
    rates: list[float],
    cpu: float,
    total: int,
    seconds: float,
    sim_cpu: float,
) -> None:
    etas = [r / limit for r in rates]
    print(
        f"{name}: wire limit {limit:.2f} tx/s per bus; achieved {sum(rates):.1f} tx/s on {BUSES} buses"
    )
    print("  η per bus: " + " ".join(f"{e:.3f}" for e in etas) + f"   (min {min(etas):.3f})")
    print(
        f"  controller CPU {cpu / max(total, 1) * 1e6:.0f} µs/transaction, {cpu / seconds * 100:.1f} % of one core;"
        f" simulator {sim_cpu / seconds * 100:.1f} % of one core"
    )
    verdict = (
        "ok"
        if min(etas) >= 0.95 and cpu / seconds < 0.25
        else "BELOW TARGET (η ≥ 0.95, CPU < 25 %)"
    )
    print(f"  target: {verdict}")


async def main(seconds: float) -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    with tempfile.TemporaryDirectory(prefix="gridctl-bench-") as d:
        tmp = Path(d)
        for mode, (di, value_bytes) in MODES.items():
            sim = start(write_config(tmp, di, None))
            try:
                s0 = proc_cpu(sim.pid)
                rates, cpu, total = await run_ours(tmp / f"bench-{di}-pty.toml", seconds)
                sim_cpu = proc_cpu(sim.pid) - s0
            finally:
                sim.stop()
            report(
                f"{mode} DI {di} (pty serial)",
                wire_limit(value_bytes),
                rates,
                cpu,
                total,
                seconds,
                sim_cpu,
            )
        # baseline comparison over TCP wires, single-DI reads one meter after another
        tcp_base = 23000 + os.getpid() % 1000 * 10
        path = write_config(tmp, "02010100", tcp_base)
        sim = start(path)
        try:
            rates, cpu, total = await run_ours(path, seconds)
            ours = sum(rates)
            theirs = await run_baseline(tcp_base, seconds)
        finally:
            sim.stop()
        print(
            f"single DI over TCP wires: gridctl {ours:.1f} tx/s, {cpu / max(total, 1) * 1e6:.0f} µs CPU/transaction"
        )
        if theirs:
            rate, cpu_tx = theirs
            print(
                f"  PyPI dlt645 one by one: {rate:.1f} tx/s, {cpu_tx * 1e6:.0f} µs CPU/transaction"
            )
            print(
                f"  ratio gridctl / dlt645: throughput {ours / rate:.2f}×, CPU per transaction {cpu_tx / max(cpu / max(total, 1), 1e-9):.2f}× less"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    asyncio.run(main(args.seconds))
