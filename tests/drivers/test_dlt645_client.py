"""Dlt645Client retry rules against a scripted exchange (no wire)."""

from __future__ import annotations

import pytest

from controller import _core_rs as core
from drivers.dlt645_client import Dlt645Client
from drivers.errors import BusTimeout, FrameCorrupt, MeterException

ADDR = "000000000161"


class Script:
    def __init__(self, *replies: object) -> None:
        self.replies = list(replies)
        self.sent: list[bytes] = []

    async def __call__(
        self,
        request: bytes,
        address: str,
        function: int,
        *,
        reply: bool = True,
        di: bytes | None = None,
    ):
        self.sent.append(request)
        if not reply:
            return None
        item = self.replies.pop(0)
        if isinstance(item, Exception):
            raise item
        return core.dlt645_decode(item)


async def test_timeouts_are_retried_three_times_then_raised() -> None:
    script = Script(*[BusTimeout("t")] * 4)
    client = Dlt645Client(script, retries=3)
    with pytest.raises(BusTimeout):
        await client.read(ADDR, "02010100")
    assert len(script.sent) == 4 and client.retried == 3


async def test_checksum_error_then_success() -> None:
    value = core.encode_value("02010100", 220.5)
    ok = core.dlt645_reply(ADDR, core.FN_READ, bytes.fromhex("00010102") + value)
    client = Dlt645Client(Script(FrameCorrupt("cs"), ok))
    assert await client.read_value(ADDR, "02010100") == pytest.approx(220.5)


async def test_exception_reply_is_typed_and_not_retried() -> None:
    script = Script(core.dlt645_exception(ADDR, core.FN_READ, 0x02))
    client = Dlt645Client(script)
    with pytest.raises(MeterException) as info:
        await client.read(ADDR, "02010100")
    assert info.value.no_data and info.value.err_bits == 0x02
    assert "no requested data" in str(info.value)
    assert len(script.sent) == 1


async def test_followup_frames_are_joined() -> None:
    di = bytes.fromhex("00FF0100")
    first = core.dlt645_reply(ADDR, core.FN_READ, di + b"\x11\x22", followup=True)
    second = core.dlt645_reply(ADDR, core.FN_READ_FOLLOWUP, di + b"\x33" + b"\x01", followup=True)
    last = core.dlt645_reply(ADDR, core.FN_READ_FOLLOWUP, di + b"\x44\x55" + b"\x02")
    script = Script(first, second, last)
    raw = await Dlt645Client(script).read(ADDR, "0001FF00")
    assert raw == b"\x11\x22\x33\x44\x55"
    assert core.dlt645_decode(script.sent[1]).function == core.FN_READ_FOLLOWUP


async def test_reply_for_another_di_is_corrupt() -> None:
    wrong = core.dlt645_reply(ADDR, core.FN_READ, bytes.fromhex("00020102") + b"\x00\x22")
    client = Dlt645Client(Script(wrong), retries=0)
    with pytest.raises(FrameCorrupt):
        await client.read(ADDR, "02010100")
