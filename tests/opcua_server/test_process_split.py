"""The OPC UA server in its own process, fed over the local msgpack channel.

Real parts: the server process is a real child (``python -m
opcua_server.process``), clients are real asyncua clients, commands are
journaled in a real SQLite journal; the last tests run ``gridctl run`` on the
demo config.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua

from controller.alarms import AlarmEngine
from controller.api import CommandRefused, RefusalReason
from controller.bus_stats import BusSnapshot
from controller.commands import CommandLog
from controller.config import ConfigError, validate_config
from controller.journal import Journal
from controller.process_image import ProcessImage, Quality
from opcua_server.adapters import CommandLogSink, EngineAlarmSource
from opcua_server.channel import (
    ChannelError,
    FrameDecoder,
    encode,
    error_name,
    error_reason,
    raise_error,
)
from opcua_server.server_process import OpcUaServerProcess, socket_path_for

from ..controller.test_service import Running, metric, scrape
from .conftest import client_for, demo_image, make_config, nid, ns_of, until

SC = ua.StatusCodes
VOLTAGE = "buses/bus1/meters/000000000001/voltage_a"
LOAD = "loads/feeder1_l1"
DOWN = "publisher_down:opcua"  # the alarm while the server process is down


async def read(client: Client, path: str) -> ua.DataValue:
    ns = await ns_of(client)
    return await client.get_node(nid(ns, path)).read_data_value(raise_on_bad_status=False)


class Controller:
    """The controller's side for these tests: image, journal, command log, alarms."""

    def __init__(self, tmp_path: Path) -> None:
        self.image: ProcessImage = demo_image()
        self.journal = Journal(tmp_path / "journal.sqlite")
        self.journal.open()
        self.log = CommandLog(self.journal)
        self.alarms = AlarmEngine(self.journal)
        self.downs: list[str] = []
        self.ups: list[dict[str, Any]] = []
        self.server = OpcUaServerProcess(
            make_config(),
            self.image,
            state_dir=tmp_path / "opcua",
            commands=CommandLogSink(self.log),
            alarms=EngineAlarmSource(self.alarms),
            bus_snapshots=lambda: [BusSnapshot("bus1", "dlt645", True, 3, 0)],
            task_stats=lambda: {
                "fast": {"latency_p50_s": 1e-5, "latency_p99_s": 2e-5, "latency_max_s": 1e-4}
            },
            history_db=tmp_path / "opcua" / "history.db",
            on_down=self.downs.append,
            on_up=self.ups.append,
            restart_delay_s=0.2,
        )


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[Controller]:
    c = Controller(tmp_path)
    await c.server.start()
    try:
        yield c
    finally:
        await c.server.stop()
        c.journal.close()


