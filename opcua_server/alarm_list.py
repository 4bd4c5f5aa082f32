"""The ``@alarms`` object: the JSON list the HMI reads (``@alarms/Active``),
the Acknowledge/Shelve methods, and the A&C conditions, kept in step with the
alarm source by a poll every ``poll_s`` and on every :meth:`AlarmList.changed`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from asyncua import ua

from controller.task_stop import stop_task
from opcua_server.ua_values import node_id

from . import nodes as N
from .conditions import AlarmConditions
from .diagnostics import set_value
from .events import Emitter
from .methods import AlarmSource, MethodSpec, alarm_methods
from .model import VarEntry
from .nodes import Made, NodeFactory
from .users import current_user

_log = logging.getLogger(__name__)

# Alarm sources name the plant in the singular (bus/bus1/meter/0001), the model
# in the plural (buses/bus1/meters/0001).
_PLURAL = {"bus": "buses", "meter": "meters", "load": "loads"}

AddMethods = Callable[[NodeFactory, Made, str, list[MethodSpec]], None]
# (method, target, user, inputs, status, message, outputs, method NodeId)
Audit = Callable[..., Awaitable[None]]


class AlarmList:
    def __init__(
        self,
        source: AlarmSource,
        *,
        poll_s: float,
        confirm: bool,
        namespace_index: Callable[[], int],
        resolve: Callable[[str], ua.NodeId],
        audit: Audit,
    ) -> None:
        self.source = source
        self.poll_s = poll_s
        self.confirm = confirm
        self._ns = namespace_index
        # A node path → its NodeId when the address space has it, else the Server object.
        self._resolve = resolve
        self._audit = audit
        self.conditions: AlarmConditions | None = None
        self.methods: list[MethodSpec] = []
        self._list: VarEntry | None = None
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def build(
        self,
        factory: NodeFactory,
        root: Made,
        aspace: Any,
        emitter: Emitter,
        add_methods: AddMethods,
    ) -> None:
        alarms_obj = factory.obj("@alarms", "Alarms", root, description="alarm handling")
        var = factory.variable(
            "@alarms/Active",
            "Active",
            alarms_obj,
            ua.DataValue(ua.Variant("[]", ua.VariantType.String)),
            N.DT_STRING,
            description="alarms not in the normal state, JSON list of {id, source, "
            "message, severity, active, acknowledged, shelved, time}",
        )
        self._list = VarEntry(var.data.attributes[ua.AttributeIds.Value], ua.VariantType.String)
        self.methods = alarm_methods(self.source)
        add_methods(factory, alarms_obj, "@alarms", self.methods)
        self.conditions = AlarmConditions(
            self.source,
            emitter,
            factory,
            alarms_obj,
            resolve_source=self.source_node,
            set_list=self._set_list,
            confirm=self.confirm,
            audit=self._audit_condition,
        )
        self.conditions.bind(aspace)

    async def start(self) -> None:
        if self.conditions is None:
            return
        await self.conditions.poll()
        self._task = asyncio.create_task(self._loop(), name="opcua-alarms")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    def changed(self) -> None:
        self._kick.set()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.poll_s)
            self._kick.clear()
            try:
                assert self.conditions is not None
                await self.conditions.poll()
            except Exception:
                _log.exception("OPC UA alarm update failed")

    async def _set_list(self, text: str) -> None:
        if self._list is not None:
            await set_value(self._list, text, datetime.now(UTC))

    def source_node(self, source: str) -> ua.NodeId:
        """Alarm sources (``bus/bus1/meter/0001``) → the plant object when it exists."""
        parts = source.split("/")
        mapped = [_PLURAL.get(part, part) if i % 2 == 0 else part for i, part in enumerate(parts)]
        for candidate in (source, "/".join(mapped)):
            node = self._resolve(candidate)
            if node.NamespaceIndex == self._ns():
                return node
        return node_id(ua.ObjectIds.Server)

    async def _audit_condition(self, method: str, alarm_id: str, status: int, comment: str) -> None:
        standard = {
            "Acknowledge": ua.ObjectIds.AcknowledgeableConditionType_Acknowledge,
            "Confirm": ua.ObjectIds.AcknowledgeableConditionType_Confirm,
        }
        await self._audit(
            method,
            f"@alarms/{alarm_id}",
            current_user.get(),
            [comment],
            status,
            "",
            [],
            node_id(standard[method]) if method in standard else None,
        )
