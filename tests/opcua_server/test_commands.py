"""Sink-backed methods (demand limit, recharge, batches, orders), command records, audit."""

from __future__ import annotations

import asyncio

import pytest
from asyncua import Client, ua

from controller.api import CommandRefused, CommandRequest, RefusalReason
from controller.commands import CommandLog
from controller.journal import Journal

from .conftest import FakeSelections, client_for, demo_image, nid, ns_of
from .test_hmi_support import wait_for

SC = ua.StatusCodes
O = ua.ObjectIds  # noqa: E741
VT = ua.VariantType


class FakeSink(FakeSelections):
    """Accepts every kind except those in ``unknown``; reports states it is told."""

    def __init__(self) -> None:
        self.requests: list[CommandRequest] = []
        self.unknown: set[str] = set()
        self.states: dict[str, tuple[str, str]] = {}

    async def submit(self, request: CommandRequest) -> str:
        if request.kind in self.unknown:
            raise CommandRefused(RefusalReason.NOT_SUPPORTED, f"no {request.kind} handler yet")
        if request.args.get("limit_kw") == 999.0:
            raise CommandRefused(RefusalReason.INVALID_STATE, "group g1 is in dry-run mode")
        self.requests.append(request)
        cid = f"cmd-{len(self.requests)}"
        self.states[cid] = ("queued", "")
        return cid

    def command_state(self, command_id: str) -> tuple[str, str] | None:
        return self.states.get(command_id)


async def _reads(node, expected) -> bool:
    return await node.read_value() == expected


def plant_image():
    image = demo_image(buses=1, meters=2)
    image.define("groups/g1/demand_avg", "kW")
    image.define("line/batch/state", "")
    image.define("warehouse/cranes/c1/state", "")
    return image


@pytest.fixture
async def env(start_server):
    sink = FakeSink()
    srv = await start_server(plant_image(), commands=sink, recent_commands=4)
    return srv, sink


# (object, method, good arguments, role that may, role that may not, kind, args seen by sink)
CASES = [
    (
        "groups/g1",
        "SetDemandLimit",
        [ua.Variant(850.0, VT.Double), "dispatch order 17"],
        "emma",
        "otto",
        "set_demand_limit",
        {"limit_kw": 850.0},
    ),
    (
        "groups/g1",
        "ClearDemandLimit",
        ["peak over"],
        "emma",
        "otto",
        "clear_demand_limit",
        {},
    ),
    (
        "loads/feeder1_l1",
        "Recharge",
        [ua.Variant(200.0, VT.Double), "counter payment"],
        "otto",
        "vera",
        "recharge",
        {"amount": 200.0},
    ),
    (
        "line",
        "StartBatch",
        ["class1_single_phase", ua.Variant(["000000000161", "000000000162"], VT.String), "lot 42"],
        "otto",
        "vera",
        "start_batch",
        {"scheme": "class1_single_phase", "meters": ["000000000161", "000000000162"]},
    ),
    (
        "line",
        "AbortBatch",
        ["B-2024-0042", "rig fault"],
        "otto",
        "vera",
        "abort_batch",
        {"batch_id": "B-2024-0042"},
    ),
    (
        "warehouse",
        "CreateOrder",
        ["outbound_verification", ua.Variant(["BOX-0001", "BOX-0002"], VT.String), "lot 42"],
        "otto",
        "vera",
        "create_order",
        {"kind": "outbound_verification", "items": ["BOX-0001", "BOX-0002"]},
    ),
    (
        "warehouse",
        "CancelOrder",
        ["ORD-17", "customer cancelled"],
        "otto",
        "vera",
        "cancel_order",
        {"order_id": "ORD-17"},
    ),
]


async def method_call(client: Client, path: str, name: str, args: list) -> ua.CallMethodResult:
    ns = await ns_of(client)
    req = ua.CallMethodRequest(
        ObjectId=nid(ns, path),
        MethodId=nid(ns, f"{path}/{name}"),
        InputArguments=[a if isinstance(a, ua.Variant) else ua.Variant(a, VT.String) for a in args],
    )
    (res,) = await client.uaclient.call([req])
    return res


