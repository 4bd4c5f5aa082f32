"""OPC UA server benchmark: gridctl's server against naive asyncua in the same run.

- model build: 10 000 meters × 12 quantities, built in bulk into a hierarchy,
  against a flat naive model (``add_variable`` one by one under one folder);
  the naive flat build is O(n²) in siblings, so it is measured on a subset and
  compared per node (the ratio only grows with size);
- update rate: values/s from the process image into the address space with 0,
  1 and 5 subscribed clients, against ``Node.write_value`` per value;
- change → notification latency p99 with one and five subscribed clients.

The clients run in the same process and event loop as the server (decoding
notifications competes with publishing), so "with clients" rates and
latencies are pessimistic compared with clients on other machines.

Usage: python bench/opcua.py [--meters 10000] [--naive-meters 1000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from asyncua import Client, Server, ua

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.process_image import ProcessImage
from opcua_server import OpcUaConfig, OpcUaServer

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
METERS_PER_BUS = 250
INTERVAL_MS = 100
SUBSCRIBED = 2_000  # monitored items per client


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


class Sink:
    def __init__(self) -> None:
        self.count = 0
        self.latencies: list[float] = []
        self.record = False

    def datachange_notification(self, node, val, data) -> None:
        self.count += 1
        if self.record:
            src = data.monitored_item.Value.SourceTimestamp
            if src is not None:
                self.latencies.append(time.time() - src.timestamp())


async def subscribe(endpoint: str, ns_uri: str, ids: list[ua.NodeId], n: int) -> list:
    clients = []
    for _ in range(n):
        client = Client(endpoint, timeout=60)
        await client.connect()
        ns = await client.get_namespace_index(ns_uri)
        sink = Sink()
        sub = await client.create_subscription(INTERVAL_MS, sink)
        nodes = [client.get_node(ua.NodeId(i.Identifier, ns)) for i in ids]
        for start in range(0, len(nodes), 500):
            await sub.subscribe_data_change(nodes[start : start + 500], queuesize=1)
        clients.append((client, sink))
    await asyncio.sleep(2 * INTERVAL_MS / 1000)
    return clients


async def close(clients: list) -> None:
    for client, _ in clients:
        await client.disconnect()


# -- gridctl ---------------------------------------------------------------------
async def gridctl_run(meters: int, updates: int, clients_n: tuple[int, ...]) -> dict:
    image = ProcessImage()
    names = tag_names(meters)
    for name, unit in names:
        image.define(name, unit)
    cfg = OpcUaConfig(
        endpoint=f"opc.tcp://127.0.0.1:{free_port()}/gridctl",
        security_policies=["None"],
        anonymous="read-only",
        queue_size=max(200_000, updates * 2),
    )
    srv = OpcUaServer(cfg, image, state_dir=Path(tempfile.mkdtemp()))
    gc.collect()
    before = rss()
    await srv.start()
    after = rss()
    gc.freeze()
    res: dict = {
        "build_s": srv.model_build_s,
        "nodes": srv.model_nodes,
        "rss_per_node": (after - before) / srv.model_nodes,
        "rate": {},
    }
    ns = srv.namespace_index
    sub_ids = [ua.NodeId(n, ns) for n, _ in names[:SUBSCRIBED]]
    value = 0.0
    for n in clients_n:
        clients = await subscribe(cfg.endpoint, cfg.namespace, sub_ids, n)
        value += 1.0
        # writes cover the subscribed tags first, then the rest
        target = [name for name, _ in names[:updates]]
        published0 = srv.stats()["published"]
        for _, sink in clients:
            sink.record = True
        t0 = time.perf_counter()
        for i, name in enumerate(target):
            image.write(name, value + i * 1e-6)
            if i % 2000 == 1999:
                await asyncio.sleep(0)  # a control loop yields between cycles too
        while srv.stats()["published"] - published0 < len(target):
            await asyncio.sleep(0.001)
        elapsed = time.perf_counter() - t0
        res["rate"][n] = len(target) / elapsed
        await asyncio.sleep(3 * INTERVAL_MS / 1000)
        if n:
            lat = sorted(x for _, s in clients for x in s.latencies)
            if lat:
                res.setdefault("p99", {})[n] = lat[int(0.99 * (len(lat) - 1))]
                res.setdefault("delivered", {})[n] = len(lat)
        await close(clients)
    res["dropped"] = srv.stats()["dropped"]
    await srv.stop()
    return res


# -- naive asyncua ---------------------------------------------------------------------
async def naive_run(meters: int, updates: int, clients_n: tuple[int, ...]) -> dict:
    server = Server()
    await server.init()
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/naive"
    server.set_endpoint(endpoint)
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace("urn:naive")
    names = tag_names(meters)
    gc.collect()
    before = rss()
    t0 = time.perf_counter()
    folder = await server.nodes.objects.add_folder(ns, "flat")
    nodes = []
    for name, _unit in names:
        nodes.append(await folder.add_variable(ua.NodeId(name, ns), name, 0.0))
    build = time.perf_counter() - t0
    after = rss()
    await server.start()
    res: dict = {
        "build_s": build,
        "nodes": len(nodes),
        "rss_per_node": (after - before) / len(nodes),
        "rate": {},
    }
    sub_ids = [n.nodeid for n in nodes[:SUBSCRIBED]]
    value = 0.0
    for n in clients_n:
        clients = await subscribe(endpoint, "urn:naive", sub_ids, n)
        value += 1.0
        target = nodes[: min(updates, len(nodes))]
        t0 = time.perf_counter()
        for i, node in enumerate(target):
            await node.write_value(value + i * 1e-6)
        res["rate"][n] = len(target) / (time.perf_counter() - t0)
        await close(clients)
    await server.stop()
    return res


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meters", type=int, default=10_000)
    parser.add_argument("--naive-meters", type=int, default=1_000)
    parser.add_argument("--updates", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="0 and 1 client only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    clients_n = (0, 1) if args.quick else (0, 1, 5)
    naive_updates = min(args.updates, args.naive_meters * len(QUANTITIES))

    ours = await gridctl_run(args.meters, args.updates, clients_n)
    naive = await naive_run(args.naive_meters, naive_updates, clients_n)

    vars_ours = args.meters * len(QUANTITIES)
    per_ours = ours["build_s"] / vars_ours
    per_naive = naive["build_s"] / naive["nodes"]
    print(
        f"model: gridctl {args.meters} meters = {vars_ours} variables ({ours['nodes']} nodes with "
        f"units, ranges, folders) in {ours['build_s']:.2f} s: {per_ours * 1e6:.1f} µs/variable, "
        f"{ours['rss_per_node']:.0f} B RSS/node"
    )
    print(
        f"       naive flat {args.naive_meters} meters = {naive['nodes']} bare variables in "
        f"{naive['build_s']:.2f} s: {per_naive * 1e6:.1f} µs/variable, "
        f"{naive['rss_per_node']:.0f} B RSS/variable"
    )
    print(
        f"       build ratio per variable: {per_naive / per_ours:.0f}x (naive flat is O(n²) in "
        f"siblings and measured at {naive['nodes']} variables: at full size it is worse)"
    )
    for n in clients_n:
        r_o, r_n = ours["rate"][n], naive["rate"][n]
        print(
            f"updates/s with {n} client(s): gridctl {r_o:,.0f}  naive {r_n:,.0f}  "
            f"ratio {r_o / r_n:.1f}x"
        )
    for n, p99 in ours.get("p99", {}).items():
        print(
            f"change→notification p99 with {n} client(s): {p99 * 1000:.0f} ms "
            f"({p99 * 1000 / INTERVAL_MS:.2f} publishing intervals of {INTERVAL_MS} ms; "
            f"{ours['delivered'][n]} notifications)"
        )
    print(f"publisher drops: {ours['dropped']}")


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