async def test_values_commands_alarms_and_a_restart_over_the_channel(controller: Controller):
    c = controller
    srv = c.server
    first_pid = srv.pid
    assert first_pid is not None and first_pid != os.getpid()
    c.image.write(VOLTAGE, 231.5)

    # Values written in the controller's image reach clients of the other process.
    async with client_for(srv) as client:  # type: ignore[arg-type]

        async def voltage_is(want: float) -> bool:
            dv = await read(client, VOLTAGE)
            return dv.StatusCode.is_good() and dv.Value.Value == want

        await until(lambda: voltage_is(231.5))
        c.image.write(VOLTAGE, 229.0)
        await until(lambda: voltage_is(229.0))
        # Quality travels too: Bad with the controller's reason.
        c.image.write(VOLTAGE, 229.0, Quality.BAD, "meter offline")
        await until(lambda: _is_bad(client, VOLTAGE))
        # Diagnostics pushed by the controller.
        dv = await read(client, "buses/bus1/@diag/MetersTotal")
        assert dv.Value.Value == 3
        # A tag defined after the server started appears (late tags).
        c.image.define("loads/feeder1_l3/relay_open", "", initial=False)
        c.image.write("loads/feeder1_l3/relay_open", True)

        async def late_tag() -> bool:
            dv = await read(client, "loads/feeder1_l3/relay_open")
            return dv.StatusCode.is_good() and dv.Value.Value is True

        await until(late_tag)

    # A command travels over the channel and is journaled with the user.
    async with client_for(srv, "otto") as client:  # type: ignore[arg-type]
        ns = await ns_of(client)
        load = client.get_node(nid(ns, LOAD))
        token, _ = await load.call_method(f"{ns}:Arm", "trip", "demand limit exceeded")
        command_id = await load.call_method(f"{ns}:Execute", token)
    rows = c.journal.query("SELECT id, kind, target, who, why FROM commands")
    assert [tuple(r) for r in rows] == [(command_id, "trip", LOAD, "otto", "demand limit exceeded")]
    # Its state changes reach the server process's command variables.
    await c.log.transition(command_id, "sent")
    async with client_for(srv) as client:  # type: ignore[arg-type]

        async def state_is_sent() -> bool:
            dv = await read(client, f"{LOAD}/LastCommandState")
            return dv.Value.Value == "sent"

        await until(state_is_sent)

    # A viewer is refused in the server process; nothing reaches the journal.
    async with client_for(srv, "vera") as client:  # type: ignore[arg-type]
        ns = await ns_of(client)
        with pytest.raises(ua.UaStatusCodeError) as err:
            await client.get_node(nid(ns, LOAD)).call_method(f"{ns}:Arm", "trip", "x")
        assert err.value.code == SC.BadUserAccessDenied
    assert len(c.journal.query("SELECT id FROM commands")) == 1

    # The selection is the controller's: an Arm is an armed record in its journal, and a
    # second user's Arm of the same load comes back busy → BadLocked over the channel.
    async with client_for(srv, "otto") as otto, client_for(srv, "emma") as emma:  # type: ignore[arg-type]
        ns = await ns_of(otto)
        token, _ = await otto.get_node(nid(ns, LOAD)).call_method(f"{ns}:Arm", "trip", "again")
        assert c.log.get(token).state.value == "armed"
        with pytest.raises(ua.UaStatusCodeError) as err:
            await emma.get_node(nid(ns, LOAD)).call_method(f"{ns}:Arm", "trip", "mine")
        assert err.value.code == SC.BadLocked

    # A refusal in the controller comes back with its reason: service_stopping → BadShutdown.
    c.log.close_intake("service stopping")
    async with client_for(srv, "otto") as client:  # type: ignore[arg-type]
        ns = await ns_of(client)
        load = client.get_node(nid(ns, LOAD))
        with pytest.raises(ua.UaStatusCodeError) as err:
            await load.call_method(f"{ns}:Execute", token)
        assert err.value.code == SC.BadShutdown

    # Alarms: raised in the controller, listed and acknowledged over OPC UA.
    c.alarms.set("bus_down", "bus1", True, "bus offline")
    async with client_for(srv, "otto") as client:  # type: ignore[arg-type]

        async def listed() -> bool:
            dv = await read(client, "@alarms/Active")
            return "bus_down:bus1" in str(dv.Value.Value)

        await until(listed)
        ns = await ns_of(client)
        alarms_obj = client.get_node(nid(ns, "@alarms"))
        await alarms_obj.call_method(f"{ns}:Acknowledge", "bus_down:bus1", "crew sent")
        with pytest.raises(ua.UaStatusCodeError) as err:
            await alarms_obj.call_method(f"{ns}:Acknowledge", "no_such:alarm", "x")
        assert err.value.code == SC.BadInvalidArgument
    alarm = c.alarms.get("bus_down:bus1")
    assert alarm.acked and alarm.acked_by == "otto" and alarm.ack_note == "crew sent"

    # SIGKILL the server process: reported down, restarted, and clients reconnect.
    os.kill(first_pid, signal.SIGKILL)

    async def restarted() -> bool:
        return bool(c.ups) and srv.pid != first_pid

    await until(restarted, timeout=60)
    assert len(c.downs) == 1 and "SIGKILL" in c.downs[0], c.downs
    c.image.write(VOLTAGE, 233.0)
    async with client_for(srv) as client:  # type: ignore[arg-type]

        async def voltage_back() -> bool:
            dv = await read(client, VOLTAGE)
            return dv.StatusCode.is_good() and dv.Value.Value == 233.0

        await until(voltage_back)
    assert srv.restarts == 1
    assert srv.stats()["feed"]["connections"] == 2


async def _is_bad(client: Client, path: str) -> bool:
    dv = await read(client, path)
    return dv.StatusCode.is_bad()


async def test_the_server_process_exits_when_the_channel_closes(controller: Controller):
    srv = controller.server
    pid = srv.pid
    assert pid is not None and srv.alive()
    # Closing the feed (the controller going away) ends the child by itself.
    proc = srv._proc
    assert proc is not None
    srv._stopping = True  # no restart: this test watches the child stop by itself
    await srv.feed.stop()
    assert await asyncio.wait_for(proc.wait(), 10) == 0


