import pytest

from controller.api import ArmRequest, CommandRefused, CommandRequest, RefusalReason
from controller.command_router import CommandRouter


class RecordingSink:
    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[str] = []

    async def submit(self, request: CommandRequest) -> str:
        self.seen.append(request.target)
        return f"{self.name}-{len(self.seen)}"


def _req(target: str) -> CommandRequest:
    return CommandRequest(
        target=target,
        kind="trip",
        reason="test",
        user="op",
        role="operator",
        token="t",
        armed_at=0.0,
    )


async def test_routes_by_longest_prefix():
    router = CommandRouter()
    loads, groups = RecordingSink("loads"), RecordingSink("groups")
    router.register("loads/", loads)
    router.register("loads/groups/", groups)
    assert await router.submit(_req("loads/feeder1_l1")) == "loads-1"
    assert await router.submit(_req("loads/groups/feeder1")) == "groups-1"
    assert loads.seen == ["loads/feeder1_l1"] and groups.seen == ["loads/groups/feeder1"]


async def test_unknown_target_is_refused_naming_it():
    router = CommandRouter()
    router.register("line/", RecordingSink("line"))
    with pytest.raises(CommandRefused, match=r"target 'warehouse/orders': no subsystem .* line/"):
        await router.submit(_req("warehouse/orders"))


def test_bad_or_duplicate_prefix_is_an_error():
    router = CommandRouter()
    with pytest.raises(ValueError, match="must end with '/'"):
        router.register("loads", RecordingSink("x"))
    router.register("loads/", RecordingSink("x"))
    with pytest.raises(ValueError, match="already registered"):
        router.register("loads/", RecordingSink("y"))


async def test_the_root_object_of_a_branch_belongs_to_it():
    router = CommandRouter()
    line = RecordingSink("line")
    router.register("line/", line)
    assert await router.submit(_req("line")) == "line-1"
    with pytest.raises(CommandRefused):
        await router.submit(_req("lines"))


async def test_refusals_carry_their_reason():
    router = CommandRouter()
    router.register("line/", RecordingSink("line"))
    with pytest.raises(CommandRefused) as err:
        await router.submit(_req("warehouse/orders"))
    assert err.value.reason is RefusalReason.UNKNOWN_TARGET
    # the line's sink keeps no select-before-operate: Arm is not supported there
    arm = ArmRequest(target="line", kind="trip", reason="r", user="op", role="operator")
    with pytest.raises(CommandRefused, match="no select-before-operate") as err:
        await router.arm(arm)
    assert err.value.reason is RefusalReason.NOT_SUPPORTED
