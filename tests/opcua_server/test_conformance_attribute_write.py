"""Conformance units "Attribute Write Values", "Attribute Write StatusCode & Timestamp"
and "Security User Access Level" (OPC UA Part 4 §5.10.4, Part 3 §5.6.2).

A Write is answered per item; a variable without CurrentWrite in AccessLevel is
BadNotWritable for everybody; a setpoint is writable for its role only, and
each session reads its own UserAccessLevel. A permitted write becomes a
journalled command record; the address space keeps the device's value.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncua
import pytest
from asyncua import Client, ua

from controller.api import WRITE_SETPOINT
from controller.commands import DEFAULT_KINDS, CommandLog
from controller.journal import Journal
from controller.process_image import ProcessImage, Tag
from opcua_server.asyncua_gate import AsyncuaVersionError
from opcua_server.config import Role

from .conftest import client_for, demo_image, nid, ns_of

SC = ua.StatusCodes
A = ua.AttributeIds
VT = ua.VariantType
SETPOINT = "buses/bus3/devices/vfd1/speed_setpoint"  # unit %: EURange 0..100
VOLT = "buses/bus1/meters/000000000001/voltage_a"
READ = 1  # AccessLevel bit 0: CurrentRead
READ_WRITE = 3  # bit 0 CurrentRead | bit 1 CurrentWrite = 1 + 2


def plant() -> ProcessImage:
    image = demo_image()
    image.define(SETPOINT, "%", "drive speed setpoint")
    return image


def setpoint_roles(tag: Tag) -> Role | None:
    return Role.OPERATOR if tag.name.endswith("_setpoint") else None


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    j = Journal(tmp_path / "journal.db")
    j.open()
    yield j
    j.close()


def item(ns: int, path: str, variant: ua.Variant, attr: int = A.Value) -> ua.WriteValue:
    return ua.WriteValue(NodeId=nid(ns, path), AttributeId=attr, Value=ua.DataValue(variant))


async def write(client: Client, *items: ua.WriteValue) -> list[int]:
    """One Write request with every item; the status code of each."""
    results = await client.uaclient.write(ua.WriteParameters(NodesToWrite=list(items)))
    return [r.value for r in results]


def commands(journal: Journal) -> list[tuple[str, str, str, str]]:
    rows = journal.query("SELECT kind, target, who, state FROM commands ORDER BY created")
    return [tuple(r) for r in rows]


async def test_write_items_answered_each_on_its_own(start_server, journal):
    log = CommandLog(journal, kinds=DEFAULT_KINDS | {WRITE_SETPOINT})
    srv = await start_server(plant(), commands=log, setpoints=setpoint_roles)
    async with client_for(srv, "otto") as client:  # operator
        ns = await ns_of(client)
        codes = await write(
            client,
            item(ns, SETPOINT, ua.Variant(55.0, VT.Double)),
            item(ns, VOLT, ua.Variant(1.0, VT.Double)),  # a measured value
            item(ns, "buses/bus9/no_such_tag", ua.Variant(1.0, VT.Double)),
            item(ns, SETPOINT, ua.Variant(ua.LocalizedText("x"), VT.LocalizedText), A.DisplayName),
            item(ns, SETPOINT, ua.Variant(55, VT.Int32)),  # the variable is a Double
            item(ns, SETPOINT, ua.Variant(100.5, VT.Double)),  # EURange of % is 0..100
            item(ns, SETPOINT, ua.Variant(float("nan"), VT.Double)),
        )
        assert codes == [
            SC.Good,
            SC.BadNotWritable,
            SC.BadNodeIdUnknown,
            SC.BadNotWritable,
            SC.BadTypeMismatch,
            SC.BadOutOfRange,
            SC.BadOutOfRange,
        ]
        # The write is a command for the device; the variable keeps the image's value
        # until the read-back arrives (never written yet: Bad, no value).
        value = await client.get_node(nid(ns, SETPOINT)).read_data_value(raise_on_bad_status=False)
        assert value.StatusCode.is_bad()
    assert commands(journal) == [(WRITE_SETPOINT, SETPOINT, "otto", "queued")]
    (cmd,) = log.pending()
    assert cmd.args["value"] == 55.0


async def test_viewer_and_anonymous_writes_refused_per_item(start_server, journal):
    log = CommandLog(journal, kinds=DEFAULT_KINDS | {WRITE_SETPOINT})
    srv = await start_server(plant(), commands=log, setpoints=setpoint_roles)
    for user in ("vera", None):  # viewer, anonymous
        async with client_for(srv, user) as client:
            ns = await ns_of(client)
            codes = await write(
                client,
                item(ns, SETPOINT, ua.Variant(55.0, VT.Double)),
                item(ns, VOLT, ua.Variant(1.0, VT.Double)),
                item(ns, "nowhere", ua.Variant(1.0, VT.Double)),
            )
            assert codes == [SC.BadUserAccessDenied, SC.BadNotWritable, SC.BadNodeIdUnknown]
    assert commands(journal) == []
    assert srv.stats()["requests_denied"] == 2  # one setpoint item per session


async def test_user_access_level_is_the_sessions_own(start_server, journal):
    log = CommandLog(journal, kinds=DEFAULT_KINDS | {WRITE_SETPOINT})
    srv = await start_server(plant(), commands=log, setpoints=setpoint_roles)
    expected = {None: READ, "vera": READ, "otto": READ_WRITE, "emma": READ_WRITE}
    for user, user_level in expected.items():
        async with client_for(srv, user) as client:
            ns = await ns_of(client)
            reads = [
                ua.ReadValueId(NodeId=nid(ns, path), AttributeId=attr)
                for path in (SETPOINT, VOLT)
                for attr in (A.AccessLevel, A.UserAccessLevel)
            ]
            values = await client.uaclient.read(ua.ReadParameters(NodesToRead=reads))
            got = [v.Value.Value for v in values]
            assert got == [READ_WRITE, user_level, READ, READ], user


async def test_timestamps_status_and_index_range_not_writable(start_server, journal):
    log = CommandLog(journal, kinds=DEFAULT_KINDS | {WRITE_SETPOINT})
    srv = await start_server(plant(), commands=log, setpoints=setpoint_roles)
    async with client_for(srv, "otto") as client:
        ns = await ns_of(client)
        stamped = item(ns, SETPOINT, ua.Variant(10.0, VT.Double))
        stamped.Value = ua.DataValue(
            ua.Variant(10.0, VT.Double), SourceTimestamp=datetime(2026, 1, 1, tzinfo=UTC)
        )
        uncertain = item(ns, SETPOINT, ua.Variant(10.0, VT.Double))
        uncertain.Value = ua.DataValue(
            ua.Variant(10.0, VT.Double), StatusCode=ua.StatusCode(SC.UncertainInitialValue)
        )
        ranged = item(ns, SETPOINT, ua.Variant(10.0, VT.Double))
        ranged.IndexRange = "0"
        codes = await write(client, stamped, uncertain, ranged)
        assert codes == [SC.BadWriteNotSupported] * 3
    assert commands(journal) == []


async def test_runtime_without_setpoint_commands_refuses_per_item(start_server, journal):
    log = CommandLog(journal)  # the default kinds: no write_setpoint handler
    srv = await start_server(plant(), commands=log, setpoints=setpoint_roles)
    async with client_for(srv, "otto") as client:
        ns = await ns_of(client)
        codes = await write(
            client,
            item(ns, SETPOINT, ua.Variant(20.0, VT.Double)),
            item(ns, VOLT, ua.Variant(1.0, VT.Double)),
        )
        assert codes == [SC.BadNotSupported, SC.BadNotWritable]
    assert commands(journal) == []


@pytest.mark.parametrize("with_sink", [False, True])
async def test_tags_are_read_only_unless_wired(start_server, journal, with_sink):
    """No setpoint rule (the service's default), or no command sink: nothing is writable."""
    kwargs = (
        {"commands": CommandLog(journal, kinds=DEFAULT_KINDS | {WRITE_SETPOINT})}
        if with_sink
        else {"setpoints": setpoint_roles}
    )
    srv = await start_server(plant(), **kwargs)
    async with client_for(srv, "ada") as client:  # admin
        ns = await ns_of(client)
        level = await client.get_node(nid(ns, SETPOINT)).read_attribute(A.AccessLevel)
        assert level.Value.Value == READ
        assert await write(client, item(ns, SETPOINT, ua.Variant(20.0, VT.Double))) == [
            SC.BadNotWritable
        ]
    assert commands(journal) == []


async def test_other_asyncua_minor_refuses_to_start(start_server, monkeypatch):
    monkeypatch.setattr(asyncua, "__version__", "2.2.0")
    # The first security patch to install refuses; every one is gated the same way.
    with pytest.raises(AsyncuaVersionError, match=r"asyncua 2\.2\.0 is installed"):
        await start_server(plant())
