"""OPC UA Arm/Execute on a LoadType node reaches the simulated meter and ends confirmed."""

from __future__ import annotations

import pytest
from asyncua import ua

from controller.commands import CommandState
from controller.loads.sink import LoadsCommandSink
from opcua_server import OpcUaServer, ServerSettings
from tests.opcua_server.conftest import client_for, make_config, nid, ns_of

from .conftest import ADDR1, ADDR2, wait_for


@pytest.fixture
async def served(rig, tmp_path):
    servers = []

    async def start(**kw):
        r = await rig(**kw)
        r.executor.mirror()
        srv = OpcUaServer(
            make_config(security_policies=["None"], allow_plaintext_password_on_loopback=True),
            r.image,
            ServerSettings(state_dir=tmp_path, commands=LoadsCommandSink(r.executor)),
        )
        await srv.start()
        servers.append(srv)
        return r, srv

    yield start
    for s in servers:
        await s.stop()


async def test_arm_execute_trip_reaches_meter_and_confirms(served):
    r, srv = await served()
    async with client_for(srv, "otto") as client:
        ns = await ns_of(client)
        load = client.get_node(nid(ns, "loads/l1"))
        token, _ = await load.call_method(f"{ns}:Arm", "trip", "field test")
        assert r.meter(ADDR1).controls_honoured == 0  # arming sends nothing
        command_id = await load.call_method(f"{ns}:Execute", token)
    cmd = await r.executor.wait(command_id)
    assert cmd.state is CommandState.CONFIRMED, cmd.reason
    assert [t.state.value for t in cmd.history] == ["armed", "queued", "sent", "confirmed"]
    assert (cmd.who, cmd.why) == ("otto", "field test")
    assert cmd.args["role"] == "operator"
    assert r.meter(ADDR1).relay_open is True
    # the variable follows on the next control cycle
    r.executor.mirror()
    assert await wait_for(lambda: r.image.value("loads/l1/relay_open") is True, 5)


async def test_trip_under_keep_power_is_refused_by_the_controller(served):
    r, srv = await served(extra=f'[sim.buses.bus1.meters."{ADDR2}"]\nkeep_power = true\n')
    assert await wait_for(
        lambda: r.image.value(f"buses/bus1/meters/{ADDR2}/keep_power") is True, 10
    )
    async with client_for(srv, "otto") as client:
        ns = await ns_of(client)
        load = client.get_node(nid(ns, "loads/l2"))
        token, _ = await load.call_method(f"{ns}:Arm", "trip", "try anyway")
        with pytest.raises(ua.UaStatusCodeError) as err:
            await load.call_method(f"{ns}:Execute", token)
        assert err.value.code == ua.StatusCodes.BadInvalidState
    refused = [c for c in r.commands.recent() if c.state is CommandState.REFUSED]
    assert refused and "keep-power" in refused[0].reason and refused[0].who == "otto"
    assert r.meter(ADDR2).controls_honoured == 0
