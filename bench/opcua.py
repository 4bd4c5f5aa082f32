"""OPC UA server benchmark: gridctl's server as deployed against naive asyncua, same run.

Every party runs in its own process, as on site:

- **gridctl**: this process plays the controller: a process image with
  ``--meters`` meters × 12 quantities and the server process started the way
  the service starts it (:class:`OpcUaServerProcess`: ``python -m
  opcua_server.process`` fed by the ``ImageFeed`` over the Unix-socket channel).
  Values are written into the image; the rate is the number of values the
  server process wrote into its address space per second, from the counters it
  sends back over the channel (``stats`` frames).
- **naive**: a plain asyncua ``Server`` in its own process (plain Double
  variables, no types; one folder per meter, since one flat folder of 10⁵
  variables takes hours to build), updated with ``Node.write_value`` per value
  by a loop in that process; the rate is the number of completed writes per second.
- **clients**: 0, 1 and 5 asyncua ``Client`` processes, each subscribed to
  every meter's ``power_active`` (one monitored item per meter, queue size 1,
  publishing interval 100 ms).

Writes go round-robin over every quantity of every meter (a meter poll
updates all of its values), so 1 in 12 written values is monitored. Each value
is the wall time of its write, so a client measures change → notification
latency end to end (controller write, channel, server, publish, client decode).

Two phases per client count and server:

1. **sustained rate**: gridctl's writer keeps the feed's backlog bounded (it
   writes while the feed holds under 8 frames of changes and its socket buffer
   is small), so the rate is what the feed and the server sustain, not what the
   writer offers; naive writes as fast as its loop goes, yielding every 500
   writes so clients are served;
2. **latency**: a fixed offered rate, half the rate that server sustained in
   phase 1; the p99 is compared with the publishing interval.

Model build: gridctl's model build time (reported by the server process) per
variable against a flat naive model (``add_variable`` one by one under one
folder, in this process); the naive flat build is O(n²) in siblings, so it is
measured on ``--naive-meters`` and compared per variable (the ratio only
grows with size).

Targets (printed, never asserted): ≥ 4× naive update rate with 0, 1 and 5
clients; p99 latency ≤ 2 publishing intervals; build ≥ 10× faster per variable.

Usage: python bench/opcua.py [--meters 10000] [--naive-meters 500] [--seconds 6] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import math
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from asyncua import Client, Server, ua

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.process_image import ProcessImage
from opcua_server import OpcUaConfig
from opcua_server.server_process import OpcUaServerProcess

QUANTITIES = (
    ("energy_forward_active", "kWh"),
    ("energy_reverse_active", "kWh"),
    ("voltage_a", "V"),
    ("voltage_b", "V"),
    ("voltage_c", "V"),
    ("current_a", "A"),
    ("current_b", "A"),
    ("current_c", "A"),
    ("power_active", "kW"),
    ("power_reactive", "kvar"),
    ("power_factor", "PF"),
    ("frequency", "Hz"),
)
MONITORED = "power_active"
METERS_PER_BUS = 250
INTERVAL_MS = 100  # clients' publishing interval
TICK_S = 0.01  # the paced writers write once per tick, like the 10 ms fast task
NAIVE_YIELD = 500  # naive writes between loop yields (clients must be served)
SUBSCRIBE_CHUNK = 1_000
DRAIN_S = 3 * INTERVAL_MS / 1000  # after a phase: let the last notifications arrive
TARGET_RATE = 4.0
TARGET_LATENCY_INTERVALS = 2.0
TARGET_BUILD = 10.0
SCRIPT = str(Path(__file__).resolve())


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tag_names(meters: int) -> list[tuple[str, str]]:
    out = []
    for m in range(meters):
        base = f"buses/bus{m // METERS_PER_BUS}/meters/{m:012d}"
        out.extend((f"{base}/{q}", unit) for q, unit in QUANTITIES)
    return out


def monitored_names(meters: int) -> list[str]:
    return [name for name, _ in tag_names(meters) if name.endswith("/" + MONITORED)]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


class Paced:
    """Absolute 10 ms ticks; how many values are due at each (fractions carried)."""

    def __init__(self, rate: float) -> None:
        self.per_tick = rate * TICK_S
        self.carry = 0.0
        self.next = time.monotonic()

    async def due(self) -> int:
        self.next += TICK_S
        delay = self.next - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)
        self.carry += self.per_tick
        n = int(self.carry)
        self.carry -= n
        return n


# -- child: a subscribed client ------------------------------------------------------
class Sink:
    def __init__(self) -> None:
        self.count = 0
        self.since = math.inf  # record values written at or after this wall time
        self.latencies: list[float] = []

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        now = time.time()
        self.count += 1
        if isinstance(val, float) and val >= self.since:
            self.latencies.append(now - val)


async def client_main(endpoint: str, ns_uri: str, meters: int) -> None:
    # The watchdog probes the server every interval and, by default, gives up
    # after 1 s: a server busy creating another client's 10 000 items is not down.
    client = Client(endpoint, timeout=120, watchdog_intervall=30.0)
    await client.connect()
    ns = await client.get_namespace_index(ns_uri)
    sink = Sink()
    sub = await client.create_subscription(INTERVAL_MS, sink)
    nodes = [client.get_node(ua.NodeId(name, ns)) for name in monitored_names(meters)]
    for start in range(0, len(nodes), SUBSCRIBE_CHUNK):
        await sub.subscribe_data_change(nodes[start : start + SUBSCRIBE_CHUNK], queuesize=1)
    deadline = time.monotonic() + 60
    while sink.count < len(nodes) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    emit({"t": "ready", "items": len(nodes), "initial": sink.count})
    commands = await stdin_reader()
    while line := (await commands.readline()).decode().split():
        if line[0] == "record":
            sink.since = float(line[1])
            sink.latencies = []
        elif line[0] == "report":
            lat = sink.latencies
            emit({"t": "report", "latencies": [round(x, 5) for x in lat]})
            sink.since = math.inf
        elif line[0] == "stop":
            break
    await client.disconnect()


# -- child: the naive server ---------------------------------------------------------
async def naive_main(meters: int) -> None:
    server = Server()
    await server.init()
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/naive"
    server.set_endpoint(endpoint)
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace("urn:naive")
    gc.collect()
    before = rss()
    t0 = time.perf_counter()
    root = await server.nodes.objects.add_folder(ns, "meters")
    nodes = []
    names = tag_names(meters)
    for m in range(meters):
        folder = await root.add_folder(ns, f"m{m}")
        for name, _unit in names[m * len(QUANTITIES) : (m + 1) * len(QUANTITIES)]:
            nodes.append(await folder.add_variable(ua.NodeId(name, ns), name, 0.0))
    build = time.perf_counter() - t0
    after = rss()
    await server.start()
    gc.collect()
    gc.freeze()
    emit(
        {
            "t": "ready",
            "endpoint": endpoint,
            "nodes": len(nodes),
            "build_s": build,
            "rss_per_variable": (after - before) / len(nodes),
        }
    )
    commands = await stdin_reader()
    pos = 0
    while line := (await commands.readline()).decode().split():
        if line[0] == "stop":
            break
        # run RATE SECONDS: RATE "max" writes as fast as the loop goes
        rate, seconds = line[1], float(line[2])
        written = 0
        t0 = time.perf_counter()
        end = t0 + seconds
        if rate == "max":
            while time.perf_counter() < end:
                for _ in range(NAIVE_YIELD):
                    await nodes[pos].write_value(time.time())
                    pos = (pos + 1) % len(nodes)
                written += NAIVE_YIELD
                await asyncio.sleep(0)
        else:
            paced = Paced(float(rate))
            while time.perf_counter() < end:
                for _ in range(await paced.due()):
                    await nodes[pos].write_value(time.time())
                    pos = (pos + 1) % len(nodes)
                    written += 1
        emit({"t": "done", "written": written, "elapsed": time.perf_counter() - t0})
    await server.stop()


# -- the parent ------------------------------------------------------------------------
class Child:
    """A child process of this script, talking JSON lines on stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, *args: str) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            SCRIPT,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=64 << 20,
        )
        return cls(proc)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())

    async def receive(self, timeout: float = 300) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"child {self.proc.pid} exited ({await self.proc.wait()})")
        return json.loads(line)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            try:
                self.send("stop")
                await asyncio.wait_for(self.proc.wait(), 10)
            except (TimeoutError, ConnectionError):
                self.proc.kill()
                await self.proc.wait()


