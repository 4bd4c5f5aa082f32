"""Switching latency: a trip on a busy 2400-baud bus, control lane vs FIFO behind the polls.

One simulated RS-485 line (separate simulator process, wire timing on: every
byte clocked at 11 bits / 2400 baud, 20 ms meter response delay) with 32
meters polled continuously (poll periods far below what the wire can do, so
there is always a poll due). Commands go through the real executor (journal
write-ahead with fsync, 1C, status-word-3 read-back) in two modes:

- ``control``: the executor's path — the 1C and the read-back ride the
  control lane and go out before the next poll frame;
- ``fifo``: the same frames as one-shot jobs on the cyclic lane, i.e. queued
  behind the polls already due (what a driver without a control lane does).

Prints p50/p99/max request → confirmed per mode, the FIFO/control ratio, and
the target: one in-flight transaction + the 1C exchange + one status read-back
(wire times from the same formula `gridctl plan` uses) + the journal's fsyncs.

Run: `.venv/bin/python bench/control.py [--samples 20 --fifo-samples 8]`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from controller import _core_rs as core  # noqa: E402
from controller.commands import CommandLog, CommandState  # noqa: E402
from controller.journal import Journal  # noqa: E402
from controller.loads.config import LoadsConfig  # noqa: E402
from controller.loads.switching import MeterRelay, SwitchingExecutor, actuators_for  # noqa: E402
from controller.process_image import ProcessImage  # noqa: E402
from drivers.bus_owner import LANES  # noqa: E402
from drivers.config import PollItem, load_field_config  # noqa: E402
from drivers.dlt645_bus import STATUS_WORD_3, plan_item  # noqa: E402
from drivers.plant import FieldPlant  # noqa: E402
from drivers.sim.launch import start_simulator  # noqa: E402

METERS = 32
BAUD = 2400
BITS = 11
DELAY_S = 0.02
PREAMBLE = 4
SEND_INTERVAL_S = 0.02
POLL_DI = "0201FF00"  # three voltages: 6 value bytes


def write_config(tmp: Path) -> Path:
    text = f"""
[poll_groups.busy]
period_s = 1.0
items = ["{POLL_DI}"]

[[buses]]
name = "bus1"
protocol = "dlt645"
port = "{tmp / "tty" / "bus1"}"
baud = {BAUD}
preamble = {PREAMBLE}
response_delay_s = {DELAY_S}
response_timeout_s = 0.5
byte_timeout_s = 0.1
send_interval_s = {SEND_INTERVAL_S}
meter_block = {{ first_address = "000000000001", count = {METERS}, groups = ["busy"] }}

