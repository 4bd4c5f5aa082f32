"""The local control channel's sockets: explicit modes, a group for operators, clear refusals."""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.unix_socket import SocketPathError
from drivers.local_channel import ControlServer, request
from drivers.sim.control import ControlServer as FaultServer


async def _pong(message: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "op": message.get("op")}


def other_group() -> grp.struct_group:
    """A group this process may give a file to, other than its own primary group if it can."""
    mine = set(os.getgroups())
    for g in grp.getgrall():
        if g.gr_gid != os.getgid() and (os.geteuid() == 0 or g.gr_gid in mine):
            return g
    return grp.getgrgid(os.getgid())


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


async def test_the_control_socket_is_owner_only_whatever_the_umask(tmp_path: Path, umask_000: None):
    path = tmp_path / "gridctl.sock"
    server = ControlServer(path, _pong)
    await server.start()
    try:
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert _mode(path) == 0o600
        assert await request(path, {"op": "ping"}) == {"ok": True, "op": "ping"}
    finally:
        await server.stop()
    assert not path.exists()


async def test_the_simulators_fault_socket_is_owner_only(tmp_path: Path, umask_000: None):
    path = tmp_path / "sim.sock"
    server = FaultServer(path, _pong)
    await server.start()
    try:
        assert _mode(path) == 0o600
    finally:
        await server.stop()


async def test_a_control_socket_with_a_group_is_0660_with_that_group(
    tmp_path: Path, umask_000: None
):
    group = other_group()
    path = tmp_path / "gridctl.sock"
    server = ControlServer(path, _pong, group=group.gr_name)
    await server.start()
    try:
        st = os.lstat(path)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == group.gr_gid
        assert await request(path, {"op": "ping"}) == {"ok": True, "op": "ping"}
    finally:
        await server.stop()


async def test_an_unknown_group_is_a_clear_error_and_nothing_listens(tmp_path: Path):
    path = tmp_path / "gridctl.sock"
    server = ControlServer(
        path, _pong, group="gridctl-no-such-group", what="service.control_socket"
    )
    with pytest.raises(SocketPathError) as err:
        await server.start()
    assert str(err.value) == (
        "service.control_socket: no group named 'gridctl-no-such-group' on this machine"
    )
    assert not path.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may give a file to any group")
async def test_a_group_this_user_is_not_in_is_a_clear_error(tmp_path: Path):
    mine = set(os.getgroups()) | {os.getgid()}
    foreign = next((g for g in grp.getgrall() if g.gr_gid not in mine), None)
    if foreign is None:
        pytest.skip("this user is a member of every group")
    path = tmp_path / "gridctl.sock"
    with pytest.raises(SocketPathError, match="must be a member"):
        await ControlServer(path, _pong, group=foreign.gr_name).start()
    assert not path.exists()


async def test_a_file_at_the_control_socket_path_is_refused_not_deleted(tmp_path: Path):
    path = tmp_path / "gridctl.sock"
    path.write_text("journal export")
    server = ControlServer(path, _pong, what="service.control_socket")
    with pytest.raises(SocketPathError, match="exists and is not a socket"):
        await server.start()
    await server.stop()  # never listened: leaves the path alone
    assert path.read_text() == "journal export"


async def test_a_too_long_control_socket_path_names_the_setting_and_the_length(tmp_path: Path):
    path = tmp_path / ("d" * 120) / "gridctl.sock"
    # tmp_path's length + 1 + 120 + len("/gridctl.sock") (13)
    n = len(os.fsencode(str(tmp_path))) + 1 + 120 + 13
    server = ControlServer(path, _pong, what="service.control_socket")
    with pytest.raises(SocketPathError) as err:
        await server.start()
    assert str(err.value).startswith(
        f"service.control_socket: socket path {str(path)!r} is {n} bytes"
    )