async def start_clients(n: int, endpoint: str, ns_uri: str, meters: int) -> list[Child]:
    clients = [
        await Child.start("--role", "client", "--endpoint", endpoint, "--ns", ns_uri, str(meters))
        for _ in range(n)
    ]
    for c in clients:
        ready = await c.receive()
        if ready["initial"] < ready["items"]:
            print(f"note: a client saw {ready['initial']} of {ready['items']} initial values")
    return clients


async def collect(clients: list[Child]) -> list[float]:
    await asyncio.sleep(DRAIN_S)
    for c in clients:
        c.send("report")
    out: list[float] = []
    for c in clients:
        out.extend((await c.receive())["latencies"])
    return out


class Ours:
    def __init__(self, meters: int, state_dir: Path, sampling_ms: float | None) -> None:
        self.image = ProcessImage()
        self.names = [name for name, _ in tag_names(meters)]
        for name, unit in tag_names(meters):
            self.image.define(name, unit)
        overrides = {} if sampling_ms is None else {"sampling_interval_ms": sampling_ms}
        self.config = OpcUaConfig(
            endpoint=f"opc.tcp://127.0.0.1:{free_port()}/gridctl",
            security_policies=["None"],
            anonymous="read-only",
            **overrides,
        )
        self.proc = OpcUaServerProcess(
            self.config, self.image, state_dir=state_dir, log_level="WARNING"
        )
        self.pos = 0

    def write(self, n: int) -> None:
        names, image, pos = self.names, self.image, self.pos
        for _ in range(n):
            image.write(names[pos], time.time())
            pos = (pos + 1) % len(names)
        self.pos = pos

    async def sustained(self, seconds: float) -> float:
        """Write while the feed keeps up; the rate the server published (its own counters)."""
        feed = self.proc.feed
        # More than the feed sends per flush interval at any rate reached here, so
        # it always has a next frame (it never idles a flush interval).
        limit = 8 * feed.batch_limit
        buffer_limit = 256 << 10  # ~8 000 changes in the socket
        samples: list[tuple[float, int]] = []
        end = time.monotonic() + seconds
        warm = time.monotonic() + min(1.0, seconds / 4)
        while time.monotonic() < end:
            st = feed.stats()
            room = limit - st["queue_length"] - st["pending"]
            if room > 0 and st["buffered_bytes"] < buffer_limit:
                # Up to the bound at once: between two writer turns (~1 ms) the
                # feed must always have a full frame to send.
                self.write(min(room, 2 * feed.batch_limit))
            await asyncio.sleep(0.001)
            srv = feed.server_stats
            if srv and time.monotonic() >= warm and (not samples or srv["time"] != samples[-1][0]):
                samples.append((srv["time"], srv["published"]))
        if len(samples) < 2:
            return math.nan
        (t0, p0), (t1, p1) = samples[0], samples[-1]
        return (p1 - p0) / (t1 - t0)

    async def settle(self, timeout: float = 30.0) -> None:
        """Wait until the feed and the server's queue are empty (the previous phase's
        backlog must not count as latency of the next)."""
        feed = self.proc.feed
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = feed.stats()
            if st["queue_length"] + st["pending"] + st["buffered_bytes"] == 0:
                asked = time.time()
                while time.monotonic() < end and feed.server_stats.get("time", 0) < asked:
                    await asyncio.sleep(0.05)
                if feed.server_stats.get("queue_length", 0) == 0:
                    return
            await asyncio.sleep(0.05)

    async def paced(self, rate: float, seconds: float) -> None:
        paced = Paced(rate)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.write(await paced.due())


