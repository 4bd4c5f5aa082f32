"""Load switching inside the Service: subsystem start, router → sink → meter, control cycle."""

from __future__ import annotations

import datetime as dt
import time
import tomllib

import pytest

from controller.api import (
    ArmRequest,
    CommandRefused,
    CommandRequest,
    ExecuteRequest,
    RefusalReason,
)
from controller.commands import CommandState
from controller.config import validate_config
from controller.service import Service
from drivers.sim.plant import SimulatedPlant

from .conftest import ADDR1, dlt645_config, wait_for


async def test_service_runs_loads_and_routes_commands(tmp_path):
    field = dlt645_config(tmp_path, meters=2)
    data = tomllib.loads((tmp_path / "field.toml").read_text())
    data.update(
        {
            "service": {"state_dir": str(tmp_path / "var"), "control_socket": ""},
            "tasks": {"gc_freeze": False, "control_period_ms": 200},
            "journal": {"path": str(tmp_path / "var" / "journal.sqlite")},
            "metrics": {"port": 0},
            # the simulated meters keep Beijing time
            "site": {"timezone": "Asia/Shanghai"},
            "opcua": {"enabled": False},
            "loads": {
                "loads": [{"name": "l1", "bus": "bus1", "address": ADDR1}],
                "tariffs": [{"name": "flat", "default_price": "0.6"}],
                "accounts": [
                    {"id": "acc1", "load": "l1", "tariff": "flat", "opening_balance": "100"}
                ],
                "confirm": {"reread_interval_s": 0.2},
            },
        }
    )
    cfg = validate_config(data)
    sim = SimulatedPlant(field)
    await sim.start()
    svc = Service(cfg)
    try:
        await svc.start()
        assert svc.router.prefixes == ("loads/", "demand/groups/")
        assert await wait_for(lambda: svc.image.value("loads/l1/keep_power") is False, 10)
        # a load is switched only by select-before-operate, never by a plain submit
        with pytest.raises(CommandRefused) as err:
            await svc.router.submit(
                CommandRequest("loads/l1", "trip", "test", "otto", "operator", "tok-1", time.time())
            )
        assert err.value.reason is RefusalReason.NOT_SUPPORTED
        selection = await svc.router.arm(ArmRequest("loads/l1", "trip", "test", "otto", "operator"))
        assert svc.commands.get(selection.token).state is CommandState.ARMED
        # the default arm timeout: 30 s from the Arm
        assert selection.expires_at == selection.armed_at + 30.0
        executed = await svc.router.execute(ExecuteRequest("loads/l1", selection.token, "otto"))
        cid = executed.token
        rt = svc.subsystems[0].runtime
        # tariff periods, no-trip windows and demand schedules read the site's wall
        # clock: 2026-12-01T02:00:00Z (1_796_090_400) is 10:00 in Beijing (UTC + 8 h)
        assert rt._local(1_796_090_400.0) == dt.datetime(2026, 12, 1, 10, 0)
        cmd = await rt.executor.wait(cid)
        assert cmd.state is CommandState.CONFIRMED, cmd.reason
        assert sim.farms["bus1"].meters[ADDR1].relay_open
        assert await wait_for(lambda: svc.image.value("loads/l1/relay_open") is True, 5)
        assert svc.image.value("prepaid/accounts/acc1/balance") is not None
    finally:
        assert await svc.stop()
        await sim.stop()