# -- the channel itself --------------------------------------------------------------------
def test_frames_round_trip_in_pieces_and_oversized_frames_are_refused():
    data = encode({"t": "changes", "c": [[0, 1.5, 0, "", 1.0, 2.0]]}) + encode({"t": "synced"})
    decoder = FrameDecoder()
    got = [m for i in range(len(data)) for m in decoder.feed(data[i : i + 1])]
    assert got == [{"t": "changes", "c": [[0, 1.5, 0, "", 1.0, 2.0]]}, {"t": "synced"}]
    small = FrameDecoder(max_frame=16)
    with pytest.raises(ChannelError, match="exceeds the limit of 16"):
        list(small.feed(encode({"t": "x", "pad": "y" * 32})))


def test_errors_cross_the_channel_as_the_same_exceptions():
    refusal = CommandRefused(RefusalReason.BUSY, "target 'loads/l1': armed by otto until …")
    assert error_name(refusal) == "CommandRefused" and error_reason(refusal) == "busy"
    assert error_name(KeyError("A1")) == "KeyError" and error_reason(KeyError("A1")) is None
    assert error_name(RuntimeError("x")) == "InternalError"
    with pytest.raises(CommandRefused, match="recharge") as err:
        raise_error("CommandRefused", "recharge", "not_supported")
    assert err.value.reason is RefusalReason.NOT_SUPPORTED
    with pytest.raises(ChannelError, match=r"reason 'nonsense' \(not one of bad_argument, "):
        raise_error("CommandRefused", "x", "nonsense")
    with pytest.raises(ChannelError, match=r"controller error \(InternalError\): boom"):
        raise_error("InternalError", "boom")


def test_short_socket_paths_are_kept():
    assert socket_path_for(Path("var/opcua/feed.sock")) == Path("var/opcua/feed.sock")


def test_process_mode_is_checked_with_a_clear_error():
    with pytest.raises(ConfigError) as err:
        validate_config({"opcua": {"process": "thread"}})
    assert 'opcua.process: must be "separate"' in str(err.value)
    assert validate_config({}).opcua.process == "separate"


# -- the service: `gridctl run` on the demo config -------------------------------------------
def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie has exited


def _wait_gone(pid: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


async def _demo_voltage(endpoint: str) -> tuple[bool, str]:
    node = "buses/bus1/meters/000000001001/voltage_a"
    async with Client(endpoint, timeout=10) as client:
        dv = await read(client, node)
        active = await read(client, "@alarms/Active")
        return dv.StatusCode.is_good(), str(active.Value.Value)


def _poll_demo(
    endpoint: str, alarms_ok: Callable[[list[dict[str, Any]]], bool] | None = None
) -> list[dict[str, Any]]:
    """Poll the demo over OPC UA until a meter value is Good and ``alarms_ok(alarms)``."""
    end = time.monotonic() + 30.0
    last: Any = None
    while time.monotonic() < end:
        try:
            good, text = asyncio.run(_demo_voltage(endpoint))
            alarms = json.loads(text)
            last = (good, alarms)
            if good and (alarms_ok is None or alarms_ok(alarms)):
                return alarms  # type: ignore[no-any-return]
        except (OSError, TimeoutError, ua.UaError) as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"the demo over OPC UA never got there within 30 s: {last!r}")


def _returned_to_normal(alarms: list[dict[str, Any]]) -> bool:
    return any(a["id"] == DOWN and not a["active"] for a in alarms)


@pytest.fixture
def service(tmp_path: Path):
    r = Running(tmp_path)
    yield r
    r.close()


