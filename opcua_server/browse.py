"""Browse with ``requestedMaxReferencesPerNode``, continuation points and BrowseNext.

OPC UA Part 4 §5.8: a Browse that asks for at most N references per node gets
N and a continuation point for the rest; BrowseNext returns the next N (and a
new continuation point while more remain) or, with
``releaseContinuationPoints``, frees them. asyncua 2.1 ignores the limit,
returns every reference at once, and answers BrowseNext with
BadServiceUnsupported. On the pinned asyncua (:func:`asyncua_gate.require_pinned`)
this module:

- gives every client session of the server its own ``browse`` and
  ``browse_next`` and its :class:`ContinuationPoints` (they die with the
  session);
- dispatches BrowseNext requests to ``session.browse_next``. asyncua's
  dispatcher (``UaProcessor._process_message``) first runs its session,
  activation and permission checks and then refuses a service it does not
  know with BadServiceUnsupported; only after that refusal is the request
  handled here, so every check stays asyncua's (and whatever wraps it).

Continuation points are bounded per session (:data:`MAX_CONTINUATION_POINTS`,
published as ServerCapabilities/MaxBrowseContinuationPoints). As Part 4
§5.8.2 asks, a new Browse frees the oldest points of earlier requests when it
needs them; one request that needs more than the bound gets
BadNoContinuationPoints for the nodes beyond it. A released, used or unknown
point is BadContinuationPointInvalid. A point is 16 random bytes, never
derived from the node or the session.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.server.uaprocessor import UaProcessor
from asyncua.ua.ua_binary import nodeid_from_binary, struct_from_binary

from opcua_server.ua_values import node_id, status_code

from . import asyncua_gate

_log = logging.getLogger(__name__)
SC = ua.StatusCodes

MAX_CONTINUATION_POINTS = 10  # per session
_BROWSE_NEXT = node_id(ua.ObjectIds.BrowseNextRequest_Encoding_DefaultBinary)


@dataclass(slots=True)
class _Pending:
    references: list[ua.ReferenceDescription]
    max_references: int
    request: int  # the Browse request that created it


class ContinuationPoints:
    """One session's continuation points: the references still to return, in order."""

    def __init__(self, limit: int = MAX_CONTINUATION_POINTS) -> None:
        if limit < 1:
            raise ValueError(f"continuation point limit must be >= 1, got {limit}")
        self.limit = limit
        self._points: dict[bytes, _Pending] = {}  # oldest first
        self._request = 0

    def __len__(self) -> int:
        return len(self._points)

    def next_request(self) -> int:
        self._request += 1
        return self._request

    def hold(self, references: list[ua.ReferenceDescription], max_references: int) -> bytes | None:
        """A point for ``references``; None when every point belongs to this request."""
        if len(self._points) >= self.limit:
            oldest = next(iter(self._points))
            if self._points[oldest].request == self._request:
                return None
            del self._points[oldest]
        point = secrets.token_bytes(16)
        self._points[point] = _Pending(references, max_references, self._request)
        return point

    def take(self, point: bytes) -> _Pending | None:
        return self._points.pop(point, None)

    def release(self, point: bytes) -> bool:
        return self._points.pop(point, None) is not None


def page(
    points: ContinuationPoints, references: list[ua.ReferenceDescription], max_references: int
) -> ua.BrowseResult:
    """The first ``max_references`` (0: all) and a continuation point for the rest."""
    result = ua.BrowseResult()
    if max_references <= 0 or len(references) <= max_references:
        result.References = references
        return result
    point = points.hold(references[max_references:], max_references)
    if point is None:
        result.StatusCode = status_code(SC.BadNoContinuationPoints)
        return result
    result.References = references[:max_references]
    result.ContinuationPoint = point
    return result


