from __future__ import annotations

import pytest
from asyncua import ua

from controller.api import CommandRefused, CommandRequest, RefusalReason
from controller.commands import CommandLog, CommandState
from controller.journal import Journal
from opcua_server import AlarmInfo

from .conftest import FakeSelections, client_for, nid, ns_of

SC = ua.StatusCodes
LOAD = "loads/feeder1_l1"


class FakeSink(FakeSelections):
    def __init__(self) -> None:
        self.requests: list[CommandRequest] = []
        self.refuse: CommandRefused | None = None

    async def submit(self, request: CommandRequest) -> str:
        if self.refuse:
            raise self.refuse
        self.requests.append(request)
        return f"cmd-{len(self.requests)}"


class FakeAlarms:
    def __init__(self) -> None:
        self.acks: list[tuple[str, str, str]] = []

    def active_alarms(self):
        return [AlarmInfo("A1", "buses/bus1", "bus offline", 700, True, False)]

    async def acknowledge(self, alarm_id: str, user: str, comment: str) -> None:
        if alarm_id != "A1":
            raise KeyError(alarm_id)
        self.acks.append((alarm_id, user, comment))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def expect(code: int, coro) -> None:
    with pytest.raises(ua.UaStatusCodeError) as err:
        await coro
    assert err.value.code == code, ua.StatusCode(err.value.code).name


@pytest.fixture
async def env(start_server):
    sink = FakeSink()
    alarms = FakeAlarms()
    srv = await start_server(commands=sink, alarms=alarms)
    return srv, sink, alarms


async def test_operator_arms_and_executes(env):
    srv, sink, _ = env
    async with client_for(srv, "otto") as client:
        ns = await ns_of(client)
        load = client.get_node(nid(ns, LOAD))
        token, expires = await load.call_method(f"{ns}:Arm", "trip", "demand limit exceeded")
        assert isinstance(token, str) and expires is not None
        assert sink.requests == []  # arming alone sends nothing
        (command_id,) = [await load.call_method(f"{ns}:Execute", token)]
        assert command_id == "cmd-1"
        req = sink.requests[0]
        assert (req.target, req.kind, req.reason, req.user, req.role) == (
            LOAD,
            "trip",
            "demand limit exceeded",
            "otto",
            "operator",
        )
        # single use: not_armed → BadNoEntryExists
        await expect(SC.BadNoEntryExists, load.call_method(f"{ns}:Execute", token))
        assert len(sink.requests) == 1


async def test_viewer_is_denied_and_nothing_reaches_sink(env):
    srv, sink, alarms = env
    async with client_for(srv, "vera") as client:
        ns = await ns_of(client)
        load = client.get_node(nid(ns, LOAD))
        await expect(SC.BadUserAccessDenied, load.call_method(f"{ns}:Arm", "trip", "x"))
        await expect(SC.BadUserAccessDenied, load.call_method(f"{ns}:Execute", "whatever"))
        al = client.get_node(nid(ns, "@alarms"))
        await expect(SC.BadUserAccessDenied, al.call_method(f"{ns}:Acknowledge", "A1", "seen"))
    assert sink.requests == [] and alarms.acks == []


async def test_anonymous_cannot_call(env):
    srv, sink, _ = env
    async with client_for(srv) as client:
        ns = await ns_of(client)
        load = client.get_node(nid(ns, LOAD))
        await expect(SC.BadUserAccessDenied, load.call_method(f"{ns}:Arm", "trip", "x"))
    assert sink.requests == []


@pytest.fixture
async def journaled(start_server, tmp_path):
    """A server whose sink is the controller's command log (selection journaled there)."""
    clock = Clock()
    journal = Journal(tmp_path / "journal.sqlite")
    journal.open()
    log = CommandLog(journal, kinds={"trip", "close_allowed"}, clock=clock)
    srv = await start_server(commands=log)
    yield srv, log, clock
    journal.close()


async def test_expired_token_refused(journaled):
    srv, log, clock = journaled
    async with client_for(srv, "otto") as client:
        ns = await ns_of(client)
        load = client.get_node(nid(ns, LOAD))
        token, expires = await load.call_method(f"{ns}:Arm", "close_allowed", "restore")
        # the sink's arm timeout: 30 s after the log's clock (1000 s epoch)
        assert expires.timestamp() == 1000.0 + 30.0
        clock.t += 30.0 + 0.1
        # expired → BadTimeout; the lapse is journaled
        await expect(SC.BadTimeout, load.call_method(f"{ns}:Execute", token))
    cmd = log.get(token)
    assert cmd.state is CommandState.EXPIRED
    assert [t.state.value for t in cmd.history] == ["armed", "expired"]


async def test_token_bound_to_load_and_user(journaled):
    srv, log, _ = journaled
    async with client_for(srv, "otto") as otto:
        ns = await ns_of(otto)
        token, _ = await otto.get_node(nid(ns, LOAD)).call_method(f"{ns}:Arm", "trip", "r")
        other = otto.get_node(nid(ns, "loads/feeder1_l2"))
        await expect(SC.BadNoEntryExists, other.call_method(f"{ns}:Execute", token))
    async with client_for(srv, "emma") as emma:
        await expect(
            SC.BadNoEntryExists, emma.get_node(nid(ns, LOAD)).call_method(f"{ns}:Execute", token)
        )
        # the load stays reserved for otto: busy → BadLocked
        await expect(
            SC.BadLocked, emma.get_node(nid(ns, LOAD)).call_method(f"{ns}:Arm", "trip", "mine")
        )
    assert log.get(token).state is CommandState.ARMED