async def run_ours(args: argparse.Namespace, clients_n: tuple[int, ...]) -> dict[str, Any]:
    ours = Ours(
        args.meters, Path(tempfile.mkdtemp(prefix="gridctl-bench-opcua-")), args.sampling_ms
    )
    info = await ours.proc.start()
    res: dict[str, Any] = {
        "build_s": info["model_build_s"],
        "nodes": info["model_nodes"],
        "rss_per_node": info["model_rss_bytes"] / max(1, info["model_nodes"]),
        "rate": {},
        "p99": {},
        "p99_saturated": {},
        "offered": {},
        "notifications": {},
        "sampling_ms": ours.config.sampling_interval_ms,
    }
    try:
        for n in clients_n:
            clients: list[Child] = []
            try:
                clients = await start_clients(
                    n, ours.config.endpoint, ours.config.namespace, args.meters
                )
                for c in clients:
                    c.send(f"record {time.time()}")
                res["rate"][n] = rate = await ours.sustained(args.seconds)
                if clients:
                    res["p99_saturated"][n] = percentile(await collect(clients), 0.99)
                await ours.settle()
                res["offered"][n] = offered = rate / 2
                for c in clients:
                    c.send(f"record {time.time()}")
                await ours.paced(offered, args.seconds)
                if clients:
                    lat = await collect(clients)
                    res["p99"][n] = percentile(lat, 0.99)
                    res["notifications"][n] = len(lat)
                await ours.settle()
            except (RuntimeError, TimeoutError, ConnectionError) as exc:
                print(f"note: gridctl with {n} client(s) failed: {exc}")
            finally:
                for c in clients:
                    await c.stop()
        res["server"] = dict(ours.proc.feed.server_stats)
        res["feed"] = ours.proc.feed.stats()
    finally:
        await ours.proc.stop()
    return res