class SessionBrowse:
    """Browse and BrowseNext of one session over the server's view service."""

    def __init__(self, iserver: Any, limit: int) -> None:
        self.iserver = iserver
        self.points = ContinuationPoints(limit)

    async def browse(self, params: ua.BrowseParameters) -> list[ua.BrowseResult]:
        if not params.NodesToBrowse:
            raise ServiceError(SC.BadNothingToDo)
        self.points.next_request()
        aspace = self.iserver.aspace
        results = []
        for desc in params.NodesToBrowse:
            if desc.NodeId not in aspace:
                results.append(ua.BrowseResult(StatusCode=status_code(SC.BadNodeIdUnknown)))
                continue
            one = ua.BrowseParameters(NodesToBrowse=[desc])
            (found,) = self.iserver.view_service.browse(one)
            if not found.StatusCode.is_good():
                results.append(found)
                continue
            results.append(
                page(self.points, list(found.References), params.RequestedMaxReferencesPerNode)
            )
        return results

    async def browse_next(self, params: ua.BrowseNextParameters) -> list[ua.BrowseResult]:
        if not params.ContinuationPoints:
            raise ServiceError(SC.BadNothingToDo)
        self.points.next_request()
        results = []
        for point in params.ContinuationPoints:
            if params.ReleaseContinuationPoints:
                ok = point is not None and self.points.release(point)
                code = SC.Good if ok else SC.BadContinuationPointInvalid
                results.append(ua.BrowseResult(StatusCode=status_code(code)))
                continue
            pending = self.points.take(point) if point is not None else None
            if pending is None:
                results.append(
                    ua.BrowseResult(StatusCode=status_code(SC.BadContinuationPointInvalid))
                )
                continue
            results.append(page(self.points, pending.references, pending.max_references))
        return results


def install(iserver: Any, limit: int = MAX_CONTINUATION_POINTS) -> None:
    """Continuation points for the client sessions of ``iserver``, and BrowseNext."""
    asyncua_gate.require_pinned("Browse continuation points (opcua_server.browse)")
    _install_browse_next()
    capability = iserver.aspace.get(
        node_id(ua.ObjectIds.Server_ServerCapabilities_MaxBrowseContinuationPoints)
    )
    if capability is not None:
        capability.attributes[ua.AttributeIds.Value].value = ua.DataValue(
            ua.Variant(limit, ua.VariantType.UInt16)
        )
    create_session = iserver.create_session

    def create_with_continuation_points(*args: Any, **kwargs: Any) -> Any:
        session = create_session(*args, **kwargs)
        paged = SessionBrowse(iserver, limit)
        session.browse = paged.browse
        session.browse_next = paged.browse_next
        return session

    iserver.create_session = create_with_continuation_points


def _install_browse_next() -> None:
    asyncua_process_message = UaProcessor.process_message
    if getattr(asyncua_process_message, "gridctl_browse_next", False):
        return

    async def process_message(self: UaProcessor, seqhdr: Any, body: Any) -> Any:
        peek = body.copy()
        typeid = nodeid_from_binary(peek)
        if typeid != _BROWSE_NEXT:
            return await asyncua_process_message(self, seqhdr, body)
        requesthdr = struct_from_binary(ua.RequestHeader, peek)

        def fault(code: int) -> bool:
            response = ua.ServiceFault()
            response.ResponseHeader.ServiceResult = status_code(code)
            self.send_response(requesthdr.RequestHandle, seqhdr, response)
            return True

        try:
            handled = await self._process_message(typeid, requesthdr, seqhdr, peek.copy())
        except ServiceError as exc:
            if exc.code != SC.BadServiceUnsupported:
                return fault(exc.code)
        except ua.UaStatusCodeError as exc:
            return fault(exc.code)
        except Exception:
            _log.exception("BrowseNext: request checks failed")
            return fault(SC.BadInternalError)
        else:
            return handled  # a dispatcher that knows BrowseNext answered it
        session = self.session
        if session is None:  # asyncua's checks above refuse a request without one
            return fault(SC.BadSessionIdInvalid)
        try:
            params = struct_from_binary(ua.BrowseNextParameters, peek)
            results = await session.browse_next(params)
        except NotImplementedError:  # a session of a server without install()
            return fault(SC.BadServiceUnsupported)
        except (ServiceError, ua.UaStatusCodeError) as exc:
            return fault(exc.code)
        except Exception:
            _log.exception("BrowseNext failed")
            return fault(SC.BadInternalError)
        response = ua.BrowseNextResponse()
        response.Parameters.Results = results
        self.send_response(requesthdr.RequestHandle, seqhdr, response)
        return True

    process_message.gridctl_browse_next = True  # type: ignore[attr-defined]
    UaProcessor.process_message = process_message  # type: ignore[method-assign]
