"""The local channel between the controller and the OPC UA server process, attacked.

A process of the same user that reaches the feed socket must not take the
server process's place, and the server process must not take a channel from
anyone but the controller that spawned it. Real parts: the server process is a
real child, the intruders are real ``python -c`` subprocesses, the journal is
a real SQLite file.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.unix_socket import SocketPathError
from opcua_server.channel import FrameDecoder
from opcua_server.feed import NO_PEER, ImageFeed
from opcua_server.process import OpcUaConfigError, load_opcua_table
from opcua_server.server_process import OpcUaServerProcess, socket_path_for, write_opcua_table

from .conftest import USERS, client_for, demo_image, make_config, nid, ns_of
from .test_process_split import VOLTAGE, Controller, read, until

REPO = Path(__file__).resolve().parents[2]
LOAD = "loads/feeder1_l1"

# Connects to the feed socket like the server process would, submits a trip as a
# made-up engineer, and prints what came back before the feed closed the channel.
INTRUDER = r"""
import json, socket, struct, sys, msgpack
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
request = {"target": "loads/feeder1_l1", "kind": "trip", "reason": "x", "user": "mallory",
           "role": "engineer", "token": "t-1", "armed_at": 0.0}
body = msgpack.packb({"t": "request", "id": 1, "op": "submit", "request": request})
try:
    s.sendall(struct.pack(">I", len(body)) + body)
except OSError:
    pass
s.settimeout(10)
got, closed = b"", False
try:
    while chunk := s.recv(65536):
        got += chunk
    closed = True
except ConnectionResetError:
    closed = True
except OSError:
    pass
print(json.dumps({"received": len(got), "hello": b"hello" in got, "closed": closed}))
"""

# Listens where a server process will connect, and plays the controller: a
# hello and an empty tag set. Prints how many bytes the server process sent.
FAKE_CONTROLLER = r"""
import socket, struct, sys, msgpack
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sys.argv[1])
srv.listen(1)
print("listening", flush=True)
srv.settimeout(30)
conn, _ = srv.accept()
conn.settimeout(10)
for m in ({"t": "hello", "buses": None, "tasks": None, "alarms": None},
          {"t": "synced"}):
    body = msgpack.packb(m)
    try:
        conn.sendall(struct.pack(">I", len(body)) + body)
    except OSError:
        pass
got = b""
try:
    while chunk := conn.recv(65536):
        got += chunk
except OSError:
    pass
print(len(got), flush=True)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