def test_service_survives_a_killed_server_process_and_its_child_follows_it(service):
    text = service.wait_for_line(r"opcua: separate process \(pid (\d+)\)", timeout=60)
    child = int(text.group(1))
    endpoint = service.wait_for_line(r"opcua ready: (opc\.tcp://\S+)").group(1)
    port = int(service.wait_for_line(r"metrics ready: http://127\.0\.0\.1:(\d+)/metrics").group(1))
    service.wait_for_line(r"service ready")
    _poll_demo(endpoint)

    os.kill(child, signal.SIGKILL)
    # The controller keeps cycling while the server process is down.
    # (/metrics renders at most once per [metrics] min_render_interval_s, 1 s)
    before = metric(scrape(port), "gridctl_cycle_cycles_total", task="fast")
    deadline = time.monotonic() + 10
    while metric(scrape(port), "gridctl_cycle_cycles_total", task="fast") <= before:
        assert time.monotonic() < deadline, "the fast task stopped while the server was down"
        time.sleep(0.5)
    service.wait_for_line(r"OPC UA server process \(pid \d+\) was killed by SIGKILL")
    service.wait_for_line(r"opcua ready: opc\.tcp://\S+ \(restarted, pid \d+", timeout=60)
    restarted = int(re.findall(r"restarted, pid (\d+)", service.text())[-1])
    assert restarted != child
    # A client reconnects to the restarted server; the alarm was raised and cleared
    # (it stays listed until an operator acknowledges it).
    alarms = _poll_demo(endpoint, _returned_to_normal)
    (down,) = [a for a in alarms if a["id"] == DOWN]
    assert not down["acknowledged"] and down["severity"] == 700, down
    assert down["message"] == "OPC UA server process restarted", down
    # The feed and the server's own counters reach Prometheus.
    # (The first counters can come before the restarted server has written a value.)
    deadline = time.monotonic() + 10
    written = "gridctl_opcua_values_written_total"
    while written not in (text := scrape(port)) or metric(text, written) <= 0:
        assert time.monotonic() < deadline, "server counters never reached /metrics"
        time.sleep(0.5)
    assert metric(text, "gridctl_opcua_server_restarts_total") == 1
    assert metric(text, "gridctl_opcua_server_up") == 1
    assert metric(text, "gridctl_opcua_feed_changes_sent_total") > 0
    assert metric(text, "gridctl_opcua_feed_peers_refused_total") == 0
    assert metric(text, "gridctl_opcua_values_written_total") > 0

    # The controller dies without a chance to stop anything: its server process follows.
    service.proc.kill()
    service.proc.wait()
    assert _wait_gone(restarted, 15), f"server process {restarted} outlived the controller"


async def test_a_server_process_that_cannot_start_is_a_clear_error(tmp_path: Path):
    """The endpoint's port is taken: start() names the exit instead of waiting forever."""
    from opcua_server.server_process import OpcUaProcessError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = make_config(endpoint=f"opc.tcp://127.0.0.1:{port}/gridctl")
        server = OpcUaServerProcess(config, demo_image(), state_dir=tmp_path / "opcua")
        with pytest.raises(OpcUaProcessError, match=r"exited with code 1 before its endpoint"):
            await server.start()
        assert not server.alive()
        assert not server.socket_path.exists()


async def test_a_reader_that_does_not_read_makes_the_feed_coalesce_never_wait(tmp_path: Path):
    """Writers never wait for the channel: a stalled reader costs coalesced values, not time."""
    from opcua_server.feed import ImageFeed

    image = ProcessImage()
    names = [f"loads/l{i:03d}/power_kw" for i in range(200)]
    for name in names:
        image.define(name, "kW")
    path = tmp_path / "feed.sock"
    # expected_pid=None: this test is the reader itself, no spawned server process.
    feed = ImageFeed(
        image,
        path,
        hello={},
        expected_pid=None,
        write_buffer_limit=64 * 1024,
        flush_interval_s=0.002,
    )
    await feed.start()
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 20)
    try:
        await until(lambda: _true(feed.connected))
        # The reader reads nothing while ~2 MB of changes are produced.
        for k in range(500):
            for name in names:
                image.write(name, float(k))
            await asyncio.sleep(0.001)
        assert feed.stats()["coalesced"] > 0, feed.stats()
        # Reading again, every tag arrives at its latest value.
        decoder = FrameDecoder()
        ids: dict[int, str] = {}
        latest: dict[str, Any] = {}

        async def caught_up() -> bool:
            data = await asyncio.wait_for(reader.read(1 << 20), 5)
            for message in decoder.feed(data):
                if message["t"] == "tags":
                    ids.update({row[0]: row[1] for row in message["defs"]})
                elif message["t"] == "changes":
                    latest.update({ids[row[0]]: row[1] for row in message["c"]})
            return len(latest) == len(names) and set(latest.values()) == {499.0}

        await until(caught_up)
    finally:
        writer.close()
        await feed.stop()


async def _true(value: bool) -> bool:
    return value