@pytest.mark.parametrize(("path", "method", "args", "allowed", "denied", "kind", "seen"), CASES)
async def test_command_method_roles(env, path, method, args, allowed, denied, kind, seen):
    srv, sink = env
    async with client_for(srv, denied) as client:
        res = await method_call(client, path, method, args)
        assert res.StatusCode.value == SC.BadUserAccessDenied
    assert sink.requests == []
    async with client_for(srv, allowed) as client:
        res = await method_call(client, path, method, args)
        assert res.StatusCode.is_good(), res.StatusCode
        assert [v.Value for v in res.OutputArguments] == ["cmd-1"]
    (req,) = sink.requests
    assert (req.kind, req.target, req.user, req.reason) == (kind, path, allowed, args[-1])
    assert req.args == seen
    assert req.token  # unique request id, usable for idempotency


BAD = [
    ("groups/g1", "SetDemandLimit", [ua.Variant(-5.0, VT.Double), "r"], SC.BadOutOfRange, 0),
    ("groups/g1", "SetDemandLimit", [ua.Variant(0.0, VT.Double), "r"], SC.BadOutOfRange, 0),
    ("groups/g1", "SetDemandLimit", ["lots", "r"], SC.BadInvalidArgument, 0),
    ("groups/g1", "SetDemandLimit", [ua.Variant(True, VT.Boolean), "r"], SC.BadInvalidArgument, 0),
    ("groups/g1", "SetDemandLimit", [ua.Variant(100.0, VT.Double), ""], SC.BadOutOfRange, 1),
    (
        "loads/feeder1_l1",
        "Recharge",
        [ua.Variant(float("nan"), VT.Double), "r"],
        SC.BadInvalidArgument,
        0,
    ),
    ("loads/feeder1_l1", "Recharge", [ua.Variant(1e9, VT.Double), "r"], SC.BadOutOfRange, 0),
    ("line", "StartBatch", ["s1", ua.Variant([], VT.String), "r"], SC.BadOutOfRange, 1),
    ("line", "StartBatch", ["s1", ua.Variant(["a b"], VT.String), "r"], SC.BadInvalidArgument, 1),
    (
        "line",
        "StartBatch",
        ["s1", ua.Variant(["m1", "m1"], VT.String), "r"],
        SC.BadInvalidArgument,
        1,
    ),
    ("line", "StartBatch", ["", ua.Variant(["m1"], VT.String), "r"], SC.BadOutOfRange, 0),
    (
        "warehouse",
        "CreateOrder",
        ["teleport", ua.Variant(["B1"], VT.String), "r"],
        SC.BadInvalidArgument,
        0,
    ),
    ("warehouse", "CancelOrder", ["x" * 65, "r"], SC.BadOutOfRange, 0),
]


@pytest.mark.parametrize(("path", "method", "args", "code", "index"), BAD)
async def test_command_method_bad_arguments(env, path, method, args, code, index):
    srv, sink = env
    async with client_for(srv, "ada") as client:
        res = await method_call(client, path, method, args)
        assert res.StatusCode.value == code, res.StatusCode
        assert res.InputArgumentResults[index].value == code
        name = [a.name for a in srv_inputs(srv, method)][index]
        assert f"'{name}'" in res.InputArgumentDiagnosticInfos[index].AdditionalInfo
        missing = await method_call(client, path, method, args[:-1])
        assert missing.StatusCode.value == SC.BadArgumentsMissing
    assert sink.requests == []


def srv_inputs(srv, method: str):
    return srv.methods[method].inputs


async def test_sink_refusals_are_reported(env):
    srv, sink = env
    sink.unknown.add("recharge")
    async with client_for(srv, "ada") as client:
        res = await method_call(
            client, "loads/feeder1_l1", "Recharge", [ua.Variant(5.0, VT.Double), "r"]
        )
        assert res.StatusCode.value == SC.BadNotSupported
        res = await method_call(
            client, "groups/g1", "SetDemandLimit", [ua.Variant(999.0, VT.Double), "r"]
        )
        assert res.StatusCode.value == SC.BadInvalidState


