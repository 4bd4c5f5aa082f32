"""DL/T 645-2007 client: requests and the meaning of replies.

Framing and BCD live in the Rust core; the wire belongs to the bus owner.
This class builds requests, hands them to an *exchange* (one request on the
wire, one matching reply back) and interprets what comes back:

- timeouts and checksum errors are retried (3 by default, as in the field);
- an exception reply (C | 0xC0) becomes `MeterException` with the ERR bits
  (`MeterUnauthorised` for bit 2, password / ESAM) and is never retried:
  "no requested data" will not change on a second ask;
- replies flagged "more frames follow" (D5) are completed with 0x12 follow-up
  reads until the last frame.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol

from controller import _core_rs as core
from drivers.errors import FrameCorrupt, TransactionError, meter_exception
from drivers.quantities import normalise_di

# A meter splitting one reply into more frames than this is misbehaving.
MAX_FOLLOWUP_FRAMES = 32


class Exchange(Protocol):
    async def __call__(
        self,
        request: bytes,
        address: str,
        function: int,
        *,
        reply: bool = True,
        di: bytes | None = None,
    ) -> core.Dlt645Frame | None:
        """Send ``request``; return the reply from ``address`` for ``function`` (None when no
        reply is expected). With ``di`` (wire order), a normal reply must start with it."""
        ...


def _di_bytes(di: str) -> bytes:
    return bytes.fromhex(di)[::-1]  # DI0 first on the wire


def _time6(when: dt.datetime) -> tuple[int, int, int, int, int, int]:
    return (when.year, when.month, when.day, when.hour, when.minute, when.second)


class Dlt645Client:
    def __init__(self, exchange: Exchange, *, preamble: int = 4, retries: int = 3) -> None:
        self._exchange = exchange
        self.preamble = preamble
        self.retries = retries
        self.retried = 0  # transactions repeated after a timeout or checksum error

    async def _request(
        self,
        request: bytes,
        address: str,
        function: int,
        *,
        retries: int | None,
        di: str | None = None,
    ) -> core.Dlt645Frame:
        # a write's normal reply (94) has L = 0: no DI to match it by
        want = None if di is None or function == core.FN_WRITE else _di_bytes(di)
        attempts = 1 + (self.retries if retries is None else retries)
        last: TransactionError | None = None
        for attempt in range(attempts):
            if attempt:
                self.retried += 1
            try:
                frame = await self._exchange(request, address, function, di=want)
            except TransactionError as exc:
                last = exc
                continue
            assert frame is not None
            if frame.is_exception:
                raise meter_exception(frame.address, function, frame.error_code or 0, di)
            return frame
        assert last is not None
        raise last

    async def read(self, address: str, di: str | int, *, retries: int | None = None) -> bytes:
        """Value bytes of one DI (block DIs included), follow-up frames joined."""
        di = normalise_di(di)
        want = _di_bytes(di)
        frame = await self._request(
            core.dlt645_read(address, di, self.preamble),
            address,
            core.FN_READ,
            retries=retries,
            di=di,
        )
        data = frame.data
        if data[:4] != want:
            raise FrameCorrupt(
                f"meter {address} answered DI {data[:4][::-1].hex().upper()}, asked {di}"
            )
        value = bytearray(data[4:])
        seq = 0
        while frame.has_followup:
            seq += 1
            if seq > MAX_FOLLOWUP_FRAMES:
                raise FrameCorrupt(
                    f"meter {address}: more than {MAX_FOLLOWUP_FRAMES} follow-up frames for {di}"
                )
            frame = await self._request(
                core.dlt645_read_followup(address, di, seq, self.preamble),
                address,
                core.FN_READ_FOLLOWUP,
                retries=retries,
                di=di,
            )
            # follow-up reply data: DI, value bytes, SEQ
            value += frame.data[4:-1]
        return bytes(value)

    async def read_value(
        self, address: str, di: str | int, *, retries: int | None = None
    ) -> core.DecodedValue:
        di = normalise_di(di)
        return core.decode_value(di, await self.read(address, di, retries=retries))

    async def read_address(self, *, retries: int | None = None) -> str:
        """Wildcard read-address (0x13): only meaningful with one meter on the line."""
        frame = await self._request(
            core.dlt645_read_address(self.preamble),
            core.WILDCARD_ADDRESS,
            core.FN_READ_ADDRESS,
            retries=retries,
        )
        return frame.address

    async def write(
        self,
        address: str,
        di: str | int,
        value: bytes,
        *,
        password_level: int,
        password: str,
        operator: str,
        retries: int | None = None,
    ) -> None:
        di = normalise_di(di)
        request = core.dlt645_write(
            address, di, password_level, password, operator, value, self.preamble
        )
        # the normal reply (0x94) carries no data, so it cannot be matched by DI
        await self._request(request, address, core.FN_WRITE, di=di, retries=retries)

    async def broadcast_time(self, when: dt.datetime) -> None:
        """0x08 broadcast time sync: no meter answers a broadcast."""
        await self._exchange(
            core.dlt645_time_sync(_time6(when), self.preamble),
            core.BROADCAST_ADDRESS,
            core.FN_BROADCAST_TIME,
            reply=False,
        )

    async def freeze(
        self, address: str, pattern: str = "99999999", *, retries: int | None = None
    ) -> None:
        request = core.dlt645_freeze(address, pattern, self.preamble)
        if address == core.BROADCAST_ADDRESS:
            await self._exchange(request, address, core.FN_FREEZE, reply=False)
            return
        await self._request(request, address, core.FN_FREEZE, retries=retries)

    async def control(
        self,
        address: str,
        n1: int,
        valid_until: dt.datetime,
        *,
        password_level: int,
        password: str,
        operator: str,
        retries: int | None = None,
    ) -> None:
        """1C trip/close/alarm/keep-power. A 9C reply means accepted, not done:
        the relay is confirmed only when status word 3 reads back as commanded."""
        request = core.dlt645_control(
            address, n1, _time6(valid_until), password_level, password, operator, self.preamble
        )
        await self._request(request, address, core.FN_CONTROL, retries=retries)
