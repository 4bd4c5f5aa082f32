"""Conformance units "View Basic" and "View Minimum Continuation Point"
(OPC UA Part 4 §5.8.2 Browse, §5.8.3 BrowseNext, §7.9 ContinuationPoint).

Browse honours requestedMaxReferencesPerNode: the first N references and a
continuation point; BrowseNext returns the rest in order, or releases the
point. Points are per session and bounded (ServerCapabilities
MaxBrowseContinuationPoints); a released, used, foreign or made-up point is
BadContinuationPointInvalid.
"""

from __future__ import annotations

import asyncua
import pytest
from asyncua import Client, Server, ua

from opcua_server import browse
from opcua_server.asyncua_gate import AsyncuaVersionError

from .conftest import client_for, demo_image, nid, ns_of

SC = ua.StatusCodes
METERS = "buses/bus1/meters"
LIMIT = browse.MAX_CONTINUATION_POINTS  # 10 per session


def describe(nodeid: ua.NodeId) -> ua.BrowseDescription:
    return ua.BrowseDescription(
        NodeId=nodeid,
        BrowseDirection=ua.BrowseDirection.Forward,
        ReferenceTypeId=ua.NodeId(ua.ObjectIds.HierarchicalReferences),
        IncludeSubtypes=True,
        NodeClassMask=0,
        ResultMask=ua.BrowseResultMask.All,
    )


async def browse_nodes(
    client: Client, nodeids: list[ua.NodeId], max_refs: int
) -> list[ua.BrowseResult]:
    params = ua.BrowseParameters(
        NodesToBrowse=[describe(n) for n in nodeids], RequestedMaxReferencesPerNode=max_refs
    )
    return await client.uaclient.browse(params)


async def browse_next(
    client: Client, points: list[bytes], release: bool = False
) -> list[ua.BrowseResult]:
    params = ua.BrowseNextParameters(
        ReleaseContinuationPoints=release, ContinuationPoints=list(points)
    )
    return await client.uaclient.browse_next(params)


def names(result: ua.BrowseResult) -> list[str]:
    return [r.BrowseName.Name for r in result.References]


def meter(i: int) -> str:
    return f"{i:012d}"


async def test_browse_pages_with_continuation_point(start_server):
    srv = await start_server(demo_image(buses=1, meters=7))
    async with client_for(srv) as client:
        ns = await ns_of(client)
        (first,) = await browse_nodes(client, [nid(ns, METERS)], 5)
        assert first.StatusCode.is_good()
        assert names(first) == [meter(i) for i in range(1, 6)]
        assert first.ContinuationPoint
        (rest,) = await browse_next(client, [first.ContinuationPoint])
        assert rest.StatusCode.is_good()
        assert names(rest) == [meter(6), meter(7)]  # 7 meters - 5 = 2, in order
        assert not rest.ContinuationPoint
        # Exactly what one unbounded Browse returns, nothing twice.
        (whole,) = await browse_nodes(client, [nid(ns, METERS)], 0)
        assert not whole.ContinuationPoint
        assert names(first) + names(rest) == names(whole)
        # The point is spent.
        (again,) = await browse_next(client, [first.ContinuationPoint])
        assert again.StatusCode.value == SC.BadContinuationPointInvalid
        assert again.References == []


async def test_browse_next_pages_until_done(start_server):
    srv = await start_server(demo_image(buses=1, meters=7))
    async with client_for(srv, "vera") as client:
        ns = await ns_of(client)
        (page,) = await browse_nodes(client, [nid(ns, METERS)], 3)
        seen = names(page)
        pages = 1
        while page.ContinuationPoint:
            (page,) = await browse_next(client, [page.ContinuationPoint])
            assert page.StatusCode.is_good()
            seen += names(page)
            pages += 1
        assert pages == 3  # 7 references by 3: 3 + 3 + 1
        assert seen == [meter(i) for i in range(1, 8)]


async def test_release_and_unknown_points(start_server):
    srv = await start_server(demo_image(buses=1, meters=7))
    async with client_for(srv) as client:
        ns = await ns_of(client)
        (first,) = await browse_nodes(client, [nid(ns, METERS)], 2)
        made_up = b"\x00" * 16
        released, unknown = await browse_next(client, [first.ContinuationPoint, made_up], True)
        assert released.StatusCode.is_good() and released.References == []
        assert unknown.StatusCode.value == SC.BadContinuationPointInvalid
        (after,) = await browse_next(client, [first.ContinuationPoint])
        assert after.StatusCode.value == SC.BadContinuationPointInvalid
        with pytest.raises(ua.UaStatusCodeError) as err:
            await browse_next(client, [])
        assert err.value.code == SC.BadNothingToDo


async def test_points_belong_to_their_session(start_server):
    srv = await start_server(demo_image(buses=1, meters=7))
    async with client_for(srv, "otto") as owner, client_for(srv, "vera") as other:
        ns = await ns_of(owner)
        (first,) = await browse_nodes(owner, [nid(ns, METERS)], 5)
        (stolen,) = await browse_next(other, [first.ContinuationPoint])
        assert stolen.StatusCode.value == SC.BadContinuationPointInvalid
        (rest,) = await browse_next(owner, [first.ContinuationPoint])
        assert names(rest) == [meter(6), meter(7)]


async def test_points_bounded_per_session(start_server):
    # 11 meters with 5 variables each; max 2 per node: every node needs a point.
    srv = await start_server(demo_image(buses=1, meters=LIMIT + 1))
    async with client_for(srv) as client:
        ns = await ns_of(client)
        capability = client.get_node(
            ua.NodeId(ua.ObjectIds.Server_ServerCapabilities_MaxBrowseContinuationPoints)
        )
        assert await capability.read_value() == LIMIT
        meters = [nid(ns, f"{METERS}/{meter(i)}") for i in range(1, LIMIT + 2)]
        results = await browse_nodes(client, meters, 2)
        assert [len(r.References) for r in results] == [2] * LIMIT + [0]
        assert all(r.ContinuationPoint for r in results[:LIMIT])
        assert results[LIMIT].StatusCode.value == SC.BadNoContinuationPoints
        # A new request frees the oldest point of the earlier one (Part 4 §5.8.2).
        (fresh,) = await browse_nodes(client, [meters[LIMIT]], 2)
        assert fresh.StatusCode.is_good() and fresh.ContinuationPoint
        oldest, second = await browse_next(
            client, [results[0].ContinuationPoint, results[1].ContinuationPoint]
        )
        assert oldest.StatusCode.value == SC.BadContinuationPointInvalid
        assert second.StatusCode.is_good() and len(second.References) == 2  # 5 = 2 + 2 + 1


async def test_unknown_node_and_unbounded_client_browse(start_server):
    srv = await start_server(demo_image(buses=1, meters=7))
    async with client_for(srv) as client:
        ns = await ns_of(client)
        (missing,) = await browse_nodes(client, [nid(ns, "buses/bus9")], 5)
        assert missing.StatusCode.value == SC.BadNodeIdUnknown
        # asyncua's Node.get_children (the HMI's way) still sees everything.
        children = await client.get_node(nid(ns, METERS)).get_children()
        assert len(children) == 7


async def test_other_asyncua_minor_refuses_browse_patch(monkeypatch):
    monkeypatch.setattr(asyncua, "__version__", "2.2.0")
    with pytest.raises(AsyncuaVersionError, match="Browse continuation points"):
        browse.install(Server().iserver)