async def test_command_state_variables_ring_and_events(env):
    srv, sink = env
    events: list = []

    class Handler:
        def event_notification(self, event) -> None:
            events.append(event)

    async with client_for(srv, "otto") as client:
        ns = await ns_of(client)
        sub = await client.create_subscription(20, Handler())
        etype = client.get_node(nid(ns, "@types/CommandEventType"))
        await sub.subscribe_events(client.get_node(ua.NodeId(O.Server)), etype, queuesize=100)
        load = client.get_node(nid(ns, "loads/feeder1_l1"))
        token, _ = await load.call_method(f"{ns}:Arm", "trip", "overdraft")
        command_id = await load.call_method(f"{ns}:Execute", token)
        assert await client.get_node(nid(ns, "loads/feeder1_l1/LastCommandId")).read_value() == (
            command_id
        )
        state = client.get_node(nid(ns, "loads/feeder1_l1/LastCommandState"))
        assert await state.read_value() == "queued"
        slot = await client.get_node(nid(ns, "@commands/LastSlot")).read_value()
        assert await client.get_node(nid(ns, f"@commands/Recent/{slot:02d}/Kind")).read_value() == (
            "trip"
        )
        # The runtime moves the command on; the server follows it.
        sink.states[command_id] = ("confirmed", "read back open")
        await srv.update_diagnostics()
        # applied by the publisher, behind the tag changes queued before it
        await wait_for(lambda: _reads(state, "confirmed"))
        assert (
            await client.get_node(nid(ns, f"@commands/Recent/{slot:02d}/Reason")).read_value()
            == "read back open"
        )
        await wait_for(lambda: len(events) >= 2)
        assert [e.State for e in events[:2]] == ["queued", "confirmed"]
        assert events[0].CommandId == command_id and events[0].User == "otto"
        assert events[0].SourceNode == nid(ns, "loads/feeder1_l1")

        # The ring is bounded: more commands reuse the oldest slots, no new nodes.
        nodes = srv.model_nodes
        for i in range(6):
            await load.call_method(f"{ns}:Recharge", ua.Variant(1.0 + i, VT.Double), "r")
        ids = [
            await client.get_node(nid(ns, f"@commands/Recent/{i:02d}/CommandId")).read_value()
            for i in range(4)
        ]
        assert sorted(ids) == ["cmd-4", "cmd-5", "cmd-6", "cmd-7"]
        assert srv.model_nodes == nodes


async def test_every_method_call_is_audited(env):
    srv, _sink = env
    audits: list = []

    class Handler:
        def event_notification(self, event) -> None:
            audits.append(event)

    async with client_for(srv, "vera") as client:
        ns = await ns_of(client)
        sub = await client.create_subscription(20, Handler())
        etype = client.get_node(ua.NodeId(O.AuditUpdateMethodEventType))
        await sub.subscribe_events(client.get_node(ua.NodeId(O.Server)), etype, queuesize=100)
        await method_call(client, "warehouse", "CancelOrder", ["ORD-1", "mistake"])
        async with client_for(srv, "otto") as otto:
            await method_call(otto, "warehouse", "CancelOrder", ["ORD-2", "duplicate"])
        await wait_for(lambda: len(audits) >= 2)
        await asyncio.sleep(0.1)
    denied, ok = audits[:2]
    assert denied.ClientUserId == "vera" and denied.Status is False
    assert denied.StatusCodeId.value == SC.BadUserAccessDenied
    assert ok.ClientUserId == "otto" and ok.Status is True
    assert ok.MethodId == nid(ns, "warehouse/CancelOrder")
    assert [v.Value for v in ok.InputArguments] == ["ORD-2", "duplicate"]
    assert [v.Value for v in ok.OutputArguments] == ["cmd-1"]


async def test_command_log_journals_with_user(start_server, tmp_path):
    """The adapter over the real command log: journalled before the id is returned."""
    journal = Journal(tmp_path / "journal.db")
    journal.open()
    log = CommandLog(journal)
    try:
        srv = await start_server(plant_image(), commands=log)
        async with client_for(srv, "emma") as client:
            res = await method_call(
                client, "groups/g1", "SetDemandLimit", [ua.Variant(500.0, VT.Double), "peak"]
            )
            assert res.StatusCode.is_good()
            (command_id,) = [v.Value for v in res.OutputArguments]
            # Kinds the log does not know yet are refused as not supported.
            res = await method_call(client, "warehouse", "CancelOrder", ["ORD-1", "r"])
            assert res.StatusCode.value == SC.BadNotSupported
        rows = journal.query("SELECT kind, target, who, why, state FROM commands")
        assert [tuple(r) for r in rows] == [("set_limit", "groups/g1", "emma", "peak", "queued")]
        assert log.get(command_id).args["limit_kw"] == 500.0
        await log.transition(command_id, "sent")
        await srv.update_diagnostics()
        async with client_for(srv) as client:
            ns = await ns_of(client)
            node = client.get_node(nid(ns, "groups/g1/LastCommandState"))
            await wait_for(lambda: _reads(node, "sent"))
    finally:
        journal.close()
