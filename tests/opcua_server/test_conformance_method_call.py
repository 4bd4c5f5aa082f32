"""Conformance unit "Method Call" (OPC UA Part 4 §5.11.2) and UserExecutable (Part 3 §5.7).

Every item of a Call gets its own result: a permitted method next to a refused
one is Good and BadUserAccessDenied, an unknown object or method node
BadNodeIdUnknown, a method that is not the object's BadMethodInvalid — never
one ServiceFault for the whole request. Anonymous sessions reach public
methods only, item by item.
"""

from __future__ import annotations

import pytest
from asyncua import Client, ua

from controller.api import CommandRequest

from .conftest import FakeSelections, client_for, nid, ns_of

SC = ua.StatusCodes
A = ua.AttributeIds
VT = ua.VariantType
LOAD1 = "loads/feeder1_l1"
LOAD2 = "loads/feeder1_l2"
VOLT = "buses/bus1/meters/000000000001/voltage_a"


class RecordingSink(FakeSelections):
    def __init__(self) -> None:
        self.requests: list[CommandRequest] = []

    async def submit(self, request: CommandRequest) -> str:
        self.requests.append(request)
        return f"cmd-{len(self.requests)}"


def request(ns: int, obj: str, method: str, *args: str) -> ua.CallMethodRequest:
    return ua.CallMethodRequest(
        ObjectId=nid(ns, obj),
        MethodId=nid(ns, method),
        InputArguments=[ua.Variant(a, VT.String) for a in args],
    )


async def call(client: Client, *items: ua.CallMethodRequest) -> list[ua.CallMethodResult]:
    """One Call request with every item."""
    return await client.uaclient.call(list(items))


@pytest.fixture
async def env(start_server):
    sink = RecordingSink()
    srv = await start_server(commands=sink)
    return srv, sink


async def test_each_item_gets_its_own_result(env):
    srv, sink = env
    async with client_for(srv, "vera") as client:  # viewer
        ns = await ns_of(client)
        results = await call(
            client,
            request(ns, "@gridctl", "@gridctl/WhoAmI"),
            request(ns, LOAD1, f"{LOAD1}/Arm", "trip", "test"),  # operator only
            request(ns, "loads/no_such_load", f"{LOAD1}/Arm", "trip", "x"),
            request(ns, LOAD1, f"{LOAD1}/NoSuchMethod"),
            # a method of another object: Execute there would act on LOAD2
            request(ns, LOAD1, f"{LOAD2}/Arm", "trip", "x"),
            request(ns, LOAD1, VOLT),  # a variable, not a method
        )
        assert [r.StatusCode.value for r in results] == [
            SC.Good,
            SC.BadUserAccessDenied,
            SC.BadNodeIdUnknown,
            SC.BadNodeIdUnknown,
            SC.BadMethodInvalid,
            SC.BadMethodInvalid,
        ]
        assert [v.Value for v in results[0].OutputArguments] == ["vera", "viewer"]
    assert sink.requests == [] and sink._armed() == {}


async def test_anonymous_reaches_public_methods_only_per_item(env):
    srv, sink = env
    async with client_for(srv) as client:
        ns = await ns_of(client)
        results = await call(
            client,
            request(ns, "@gridctl", "@gridctl/WhoAmI"),
            request(ns, LOAD1, f"{LOAD1}/Arm", "trip", "x"),
            # asyncua's own server method: not public
            ua.CallMethodRequest(
                ObjectId=ua.NodeId(ua.ObjectIds.Server),
                MethodId=ua.NodeId(ua.ObjectIds.Server_GetMonitoredItems),
                InputArguments=[ua.Variant(1, VT.UInt32)],
            ),
        )
        assert [r.StatusCode.value for r in results] == [
            SC.Good,
            SC.BadUserAccessDenied,
            SC.BadUserAccessDenied,
        ]
        assert [v.Value for v in results[0].OutputArguments] == ["anonymous", "anonymous"]
    assert sink.requests == [] and sink._armed() == {}


async def test_operator_items_checked_by_each_methods_role(env):
    srv, sink = env
    async with client_for(srv, "otto") as client:  # operator
        ns = await ns_of(client)
        armed, keep_power, wrong_object = await call(
            client,
            request(ns, LOAD1, f"{LOAD1}/Arm", "trip", "overload"),
            request(ns, LOAD1, f"{LOAD1}/Arm", "keep_power_on", "x"),  # engineer only
            request(ns, LOAD2, f"{LOAD1}/Arm", "trip", "x"),
        )
        assert armed.StatusCode.value == SC.Good
        assert keep_power.StatusCode.value == SC.BadUserAccessDenied
        assert wrong_object.StatusCode.value == SC.BadMethodInvalid
        token = armed.OutputArguments[0].Value
        assert [(a.target, a.kind) for a in sink._armed().values()] == [(LOAD1, "trip")]
        (executed,) = await call(client, request(ns, LOAD1, f"{LOAD1}/Execute", token))
        assert executed.StatusCode.value == SC.Good
    assert [(r.target, r.kind, r.user) for r in sink.requests] == [(LOAD1, "trip", "otto")]


async def test_user_executable_is_the_sessions_own(env):
    srv, _ = env
    expected = {  # (WhoAmI, Arm) as each session reads UserExecutable
        None: [True, False],
        "vera": [True, False],
        "otto": [True, True],
    }
    for user, executable in expected.items():
        async with client_for(srv, user) as client:
            ns = await ns_of(client)
            reads = [
                ua.ReadValueId(NodeId=nid(ns, path), AttributeId=attr)
                for path in ("@gridctl/WhoAmI", f"{LOAD1}/Arm")
                for attr in (A.Executable, A.UserExecutable)
            ]
            values = await client.uaclient.read(ua.ReadParameters(NodesToRead=reads))
            got = [v.Value.Value for v in values]
            assert got == [True, executable[0], True, executable[1]], user
