"""Field-bus faults the simulators do not script: a DL/T 645 meter behind a transparent
serial server (TCP) or on a pty, misbehaving on purpose, against the real ``Dlt645Bus``.

Covered elsewhere and not repeated here: noisy lines and bad checksums
(tests/drivers/test_noise.py), dead meters and quarantine (test_meter_line.py),
exception replies (test_dlt645_client.py, test_sim_process.py), a Modbus server
going away (test_modbus.py).

Every test checks two things: the fault was seen for what it is (counter,
error type, bus state), and nothing was lost or mixed up — each read returns
the value of the meter and DI asked for, or a clear error, never another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller import _core_rs as core
from controller.process_image import ProcessImage, Quality
from drivers.config import FieldConfig
from drivers.errors import TransactionError, TransportClosed
from drivers.plant import FieldPlant

A, B = "000000000001", "000000000002"
DIS = ["02010100", "02010200", "02010300", "00010000"]
TIMEOUT_S = 0.2


def value_of(address: str, di: str) -> float:
    """A different, recognisable value per (meter, DI): a mix-up cannot go unnoticed."""
    base = {"02010100": 220.0, "02010200": 221.0, "02010300": 222.0, "00010000": 1000.0}[di]
    return base + int(address) / 10


def reply(address: str, di: str, value: float | None = None) -> bytes:
    v = value_of(address, di) if value is None else value
    return core.dlt645_reply(
        address, core.FN_READ, bytes.fromhex(di)[::-1] + core.encode_value(di, v)
    )


# A script answers one request with a list of steps: bytes to send, a float to wait,
# or "reset" to drop the connection with an RST.
Step = bytes | float | str
Script = Callable[[core.Dlt645Frame, int], list[Step]]


def honest(frame: core.Dlt645Frame, _n: int) -> list[Step]:
    return [reply(frame.address, frame.di or "")]


class ScriptedMeter:
    """Meters behind a TCP serial server, answering every request through ``script``."""

    def __init__(self, script: Script = honest) -> None:
        self.script = script
        self.requests: list[core.Dlt645Frame] = []
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        deframer = core.Dlt645Deframer()
        try:
            while chunk := await reader.read(1024):
                for frame in deframer.feed(chunk):
                    if frame.from_meter:
                        continue
                    n = len(self.requests)
                    self.requests.append(frame)
                    # answer in the background: a late reply must not hold the next request
                    asyncio.get_running_loop().create_task(self._answer(writer, frame, n))
        except (ConnectionError, OSError):
            pass

    async def _answer(self, writer: asyncio.StreamWriter, frame: core.Dlt645Frame, n: int) -> None:
        try:
            for step in self.script(frame, n):
                if isinstance(step, float):
                    await asyncio.sleep(step)
                elif step == "reset":
                    sock = writer.get_extra_info("socket")
                    # linger 0: close() sends RST, as a serial server rebooting does
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                else:
                    writer.write(step)
                    await writer.drain()
        except (ConnectionError, OSError):
            pass


def field_config(port: str, *, retries: int = 1) -> FieldConfig:
    return FieldConfig.model_validate(
        {
            "buses": [
                {
                    "name": "bus1",
                    "protocol": "dlt645",
                    "port": port,
                    "baud": 115200,
                    "preamble": 0,
                    "send_interval_s": 0.0,
                    "response_delay_s": 0.0,
                    "response_timeout_s": TIMEOUT_S,
                    "byte_timeout_s": 0.05,
                    "retries": retries,
                    "reconnect_initial_s": 0.1,
                    "reconnect_max_s": 0.2,
                    "meters": [{"address": A}, {"address": B}],
                }
            ]
        }
    )


@pytest.fixture
async def rig() -> Any:
    started: list[Any] = []

    async def start(script: Script = honest, *, retries: int = 1) -> tuple[ScriptedMeter, Any]:
        meter = ScriptedMeter(script)
        await meter.start()
        started.append(meter)
        image = ProcessImage()
        plant = FieldPlant(field_config(f"tcp://127.0.0.1:{meter.port}", retries=retries), image)
        await plant.start()
        started.append(plant)
        bus = plant.bus("bus1")
        bus.fault_image = image  # for the assertions below
        return meter, bus

    yield start
    for thing in reversed(started):
        await thing.stop()


async def read(bus: Any, address: str, di: str) -> float:
    out = await asyncio.wait_for(bus.read_now(address, [di]), 10)
    return out[di]


async def test_reply_from_another_address_is_never_taken_for_the_asked_meter(rig) -> None:
    # first answer to each request comes from meter B (a second meter talking on the
    # line, or a meter with the wrong address set), the retry gets the right one
    def script(frame: core.Dlt645Frame, n: int) -> list[Step]:
        if n % 2 == 0:
            return [reply(B, frame.di or "")]
        return honest(frame, n)

    _, bus = await rig(script, retries=1)
    for di in DIS:
        assert await read(bus, A, di) == pytest.approx(value_of(A, di))
    assert bus.stray_frames == len(DIS)  # each impostor reply seen and set aside

    # always the wrong meter: a clear error, and A's tags never carry B's values
    _, bus2 = await rig(lambda f, n: [reply(B, f.di or "")], retries=1)
    with pytest.raises(TransactionError):
        await read(bus2, A, "02010100")
    for tag in bus2.fault_image.tags():
        assert tag.current.value != pytest.approx(value_of(B, "02010100")), tag.name


async def test_duplicated_replies_are_not_read_as_the_next_answer(rig) -> None:
    # every reply is sent twice, the copy 30 ms later: it lands between transactions
    # or inside the next one
    def script(frame: core.Dlt645Frame, n: int) -> list[Step]:
        r = reply(frame.address, frame.di or "")
        return [r, 0.03, r]

    _, bus = await rig(script, retries=2)
    rng = random.Random(2007)
    got: list[tuple[str, str, float | None]] = []
    for i in range(24):
        address, di = (A, B)[i % 2], DIS[i % len(DIS)]
        # a copy for another meter or DI is skipped while the read waits for its own
        # reply, so a duplicate never costs a read its answer
        got.append((address, di, await read(bus, address, di)))
        # a local read takes a millisecond: pace them so copies land both between
        # transactions and inside the next one's reply window
        await asyncio.sleep(rng.choice([0.0, 0.02, 0.025, 0.05]))
    for address, di, v in got:
        assert v == pytest.approx(value_of(address, di)), (address, di, v)
    # the copies went somewhere visible: stale input or stray frames, not a value
    assert bus.stale_bytes > 0 or bus.stray_frames > 0


async def test_late_reply_after_timeout_is_not_the_next_reads_value(rig) -> None:
    # request 0 is answered after the timeout; the late reply arrives while the
    # controller waits for the reply to the next request (a reordered pair)
    def script(frame: core.Dlt645Frame, n: int) -> list[Step]:
        if n == 0:
            return [TIMEOUT_S + 0.08, reply(frame.address, frame.di or "")]
        return [0.1, reply(frame.address, frame.di or "")]

    meter, bus = await rig(script, retries=0)
    with pytest.raises(TransactionError, match="no reply"):
        await read(bus, A, "02010100")
    # the next read sees the late 02010100 reply first: never taken as 02010200
    outcome: float | Exception
    try:
        outcome = await read(bus, A, "02010200")
    except TransactionError as exc:
        outcome = exc
    assert not (isinstance(outcome, float) and outcome == pytest.approx(value_of(A, "02010100"))), (
        "a late reply was delivered as the answer to another DI"
    )
    # once the line is quiet (the send interval's job on a real bus), reads are right
    await asyncio.sleep(0.3)
    for di in DIS:
        assert await read(bus, A, di) == pytest.approx(value_of(A, di))
    tag = bus.fault_image.get(f"buses/bus1/meters/{A}/voltage_b")
    assert tag.value == pytest.approx(value_of(A, "02010200"))
    assert len(meter.requests) >= 2 + len(DIS)


async def test_noise_bursts_around_replies(rig) -> None:
    rng = random.Random(645)

    def script(frame: core.Dlt645Frame, n: int) -> list[Step]:
        # noise without a start byte before, random noise after (line ringing)
        before = bytes(b for b in rng.randbytes(rng.randint(0, 80)) if b != 0x68)
        after = rng.randbytes(rng.randint(0, 80))
        return [before, reply(frame.address, frame.di or ""), after]

    _, bus = await rig(script, retries=2)
    for i in range(30):
        address, di = (A, B)[i % 2], DIS[i % len(DIS)]
        assert await read(bus, address, di) == pytest.approx(value_of(address, di))
    snap = bus.snapshot()
    assert snap.discarded_bytes > 0  # the noise was seen and counted


async def test_tcp_reset_mid_transaction_is_a_bus_fault_and_the_bus_recovers(rig) -> None:
    def script(frame: core.Dlt645Frame, n: int) -> list[Step]:
        # the serial server resets while the meter is "answering" request 1
        if n == 1:
            return [reply(frame.address, frame.di or "")[:7], 0.02, "reset"]
        return honest(frame, n)

    meter, bus = await rig(script, retries=0)
    assert await read(bus, A, "02010100") == pytest.approx(value_of(A, "02010100"))
    with pytest.raises(TransportClosed):
        await read(bus, A, "02010200")
    assert bus.transactions["io_error"] >= 1
    # tags of the bus say why they are not to be trusted
    tag = bus.fault_image.get(f"buses/bus1/meters/{A}/voltage_a")
    assert tag.quality is Quality.BAD and "bus down" in tag.reason
    # reconnected; the interrupted read works again and carries the right value
    assert await read(bus, A, "02010200") == pytest.approx(value_of(A, "02010200"))
    assert meter.connections == 2 and bus.connected


async def test_serial_port_closed_mid_transaction(rig, tmp_path: Path) -> None:
    # a real pty: the meter side reads the request and then the device disappears
    # (USB adapter unplugged). The read fails promptly with a transport error, the
    # bus is marked down with the reason and keeps trying; nothing hangs.
    master, slave = os.openpty()
    link = tmp_path / "ttyUSB0"
    link.symlink_to(os.ttyname(slave))
    image = ProcessImage()
    plant = FieldPlant(field_config(str(link), retries=0), image)
    await plant.start()
    bus = plant.bus("bus1")
    try:
        loop = asyncio.get_running_loop()
        got_request = asyncio.Event()

        def on_readable() -> None:
            with contextlib.suppress(OSError):
                if os.read(master, 1024):
                    got_request.set()

        loop.add_reader(master, on_readable)
        pending = asyncio.ensure_future(read(bus, A, "02010100"))
        await asyncio.wait_for(got_request.wait(), 5)
        loop.remove_reader(master)
        os.close(master)
        os.close(slave)
        link.unlink()
        with pytest.raises((TransportClosed, TransactionError)):
            await asyncio.wait_for(pending, 5)
        for _ in range(50):
            if not bus.connected:
                break
            await asyncio.sleep(0.1)
        assert not bus.connected and bus.last_error
        assert bus._task is not None and not bus._task.done()  # still trying, not crashed
        with pytest.raises((TransportClosed, TransactionError, asyncio.TimeoutError)):
            await asyncio.wait_for(bus.read_now(A, ["02010100"]), 1.0)
    finally:
        await plant.stop()
