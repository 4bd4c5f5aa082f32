"""A DL/T 645 meter farm: many simulated meters sharing one wire.

The wire is either a pseudo-terminal pair (the controller opens the other end
through pyserial, exactly as a USB RS-485 adapter) or one TCP port (a
transparent serial server).

Wire timing: a pty delivers bytes instantly, so the farm models the line. A
request counts as received only after its bytes would have taken on the wire
(n × character time; 11 bits for 8E1), the meter answers after its response
delay, and the reply is written out at the character rate in small chunks. A
transaction therefore costs what `transaction_time()` predicts and the bus
figures measured by the controller are real. ``fast`` skips all of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import tty
from collections.abc import Callable
from pathlib import Path
from typing import cast

from drivers.sim import dlt645_wire as wire
from drivers.sim.meter import SimMeter

# Extra response delay of a meter with the "slow" fault: beyond a normal
# response timeout, so its late replies land in the next transaction.
SLOW_EXTRA_DELAY_S = 1.2
# Fraction of replies a "noisy" line corrupts (the rest only get garbage around them).
NOISY_CORRUPT_RATIO = 0.2
# Requests waiting for the simulated wire (a real line holds one; this is slack).
MAX_PENDING_REQUESTS = 64
# Reply bytes are written in chunks of about this much wire time.
CHUNK_WIRE_TIME_S = 0.01


class MeterFarm:
    """Meters on one wire; sans-wire: bytes in via `receive`, out via the `send` callback."""

    def __init__(
        self,
        name: str,
        meters: list[SimMeter],
        *,
        char_time_s: float,
        response_delay_s: float,
        fast: bool = False,
        max_frame_data: int = 200,
        seed: int = 1,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.meters: dict[str, SimMeter] = {m.address: m for m in meters}
        self.char_time_s = char_time_s
        self.response_delay_s = response_delay_s
        self.fast = fast
        self.max_frame_data = max_frame_data
        self._wall = wall
        self._rng = random.Random(f"{seed}:{name}")
        self._deframer = wire.Dlt645Deframer()
        self._pending: asyncio.Queue[tuple[wire.Dlt645Frame, float]] = asyncio.Queue(
            MAX_PENDING_REQUESTS
        )
        self._rx_bytes_since_frame = 0
        self._send: Callable[[bytes], None] | None = None
        self.requests = 0
        self.replies = 0
        self.dropped_requests = 0

    # -- wire side -------------------------------------------------------------
    def attach(self, send: Callable[[bytes], None] | None) -> None:
        self._send = send

    def receive(self, data: bytes) -> None:
        """Bytes from the controller side of the wire."""
        now = asyncio.get_running_loop().time()
        self._rx_bytes_since_frame += len(data)
        for frame in self._deframer.feed(data):
            # the request's last byte would arrive this long after we saw it all at once
            done = now + (0.0 if self.fast else self._rx_bytes_since_frame * self.char_time_s)
            self._rx_bytes_since_frame = 0
            try:
                self._pending.put_nowait((frame, done))
            except asyncio.QueueFull:
                self.dropped_requests += 1

    def reset_line(self) -> None:
        self._deframer.reset()
        self._rx_bytes_since_frame = 0

    # -- the line -----------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            frame, done = await self._pending.get()
            self.requests += 1
            delay, replies = self._answer(frame, loop.time())
            if not replies:
                continue
            if not self.fast:
                await _sleep_until(loop, done + delay)
            for reply in replies:
                await self._transmit(loop, reply)
                self.replies += 1

    def _answer(self, frame: wire.Dlt645Frame, now: float) -> tuple[float, list[bytes]]:
        """(response delay, reply byte strings) for one request."""
        wall = self._wall()
        address = frame.address
        if frame.from_meter:
            return 0.0, []  # another master's reply or our own echo: not a request
        if address == wire.BROADCAST_ADDRESS:
            for meter in self.meters.values():
                if "dead" in meter.faults:
                    continue
                if frame.function == wire.FN_BROADCAST_TIME:
                    meter.broadcast_time(frame.data, wall)
                elif frame.function == wire.FN_FREEZE:
                    meter.handle(frame, now, wall)
            return 0.0, []
        if address == wire.WILDCARD_ADDRESS:
            live = [m for m in self.meters.values() if "dead" not in m.faults]
            if not live:
                return 0.0, []
            if len(live) > 1:
                # every meter answers at once: the master hears a collision
                return self.response_delay_s, [self._rng.randbytes(18)]
            meter = live[0]
        else:
            found = self.meters.get(address)
            if found is None or "dead" in found.faults:
                return 0.0, []
            meter = found
        replies = meter.handle(frame, now, wall, self.max_frame_data)
        delay = self.response_delay_s
        if "slow" in meter.faults:
            delay += SLOW_EXTRA_DELAY_S
        if "bad_checksum" in meter.faults:
            replies = [_corrupt_checksum(r) for r in replies]
        if "noisy" in meter.faults:
            replies = [self._noisy(r) for r in replies]
        return delay, replies

    def _noisy(self, reply: bytes) -> bytes:
        rng = self._rng
        prefix = bytes(
            rng.choice((0x68, 0x16, 0xFE, 0x00, 0xFF, rng.randrange(256)))
            for _ in range(rng.randrange(1, 9))
        )
        body = bytearray(reply)
        if rng.random() < NOISY_CORRUPT_RATIO:
            i = rng.randrange(len(body))
            body[i] ^= 1 << rng.randrange(8)
        suffix = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 4)))
        return prefix + bytes(body) + suffix

    async def _transmit(self, loop: asyncio.AbstractEventLoop, data: bytes) -> None:
        send = self._send
        if send is None:
            return
        if self.fast:
            send(data)
            return
        chunk = max(1, round(CHUNK_WIRE_TIME_S / self.char_time_s))
        start = loop.time()
        for i in range(0, len(data), chunk):
            part = data[i : i + chunk]
            # the chunk is complete on the wire once its last character has been clocked out
            await _sleep_until(loop, start + (i + len(part)) * self.char_time_s)
            send = self._send
            if send is None:
                return
            send(part)

    # -- faults ---------------------------------------------------------------------
    def set_fault(self, address: str, kind: str, on: bool = True) -> None:
        meter = self.meters[address]
        if on:
            meter.faults.add(kind)
        else:
            meter.faults.discard(kind)


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    delay = when - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


def _corrupt_checksum(frame: bytes) -> bytes:
    body = bytearray(frame)
    if len(body) >= 2:
        body[-2] ^= 0x5A  # CS is the byte before the 0x16 end byte
    return bytes(body)


# ---------------------------------------------------------------------------
# wires
# ---------------------------------------------------------------------------


class PtyWire:
    """A pseudo-terminal pair; the controller side is symlinked to ``link_path``."""

    def __init__(self, farm: MeterFarm, link_path: Path) -> None:
        self.farm = farm
        self.link_path = link_path
        self._master = -1
        self._slave = -1

    async def start(self) -> None:
        master, slave = os.openpty()
        # raw mode: no echo, no CR/LF translation, no line buffering — a plain byte pipe
        tty.setraw(slave)
        tty.setraw(master)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        slave_name = os.ttyname(slave)
        self.link_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.link_path.unlink()
        self.link_path.symlink_to(slave_name)
        loop = asyncio.get_running_loop()
        loop.add_reader(master, self._readable)
        self.farm.attach(self._write)

    def _readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError:
            return  # EIO while no process has the controller side open
        if data:
            self.farm.receive(data)

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._master, data)

    async def stop(self) -> None:
        self.farm.attach(None)
        if self._master >= 0:
            asyncio.get_running_loop().remove_reader(self._master)
            os.close(self._master)
            os.close(self._slave)
            self._master = self._slave = -1
        with contextlib.suppress(FileNotFoundError):
            if self.link_path.is_symlink():
                self.link_path.unlink()

    @property
    def description(self) -> str:
        return str(self.link_path)


class _FarmTcpProtocol(asyncio.Protocol):
    def __init__(self, wire: TcpWire) -> None:
        self.wire = wire
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: duck-type
        transport = cast(asyncio.Transport, transport)
        old = self.wire.active
        if old is not None and old.transport is not None:
            old.transport.close()  # a transparent server serves one master at a time
        self.transport = transport
        self.wire.active = self
        self.wire.farm.reset_line()
        self.wire.farm.attach(transport.write)

    def data_received(self, data: bytes) -> None:
        if self.wire.active is self:
            self.wire.farm.receive(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.wire.active is self:
            self.wire.active = None
            self.wire.farm.attach(None)


class TcpWire:
    """The farm behind one TCP port (a transparent serial-to-Ethernet server)."""

    def __init__(self, farm: MeterFarm, host: str, port: int) -> None:
        self.farm = farm
        self.host = host
        self.port = port
        self.active: _FarmTcpProtocol | None = None
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _FarmTcpProtocol(self), self.host, self.port, reuse_address=True
        )

    async def stop(self) -> None:
        self.farm.attach(None)
        if self.active is not None and self.active.transport is not None:
            self.active.transport.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def description(self) -> str:
        return f"tcp://{self.host}:{self.port}"
