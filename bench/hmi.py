"""HMI benchmark: CPU and update latency at 10 000 meters changing at 1 Hz, and its
effect on the controller's fast task, with the processes laid out as deployed.

Processes:
- controller stand-in (``--controller``): a process image of N meters (the four
  quantities of the Meters table each), the OPC UA server started the way
  ``gridctl run`` starts it — ``OpcUaServerProcess``: the controller-side
  ``ImageFeed`` on a Unix socket and ``python -m opcua_server.process`` as a
  child — every meter's power written once a second (in 100 slices, one every
  10 ms; the value is the write's wall time, so the HMI can tell how old it
  is), and the controller's real cyclic tasks (``controller.cycle.CycleTask``,
  ``fast`` and ``control`` with the ``[tasks]`` defaults: periods, spin, GIL
  switch interval, ``gc.freeze``). The fast task's wake-up latency is recorded
  per phase. When the process may use SCHED_FIFO (root or CAP_SYS_NICE) the
  loop thread alternates every ``--slice`` seconds between normal scheduling
  and SCHED_FIFO at the site configuration's ``realtime_priority``, so both
  are measured under the same load from the rest of the machine;
- OPC UA server: the child of the stand-in, as in the service;
- hmi (``--hmi``): the Textual app, headless at 120×40, logged in, Meters
  screen open (N rows; it subscribes the rows on screen);
- this script: a baseline phase without the HMI, then one with it, and compares.

CPU layout, as a site box with ``[tasks] cpus`` runs it: the stand-in's loop
thread (the one running the cyclic tasks) alone on ``--control-cpus`` (default
CPU 0 when the machine has two or more), and everything else — this script,
the stand-in's other threads, the OPC UA server process, the HMI process — on
the remaining CPUs, in both phases, so the ratio compares like with like. The
pinning uses the service's own helpers (``controller.cpu_affinity``).
``--control-cpus none`` runs everything unpinned.

Measured:
- HMI process CPU (user + system) over the window, as % of one core (and the
  OPC UA server process's, for context);
- screen update latency: image write → cell updated in the Meters table, for
  the rows on screen (Textual paints on its next frame, ≤ 1/60 s later);
- fast-task wake-up latency p99 with the HMI connected / without it, per
  scheduling policy, and their ratio.

Targets: updates shown within 1 s (p99), HMI CPU < 30 % of a core, ratio ≤ 1.1.
Timing is reported, never asserted.

Usage: python bench/hmi.py [--meters 10000] [--seconds 20] [--quick]
                           [--realtime-priority 10]   (0: normal scheduling only)
                           [--control-cpus 0]         (a CPU list, or none: unpinned)
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# the repository root is on the path from here on
from controller.cpu_affinity import (
    CpuLayout,
    available_cpus,
    format_cpu_list,
    parse_cpu_list,
    pin_process,
)

TABLE = (
    ("power_active", "kW"),
    ("voltage_a", "V"),
    ("current_a", "A"),
    ("energy_forward_active", "kWh"),
)
# Power writes per second are spread over this many slices: the drivers deliver
# readings a meter at a time, never 10 000 in one loop step.
WRITE_SLICES = 100
# The site configuration runs the loop thread at this SCHED_FIFO priority.
SITE_REALTIME_PRIORITY = 10
TARGET_LATENCY_S = 1.0
TARGET_CPU_PCT = 30.0
TARGET_RATIO = 1.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1)))]


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (0.0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[11], fields[12]: utime, stime (fields 14 and 15 of proc(5), counted from 1)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- controller stand-in ----------------------------------------------------------------
def set_scheduling(priority: int) -> bool:
    """SCHED_FIFO ``priority`` for the calling thread, or normal scheduling for 0.

    The same call as the service's ``_apply_realtime`` (children do not inherit
    it). Returns False when the kernel refuses.
    """
    try:
        if priority:
            policy = os.SCHED_FIFO | os.SCHED_RESET_ON_FORK
            os.sched_setscheduler(0, policy, os.sched_param(priority))
        else:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (OSError, AttributeError):
        return False
    return True


async def controller(
    port: int, meters: int, priority: int, slice_s: float, layout: CpuLayout | None
) -> None:
    from controller.config import TasksConfig
    from controller.cycle import CycleTask, Series
    from controller.process_image import ProcessImage
    from controller.service import OPCUA_TASK_SAMPLES
    from opcua_server import OpcUaConfig, UserConfig
    from opcua_server.server import task_stats_from
    from opcua_server.server_process import OpcUaServerProcess
    from opcua_server.users import hash_password

    image = ProcessImage()
    names: list[str] = []
    for i in range(meters):
        base = f"buses/bus{i // 250 + 1}/meters/{i + 1:012d}"
        for q, unit in TABLE:
            image.define(f"{base}/{q}", unit)
            image.write(f"{base}/{q}", 1.0)
        names.append(f"{base}/power_active")

    t = TasksConfig()  # the shipped defaults, as in config/demo.toml and site-example.toml
    window = 8192  # > samples per slice: nothing is lost between two collections
    fast = CycleTask("fast", t.fast_period_ms / 1000, spin_s=t.fast_spin_us / 1e6, window=window)
    control = CycleTask(
        "control", t.control_period_ms / 1000, spin_s=t.control_spin_us / 1e6, window=window
    )
    config = OpcUaConfig(
        endpoint=f"opc.tcp://127.0.0.1:{port}/gridctl",
        security_policies=["None"],
        anonymous="read-only",
        allow_plaintext_password_on_loopback=True,
        users=[
            UserConfig(name="otto", password_hash=hash_password("pw", n=2**10), role="operator")
        ],
        min_publishing_interval_ms=50.0,
    )
    state_dir = Path(tempfile.mkdtemp(prefix="gridctl-bench-hmi-")) / "opcua"
    server = OpcUaServerProcess(
        config,
        image,
        state_dir=state_dir,
        task_stats=task_stats_from(lambda: (fast, control), last=OPCUA_TASK_SAMPLES),
        history_db=state_dir / "history.db",
        quiet_point=fast.after_cycle,
        log_level="WARNING",
        cpus=layout.others if layout is not None else None,
    )
    t_start = time.monotonic()
    info = await server.start()
    start_s = time.monotonic() - t_start

    # As the service does before its tasks start: freeze the start-up objects,
    # pin the loop thread (the rest of the process off its CPUs), shorten the
    # GIL switch interval, then the real-time policy.
    gc.collect()
    gc.freeze()
    pinned = ""
    if layout is not None:
        asyncio.get_running_loop().set_default_executor(layout.worker_executor())
        try:
            layout.pin_loop_thread()
            layout.pin_other_threads()
        except OSError as exc:
            pinned = f"refused ({exc})"
        else:
            pinned = "applied"
    if t.gil_switch_interval_us:
        sys.setswitchinterval(t.gil_switch_interval_us / 1e6)
    fifo = bool(priority) and set_scheduling(priority)
    modes = ["normal", "fifo"] if fifo else ["normal"]
    set_scheduling(0)

    loop_t = time.monotonic()
    fast.start(loop_t + fast.period)
    control.start(loop_t + control.period + fast.period / 2)

    async def updater() -> None:
        size = (len(names) + WRITE_SLICES - 1) // WRITE_SLICES
        period = 1.0 / WRITE_SLICES
        t0 = time.monotonic()
        k = 0
        while True:
            part = names[(k % WRITE_SLICES) * size : (k % WRITE_SLICES + 1) * size]
            now = time.time()
            for name in part:
                image.write(name, now)
            k += 1
            await asyncio.sleep(max(0.0, t0 + k * period - time.monotonic()))

    phase = ["warmup"]
    mode = [modes[0]]
    late: dict[str, list[float]] = {}
    overruns: dict[str, int] = {}
    server_cpu: dict[str, float] = {}
    server_wall: dict[str, float] = {}
    # counters at the last collection
    mark = {"overruns": 0.0, "cpu": process_cpu_s(server.pid or 0), "wall": time.monotonic()}

    def collect() -> None:
        """Move the samples since the last collection to the current (phase, mode)."""
        key = f"{phase[0]}/{mode[0]}"
        late.setdefault(key, []).extend(fast.latency.recent())
        fast.latency = Series(window)
        overruns[key] = overruns.get(key, 0) + fast.overruns - int(mark["overruns"])
        now_cpu, now_wall = process_cpu_s(server.pid or 0), time.monotonic()
        server_cpu[phase[0]] = server_cpu.get(phase[0], 0.0) + now_cpu - mark["cpu"]
        server_wall[phase[0]] = server_wall.get(phase[0], 0.0) + now_wall - mark["wall"]
        mark.update(overruns=fast.overruns, cpu=now_cpu, wall=now_wall)

    async def alternate() -> None:
        # Each slice is one policy; switching on the loop thread itself, as the
        # service applies it to the thread that runs the loop.
        k = 0
        while True:
            await asyncio.sleep(slice_s)
            collect()
            k += 1
            mode[0] = modes[k % len(modes)]
            set_scheduling(priority if mode[0] == "fifo" else 0)

    tasks = [asyncio.create_task(updater()), asyncio.create_task(alternate())]
    print(
        "READY "
        + json.dumps(
            {
                "start_s": start_s,
                "server_pid": server.pid,
                "model_nodes": info.get("model_nodes", 0),
                "fifo": fifo,
                "modes": modes,
                "spin_us": t.fast_spin_us,
                "period_ms": t.fast_period_ms,
                "pinned": pinned,
            }
        ),
        flush=True,
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        if line.startswith("phase "):
            collect()
            phase[0] = line.split(" ", 1)[1]
        elif line == "report":
            collect()
            out: dict[str, Any] = {
                "fast": {
                    key: {
                        "n": len(v),
                        "p50": pct(v, 0.5),
                        "p99": pct(v, 0.99),
                        "p999": pct(v, 0.999),
                        "max": max(v),
                        "overruns": overruns.get(key, 0),
                    }
                    for key, v in late.items()
                    if v
                },
                "server_cpu_pct": {
                    p: 100.0 * server_cpu[p] / server_wall[p]
                    for p in server_cpu
                    if server_wall.get(p, 0) > 0
                },
                "feed": {
                    k: v for k, v in server.stats()["feed"].items() if isinstance(v, int | float)
                },
            }
            print(json.dumps(out), flush=True)
        elif line == "quit":
            break
    set_scheduling(0)
    for task in tasks:
        task.cancel()
    await fast.stop()
    await control.stop()
    await server.stop()


# -- HMI process ----------------------------------------------------------------------
async def run_hmi(url: str, meters: int, seconds: float) -> None:
    from textual.widgets import DataTable

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
    t0 = time.monotonic()
    async with app.run_test(size=(120, 40)) as pilot:
        await client.wait_connected(120)
        await pilot.press("2")
        table = app.query_one("#meter-table", DataTable)
        # all rows in the table and the rows on screen subscribed (the table
        # watches only those)
        while table.row_count < meters or client.stats["items"] < 20:
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
        rows = table.row_count
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


def us(x: float) -> str:
    return f"{x * 1e6:.0f} µs"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meters", type=int, default=10_000)
    ap.add_argument(
        "--seconds", type=float, default=20.0, help="measured time per phase and policy"
    )
    ap.add_argument("--quick", action="store_true", help="1000 meters, 6 s windows")
    ap.add_argument(
        "--realtime-priority",
        type=int,
        default=SITE_REALTIME_PRIORITY,
        help="SCHED_FIFO priority measured beside normal scheduling when allowed (0: off)",
    )
    ap.add_argument("--slice", type=float, default=2.0, help="seconds per scheduling slice")
    ap.add_argument(
        "--control-cpus",
        default="0" if len(available_cpus()) >= 2 else "none",
        help="CPUs for the stand-in's loop thread, everything else on the rest (a Linux CPU "
        "list; none: unpinned; default 0 with two or more CPUs)",
    )
    ap.add_argument("--controller", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--hmi", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.meters, args.seconds = 1000, 6.0
    layout: CpuLayout | None = None
    if args.control_cpus != "none" and not args.hmi:
        try:
            layout = CpuLayout.isolating(parse_cpu_list(args.control_cpus))
        except ValueError as exc:
            ap.error(f"--control-cpus: {exc}")
    logging.basicConfig(level=logging.ERROR)
    if args.controller:
        import uvloop

        uvloop.run(
            controller(args.controller, args.meters, args.realtime_priority, args.slice, layout)
        )
        return
    if args.hmi:
        asyncio.run(run_hmi(args.hmi, args.meters, args.seconds))
        return

    port = free_port()
    me = [sys.executable, __file__, "--meters", str(args.meters)]
    ctl = subprocess.Popen(
        [
            *me,
            "--controller",
            str(port),
            "--realtime-priority",
            str(args.realtime_priority),
            "--slice",
            str(args.slice),
            "--control-cpus",
            args.control_cpus,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    if layout is not None:
        # After the stand-in is forked (it lays out its own threads from the
        # whole machine): this script and the HMI it starts run on the other CPUs.
        pin_process(os.getpid(), layout.others)
    assert ctl.stdin is not None

    def send(line: str) -> None:
        assert ctl.stdin is not None
        ctl.stdin.write(line + "\n")
        ctl.stdin.flush()

    hmi: subprocess.Popen[str] | None = None
    try:
        ready = json.loads(read_until(ctl, "READY", 600).split(" ", 1)[1])
        modes = ready["modes"]
        # Whole slices of each policy in each window.
        window = max(1, round(args.seconds / args.slice)) * args.slice * len(modes)
        print(
            f"controller stand-in up: {args.meters} meters × {len(TABLE)} tags, OPC UA server "
            f"process pid {ready['server_pid']} ({ready['model_nodes']} nodes) ready in "
            f"{ready['start_s']:.1f} s; fast task {ready['period_ms']} ms, spin "
            f"{ready['spin_us']} µs; SCHED_FIFO {args.realtime_priority}: "
            + (
                f"applied, alternating with normal scheduling every {args.slice:g} s"
                if ready["fifo"]
                else ("off (--realtime-priority 0)" if not args.realtime_priority else "refused")
            ),
            flush=True,
        )
        print(
            "CPU layout: "
            + (
                f"unpinned (--control-cpus none; {format_cpu_list(available_cpus())} shared)"
                if layout is None
                else f"the stand-in's loop thread on CPU {format_cpu_list(layout.control)}; its "
                f"other threads, the OPC UA server process, the HMI and this script on CPU "
                f"{format_cpu_list(layout.others)}; in both phases: {ready['pinned']}"
            ),
            flush=True,
        )
        time.sleep(3)
        send("phase base")
        time.sleep(window)
        send("phase between")
        hmi = subprocess.Popen(
            [*me, "--seconds", str(window), "--hmi", f"opc.tcp://127.0.0.1:{port}/gridctl"],
            stdout=subprocess.PIPE,
            text=True,
        )
        if layout is not None:
            # as `gridctl hmi --cpus` does at its start
            pin_process(hmi.pid, layout.others)
        read_until(hmi, "HMI-READY", 900)
        send("phase hmi")
        res = json.loads(read_until(hmi, "{", window + 120))
        send("phase after")
        send("report")
        rep = json.loads(read_until(ctl, "{", 60))
        hmi.wait(60)
    finally:
        if hmi is not None and hmi.poll() is None:
            hmi.kill()
        with contextlib.suppress(Exception):
            send("quit")
        with contextlib.suppress(Exception):
            ctl.wait(20)
        if ctl.poll() is None:
            ctl.kill()

    fast = rep["fast"]
    server_cpu = rep["server_cpu_pct"]
    ok = lambda good: "OK" if good else "MISSED"  # noqa: E731
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"HMI: {res['rows']} rows, {res['items']} monitored items, set up in {res['setup_s']:.1f} s"
    )
    print(
        f"HMI notifications: {res['notifications_per_s']:.0f}/s; OPC UA server process CPU "
        f"{server_cpu.get('base', float('nan')):.0f} % without HMI, "
        f"{server_cpu.get('hmi', float('nan')):.0f} % with"
    )
    print(
        f"HMI CPU: {res['cpu_pct']:.1f} % of a core  (target < {TARGET_CPU_PCT:g} %)"
        f"  {ok(res['cpu_pct'] < TARGET_CPU_PCT)}"
    )
    print(
        f"update latency write→cell: p50 {res['lat_p50'] * 1000:.0f} ms  p99 "
        f"{res['lat_p99'] * 1000:.0f} ms  max {res['lat_max'] * 1000:.0f} ms  "
        f"(n={res['lat_n']}, target ≤ {TARGET_LATENCY_S:g} s)"
        f"  {ok(res['lat_p99'] <= TARGET_LATENCY_S)}"
    )
    for mode in modes:
        base, with_hmi = fast.get(f"base/{mode}"), fast.get(f"hmi/{mode}")
        if base is None or with_hmi is None:
            print(f"fast task ({mode}): no samples")
            continue
        ratio = with_hmi["p99"] / base["p99"] if base["p99"] > 0 else float("inf")
        label = f"SCHED_FIFO {args.realtime_priority}" if mode == "fifo" else "normal scheduling"
        print(
            f"fast task (10 ms, OPC UA server in its own process), {label}: wake-up p99 "
            f"{us(base['p99'])} without HMI, {us(with_hmi['p99'])} with"
            f"  → ratio {ratio:.2f} (target ≤ {TARGET_RATIO:g})  {ok(ratio <= TARGET_RATIO)}"
        )
        print(
            f"  p50 {us(base['p50'])} / {us(with_hmi['p50'])}, p99.9 {us(base['p999'])} / "
            f"{us(with_hmi['p999'])}, max {us(base['max'])} / {us(with_hmi['max'])}, "
            f"overruns {base['overruns']} / {with_hmi['overruns']}, "
            f"cycles {base['n']} / {with_hmi['n']}"
        )
    feed = rep["feed"]
    print(
        f"image feed: {feed.get('changes_sent', 0)} changes sent, "
        f"{feed.get('dropped', 0)} dropped, {feed.get('coalesced', 0)} coalesced"
    )
    print(f"load average at the end (1, 5, 15 min): {load}")


if __name__ == "__main__":
    main()