async def _python(script: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
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


@pytest.fixture
def umask_000() -> Iterator[None]:
    """The loosest umask: a mode left to it would be 0777 for a socket."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- the controller's side: only the spawned server process is served --------------------
async def test_a_same_user_process_on_the_feed_socket_gets_nothing_and_submits_nothing(
    controller: Controller,
):
    c = controller
    srv = c.server
    child = srv.pid
    assert child is not None and srv.feed.expected_pid == child

    intruder = await _python(INTRUDER, str(srv.socket_path))
    out, err = await asyncio.wait_for(intruder.communicate(), 30)
    assert intruder.returncode == 0, err.decode()
    # No hello (users, config), no tags: the channel was closed before a byte.
    assert json.loads(out) == {"received": 0, "hello": False, "closed": True}
    assert srv.feed.counters.peers_refused == 1
    # Its trip never reached the command log.
    assert c.journal.query("SELECT id FROM commands") == []

    # The real server process kept its channel: same child, one connection, values flow.
    assert srv.pid == child and srv.alive() and srv.feed.connected
    assert srv.feed.counters.connections == 1 and srv.restarts == 0
    c.image.write(VOLTAGE, 228.5)
    async with client_for(srv) as client:  # type: ignore[arg-type]

        async def arrived() -> bool:
            dv = await read(client, VOLTAGE)
            good = dv.StatusCode is not None and dv.StatusCode.is_good()
            return good and dv.Value is not None and dv.Value.Value == 228.5

        await until(arrived)
    # And commands from its real clients still arrive, with their real user.
    async with client_for(srv, "otto") as client:  # type: ignore[arg-type]
        ns = await ns_of(client)
        load = client.get_node(nid(ns, LOAD))
        token, _ = await load.call_method(f"{ns}:Arm", "trip", "demand limit exceeded")
        command_id = await load.call_method(f"{ns}:Execute", token)
    rows = [tuple(r) for r in c.journal.query("SELECT id, who FROM commands")]
    assert rows == [(command_id, "otto")]


async def test_a_feed_without_a_server_process_serves_nobody(tmp_path: Path):
    path = tmp_path / "opcua" / "feed.sock"
    feed = ImageFeed(demo_image(), path, hello={}, expected_pid=NO_PEER)
    await feed.start()
    try:
        intruder = await _python(INTRUDER, str(path))
        out, err = await asyncio.wait_for(intruder.communicate(), 30)
        assert intruder.returncode == 0, err.decode()
        assert json.loads(out)["received"] == 0
        assert feed.counters.peers_refused == 1 and not feed.connected
        assert feed.counters.connections == 0
    finally:
        await feed.stop()


# -- the server process's side: only its parent is its controller ----------------------------
async def test_the_server_process_refuses_a_channel_not_served_by_its_parent(tmp_path: Path):
    path = tmp_path / "impostor.sock"
    config_file = tmp_path / "opcua.toml"
    write_opcua_table(make_config(), config_file)
    fake = await _python(FAKE_CONTROLLER, str(path))
    assert fake.stdout is not None
    assert await asyncio.wait_for(fake.stdout.readline(), 30) == b"listening\n"
    # This test process spawns the server process, so it is its parent; the
    # listener is another process of the same user.
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "opcua_server.process",
        "--socket",
        str(path),
        "--config",
        str(config_file),
        "--state-dir",
        str(tmp_path / "state"),
        "--exit-with-parent",
        str(os.getpid()),
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    _, child_err = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode == 2, child_err.decode()
    assert f"it is served by pid {fake.pid}, not by the controller" in child_err.decode()
    out, _ = await asyncio.wait_for(fake.communicate(), 30)
    assert out == b"0\n"  # not a byte: no ready, no request
    assert not (tmp_path / "state").exists()  # it built no server


# -- what crosses the channel --------------------------------------------------------------
def test_the_opcua_table_for_the_server_process_round_trips_through_its_file(
    tmp_path: Path, umask_000: None
):
    config = make_config(server_name='plant "north"\\x\x7f', min_publishing_interval_ms=250.0)
    path = tmp_path / "opcua.toml"
    write_opcua_table(config, path)
    assert _mode(path) == 0o600  # password hashes: owner only, whatever the umask
    loaded = load_opcua_table(path)
    assert loaded == config
    assert [u.password_hash for u in loaded.users] == [u.password_hash for u in USERS]


def test_a_bad_opcua_table_names_the_file_and_the_field(tmp_path: Path):
    path = tmp_path / "site.toml"
    path.write_text('[opcua]\nusers = [{name = "x", password_hash = "md5$abc"}]\n')
    with pytest.raises(OpcUaConfigError) as err:
        load_opcua_table(path)
    assert f"{path}: opcua.users.0.password_hash:" in str(err.value)


async def test_the_hello_carries_no_users_config_or_paths(tmp_path: Path):
    """Only what the server process cannot read itself crosses the channel."""
    srv = OpcUaServerProcess(make_config(), demo_image(), state_dir=tmp_path / "opcua")
    feed = srv.feed
    feed.expected_pid = None  # this test reads the channel itself, as the server would
    await feed.start()
    reader, writer = await asyncio.open_unix_connection(str(srv.socket_path), limit=1 << 20)
    raw = b""
    try:
        decoder = FrameDecoder()
        messages: list[dict[str, Any]] = []
        while not any(m["t"] == "synced" for m in messages):
            data = await asyncio.wait_for(reader.read(1 << 20), 10)
            assert data, "the feed closed the channel"
            raw += data
            messages += decoder.feed(data)
    finally:
        writer.close()
        await feed.stop()
    assert set(messages[0]) == {"t", "buses", "tasks", "alarms"}
    assert b"scrypt$" not in raw and b"password_hash" not in raw and b"otto" not in raw
    assert str(tmp_path).encode() not in raw  # no paths either: they come on the command line


async def test_the_config_written_for_the_server_process_is_owner_only(
    controller: Controller,
):
    srv = controller.server
    args = srv._arguments()
    written = Path(args[args.index("--config") + 1])
    assert written == srv.config_path.resolve()
    assert written.parent == srv.socket_path.parent.resolve()  # the 0700 directory
    assert _mode(written) == 0o600
    assert load_opcua_table(written) == srv.config
    await srv.stop()
    assert not written.exists()


# -- modes and paths -----------------------------------------------------------------------
async def test_the_feed_socket_is_0600_in_a_0700_directory_whatever_the_umask(
    tmp_path: Path, umask_000: None
):
    state = tmp_path / "opcua"
    state.mkdir(mode=0o777)
    os.chmod(state, 0o777)  # a directory left open by someone before us
    feed = ImageFeed(demo_image(), state / "feed.sock", hello={}, expected_pid=NO_PEER)
    await feed.start()
    try:
        assert stat.S_ISSOCK(os.lstat(state / "feed.sock").st_mode)
        assert _mode(state / "feed.sock") == 0o600
        assert _mode(state) == 0o700
    finally:
        await feed.stop()


async def test_a_file_at_the_feed_socket_path_is_refused_not_deleted(tmp_path: Path):
    path = tmp_path / "opcua" / "feed.sock"
    path.parent.mkdir()
    path.write_text("someone's data")
    feed = ImageFeed(demo_image(), path, hello={}, expected_pid=NO_PEER)
    with pytest.raises(SocketPathError, match="exists and is not a socket"):
        await feed.start()
    assert path.read_text() == "someone's data"


def test_a_too_long_state_dir_uses_the_runtime_dir(tmp_path: Path, monkeypatch):
    deep = tmp_path / ("d" * 120) / "feed.sock"
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    path = socket_path_for(deep)
    assert path.parent == run / "gridctl"
    assert path.name.startswith("feed-") and path.suffix == ".sock"
    assert len(os.fsencode(str(path))) <= 107  # sun_path: 108 bytes with its NUL
    assert _mode(run / "gridctl") == 0o700
    # Another state directory gets another name.
    assert socket_path_for(tmp_path / ("e" * 120) / "feed.sock") != path


@pytest.mark.parametrize("runtime", [None, "relative", "open", "file"])
def test_a_too_long_state_dir_without_a_runtime_dir_is_a_clear_error(
    tmp_path: Path, monkeypatch, runtime: str | None
):
    # A relative XDG_RUNTIME_DIR is ignored (XDG spec), and so is one others may
    # enter (not 0700) or one that is not a directory.
    if runtime is None:
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    elif runtime == "relative":
        monkeypatch.setenv("XDG_RUNTIME_DIR", "relative/run")
    elif runtime == "open":
        (tmp_path / "run").mkdir()
        os.chmod(tmp_path / "run", 0o777)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    else:
        (tmp_path / "run").write_text("")
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    deep = tmp_path / ("d" * 120) / "feed.sock"
    # tmp_path's length + 1 + 120 + len("/feed.sock") (10)
    n = len(os.fsencode(str(tmp_path))) + 1 + 120 + 10
    with pytest.raises(SocketPathError) as err:
        socket_path_for(deep)
    assert f"OPC UA feed socket {str(deep)!r} is {n} bytes" in str(err.value)
    assert "at most 107" in str(err.value)
    assert not (tmp_path / "run" / "gridctl").exists()
