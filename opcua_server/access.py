"""Per-item access for Call and Write, and the caller's own UserAccessLevel.

OPC UA Part 4 answers Call and Write per item: a request with a permitted
method next to a refused one returns Good and BadUserAccessDenied, an unknown
node BadNodeIdUnknown, a method that is not the object's BadMethodInvalid, a
variable without CurrentWrite BadNotWritable. The ruleset
(``users.GridRuleset``) therefore lets both services through at the request
level and :class:`ItemAccess` decides here, item by item.

asyncua 2.1 cannot do this itself: its Write refuses every non-Admin write
with BadUserAccessDenied (read-only nodes and unknown ones too), its Call does
not check that the method belongs to the object, and it stores one
UserAccessLevel / UserExecutable per node for every session. So, on the pinned
asyncua only (:func:`asyncua_gate.require_pinned`):

- the server's ``AttributeService.write`` is replaced for client sessions
  (the server's own Admin session keeps asyncua's);
- every client session gets its own ``call`` (asyncua's per allowed item);
- a PostRead callback answers UserAccessLevel and UserExecutable for the
  reading session's role.

Writable variables (*setpoints*) do not change the address space: a write
becomes a command record for the runtime (journalled, then sent to the
device), and the value comes back through the process image like any other.
The node stores the viewer's UserAccessLevel (without CurrentWrite), so a read
that somehow skipped the callback never claims more than a viewer may do.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from asyncua import ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.address_space import AddressSpace

from opcua_server.ua_values import node_id, status_code

from . import asyncua_gate
from .config import Role
from .methods import MethodError
from .users import GridRuleset, GridUser

_log = logging.getLogger(__name__)
SC = ua.StatusCodes
A = ua.AttributeIds

CURRENT_WRITE = ua.AccessLevel.CurrentWrite.mask
_COMPONENT_REFS = frozenset(
    {node_id(ua.ObjectIds.HasComponent), node_id(ua.ObjectIds.HasOrderedComponent)}
)
_HAS_SUBTYPE = node_id(ua.ObjectIds.HasSubtype)
_HAS_TYPEDEF = node_id(ua.ObjectIds.HasTypeDefinition)
_MAX_TYPE_DEPTH = 32  # supertype hops when looking for a type's method

_SERVER_USER = User(role=UserRole.Admin)  # asyncua's default for its own session
# (tag path, value, writing user) -> None; raises MethodError with the item's status.
SetpointWriter = Callable[[str, Any, GridUser], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Setpoint:
    """A variable clients may write: who may, and what value it takes."""

    path: str  # process-image tag name (= the node's string NodeId)
    role: Role
    vtype: ua.VariantType
    minimum: float | None = None  # numbers: inclusive range, in the tag's unit
    maximum: float | None = None


class ItemAccess:
    """The per-item decisions of one server's Call and Write services."""

    def __init__(self, aspace: AddressSpace, ruleset: GridRuleset) -> None:
        self.aspace = aspace
        self.ruleset = ruleset
        self.setpoints: dict[ua.NodeId, Setpoint] = {}
        self.method_roles: dict[ua.NodeId, Role] = {}  # gridctl methods that need a role
        self.writer: SetpointWriter | None = None
        self._asyncua_write: Callable[..., Awaitable[list[ua.StatusCode]]] | None = None

    # -- installation -----------------------------------------------------------------
    def install(self, iserver: Any) -> None:
        """Take over Write, Call and the per-session attributes of ``iserver``'s sessions."""
        asyncua_gate.require_pinned("per-item Call and Write access (opcua_server.access)")
        service = iserver.attribute_service
        self._asyncua_write = service.write
        service.write = self.write
        create_session = iserver.create_session

        def create_with_item_access(*args: Any, **kwargs: Any) -> Any:
            session = create_session(*args, **kwargs)
            asyncua_call = session.call

            async def call(requests: list[ua.CallMethodRequest]) -> list[ua.CallMethodResult]:
                return await self.call(session.user, requests, asyncua_call)

            session.call = call
            return session

        iserver.create_session = create_with_item_access
        iserver.subscribe_server_callback(CallbackType.PostRead, self._post_read)

    # -- Write ------------------------------------------------------------------------
    async def write(
        self, params: ua.WriteParameters, user: User = _SERVER_USER
    ) -> list[ua.StatusCode]:
        if not isinstance(user, GridUser) and user.role == UserRole.Admin:
            # The server's own session (model updates, asyncua internals).
            assert self._asyncua_write is not None
            return await self._asyncua_write(params, user=user)
        grid_user = user if isinstance(user, GridUser) else None
        return [status_code(await self._write_item(w, grid_user)) for w in params.NodesToWrite]

    async def _write_item(self, item: ua.WriteValue, user: GridUser | None) -> int:
        node = self.aspace.get(item.NodeId)
        if node is None:
            return SC.BadNodeIdUnknown
        if item.AttributeId not in node.attributes:
            return SC.BadAttributeIdInvalid
        if item.AttributeId != A.Value:
            return SC.BadNotWritable  # WriteMask is 0 on every node
        level = node.attributes.get(A.AccessLevel)
        dv = level.value if level is not None else None
        if dv is None or dv.Value is None or not int(dv.Value.Value) & CURRENT_WRITE:
            return SC.BadNotWritable
        setpoint = self.setpoints.get(item.NodeId)
        if setpoint is None:
            # Writable in asyncua's standard model, for the server itself only.
            self.ruleset.denied += 1
            return SC.BadUserAccessDenied
        if not self.ruleset.may_write(user, setpoint.role):
            return SC.BadUserAccessDenied
        if item.IndexRange:
            return SC.BadWriteNotSupported
        value = item.Value
        if value is None or value.Value is None:
            return SC.BadTypeMismatch
        if (
            (value.StatusCode is not None and not value.StatusCode.is_good())
            or value.SourceTimestamp is not None
            or value.ServerTimestamp is not None
        ):
            # The device's read-back carries status and times, not the client.
            return SC.BadWriteNotSupported
        variant = value.Value
        if variant.VariantType != setpoint.vtype or variant.is_array:
            return SC.BadTypeMismatch
        code = _range_status(setpoint, variant.Value)
        if code != SC.Good:
            return code
        if self.writer is None:
            return SC.BadNotWritable
        assert user is not None  # may_write refuses anonymous sessions
        try:
            await self.writer(setpoint.path, variant.Value, user)
        except MethodError as err:
            _log.warning("OPC UA write of %s by %s refused: %s", setpoint.path, user, err.message)
            return err.code
        _log.info("OPC UA write of %s by %s: %r", setpoint.path, user, variant.Value)
        return SC.Good

    # -- Call -------------------------------------------------------------------------
    async def call(
        self,
        user: User | None,
        requests: list[ua.CallMethodRequest],
        asyncua_call: Callable[[list[ua.CallMethodRequest]], Awaitable[list[ua.CallMethodResult]]],
    ) -> list[ua.CallMethodResult]:
        grid_user = user if isinstance(user, GridUser) else None
        results = []
        for request in requests:
            code = self._call_refusal(grid_user, request)
            if code is None:
                (result,) = await asyncua_call([request])
            else:
                result = ua.CallMethodResult(StatusCode=status_code(code))
            results.append(result)
        return results

    def _call_refusal(self, user: GridUser | None, request: ua.CallMethodRequest) -> int | None:
        if request.ObjectId not in self.aspace or request.MethodId not in self.aspace:
            return SC.BadNodeIdUnknown
        method = self.aspace[request.MethodId]
        nodeclass = method.attributes.get(A.NodeClass)
        if (
            nodeclass is None
            or nodeclass.value is None
            or nodeclass.value.Value is None
            or nodeclass.value.Value.Value != ua.NodeClass.Method
            or not self._is_method_of(request.ObjectId, request.MethodId)
        ):
            return SC.BadMethodInvalid
        if not self.ruleset.may_call(user, request.MethodId):
            return SC.BadUserAccessDenied
        return None

    def _is_method_of(self, obj: ua.NodeId, method: ua.NodeId) -> bool:
        """The object has the method, itself or through its type (Acknowledge on a condition)."""
        node = self.aspace[obj]
        if _has_component(node.references, method):
            return True
        klass = node.attributes.get(A.NodeClass)
        is_type = (
            klass is not None
            and klass.value is not None
            and klass.value.Value is not None
            and klass.value.Value.Value == ua.NodeClass.ObjectType
        )
        types = (
            [obj]
            if is_type
            else [
                r.NodeId
                for r in node.references
                if r.IsForward and r.ReferenceTypeId == _HAS_TYPEDEF
            ]
        )
        for typ in types:
            for _ in range(_MAX_TYPE_DEPTH):
                data = self.aspace.get(typ)
                if data is None:
                    break
                if _has_component(data.references, method):
                    return True
                parent = next(
                    (
                        r.NodeId
                        for r in data.references
                        if not r.IsForward and r.ReferenceTypeId == _HAS_SUBTYPE
                    ),
                    None,
                )
                if parent is None:
                    break
                typ = parent
        return False

    # -- UserAccessLevel / UserExecutable -----------------------------------------------
    def user_access_level(self, user: GridUser | None, nodeid: ua.NodeId, stored: int) -> int:
        setpoint = self.setpoints.get(nodeid)
        if setpoint is None:
            return stored
        level = self.aspace.read_attribute_value(nodeid, A.AccessLevel)
        full = int(level.Value.Value) if level.Value is not None else stored
        if user is not None and user.allows(setpoint.role):
            return full
        return full & ~CURRENT_WRITE

    def user_executable(self, user: GridUser | None, method_id: ua.NodeId) -> bool:
        if user is None or user.grid_role is None:
            return method_id in self.ruleset.public_methods
        role = self.method_roles.get(method_id)
        return role is None or user.allows(role)

    def _post_read(self, event: ServerItemCallback, _dispatcher: Any) -> None:
        user = event.user
        if not isinstance(user, GridUser) and user is not None and user.role == UserRole.Admin:
            return
        grid_user = user if isinstance(user, GridUser) else None
        results: list[ua.DataValue] = event.response_params
        for i, item in enumerate(event.request_params.NodesToRead):
            attr = item.AttributeId
            if attr != A.UserAccessLevel and attr != A.UserExecutable:
                continue
            dv = results[i]
            if dv.Value is None or (dv.StatusCode is not None and not dv.StatusCode.is_good()):
                continue
            # Replace, never mutate: the stored DataValue is shared between nodes.
            if attr == A.UserAccessLevel:
                level = self.user_access_level(grid_user, item.NodeId, int(dv.Value.Value))
                results[i] = ua.DataValue(ua.Variant(level, ua.VariantType.Byte))
            else:
                allowed = bool(dv.Value.Value) and self.user_executable(grid_user, item.NodeId)
                results[i] = ua.DataValue(ua.Variant(allowed, ua.VariantType.Boolean))


def _has_component(refs: list[ua.ReferenceDescription], target: ua.NodeId) -> bool:
    return any(
        r.IsForward and r.NodeId == target and r.ReferenceTypeId in _COMPONENT_REFS for r in refs
    )


def _range_status(setpoint: Setpoint, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return SC.Good
    if not math.isfinite(value):
        return SC.BadOutOfRange
    if setpoint.minimum is not None and value < setpoint.minimum:
        return SC.BadOutOfRange
    if setpoint.maximum is not None and value > setpoint.maximum:
        return SC.BadOutOfRange
    return SC.Good
