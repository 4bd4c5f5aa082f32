"""The encoder sends to the broadcast and wildcard addresses only what is legal there.

999999999999 reaches every meter on the line and none answers; AA bytes match
every meter whose other digits fit. A read there collides the replies, a 1C
trips every meter. Only 0x08 time sync and 0x16 freeze may be broadcast, only
0x13 read address and 0x15 write address may use wildcards.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from controller import _core_rs as c
from drivers.dlt645_client import Dlt645Client

BROADCAST = "999999999999"
WILDCARD = "AAAAAAAAAAAA"
PARTIAL = "AAAAAAAA0161"  # abbreviated addressing: high bytes AA
METER = "000000000161"
UNTIL = (2030, 1, 1, 0, 0, 0)

REQUESTS: dict[str, Callable[[str], bytes]] = {
    "read": lambda a: c.dlt645_read(a, "02010100"),
    "read_followup": lambda a: c.dlt645_read_followup(a, "0001FF00", 1),
    "write": lambda a: c.dlt645_write(a, "04000401", 2, "000000", "00000000", b"\x01" * 6),
    "control": lambda a: c.dlt645_control(a, c.N1_TRIP, UNTIL, 2, "000000", "00000000"),
    "change_baud": lambda a: c.dlt645_change_baud(a, 9600),
    "encode 0x11": lambda a: c.dlt645_encode(a, 0x11, bytes.fromhex("00010102")),
    "encode 0x1C": lambda a: c.dlt645_encode(a, 0x1C, bytes(16)),
    "encode 0x1A": lambda a: c.dlt645_encode(a, 0x1A, bytes(8)),
    "frame 0x14": lambda a: c.Dlt645Frame(a, 0x14, bytes(12)).encode(),
}


@pytest.mark.parametrize("kind", sorted(REQUESTS))
@pytest.mark.parametrize("address", [BROADCAST, WILDCARD, PARTIAL])
def test_requests_to_broadcast_or_wildcard_are_refused(kind: str, address: str) -> None:
    with pytest.raises(c.AddressNotAllowedError, match=r"^address: ") as info:
        REQUESTS[kind](address)
    # a precise class under the encoder's: callers catching EncodeError still do
    assert isinstance(info.value, c.EncodeError)
    # the same request to a meter's own address encodes
    assert c.dlt645_decode(REQUESTS[kind](METER)).address == METER


def test_message_names_the_address_the_function_and_what_is_allowed() -> None:
    with pytest.raises(c.AddressNotAllowedError) as info:
        c.dlt645_read(BROADCAST, "02010100")
    assert str(info.value) == (
        "address: 999999999999 (broadcast) is only for 0x08 broadcast time sync and "
        "0x16 freeze, got a 0x11 read request; address one meter"
    )
    with pytest.raises(c.AddressNotAllowedError) as info:
        c.dlt645_control(PARTIAL, c.N1_TRIP, UNTIL)
    assert str(info.value) == (
        "address: AA wildcards ('AAAAAAAA0161') are only for 0x13 read address and "
        "0x15 write address, got a 0x1C control request; address one meter"
    )


def test_legal_broadcast_and_wildcard_requests_encode() -> None:
    # 68 99×6 68 08 06 <ss mm hh DD MM YY +33> CS 16
    sync = c.dlt645_decode(c.dlt645_time_sync((2024, 1, 2, 3, 4, 5)))
    assert (sync.address, sync.function) == (BROADCAST, 0x08)
    freeze = c.dlt645_decode(c.dlt645_freeze(BROADCAST))
    assert (freeze.address, freeze.function) == (BROADCAST, 0x16)
    # vector from the design notes: read address is 68 AA×6 68 13 00 DF 16
    assert c.dlt645_read_address() == bytes.fromhex("68AAAAAAAAAAAA681300DF16")
    assert c.dlt645_encode(WILDCARD, 0x13) == c.dlt645_read_address()
    assert c.dlt645_decode(c.dlt645_encode(WILDCARD, 0x15, bytes(6))).function == 0x15
    assert c.dlt645_decode(c.dlt645_encode(BROADCAST, 0x08, bytes(6))).address == BROADCAST


def test_swapped_special_addresses_are_refused() -> None:
    """Time sync and freeze are broadcasts, not wildcard requests; read address is not a
    broadcast (nobody would answer it)."""
    for function in (0x08, 0x16):
        with pytest.raises(c.AddressNotAllowedError):
            c.dlt645_encode(WILDCARD, function, bytes(6))
    with pytest.raises(c.AddressNotAllowedError):
        c.dlt645_encode(BROADCAST, 0x13)


def test_replies_and_decoding_are_not_checked() -> None:
    """A meter's reply carries its own address; a simulator answering a wildcard
    read-address, and a decoder seeing someone else's broadcast, must still work."""
    reply = c.dlt645_reply(WILDCARD, c.FN_READ_ADDRESS, bytes.fromhex("610100000000"))
    assert c.dlt645_decode(reply).from_meter
    # a broadcast read written byte by byte: 68 99×6 68 11 04 (00 01 01 02)+33 CS 16
    body = bytes.fromhex("68999999999999681104") + bytes(b + 0x33 for b in (0, 1, 1, 2))
    frame = body + bytes([sum(body) % 256, 0x16])
    decoded = c.dlt645_decode(frame)
    assert (decoded.address, decoded.function) == (BROADCAST, 0x11)


async def test_client_read_to_broadcast_never_reaches_the_wire() -> None:
    sent: list[bytes] = []

    async def exchange(request: bytes, *args: object, **kwargs: object) -> None:
        sent.append(request)

    client = Dlt645Client(exchange)  # type: ignore[arg-type]
    with pytest.raises(c.AddressNotAllowedError):
        await client.read(BROADCAST, "02010100")
    with pytest.raises(c.AddressNotAllowedError):
        await client.control(
            WILDCARD,
            c.N1_TRIP,
            dt.datetime(2030, 1, 1),
            password_level=2,
            password="000000",
            operator="00000000",
        )
    assert sent == []
