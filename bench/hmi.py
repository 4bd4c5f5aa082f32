"""HMI benchmark: CPU and update latency at 10 000 meters changing at 1 Hz, and its
effect on the controller's fast task.

Three processes:
- server: the real gridctl OPC UA server on a process image of N meters (the
  four quantities of the Meters table each), every meter's power written once
  a second (in 10 slices of N/10 every 100 ms; the value is the write's wall
  time), and a stand-in for the controller's fast task: a 10 ms cyclic task on
  absolute deadlines in the same event loop, recording its wake-up lateness;
- hmi: the Textual app, headless at 120×40, logged in, Meters screen open,
  subscribed to the whole table (4 × N items);
- this script: runs a baseline phase without the HMI, then one with it, and
  compares.

Measured:
- HMI process CPU (user + system) over the window, as % of one core;
- screen update latency: image write → cell updated in the Meters table
  (Textual paints on its next frame, ≤ 1/60 s later);
- fast-task wake-up lateness p99 with the HMI connected / without it.

Targets: updates shown within 1 s, HMI CPU < 30 % of a core, ratio ≤ 1.1.

Usage: python bench/hmi.py [--meters 10000] [--seconds 20] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TABLE = (
    ("power_active", "kW"),
    ("voltage_a", "V"),
    ("current_a", "A"),
    ("energy_forward_active", "kWh"),
)
PERIOD_S = 0.010


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1)))]


# -- server process -----------------------------------------------------------------
async def serve(port: int, meters: int) -> None:
    from controller.process_image import ProcessImage
    from opcua_server import OpcUaConfig, OpcUaServer, UserConfig
    from opcua_server.users import hash_password

    image = ProcessImage()
    names: list[str] = []
    for i in range(meters):
        base = f"buses/bus{i // 250 + 1}/meters/{i + 1:012d}"
        for q, unit in TABLE:
            image.define(f"{base}/{q}", unit)
            image.write(f"{base}/{q}", 1.0)
        names.append(f"{base}/power_active")
    config = OpcUaConfig(
        endpoint=f"opc.tcp://127.0.0.1:{port}/gridctl",
        security_policies=["None"],
        anonymous="read-only",
        users=[
            UserConfig(name="otto", password_hash=hash_password("pw", n=2**10), role="operator")
        ],
        min_publishing_interval_ms=50.0,
    )
    srv = OpcUaServer(config, image, state_dir=Path(tempfile.mkdtemp()))
    await srv.start()
    gc.collect()
    gc.freeze()

    phase = ["warmup"]
    late: dict[str, list[float]] = {}
    loop = asyncio.get_running_loop()

    async def fast_task() -> None:
        clock = time.perf_counter  # the loop clock has 1 ms resolution under uvloop
        t0 = clock()
        k = 0
        while True:
            k += 1
            deadline = t0 + k * PERIOD_S
            delay = deadline - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            now = clock()
            late.setdefault(phase[0], []).append(now - deadline)
            if now - deadline > PERIOD_S:  # overrun: skip to the next deadline
                k = int((now - t0) / PERIOD_S)

    async def updater() -> None:
        slices = 10
        size = (len(names) + slices - 1) // slices
        t0 = loop.time()
        k = 0
        while True:
            part = names[(k % slices) * size : (k % slices + 1) * size]
            now = time.time()
            for name in part:
                image.write(name, now)
            k += 1
            await asyncio.sleep(max(0.0, t0 + k * 0.1 - loop.time()))

    tasks = [asyncio.create_task(fast_task()), asyncio.create_task(updater())]
    print("READY", flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        if line.startswith("phase "):
            phase[0] = line.split(" ", 1)[1]
        elif line == "report":
            out = {
                p: {"n": len(v), "p50": pct(v, 0.5), "p99": pct(v, 0.99), "max": max(v)}
                for p, v in late.items()
                if v
            }
            print(json.dumps(out), flush=True)
        elif line == "quit":
            break
    for t in tasks:
        t.cancel()
    await srv.stop()


# -- HMI process ----------------------------------------------------------------------
async def run_hmi(url: str, meters: int, seconds: float) -> None:
    from hmi.app import HmiApp
    from hmi.client import GridClient
    from hmi.screens.meters import MetersView

    latencies: list[float] = []
    measuring = [False]
    original = MetersView.update_values

    def timed(self: MetersView, changed: set[str] | None) -> None:
        original(self, changed)
        if not measuring[0] or changed is None:
            return
        now = time.time()
        visible = self._visible()
        for path in changed:
            meter = path.rsplit("/", 1)[0]
            if path.endswith("/power_active") and self._index.get(meter, -1) in visible:
                r = self.client.get(path)
                if r is not None and isinstance(r.value, float) and r.value > 1e9:
                    latencies.append(now - r.value)

    MetersView.update_values = timed  # type: ignore[method-assign]
    client = GridClient(url, "otto", "pw", security="none")
    app = HmiApp(client)
    async with app.run_test(size=(120, 40)) as pilot:
        await client.wait_connected(120)
        await pilot.press("2")
        t0 = time.monotonic()
        while len(client.values) < meters * len(TABLE):
            await asyncio.sleep(0.2)
            if time.monotonic() - t0 > 300:
                break
        setup_s = time.monotonic() - t0
        await asyncio.sleep(2.0)
        print("HMI-READY", flush=True)
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        w0 = time.monotonic()
        n0 = client.stats["notifications"]
        measuring[0] = True
        prof = None
        if os.environ.get("HMI_BENCH_PROFILE"):
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        await asyncio.sleep(seconds)
        if prof is not None:
            prof.disable()
            prof.dump_stats(os.environ["HMI_BENCH_PROFILE"])
        measuring[0] = False
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.monotonic() - w0
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        rows = app.query_one("#meter-table").row_count
        print(
            json.dumps(
                {
                    "cpu_pct": 100.0 * cpu / wall,
                    "notifications_per_s": (client.stats["notifications"] - n0) / wall,
                    "items": client.stats["items"],
                    "rows": rows,
                    "setup_s": setup_s,
                    "lat_n": len(latencies),
                    "lat_p50": pct(latencies, 0.5),
                    "lat_p99": pct(latencies, 0.99),
                    "lat_max": max(latencies) if latencies else float("nan"),
                }
            ),
            flush=True,
        )


# -- orchestration ----------------------------------------------------------------------
def read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"process ended before {marker!r}")
        if line.startswith(marker):
            return line.strip()
    raise TimeoutError(marker)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meters", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--quick", action="store_true", help="1000 meters, 8 s windows")
    ap.add_argument("--server", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--hmi", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.meters, args.seconds = 1000, 8.0
    logging.basicConfig(level=logging.ERROR)
    if args.server:
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.install()
        asyncio.run(serve(args.server, args.meters))
        return
    if args.hmi:
        asyncio.run(run_hmi(args.hmi, args.meters, args.seconds))
        return

    port = free_port()
    me = [sys.executable, __file__, "--meters", str(args.meters), "--seconds", str(args.seconds)]
    server = subprocess.Popen(
        [*me, "--server", str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert server.stdin is not None
    try:
        t0 = time.monotonic()
        read_until(server, "READY", 600)
        print(f"server up: {args.meters} meters × {len(TABLE)} in {time.monotonic() - t0:.1f} s")
        time.sleep(3)
        server.stdin.write("phase base\n")
        server.stdin.flush()
        time.sleep(args.seconds)
        server.stdin.write("phase between\n")
        server.stdin.flush()
        hmi = subprocess.Popen(
            [*me, "--hmi", f"opc.tcp://127.0.0.1:{port}/gridctl"], stdout=subprocess.PIPE, text=True
        )
        read_until(hmi, "HMI-READY", 900)
        server.stdin.write("phase hmi\n")
        server.stdin.flush()
        res = json.loads(read_until(hmi, "{", args.seconds + 120))
        server.stdin.write("phase after\nreport\n")
        server.stdin.flush()
        fast = json.loads(read_until(server, "{", 60))
        hmi.wait(60)
    finally:
        with contextlib.suppress(Exception):
            server.stdin.write("quit\n")
            server.stdin.flush()
        with contextlib.suppress(Exception):
            server.wait(20)
        if server.poll() is None:
            server.kill()

    base, with_hmi = fast["base"], fast["hmi"]
    ratio = with_hmi["p99"] / base["p99"] if base["p99"] > 0 else float("inf")
    ok = lambda good: "OK" if good else "MISSED"  # noqa: E731
    print(
        f"HMI: {res['rows']} rows, {res['items']} monitored items, set up in {res['setup_s']:.1f} s"
    )
    print(f"HMI notifications: {res['notifications_per_s']:.0f}/s")
    print(f"HMI CPU: {res['cpu_pct']:.1f} % of a core  (target < 30 %)  {ok(res['cpu_pct'] < 30)}")
    print(
        f"update latency write→cell: p50 {res['lat_p50'] * 1000:.0f} ms  p99 {res['lat_p99'] * 1000:.0f} ms"
        f"  max {res['lat_max'] * 1000:.0f} ms  (n={res['lat_n']}, target ≤ 1 s)"
        f"  {ok(res['lat_p99'] <= 1.0)}"
    )
    print(
        f"fast task (10 ms, same loop as the OPC UA server) lateness p99: "
        f"{base['p99'] * 1000:.2f} ms without HMI, {with_hmi['p99'] * 1000:.2f} ms with"
        f"  → ratio {ratio:.2f} (target ≤ 1.1)  {ok(ratio <= 1.1)}"
    )
    print(f"  max lateness {base['max'] * 1000:.1f} ms / {with_hmi['max'] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
