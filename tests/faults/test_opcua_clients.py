"""Misbehaving OPC UA clients against the inline server: it stays up and keeps serving.

- a client that subscribes to everything and then stops reading its socket;
- many sessions at once, half of them dropped without closing;
- malformed bytes on the wire: garbage, a hello with absurd sizes, a truncated
  message, a valid hello followed by junk.

In every case a well-behaved client connected alongside (or afterwards) reads
and receives the current values, and the image writer (the control side) is
never blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import time
from typing import Any

from asyncua import Client

from controller.process_image import ProcessImage
from tests.opcua_server.conftest import (  # noqa: F401 (fixture)
    client_for,
    nid,
    ns_of,
    start_server,
)

N = 400


def plant_image() -> tuple[ProcessImage, list[str]]:
    image = ProcessImage()
    names = [f"buses/bus{m // 100}/meters/{m:012d}/power_active" for m in range(N)]
    for name in names:
        image.define(name, "kW")
    return image, names


class Latest:
    def __init__(self) -> None:
        self.values: dict[Any, Any] = {}
        self.count = 0

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.values[node.nodeid] = val
        self.count += 1


async def write_round(image: ProcessImage, names: list[str], value: float) -> float:
    """Write every tag; returns the longest single write (the control side's cost)."""
    worst = 0.0
    for name in names:
        t = time.perf_counter()
        image.write(name, value)
        worst = max(worst, time.perf_counter() - t)
    await asyncio.sleep(0)
    return worst


async def wait_until(pred: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return pred()


async def test_subscriber_that_never_reads_does_not_stall_anyone(start_server) -> None:  # noqa: F811
    image, names = plant_image()
    srv = await start_server(image)
    stalled = client_for(srv)
    await stalled.connect()
    ns = await ns_of(stalled)
    sub = await stalled.create_subscription(100, Latest())
    await sub.subscribe_data_change([stalled.get_node(nid(ns, n)) for n in names], queuesize=1)
    # stop reading its socket: the server's sends back up behind it
    stalled.uaclient.protocol.transport.pause_reading()

    good = Latest()
    async with client_for(srv) as client:
        gsub = await client.create_subscription(100, good)
        await gsub.subscribe_data_change([client.get_node(nid(ns, n)) for n in names], queuesize=1)
        worst = 0.0
        for rnd in range(30):  # ~ 30 × 400 changes with a wedged consumer attached
            worst = max(worst, await write_round(image, names, float(rnd)))
            await asyncio.sleep(0.05)
        last = client.get_node(nid(ns, names[-1]))
        assert await wait_until(lambda: good.values.get(last.nodeid) == 29.0, 10)
        assert all(v == 29.0 for v in good.values.values()) and len(good.values) == N
        assert await last.read_value() == 29.0
    # an image write is a queue append, whatever the clients do
    assert worst < 0.05, f"an image write took {worst * 1000:.1f} ms"
    stalled.uaclient.protocol.transport.abort()
    # the server is still up for the next client
    async with client_for(srv) as client:
        assert await client.get_node(nid(ns, names[0])).read_value() == 29.0


async def test_many_sessions_half_dropped_without_closing(start_server) -> None:  # noqa: F811
    image, names = plant_image()
    # 40 clients from one address: above the per-address default (16) on purpose.
    srv = await start_server(image, config_overrides={"max_connections_per_peer": 64})
    clients = [Client(srv.endpoint, timeout=10) for _ in range(40)]
    await asyncio.gather(*(c.connect() for c in clients))
    ns = await ns_of(clients[0])
    image.write(names[5], 5.0)
    await asyncio.sleep(0.3)
    values = await asyncio.gather(*(c.get_node(nid(ns, names[5])).read_value() for c in clients))
    assert values == [5.0] * 40
    for i, c in enumerate(clients):
        if i % 2:
            c.uaclient.protocol.transport.abort()  # vanished: no CloseSession, no goodbye
        else:
            await c.disconnect()
    # the orphaned sessions do not keep the others or newcomers from being served
    image.write(names[5], 6.0)
    await asyncio.sleep(0.3)
    async with client_for(srv, "vera") as client:
        assert await client.get_node(nid(ns, names[5])).read_value() == 6.0


def hello(receive: int = 65536, send: int = 65536, max_msg: int = 0, chunks: int = 0) -> bytes:
    url = b"opc.tcp://127.0.0.1/gridctl"
    body = struct.pack("<IIIII", 0, receive, send, max_msg, chunks)
    body += struct.pack("<i", len(url)) + url
    return b"HELF" + struct.pack("<I", 8 + len(body)) + body


async def poke(port: int, payload: bytes, hold: asyncio.Event) -> bytes:
    """Send raw bytes, keep the connection until ``hold`` is set; return what came back.

    From 127.0.0.2: another host than the real client, whose connections the
    per-address limit keeps apart from the junk's."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
    writer.write(payload)
    await writer.drain()
    got = b""
    with contextlib.suppress(TimeoutError, ConnectionError):
        got = await asyncio.wait_for(reader.read(4096), 0.5)
    await hold.wait()
    writer.close()
    return got


async def test_malformed_requests_leave_the_server_up(start_server) -> None:  # noqa: F811
    image, names = plant_image()
    # Room for every payload below from one address, so each reaches the protocol.
    srv = await start_server(image, config_overrides={"max_connections_per_peer": 128})
    port = int(srv.endpoint.rsplit(":", 1)[1].split("/")[0])
    rng = random.Random(62541)
    payloads = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        rng.randbytes(2048),
        hello(receive=1, send=1),  # buffer sizes below the protocol minimum
        hello(receive=2**31, send=2**31, max_msg=2**31, chunks=2**31),
        hello()[:20],  # truncated
        b"HELF" + struct.pack("<I", 2**31) + b"\x00" * 16,  # length far beyond what follows
        b"MSGF" + struct.pack("<I", 64) + rng.randbytes(56),  # a message with no channel
        hello() + rng.randbytes(512),  # valid hello, then junk
        *(rng.randbytes(rng.randint(1, 300)) for _ in range(20)),
    ]
    payloads += [rng.randbytes(64) for _ in range(50)]
    # all at once, and left open (half-sent headers included) while a real client works
    hold = asyncio.Event()
    pokes = asyncio.gather(*(poke(port, p, hold) for p in payloads))
    await asyncio.sleep(0.7)
    image.write(names[1], 42.0)
    await asyncio.sleep(0.3)
    async with client_for(srv, "vera") as client:
        ns = await ns_of(client)
        assert await client.get_node(nid(ns, names[1])).read_value() == 42.0
    hold.set()
    answers = await pokes
    # nothing malformed was answered as if it were valid: at most an ERRF, or a close
    for payload, answer in zip(payloads, answers, strict=True):
        assert answer == b"" or answer[:4] in (b"ERRF", b"ACKF"), (payload[:16], answer[:16])
        if answer[:4] == b"ACKF":
            assert payload.startswith(b"HELF")  # only a hello gets an acknowledge
    # and after they are gone, the server is still there
    async with client_for(srv) as client:
        assert await client.get_node(nid(ns, names[1])).read_value() == 42.0