async def test_bad_arguments(env):
    srv, sink, _ = env
    async with client_for(srv, "otto") as client:
        ns = await ns_of(client)
        load = client.get_node(nid(ns, LOAD))
        await expect(SC.BadInvalidArgument, load.call_method(f"{ns}:Arm", "explode", "r"))
        await expect(SC.BadOutOfRange, load.call_method(f"{ns}:Arm", "trip", "x" * 201))
        await expect(SC.BadOutOfRange, load.call_method(f"{ns}:Arm", "trip", ""))
        await expect(SC.BadInvalidArgument, load.call_method(f"{ns}:Arm", 5, "r"))
        await expect(SC.BadArgumentsMissing, load.call_method(f"{ns}:Arm", "trip"))
        await expect(SC.BadNoEntryExists, load.call_method(f"{ns}:Execute", "no-such-token"))
        # The refusal names the argument in the per-argument diagnostics.
        req = ua.CallMethodRequest(
            ObjectId=load.nodeid,
            MethodId=(await load.get_child(f"{ns}:Arm")).nodeid,
            InputArguments=[ua.Variant("explode"), ua.Variant("r")],
        )
        (res,) = await client.uaclient.call([req])
        assert res.StatusCode.value == SC.BadInvalidArgument
        assert res.InputArgumentResults[0].value == SC.BadInvalidArgument
        assert res.InputArgumentResults[1].is_good()
        assert "kind" in res.InputArgumentDiagnosticInfos[0].AdditionalInfo
    assert sink.requests == []


async def test_keep_power_needs_engineer(env):
    srv, sink, _ = env
    assert sink.requests == []
    async with client_for(srv, "otto") as client:
        ns = await ns_of(client)
        load = client.get_node(nid(ns, LOAD))
        await expect(SC.BadUserAccessDenied, load.call_method(f"{ns}:Arm", "keep_power_on", "r"))
    async with client_for(srv, "emma") as client:
        load = client.get_node(nid(ns, LOAD))
        token, _ = await load.call_method(f"{ns}:Arm", "keep_power_on", "hospital feeder")
        assert await load.call_method(f"{ns}:Execute", token) == "cmd-1"


# Each reason code as the client sees it (the table in opcua_server/methods.py, by hand).
REFUSAL_CODES = [
    (RefusalReason.BAD_ARGUMENT, SC.BadInvalidArgument),
    (RefusalReason.NOT_PERMITTED, SC.BadUserAccessDenied),
    (RefusalReason.NOT_SUPPORTED, SC.BadNotSupported),
    (RefusalReason.UNKNOWN_TARGET, SC.BadNotFound),
    (RefusalReason.BUSY, SC.BadLocked),
    (RefusalReason.INTERLOCK, SC.BadInvalidState),
    (RefusalReason.INVALID_STATE, SC.BadInvalidState),
    (RefusalReason.NOT_ARMED, SC.BadNoEntryExists),
    (RefusalReason.EXPIRED, SC.BadTimeout),
    (RefusalReason.SERVICE_STOPPING, SC.BadShutdown),
    (RefusalReason.UNAVAILABLE, SC.BadResourceUnavailable),
]


def test_every_reason_has_a_status_code():
    assert sorted(r for r, _ in REFUSAL_CODES) == sorted(RefusalReason)


async def test_sink_refusal_is_reported_as_its_reasons_status_code(env):
    srv, sink, _ = env
    async with client_for(srv, "otto") as client:
        ns = await ns_of(client)
        load = client.get_node(nid(ns, LOAD))
        for reason, code in REFUSAL_CODES:
            sink.refuse = CommandRefused(reason, "load feeder1_l1: maintenance lock-out")
            token, _ = await load.call_method(f"{ns}:Arm", "close_direct", "r")
            await expect(code, load.call_method(f"{ns}:Execute", token))
    assert sink.requests == []


async def test_acknowledge_alarm(env):
    srv, _, alarms = env
    async with client_for(srv, "otto") as client:
        ns = await ns_of(client)
        node = client.get_node(nid(ns, "@alarms"))
        assert await node.call_method(f"{ns}:Acknowledge", "A1", "crew dispatched") is None
        await expect(SC.BadInvalidArgument, node.call_method(f"{ns}:Acknowledge", "A9", ""))
    assert alarms.acks == [("A1", "otto", "crew dispatched")]


async def test_method_arguments_are_browsable(env):
    srv, _, _ = env
    async with client_for(srv) as client:
        ns = await ns_of(client)
        arm = await client.get_node(nid(ns, LOAD)).get_child(f"{ns}:Arm")
        args = await (await arm.get_child("0:InputArguments")).read_value()
        assert [a.Name for a in args] == ["kind", "reason"]
        assert "trip" in args[0].Description.Text
