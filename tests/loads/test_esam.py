"""Trips to an ESAM meter through the executor, the field plant and the simulated farm.

Meter 000000000003 is configured ``security = "esam"`` on the controller's side
and ``require_esam`` on the simulator's: its ESAM card checks the MAC by itself
(drivers/sim/esam_card.py) and refuses anything else with ERR 0x04.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from controller.commands import CommandState
from drivers.config import MeterConfig
from drivers.esam import HmacSession, HmacTestAdapter

from .conftest import loads_config

ADDR3 = "000000000003"
KEY = "00112233445566778899AABBCCDDEEFF"
OTHER_KEY = "FFEEDDCCBBAA99887766554433221100"

ESAM_METER = f"""
[[buses.meters]]
address = "{ADDR3}"
groups = ["status"]
security = "esam"
"""
# what the meter answers to an unauthenticated 1C (DL/T 645 ERR bit 2, as the
# driver words it in MeterException)
REFUSAL = (
    f"authentication required: meter {ADDR3} refused function 0x1C: "
    "password error / unauthorised (ERR=0x04)"
)


def sim_esam(key: str = KEY) -> str:
    return f'[sim.buses.bus1.meters."{ADDR3}"]\nrequire_esam = true\nesam_key = "{key}"\n'


def adapter(name: str, **options: str) -> str:
    opts = ", ".join(f'{k} = "{v}"' for k, v in options.items())
    return f'[esam]\nadapter = "{name}"\noptions = {{ {opts} }}\ntimeout_s = 0.2\n'


def esam_loads() -> Any:
    return loads_config(
        loads=[
            {"name": "l1", "bus": "bus1", "address": "000000000001", "feeder": "f1"},
            {"name": "e1", "bus": "bus1", "address": ADDR3, "feeder": "f1"},
        ],
        confirm={"timeout_s": 1.0, "reread_interval_s": 0.1, "max_rereads": 3},
    )


async def test_trip_through_the_test_adapter_is_confirmed(rig) -> None:
    r = await rig(
        extra_bus=ESAM_METER,
        extra=sim_esam() + adapter("test-hmac", key=KEY),
        loads=esam_loads(),
    )
    card = r.meter(ADDR3).esam_card
    cmd = await r.executor.run("trip", "e1", who="otto", why="esam trip")
    assert cmd.state is CommandState.CONFIRMED, cmd.reason
    assert [t.state.value for t in cmd.history] == ["queued", "sent", "confirmed"]
    assert r.meter(ADDR3).relay_open is True
    assert (card.accepted, card.refused) == (1, 0)
    assert r.image.value(f"buses/bus1/meters/{ADDR3}/relay_open") is True

    cmd = await r.executor.run("direct_close", "e1", who="otto", why="esam close")
    assert cmd.state is CommandState.CONFIRMED, cmd.reason
    assert r.meter(ADDR3).relay_open is False
    assert (card.accepted, card.refused) == (2, 0)


async def test_plaintext_adapter_is_refused_authentication_required(rig) -> None:
    # no [esam] table: the default adapter is plaintext, so the 1C goes out unsealed
    r = await rig(extra_bus=ESAM_METER, extra=sim_esam(), loads=esam_loads())
    card = r.meter(ADDR3).esam_card
    cmd = await r.executor.run("trip", "e1", who="otto", why="esam trip")
    assert cmd.state is CommandState.FAILED
    assert cmd.reason == REFUSAL
    assert r.image.value("loads/e1/last_outcome") == f"failed: {REFUSAL}"
    # refused, not retried: one frame reached the card, the relay never moved
    assert (card.accepted, card.refused) == (0, 1)
    assert r.meter(ADDR3).relay_open is False
    assert r.meter(ADDR3).controls_honoured == 0
    assert r.executor.commanded.get("e1") is None


async def test_wrong_key_is_refused(rig) -> None:
    r = await rig(
        extra_bus=ESAM_METER,
        extra=sim_esam(OTHER_KEY) + adapter("test-hmac", key=KEY),
        loads=esam_loads(),
    )
    card = r.meter(ADDR3).esam_card
    cmd = await r.executor.run("trip", "e1", who="otto", why="esam trip")
    assert cmd.state is CommandState.FAILED
    assert cmd.reason == REFUSAL
    assert (card.accepted, card.refused) == (0, 1)
    assert r.meter(ADDR3).relay_open is False


async def test_plain_meters_on_the_same_bus_are_not_sealed(rig) -> None:
    # the adapter is configured, but meter 1 is `security = "plaintext"` and its
    # simulated twin has no ESAM: a sealed 1C (20 data bytes) would be refused
    r = await rig(
        extra_bus=ESAM_METER,
        extra=sim_esam() + adapter("test-hmac", key=KEY),
        loads=esam_loads(),
    )
    cmd = await r.executor.run("trip", "l1", who="otto", why="plain trip")
    assert cmd.state is CommandState.CONFIRMED, cmd.reason
    assert r.meter("000000000001").relay_open is True


class StuckAdapter:
    """A crypto machine that never answers."""

    name = "stuck"

    async def authenticate(self, meter: MeterConfig) -> None:
        await asyncio.Event().wait()

    async def seal(self, session: None, payload: bytes) -> bytes:
        return payload

    async def open(self, session: None, reply: bytes) -> bytes:
        return reply


def make_stuck(options: Mapping[str, Any]) -> StuckAdapter:
    return StuckAdapter()


async def test_adapter_that_does_not_answer_fails_the_command_not_sent(rig) -> None:
    r = await rig(
        extra_bus=ESAM_METER,
        extra=sim_esam() + adapter("tests.loads.test_esam:make_stuck"),
        loads=esam_loads(),
    )
    card = r.meter(ADDR3).esam_card
    cmd = await r.executor.run("trip", "e1", who="otto", why="esam trip")
    assert cmd.state is CommandState.FAILED
    assert cmd.reason == (
        f"not sent: meter {ADDR3}: ESAM adapter 'stuck' did not answer within 0.2 s"
    )
    assert (card.accepted, card.refused) == (0, 0)
    assert r.meter(ADDR3).relay_open is False
    # the bus goes on: the next command to a plain meter is confirmed
    cmd = await r.executor.run("trip", "l1", who="otto", why="plain trip")
    assert cmd.state is CommandState.CONFIRMED, cmd.reason


class DistrustfulAdapter(HmacTestAdapter):
    """Seals like test-hmac but will not open any reply (a reply MAC it cannot check)."""

    name = "distrustful"

    async def open(self, session: HmacSession, reply: bytes) -> bytes:
        raise ValueError("reply MAC missing")


def make_distrustful(options: Mapping[str, Any]) -> DistrustfulAdapter:
    return DistrustfulAdapter(bytes.fromhex(KEY))


async def test_reply_the_adapter_will_not_open_leaves_the_read_back_to_decide(rig) -> None:
    r = await rig(
        extra_bus=ESAM_METER,
        extra=sim_esam() + adapter("tests.loads.test_esam:make_distrustful"),
        loads=esam_loads(),
    )
    card = r.meter(ADDR3).esam_card
    cmd = await r.executor.run("trip", "e1", who="otto", why="esam trip")
    # the meter acted on the sealed 1C; only its 9C did not pass, so the client
    # retried like a corrupt reply (1 + 3 retries, each accepted) and the
    # status word read-back confirmed the trip
    assert cmd.state is CommandState.CONFIRMED, cmd.reason
    assert cmd.reason.endswith(
        f"; no acknowledgement (meter {ADDR3}: reply not opened by ESAM adapter "
        "'distrustful': reply MAC missing)"
    )
    assert (card.accepted, card.refused) == (4, 0)
    assert r.meter(ADDR3).relay_open is True
