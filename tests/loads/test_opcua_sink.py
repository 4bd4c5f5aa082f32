"""OPC UA Arm/Execute on a LoadType node reaches the simulated meter and ends confirmed."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest
from asyncua import ua

from controller.commands import CommandState
from controller.loads.sink import LoadsCommandSink
from opcua_server import OpcUaServer, ServerSettings
from tests.opcua_server.conftest import client_for, make_config, nid, ns_of

from .conftest import ADDR1, ADDR2, loads_config, wait_for


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


async def _refused(code: int, call) -> None:
    with pytest.raises(ua.UaStatusCodeError) as err:
        await call
    assert err.value.code == code, ua.StatusCode(err.value.code).name


def _journaled(r, command_id: str) -> tuple[str, list[str]]:
    """(state, transition states) of a command as the SQLite journal holds it."""
    (row,) = r.journal.query("SELECT state FROM commands WHERE id = ?", (command_id,))
    steps = r.journal.query(
        "SELECT state FROM command_transitions WHERE command_id = ? ORDER BY seq", (command_id,)
    )
    return row["state"], [s["state"] for s in steps]


async def test_two_operators_arm_the_same_load_second_is_refused_busy(served):
    r, srv = await served()
    async with client_for(srv, "otto") as otto, client_for(srv, "emma") as emma:
        ns = await ns_of(otto)
        token, _ = await otto.get_node(nid(ns, "loads/l1")).call_method(
            f"{ns}:Arm", "trip", "otto selects"
        )
        # the selection is a journaled command record, not a token in the server process
        assert _journaled(r, token) == ("armed", ["armed"])
        # busy → BadLocked: the load is reserved by otto's selection
        await _refused(
            ua.StatusCodes.BadLocked,
            emma.get_node(nid(ns, "loads/l1")).call_method(f"{ns}:Arm", "close_allowed", "emma"),
        )
        # the refusal names the holder and the end of the reservation (Arm + 30 s)
        until = dt.datetime.fromtimestamp(r.commands.get(token).expires, dt.UTC)
        (res,) = await emma.uaclient.call(
            [
                ua.CallMethodRequest(
                    ObjectId=nid(ns, "loads/l1"),
                    MethodId=nid(ns, "loads/l1/Arm"),
                    InputArguments=[ua.Variant("trip", ua.VariantType.String)] * 2,
                )
            ]
        )
        assert res.StatusCode.value == ua.StatusCodes.BadLocked
        assert res.InputArgumentDiagnosticInfos[0].AdditionalInfo == (
            f"refused (busy): target 'loads/l1': armed by otto until "
            f"{until.isoformat(timespec='seconds').replace('+00:00', 'Z')}"
        )
        assert r.commands.get(token).expires == r.commands.get(token).created + 30.0
        # the other load is free
        other, _ = await emma.get_node(nid(ns, "loads/l2")).call_method(
            f"{ns}:Arm", "alarm_on", "emma selects l2"
        )
        assert _journaled(r, other) == ("armed", ["armed"])
        command_id = await otto.get_node(nid(ns, "loads/l1")).call_method(f"{ns}:Execute", token)
    assert command_id == token
    cmd = await r.executor.wait(command_id)
    assert cmd.state is CommandState.CONFIRMED, cmd.reason
    assert r.meter(ADDR1).controls_honoured == 1  # otto's trip only


async def test_execute_by_another_user_than_the_armer_is_refused(served):
    r, srv = await served()
    async with client_for(srv, "otto") as otto, client_for(srv, "emma") as emma:
        ns = await ns_of(otto)
        token, _ = await otto.get_node(nid(ns, "loads/l1")).call_method(
            f"{ns}:Arm", "trip", "otto selects"
        )
        # not_armed → BadNoEntryExists: emma holds no selection under this token
        await _refused(
            ua.StatusCodes.BadNoEntryExists,
            emma.get_node(nid(ns, "loads/l1")).call_method(f"{ns}:Execute", token),
        )
        assert r.meter(ADDR1).controls_honoured == 0
        assert _journaled(r, token) == ("armed", ["armed"])  # still otto's
        command_id = await otto.get_node(nid(ns, "loads/l1")).call_method(f"{ns}:Execute", token)
    cmd = await r.executor.wait(command_id)
    assert cmd.state is CommandState.CONFIRMED, cmd.reason
    assert cmd.who == "otto"


async def test_arm_on_an_interlocked_load_is_refused_at_select_time(served):
    r, srv = await served(extra=f'[sim.buses.bus1.meters."{ADDR2}"]\nkeep_power = true\n')
    assert await wait_for(
        lambda: r.image.value(f"buses/bus1/meters/{ADDR2}/keep_power") is True, 10
    )
    async with client_for(srv, "otto") as client:
        ns = await ns_of(client)
        load = client.get_node(nid(ns, "loads/l2"))
        # interlock → BadInvalidState, at Arm: no token to execute
        await _refused(ua.StatusCodes.BadInvalidState, load.call_method(f"{ns}:Arm", "trip", "x"))
        # the load is not reserved by the refused selection
        token, _ = await load.call_method(f"{ns}:Arm", "alarm_on", "warn first")
    refused = [c for c in r.commands.recent() if c.state is CommandState.REFUSED]
    assert len(refused) == 1 and "keep-power" in refused[0].reason and refused[0].who == "otto"
    assert _journaled(r, refused[0].id) == ("refused", ["armed", "refused"])
    assert _journaled(r, token) == ("armed", ["armed"])
    assert r.meter(ADDR2).controls_honoured == 0


async def test_arm_timeout_expires_and_is_journaled(served):
    # the shortest arm timeout the loads config allows: 1 s
    cfg = loads_config(
        confirm={"timeout_s": 3.0, "reread_interval_s": 0.2, "max_rereads": 5, "arm_timeout_s": 1.0}
    )
    r, srv = await served(loads=cfg)
    async with client_for(srv, "otto") as client:
        ns = await ns_of(client)
        load = client.get_node(nid(ns, "loads/l1"))
        first, _ = await load.call_method(f"{ns}:Arm", "trip", "left alone")
        # the control task's expiry sweep journals the lapse
        assert await _swept_until_expired(r, first)
        assert _journaled(r, first) == ("expired", ["armed", "expired"])
        await _refused(ua.StatusCodes.BadTimeout, load.call_method(f"{ns}:Execute", first))
        # an expired selection no longer reserves the load; a lapse found at Execute
        # (before any sweep) is journaled there
        second, _ = await load.call_method(f"{ns}:Arm", "trip", "too slow")
        deadline = r.commands.get(second).expires
        assert await wait_for(lambda: time.time() > deadline, 10)
        await _refused(ua.StatusCodes.BadTimeout, load.call_method(f"{ns}:Execute", second))
        assert _journaled(r, second) == ("expired", ["armed", "expired"])
    assert r.meter(ADDR1).controls_honoured == 0


async def _swept_until_expired(r, command_id: str, timeout: float = 10.0) -> bool:
    """Run the control task's expiry sweep until the command has expired (bounded)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        await r.commands.expire_due()
        if r.commands.get(command_id).state is CommandState.EXPIRED:
            return True
        await asyncio.sleep(0.05)
    return False