async def run_naive(args: argparse.Namespace, clients_n: tuple[int, ...]) -> dict[str, Any]:
    server = await Child.start("--role", "naive", str(args.meters))
    info = await server.receive(timeout=3600)
    res: dict[str, Any] = {**info, "rate": {}, "p99": {}, "p99_saturated": {}, "offered": {}}
    try:
        for n in clients_n:
            clients: list[Child] = []
            try:
                clients = await start_clients(n, info["endpoint"], "urn:naive", args.meters)
                for c in clients:
                    c.send(f"record {time.time()}")
                server.send(f"run max {args.seconds}")
                done = await server.receive()
                res["rate"][n] = rate = done["written"] / done["elapsed"]
                if clients:
                    res["p99_saturated"][n] = percentile(await collect(clients), 0.99)
                res["offered"][n] = rate / 2
                for c in clients:
                    c.send(f"record {time.time()}")
                server.send(f"run {rate / 2} {args.seconds}")
                await server.receive()
                if clients:
                    res["p99"][n] = percentile(await collect(clients), 0.99)
            except (RuntimeError, TimeoutError, ConnectionError) as exc:
                print(f"note: naive with {n} client(s) failed: {exc}")
            finally:
                for c in clients:
                    await c.stop()
    finally:
        await server.stop()
    return res


async def naive_flat_build(meters: int) -> dict[str, Any]:
    """The flat naive model (one folder, add_variable one by one): build time and RSS."""
    server = Server()
    await server.init()
    ns = await server.register_namespace("urn:naive-flat")
    names = tag_names(meters)
    gc.collect()
    before = rss()
    t0 = time.perf_counter()
    folder = await server.nodes.objects.add_folder(ns, "flat")
    for name, _unit in names:
        await folder.add_variable(ua.NodeId(name, ns), name, 0.0)
    build = time.perf_counter() - t0
    return {"build_s": build, "nodes": len(names), "rss_per_node": (rss() - before) / len(names)}


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


