"""Soak: the demo plant at full load for a long time — does anything grow or slip?

Starts ``gridctl run`` on the demo config as its own process (the simulated
plant as its children, every RS-485 line polled continuously, the verification
line and warehouse idle-ready), with its journal, sockets and ptys in a temp
directory and every TCP port moved to a free one, then loads it from outside:

- OPC UA clients (``--clients``, anonymous) each subscribed to every variable
  of the address space, counting the notifications they receive;
- a Prometheus scrape every second (the scrape itself is part of the load).

Every ``--sample-s`` seconds it prints the service's RSS, open fds and threads,
the simulator's RSS, fast-task cycles and overruns, bus transactions, and
dropped items on every bounded queue (OPC UA notifications included). At the
end: RSS growth over the first and second half after warm-up — it must
flatten (a leak grows linearly) — fd growth, overruns and drops.

    python bench/soak.py [--minutes 30] [--clients 2] [--sample-s 30]

Exit status 1 when RSS keeps growing or fds leak; overruns and drops are
reported (they depend on the box), not judged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from asyncua import Client, ua

ROOT = Path(__file__).resolve().parents[1]
GRIDCTL = Path(sys.executable).parent / "gridctl"
PAGE = os.sysconf("SC_PAGE_SIZE")

METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def soak_config(tmp: Path, config: Path) -> tuple[Path, int, str]:
    """The demo config with its state under ``tmp`` and free ports (other runs may share the box)."""
    text = config.read_text()
    text = text.replace('"var/', f'"{tmp}/var/')
    text = text.replace('scheme_dir = "config/', f'scheme_dir = "{ROOT}/config/')
    metrics = free_port()
    text = re.sub(r"(?m)^port = 9108$", f"port = {metrics}", text)
    for old in sorted(set(re.findall(r"127\.0\.0\.1:(\d+)", text))):
        text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{free_port()}")
    endpoint = re.search(r'endpoint = "(opc\.tcp://[^"]+)"', text)
    assert endpoint, "the soak needs [opcua] enabled"
    path = tmp / "soak.toml"
    path.write_text(text)
    return path, metrics, endpoint.group(1)


def rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(x) for x in (task / "children").read_text().split()]
    return out


def scrape(url: str) -> dict[str, float]:
    """Metric name -> value summed over labels (enough for counters and gauges here)."""
    out: dict[str, float] = {}
    body = urllib.request.urlopen(url, timeout=10).read().decode()
    for line in body.splitlines():
        m = METRIC.match(line)
        if m is None or line.startswith("#"):
            continue
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        if name.endswith("_created"):
            continue
        name = name.removesuffix("_total")  # counters are exposed as <name>_total
        try:
            v = float(value)
        except ValueError:
            continue
        out[name] = out.get(name, 0.0) + v
        if name == "gridctl_queue_dropped" and labels:
            out[f"{name}{labels}"] = v
    return out


@dataclass
class Subscriber:
    notifications: int = 0
    items: int = 0
    errors: list[str] = field(default_factory=list)

    def datachange_notification(self, node: object, val: object, data: object) -> None:
        self.notifications += 1

    def status_change_notification(self, status: object) -> None:
        self.errors.append(str(status))


async def variables(client: Client) -> list[object]:
    """Every variable under Objects (breadth first over hierarchical references)."""
    out, frontier = [], [client.nodes.objects]
    while frontier:
        nxt = []
        for node in frontier:
            for child in await node.get_children(nodeclassmask=ua.NodeClass.Object):
                if child.nodeid.NamespaceIndex != 0:
                    nxt.append(child)
            out += [
                v
                for v in await node.get_children(nodeclassmask=ua.NodeClass.Variable)
                if v.nodeid.NamespaceIndex != 0
            ]
        frontier = nxt
    return out


async def subscribe_all(endpoint: str, sub: Subscriber) -> Client:
    # metrics come up before the OPC UA server (start order): retry until it listens
    deadline = time.monotonic() + 120
    while True:
        client = Client(endpoint, timeout=30)
        try:
            await client.connect()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1.0)
    nodes = await variables(client)
    subscription = await client.create_subscription(500, sub)
    for i in range(0, len(nodes), 1000):  # the server caps items per request
        await subscription.subscribe_data_change(nodes[i : i + 1000], queuesize=1)
    sub.items = len(nodes)
    return client


async def wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gridctl run exited with {proc.returncode} during start-up")
        try:
            await asyncio.to_thread(scrape, url)
            return
        except OSError:
            await asyncio.sleep(0.5)
    raise SystemExit(f"gridctl run not up after {timeout:.0f} s")


def mib(n: float) -> str:
    return f"{n / 2**20:8.1f}"


async def soak(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="gridctl-soak-"))
    (tmp / "var").mkdir()
    config, metrics_port, endpoint = soak_config(tmp, Path(args.config))
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    log = (tmp / "service.log").open("wb")
    proc = subprocess.Popen(
        [str(GRIDCTL), "run", "--config", str(config)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    clients: list[Client] = []
    subs = [Subscriber() for _ in range(args.clients)]
    try:
        await wait_up(url, proc, 120)
        for s in subs:
            clients.append(await subscribe_all(endpoint, s))
        duration = args.minutes * 60
        print(
            f"soak: gridctl run pid {proc.pid}, {args.minutes:g} min, {args.clients} OPC UA "
            f"client(s) × {subs[0].items if subs else 0} items, scrape 1 Hz, state in {tmp}",
            flush=True,
        )
        print(
            f"{'t s':>6}{'RSS MiB':>9}{'sim MiB':>9}{'fds':>5}{'thr':>5}{'cycles':>9}"
            f"{'overrun':>8}{'bus tx':>9}{'notif':>9}{'dropped':>8}",
            flush=True,
        )
        t0 = time.monotonic()
        samples: list[tuple[float, int, int, float, float]] = []  # t, rss, fds, overruns, dropped
        last: dict[str, float] = {}
        next_sample = 0.0
        while (elapsed := time.monotonic() - t0) < duration:
            if proc.poll() is not None:
                raise SystemExit(f"gridctl run died (exit {proc.returncode}); log in {tmp}")
            last = await asyncio.to_thread(scrape, url)
            if elapsed >= next_sample:
                rss = rss_bytes(proc.pid)
                sim = sum(rss_bytes(c) for c in children(proc.pid))
                nfd = fds(proc.pid)
                over = last.get("gridctl_cycle_overruns", 0.0)
                dropped = last.get("gridctl_queue_dropped", 0.0)
                samples.append((elapsed, rss, nfd, over, dropped))
                print(
                    f"{elapsed:6.0f}{mib(rss)} {mib(sim)}{nfd:5d}{threads(proc.pid):5d}"
                    f"{last.get('gridctl_cycle_cycles', 0):9.0f}{over:8.0f}"
                    f"{last.get('gridctl_bus_transactions', 0):9.0f}"
                    f"{sum(s.notifications for s in subs):9d}{dropped:8.0f}",
                    flush=True,
                )
                next_sample += args.sample_s
            await asyncio.sleep(1.0)
    finally:
        for c in clients:
            with contextlib.suppress(Exception):
                await c.disconnect()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
    return verdict(samples, last, subs, args)


def verdict(
    samples: list[tuple[float, int, int, float, float]],
    last: dict[str, float],
    subs: list[Subscriber],
    args: argparse.Namespace,
) -> int:
    # warm-up: caches, the address space and the first poll rounds settle first
    warm = [s for s in samples if s[0] >= min(args.warmup_s, samples[-1][0] / 3)]
    if len(warm) < 3:
        print("too few samples after warm-up to judge growth")
        return 1
    mid = len(warm) // 2
    first = warm[mid][1] - warm[0][1]
    second = warm[-1][1] - warm[mid][1]
    span = warm[-1][0] - warm[0][0]
    slope_kib_min = (warm[-1][1] - warm[0][1]) / 1024 / max(span / 60, 1e-9)
    # flat: the second half grows at most half as much as the first, or by less than
    # 2 MiB (allocator noise); a leak grows the same in both halves
    flat = second <= max(first / 2, 2 * 2**20)
    fd_growth = warm[-1][2] - warm[0][2]
    fd_ok = fd_growth <= 4
    drops = {k: v for k, v in last.items() if k.startswith("gridctl_queue_dropped{") and v}
    print()
    print(f"RSS after warm-up {mib(warm[0][1]).strip()} MiB → end {mib(warm[-1][1]).strip()} MiB")
    print(
        f"RSS growth: first half {first / 2**20:+.1f} MiB, second half {second / 2**20:+.1f} MiB "
        f"({slope_kib_min:+.0f} KiB/min overall): {'flattens' if flat else 'STILL GROWING'}"
    )
    print(
        f"fd count {warm[0][2]} → {warm[-1][2]} ({fd_growth:+d}): {'stable' if fd_ok else 'LEAK'}"
    )
    print(
        f"cycle overruns {last.get('gridctl_cycle_overruns', 0):.0f} of "
        f"{last.get('gridctl_cycle_cycles', 0):.0f} cycles; bus transactions "
        f"{last.get('gridctl_bus_transactions', 0):.0f}; journal failed writes "
        f"{last.get('gridctl_journal_failed_writes', 0):.0f}"
    )
    print(
        f"OPC UA notifications received {sum(s.notifications for s in subs)}; dropped on queues: "
        + (
            ", ".join(f"{k[len('gridctl_queue_dropped') :]} {v:.0f}" for k, v in drops.items())
            or "none"
        )
    )
    errors = [e for s in subs for e in s.errors]
    if errors:
        print(f"client status changes: {errors[:3]}")
    print(f"  {'PASS' if flat else 'FAIL'}  RSS growth flattens")
    print(f"  {'PASS' if fd_ok else 'FAIL'}  no fd leak")
    return 0 if flat and fd_ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument(
        "--clients", type=int, default=2, help="OPC UA clients subscribed to everything"
    )
    ap.add_argument("--sample-s", type=float, default=None, help="default: duration / 30, ≥ 5 s")
    ap.add_argument("--warmup-s", type=float, default=120.0)
    ap.add_argument("--config", default=str(ROOT / "config" / "demo.toml"))
    args = ap.parse_args()
    if args.sample_s is None:
        args.sample_s = max(5.0, args.minutes * 60 / 30)
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
