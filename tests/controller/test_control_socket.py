"""The service's control socket as configured: `[service] control_socket_group`."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from controller.config import ConfigError, validate_config
from controller.service import Service
from drivers.local_channel import request

from ..drivers.test_local_channel import other_group


def config(tmp_path: Path, group: str):
    return validate_config(
        {
            "service": {
                "name": "socket-test",
                "state_dir": str(tmp_path / "var"),
                "control_socket": str(tmp_path / "var" / "gridctl.sock"),
                "control_socket_group": group,
            },
            "tasks": {"gc_freeze": False},
            "journal": {"path": str(tmp_path / "var" / "journal.sqlite")},
            "metrics": {"enabled": False},
            "opcua": {"enabled": False},
        }
    )


async def test_operators_group_gets_the_status_socket(tmp_path: Path):
    group = other_group()
    cfg = config(tmp_path, group.gr_name)
    path = Path(cfg.service.control_socket)
    svc = Service(cfg)
    await svc.start()
    try:
        st = os.lstat(path)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == group.gr_gid
        reply = await request(path, {"op": "ping"})
        assert reply == {"ok": True, "pid": os.getpid()}
    finally:
        await svc.stop()


def test_the_group_defaults_to_none_and_a_bad_name_is_refused(tmp_path: Path):
    assert validate_config({}).service.control_socket_group == ""
    with pytest.raises(ConfigError) as err:
        validate_config({"service": {"control_socket_group": "operators; rm"}})
    assert "service.control_socket_group" in str(err.value)