async def main(args: argparse.Namespace) -> None:
    clients_n = (0, 1, 5)
    load = os.getloadavg()
    flat = await naive_flat_build(args.naive_meters)
    gc.collect()
    ours = await run_ours(args, clients_n)
    naive = await run_naive(args, clients_n)

    vars_ours = args.meters * len(QUANTITIES)
    per_ours = ours["build_s"] / vars_ours
    per_flat = flat["build_s"] / flat["nodes"]
    interval_s = INTERVAL_MS / 1000
    print(
        f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"{os.cpu_count()} CPUs; clients subscribe {args.meters} × {MONITORED}, "
        f"publishing interval {INTERVAL_MS} ms, queue size 1; "
        f"gridctl sampling interval {ours['sampling_ms']:g} ms"
    )
    print(
        f"model: gridctl {args.meters} meters = {vars_ours} variables ({ours['nodes']} nodes with "
        f"units, ranges, folders) in {ours['build_s']:.2f} s: {per_ours * 1e6:.1f} µs/variable, "
        f"{ours['rss_per_node']:.0f} B RSS/node (server process)"
    )
    print(
        f"       naive flat {args.naive_meters} meters = {flat['nodes']} bare variables in "
        f"{flat['build_s']:.2f} s: {per_flat * 1e6:.1f} µs/variable, "
        f"{flat['rss_per_node']:.0f} B RSS/variable"
    )
    print(
        f"       naive per-meter folders (the update baseline) {naive['nodes']} variables in "
        f"{naive['build_s']:.2f} s: {naive['build_s'] / naive['nodes'] * 1e6:.1f} µs/variable, "
        f"{naive['rss_per_variable']:.0f} B RSS/variable"
    )
    build_ratio = per_flat / per_ours
    print(
        f"       build ratio per variable vs flat: {build_ratio:.0f}x (target ≥ {TARGET_BUILD:.0f}x) "
        f"{verdict(build_ratio >= TARGET_BUILD)} (naive flat is O(n²) in siblings and measured "
        f"at {flat['nodes']} variables: at full size it is worse)"
    )
    for n in clients_n:
        r_o, r_n = ours["rate"].get(n, math.nan), naive["rate"].get(n, math.nan)
        ratio = r_o / r_n
        print(
            f"updates/s with {n} client(s): gridctl {r_o:,.0f}  naive {r_n:,.0f}  "
            f"ratio {ratio:.1f}x (target ≥ {TARGET_RATE:.0f}x) {verdict(ratio >= TARGET_RATE)}"
        )
    for n in clients_n:
        if not n:
            continue
        p99 = ours["p99"].get(n, math.nan)
        intervals = p99 / interval_s
        print(
            f"change→notification p99 with {n} client(s) at {ours['offered'].get(n, math.nan):,.0f} values/s "
            f"(half the sustained rate): gridctl {p99 * 1000:.0f} ms = {intervals:.2f} publishing "
            f"intervals (target ≤ {TARGET_LATENCY_INTERVALS:.0f}) "
            f"{verdict(intervals <= TARGET_LATENCY_INTERVALS)}; naive {naive['p99'].get(n, math.nan) * 1000:.0f} ms "
            f"at {naive['offered'].get(n, math.nan):,.0f} values/s; "
            f"{ours['notifications'].get(n, 0)} notifications"
        )
        print(
            f"       at the sustained rate (queues full): gridctl p99 "
            f"{ours['p99_saturated'].get(n, math.nan) * 1000:.0f} ms, naive {naive['p99_saturated'].get(n, math.nan) * 1000:.0f} ms"
        )
    end_load = os.getloadavg()
    print(f"load average at the end {end_load[0]:.2f} {end_load[1]:.2f} {end_load[2]:.2f}")
    srv, feed = ours.get("server", {}), ours.get("feed", {})
    print(
        f"gridctl server counters: published {srv.get('published', 0)}, notified "
        f"{srv.get('notified', 0)}, coalesced in a sampling tick {srv.get('sampled_coalesced', 0)}, "
        f"dropped {srv.get('dropped', 0)}; feed: sent {feed.get('changes_sent', 0)}, "
        f"coalesced {feed.get('coalesced', 0)}, dropped {feed.get('dropped', 0)}"
    )


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=10_000)
    parser.add_argument("--naive-meters", type=int, default=500, help="size of the flat build")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each phase")
    parser.add_argument(
        "--sampling-ms",
        type=float,
        default=None,
        help="the server's sampling interval (default: the [opcua] default)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, short phases")
    parser.add_argument("--role", choices=["bench", "client", "naive"], default="bench")
    parser.add_argument("--endpoint", default="")
    parser.add_argument("--ns", default="")
    parser.add_argument("size", nargs="?", type=int, default=0, help="(children) meters")
    args = parser.parse_args()
    if args.quick:
        args.meters = min(args.meters, 1_000)
        args.naive_meters = min(args.naive_meters, 200)
        args.seconds = min(args.seconds, 1.5)
    return args


def run() -> None:
    args = parse()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if args.role == "client":
        asyncio.run(client_main(args.endpoint, args.ns, args.size))
    elif args.role == "naive":
        asyncio.run(naive_main(args.size))
    else:
        asyncio.run(main(args))


if __name__ == "__main__":
    run()
