"""The gridctl information model: types first, then instances from the tag tree.

Tag paths map onto the address space segment by segment::

    buses/bus1/meters/000000000161/voltage_a
    Objects/gridctl/Buses/bus1/Meters/000000000161/voltage_a

- a *collection* segment (``buses``, ``meters``, ``loads``…) becomes a folder
  ("Buses", "Meters"…) organizing its members;
- a member of a collection becomes an object of the collection's type
  (BusType, MeterType, LoadType; BaseObjectType for collections without one);
- any other interior segment becomes a plain object;
- a leaf becomes a variable: an analog item (with EngineeringUnits, and EURange
  where the range is known) when the tag has a unit, else a data variable.

NodeIds are the tag paths themselves (``ns=<urn:gridctl>;s=buses/bus1/...``) so
SCADA configurations stay readable and stable across restarts and rebuilds.

A collection with more than ``max_children`` members is split into range
folders ("000000000001…000000000500"): a client that browses without
``requestedMaxReferencesPerNode`` gets every reference of a node in one
response, and a flat folder of thousands of nodes would make that a
multi-megabyte one (the HMI navigates by these folders).

Leaves are read-only (AccessLevel CurrentRead) unless ``writable`` names the
role a tag's setpoint needs; those get CurrentRead|CurrentWrite, and the
per-session UserAccessLevel and the writes are decided in opcua_server.access.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from asyncua import ua
from asyncua.server.address_space import AttributeValue

from controller.process_image import Tag
from opcua_server.ua_values import status_code

from . import nodes as N
from .config import Role, SetpointRule
from .nodes import Made, NodeFactory
from .quality import data_value
from .units import eu_information, eu_range

# Collections and the ObjectType of their members.
COLLECTIONS: dict[str, str | None] = {
    "buses": "BusType",
    "meters": "MeterType",
    "loads": "LoadType",
    "groups": "GroupType",
    "feeders": None,
    "stations": "StationType",
    "devices": None,
    "cranes": "StackerCraneType",
    "conveyors": "ConveyorType",
    "orders": "OrderType",
    "racks": None,
}
# Top-level subsystems: one object of the type each (``line/...``, ``warehouse/...``).
ROOTS: dict[str, tuple[str, str]] = {
    "line": ("VerificationLineType", "VerificationLine"),
    "warehouse": ("WarehouseType", "Warehouse"),
}
# Further ObjectTypes, generic: instances carry whatever variables their tags define.
GENERIC_TYPES: tuple[tuple[str, str], ...] = (
    ("GroupType", "a load group under demand-limit control"),
    ("VerificationLineType", "an automated meter verification line (JJG 596 / IEC 62053-21)"),
    ("StationType", "a verification station (meter position) of the line"),
    ("WarehouseType", "an automated storage and retrieval system for meters"),
    ("StackerCraneType", "a stacker crane serving one aisle of racks"),
    ("ConveyorType", "an accumulation conveyor with zoned photo-eyes"),
    ("OrderType", "a warehouse order (inbound, outbound, return, count, relocation)"),
)

# Instance declarations of the types: (browse name, unit, description).
METER_QUANTITIES: tuple[tuple[str, str, str], ...] = (
    ("energy_forward_active", "kWh", "forward active energy, total (DI 00010000)"),
    ("energy_reverse_active", "kWh", "reverse active energy, total (DI 00020000)"),
    ("energy_combined_active", "kWh", "combined active energy, total (DI 00000000)"),
    ("voltage_a", "V", "phase A voltage (DI 02010100)"),
    ("voltage_b", "V", "phase B voltage (DI 02010200)"),
    ("voltage_c", "V", "phase C voltage (DI 02010300)"),
    ("current_a", "A", "phase A current (DI 02020100)"),
    ("current_b", "A", "phase B current (DI 02020200)"),
    ("current_c", "A", "phase C current (DI 02020300)"),
    ("power_active", "kW", "total active power (DI 02030000)"),
    ("power_reactive", "kvar", "total reactive power (DI 02040000)"),
    ("power_factor", "PF", "total power factor (DI 02060000)"),
    ("frequency", "Hz", "grid frequency (DI 02800002)"),
    ("balance", "yuan", "remaining money (DI 00900200)"),
)
LOAD_STATES: tuple[tuple[str, str, str], ...] = (
    ("relay_open", "", "relay actual state read back (status word 3 bit 4): true = open"),
    ("relay_commanded_open", "", "relay commanded state (status word 3 bit 6)"),
    ("keep_power", "", "keep-power (保电) active: automation may not trip"),
)
BUS_DIAGNOSTICS: tuple[tuple[str, ua.NodeId, str, str], ...] = (
    ("Connected", N.DT_BOOLEAN, "", "transport connected"),
    ("Protocol", N.DT_STRING, "", "dlt645, modbus_rtu or modbus_tcp"),
    ("Utilisation", N.DT_DOUBLE, "%", "wire-busy share over the last diagnostics period"),
    ("MetersTotal", N.DT_UINT32, "", "meters configured on the bus"),
    ("MetersQuarantined", N.DT_UINT32, "", "meters in back-off after repeated failures"),
    ("TransactionsOk", N.DT_UINT64, "", "successful transactions"),
    ("Timeouts", N.DT_UINT64, "", "transactions without a reply"),
    ("ChecksumErrors", N.DT_UINT64, "", "frames with a bad checksum or CRC"),
    ("Exceptions", N.DT_UINT64, "", "exception replies from devices"),
    ("IoErrors", N.DT_UINT64, "", "transport errors"),
    ("DiscardedBytes", N.DT_UINT64, "", "bytes skipped by the deframer"),
    ("PollLatenessMax", N.DT_DOUBLE, "s", "worst poll lateness"),
    ("PollLatenessMean", N.DT_DOUBLE, "s", "mean poll lateness"),
)


class ModelError(ValueError):
    """The tag tree cannot be mapped; the message names the tags involved."""


@dataclass(slots=True)
class VarEntry:
    """What the publisher needs per variable: the Value attribute and its variant type."""

    attr: AttributeValue
    vtype: ua.VariantType | None


@dataclass(slots=True)
class TypeNodes:
    folder: Made
    by_name: dict[str, Made] = field(default_factory=dict)

    def nodeid(self, name: str | None) -> ua.NodeId:
        if name is None or name not in self.by_name:
            return N.BASE_OBJECT_TYPE
        return self.by_name[name].nodeid


def datatype_for(tag: Tag) -> ua.NodeId:
    if tag.unit:
        return N.DT_DOUBLE
    value = tag.current.value
    if isinstance(value, bool):
        return N.DT_BOOLEAN
    if isinstance(value, int):
        return N.DT_INT64
    if isinstance(value, float):
        return N.DT_DOUBLE
    if isinstance(value, str):
        return N.DT_STRING
    return N.DT_BASE


def _eu_value(unit: str) -> ua.DataValue | None:
    info = eu_information(unit)
    if info is None:
        return None
    return ua.DataValue(ua.Variant(info, ua.VariantType.ExtensionObject))


ObjectHook = Callable[[str, str | None, "Made"], None]
# (tag, its variable, who may write it and its range, the variant type a write must carry)
SetpointHook = Callable[[Tag, "Made", SetpointRule, ua.VariantType], None]


class ModelBuilder:
    """Builds types and instances; keeps the caches that make bulk building cheap.

    ``on_object(path, type_name, node)`` runs for every object created from the
    tag tree (at start and for tags defined later), so methods and command
    variables attach to instances of a type wherever and whenever they appear.
    ``writable(tag)`` is the role that may write the tag, or a ``SetpointRule``
    with its range too (None: read-only);
    ``on_setpoint`` runs for each variable made writable.
    """

    def __init__(
        self,
        factory: NodeFactory,
        max_children: int = 500,
        on_object: ObjectHook | None = None,
        historize: Callable[[Tag], bool] | None = None,
        writable: Callable[[Tag], Role | SetpointRule | None] | None = None,
        on_setpoint: SetpointHook | None = None,
    ) -> None:
        self.f = factory
        self.writable = writable
        self.on_setpoint = on_setpoint
        self.max_children = max_children
        self.on_object = on_object
        self.historize = historize
        self.historized: set[str] = set()
        self.vars: dict[str, VarEntry] = {}
        self.objects: dict[str, tuple[str | None, Made]] = {}  # path -> (type name, node)
        self._eu: dict[str, ua.DataValue | None] = {}
        self._range: dict[tuple[str, str], ua.DataValue | None] = {}

    # -- shared property values -----------------------------------------------
    def eu(self, unit: str) -> ua.DataValue | None:
        if unit not in self._eu:
            self._eu[unit] = _eu_value(unit)
        return self._eu[unit]

    def range(self, unit: str, leaf: str) -> ua.DataValue | None:
        key = (unit, leaf)
        if key not in self._range:
            r = eu_range(unit, leaf)
            self._range[key] = (
                None if r is None else ua.DataValue(ua.Variant(r, ua.VariantType.ExtensionObject))
            )
        return self._range[key]

    def analog(
        self,
        ident: str,
        name: str,
        parent: Made,
        unit: str,
        value: ua.DataValue,
        datatype: ua.NodeId,
        description: str,
        rule: ua.NodeId | None = None,
        historize: bool = False,
        writable: bool = False,
    ) -> Made:
        """A variable; an analog item with its unit properties when it has a unit.

        ``writable``: AccessLevel gets CurrentWrite; the stored UserAccessLevel
        stays read-only (what a session without the role reads)."""
        access = N.READ_HISTORY if historize else N.READ
        eu = self.eu(unit) if datatype == N.DT_DOUBLE else None
        rng = self.range(unit, name) if eu is not None else None
        if eu is None:
            typedef = N.BASE_DATA_VARIABLE_TYPE
        else:
            typedef = N.ANALOG_ITEM_TYPE if rng is not None else N.BASE_ANALOG_TYPE
        var = self.f.variable(
            ident,
            name,
            parent,
            value,
            datatype,
            typedef=typedef,
            description=description,
            access=access | N.WRITE if writable else access,
            user_access=access,
            historizing=historize,
        )
        if rule is not None:
            self.f.modelling_rule(var, rule)
        if eu is not None:
            p = self.f.prop(f"{ident}.EngineeringUnits", "EngineeringUnits", var, eu, N.DT_EUINFO)
            if rule is not None:
                self.f.modelling_rule(p, N.MODELLING_MANDATORY)
        if rng is not None:
            p = self.f.prop(f"{ident}.EURange", "EURange", var, rng, N.DT_RANGE)
            if rule is not None:
                self.f.modelling_rule(p, N.MODELLING_MANDATORY)
        return var

    # -- types ------------------------------------------------------------------
    def build_types(self) -> TypeNodes:
        f = self.f
        base = f.existing(N.BASE_OBJECT_TYPE)
        types = TypeNodes(folder=base)
        empty = ua.DataValue(StatusCode=status_code(ua.StatusCodes.BadWaitingForInitialData))

        bus = f.object_type(
            "@types/BusType", "BusType", "a field bus: one RS-485 port or TCP link", base
        )
        meters = f.obj(
            "@types/BusType/Meters",
            "Meters",
            bus,
            typedef=N.FOLDER_TYPE,
            reftype=N.REF_ORGANIZES,
            description="meters on this bus",
        )
        f.modelling_rule(meters, N.MODELLING_OPTIONAL)
        diag = f.obj("@types/BusType/Diagnostics", "Diagnostics", bus)
        f.modelling_rule(diag, N.MODELLING_MANDATORY)
        for name, dtype, unit, desc in BUS_DIAGNOSTICS:
            self.analog(
                f"@types/BusType/Diagnostics/{name}",
                name,
                diag,
                unit,
                empty,
                dtype,
                desc,
                N.MODELLING_MANDATORY,
            )
        types.by_name["BusType"] = bus

        meter = f.object_type(
            "@types/MeterType", "MeterType", "an electricity meter (DL/T 645 or Modbus)", base
        )
        for name, unit, desc in METER_QUANTITIES:
            self.analog(
                f"@types/MeterType/{name}",
                name,
                meter,
                unit,
                empty,
                N.DT_DOUBLE,
                desc,
                N.MODELLING_OPTIONAL,
            )
        types.by_name["MeterType"] = meter

        load = f.object_type(
            "@types/LoadType",
            "LoadType",
            "a switchable load: a meter relay (DL/T 645 1C) or a load-control coil",
            base,
        )
        for name, _unit, desc in LOAD_STATES:
            self.analog(
                f"@types/LoadType/{name}",
                name,
                load,
                "",
                empty,
                N.DT_BOOLEAN,
                desc,
                N.MODELLING_OPTIONAL,
            )
        types.by_name["LoadType"] = load
        for name, desc in GENERIC_TYPES:
            types.by_name[name] = f.object_type(f"@types/{name}", name, desc, base)
        return types

    # -- instances --------------------------------------------------------------
    def build_instances(self, root: Made, tags: Iterable[Tag], types: TypeNodes) -> int:
        """Create the nodes for ``tags``; parts of the tree that exist are reused.

        Returns how many variables were created. Called once at start with the
        whole image, then with tags defined later (only their new nodes are made).
        """
        before = len(self.vars)
        tree: dict[str, object] = {}
        for tag in tags:
            parts = tag.name.split("/")
            if any(not p for p in parts):
                raise ModelError(f"tag {tag.name!r}: empty path segment")
            node = tree
            for i, part in enumerate(parts[:-1]):
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise ModelError(
                        f"tag {tag.name!r}: {'/'.join(parts[: i + 1])!r} is already a value tag"
                    )
                node = child
            leaf = parts[-1]
            if leaf in node:
                raise ModelError(
                    f"tag {tag.name!r} is also the parent of other tags (e.g. "
                    f"{tag.name}/{next(iter(node[leaf]))})"  # type: ignore[call-overload]
                )
            if tag.name in self.vars:
                continue
            node[leaf] = tag
        self._emit(root, "", tree, False, None, types)
        return len(self.vars) - before

    def _emit(
        self,
        parent: Made,
        path: str,
        tree: dict[str, object],
        in_collection: bool,
        member_type: str | None,
        types: TypeNodes,
    ) -> None:
        """Create the children of ``parent`` (members typed ``member_type`` in a collection)."""
        f = self.f
        items = sorted(tree.items())
        groups: list[tuple[Made, list[tuple[str, object]]]] = [(parent, items)]
        if len(items) > self.max_children:
            groups = []
            for start in range(0, len(items), self.max_children):
                chunk = items[start : start + self.max_children]
                label = f"{chunk[0][0]}…{chunk[-1][0]}"
                ident = f"{path}/[{chunk[0][0]}..{chunk[-1][0]}]"
                groups.append((f.folder(ident, label, parent), chunk))
        for container, chunk in groups:
            for name, child in chunk:
                child_path = f"{path}/{name}" if path else name
                if isinstance(child, Tag):
                    self._leaf(container, child, name)
                    continue
                assert isinstance(child, dict)
                nodeid = f.nid(child_path)
                existing = nodeid in f.aspace
                if in_collection:
                    made = self._object(
                        child_path, name, container, member_type, types, existing=existing
                    )
                    self._emit(made, child_path, child, False, None, types)
                elif name in COLLECTIONS:
                    made = (
                        f.existing(nodeid)
                        if existing
                        else f.folder(child_path, name.capitalize(), container)
                    )
                    self._emit(made, child_path, child, True, COLLECTIONS[name], types)
                elif not path and name in ROOTS:
                    type_name, display = ROOTS[name]
                    made = self._object(
                        child_path,
                        name,
                        container,
                        type_name,
                        types,
                        existing=existing,
                        display=display,
                    )
                    self._emit(made, child_path, child, False, None, types)
                else:
                    made = self._object(child_path, name, container, None, types, existing=existing)
                    self._emit(made, child_path, child, False, None, types)

    def _object(
        self,
        path: str,
        name: str,
        parent: Made,
        type_name: str | None,
        types: TypeNodes,
        *,
        existing: bool,
        display: str | None = None,
    ) -> Made:
        if existing:
            found = self.objects.get(path)
            return found[1] if found is not None else self.f.existing(self.f.nid(path))
        made = self.f.obj(path, name, parent, typedef=types.nodeid(type_name), display=display)
        self.objects[path] = (type_name, made)
        if self.on_object is not None:
            self.on_object(path, type_name, made)
        return made

    def _leaf(self, parent: Made, tag: Tag, name: str) -> None:
        dtype = N.DT_DOUBLE if tag.unit else datatype_for(tag)
        vtype = N.VARIANT_FOR_DATATYPE.get(dtype)
        hist = self.historize is not None and self.historize(tag)
        role = self.writable(tag) if self.writable is not None and vtype is not None else None
        var = self.analog(
            tag.name,
            name,
            parent,
            tag.unit,
            data_value(tag.current, vtype),
            dtype,
            tag.description,
            historize=hist,
            writable=role is not None,
        )
        if role is not None and vtype is not None and self.on_setpoint is not None:
            self.on_setpoint(tag, var, SetpointRule.of(role), vtype)
        if hist:
            self.historized.add(tag.name)
        self.vars[tag.name] = VarEntry(var.data.attributes[ua.AttributeIds.Value], vtype)