[sim]
enabled = true
fast = false
control_socket = "{tmp / "sim.sock"}"
response_delay_s = {DELAY_S}
"""
    path = tmp / "bench.toml"
    path.write_text(text)
    return path


STATUS_PLAN = plan_item(PollItem(di=STATUS_WORD_3))


class FifoRelay(MeterRelay):
    """The same frames (1C + read-back in one job), queued on the cyclic lane behind the polls."""

    async def send(self, kind: str, valid_until: float) -> Any:
        import datetime as dt

        from controller.loads.switching import N1

        bus = self.bus
        meter = bus.meters[self.address]
        until = dt.datetime.fromtimestamp(valid_until)

        async def action() -> None:
            await bus._send_control(self.address, meter, N1[kind], until)
            # the read-back in the same job, as the control-lane path does
            raw = await bus.client.read(self.address, STATUS_WORD_3, retries=0)
            bus._store(self.address, STATUS_PLAN, raw, bus.wall())

        await bus._submit_oneshot(LANES["cyclic"], self.address, action)
        return self.known()

    async def read(self) -> Any:
        bus = self.bus

        async def action() -> None:
            raw = await bus.client.read(self.address, STATUS_WORD_3)
            bus._store(self.address, STATUS_PLAN, raw, bus.wall())

        await bus._submit_oneshot(LANES["cyclic"], self.address, action)
        return self.known()


def target_s() -> tuple[float, dict[str, float]]:
    def tx(req: int, reply: int) -> float:
        return core.transaction_time(BAUD, BITS, req + PREAMBLE, reply, DELAY_S, SEND_INTERVAL_S)

    parts = {
        "in-flight poll": tx(16, 12 + 4 + 6),
        "1C exchange": tx(12 + 16, 12),
        "status read-back": tx(16, 12 + 4 + 2),
    }
    return sum(parts.values()), parts


def pct(data: list[float], q: float) -> float:
    s = sorted(data)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def measure(ex: SwitchingExecutor, n: int, spread: float) -> list[float]:
    out: list[float] = []
    kinds = ["trip", "direct_close"]
    for i in range(n):
        # random phase against the poll cycle, so the in-flight poll is anywhere
        await asyncio.sleep(spread * ((i * 0.618034) % 1.0))
        load = "l1"
        kind = kinds[i % 2]
        t0 = time.perf_counter()
        cmd = await ex.run(kind, load, who="bench", why="latency")
        dt_ = time.perf_counter() - t0
        if cmd.state is not CommandState.CONFIRMED:
            raise SystemExit(f"{kind} not confirmed: {cmd.reason}")
        out.append(dt_)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--fifo-samples", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        cfg_path = write_config(tmp)
        field = load_field_config(cfg_path)
        with start_simulator(cfg_path, cwd=REPO):
            image = ProcessImage()
            plant = FieldPlant(field, image)
            await plant.start()
            journal = Journal(tmp / "journal.sqlite")
            journal.open()
            commands = CommandLog(journal)
            loads = LoadsConfig.model_validate(
                {
                    "loads": [{"name": "l1", "bus": "bus1", "address": "000000000007"}],
                    "confirm": {"timeout_s": 60.0, "reread_interval_s": 0.0, "max_rereads": 3},
                    "rate_limit": {"per_feeder_per_s": 100.0},
                }
            )
            acts = actuators_for(loads, plant, image)
            ex = SwitchingExecutor(loads, commands, acts, image=image)
            bus = plant.bus("bus1")
            fifo_act = FifoRelay(bus, "000000000007", image)
            ex_fifo = SwitchingExecutor(loads, commands, {"l1": fifo_act}, image=image)
            await asyncio.sleep(5.0)  # the poll cycle is running, the bus saturated
            control = await measure(ex, args.samples, 0.5)
            fifo = await measure(ex_fifo, args.fifo_samples, 0.5)
            snap = bus.snapshot()
            # three durable transitions per command: queued, sent, confirmed
            fsync = 3 * journal.snapshot().commit_time.p99
            await plant.stop()
            journal.close()
    total, parts = target_s()
    print(f"bus: {METERS} meters at {BAUD} baud, polls always due; {snap.transactions}")
    for name, data in (("control lane", control), ("FIFO behind polls", fifo)):
        print(
            f"{name:18s} n={len(data):3d}  p50 {statistics.median(data) * 1000:7.1f} ms  "
            f"p99 {pct(data, 0.99) * 1000:7.1f} ms  max {max(data) * 1000:7.1f} ms"
        )
    print(
        "target p99 ≤ "
        + " + ".join(f"{k} {v * 1000:.0f} ms" for k, v in parts.items())
        + f" = {total * 1000:.0f} ms wire + 3 journal fsyncs {fsync * 1000:.1f} ms"
    )
    total += fsync
    p99 = pct(control, 0.99)
    print(f"control-lane p99 {'within' if p99 <= total else 'OVER'} target ({p99 / total:.2f}×)")
    print(
        f"ratio FIFO/control: p50 {statistics.median(fifo) / statistics.median(control):.1f}×, "
        f"p99 {pct(fifo, 0.99) / p99:.1f}×"
    )


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
