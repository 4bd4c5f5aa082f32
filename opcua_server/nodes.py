"""Bulk node construction straight into asyncua's address space.

asyncua's node management service does, per added node, a scan of all the
parent's references (duplicate check), builds a fresh DataValue with two
``datetime.now()`` calls for every attribute and resolves the target's names
for each reference. For a plant model of 10⁵ nodes that is most of the start-up
time. Here nodes are assembled directly as ``NodeData`` with:

- references appended in both directions without scans (we build a fresh tree
  with unique, path-derived NodeIds, so duplicates cannot occur);
- constant attributes (DataType, AccessLevel, ValueRank, repeated browse names…)
  *shared* between nodes: one ``AttributeValue`` object per distinct value.
  This is safe because nothing ever mutates those in place: client writes to
  non-Value attributes are refused (no session is an asyncua Admin), and the
  publisher only replaces the Value attribute, which is always per node.

The resulting nodes are indistinguishable from ``add_nodes`` ones to clients
(browse, read, translate, subscribe).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asyncua import ua
from asyncua.server.address_space import AddressSpace, AttributeValue, NodeData

from opcua_server.ua_values import node_id

A = ua.AttributeIds
OBJ = ua.ObjectIds

REF_ORGANIZES = node_id(OBJ.Organizes)
REF_HAS_COMPONENT = node_id(OBJ.HasComponent)
REF_HAS_PROPERTY = node_id(OBJ.HasProperty)
REF_HAS_SUBTYPE = node_id(OBJ.HasSubtype)
REF_HAS_TYPEDEF = node_id(OBJ.HasTypeDefinition)
REF_HAS_MODELLING_RULE = node_id(OBJ.HasModellingRule)

FOLDER_TYPE = node_id(OBJ.FolderType)
BASE_OBJECT_TYPE = node_id(OBJ.BaseObjectType)
BASE_DATA_VARIABLE_TYPE = node_id(OBJ.BaseDataVariableType)
PROPERTY_TYPE = node_id(OBJ.PropertyType)
ANALOG_ITEM_TYPE = node_id(OBJ.AnalogItemType)  # EURange mandatory
BASE_ANALOG_TYPE = node_id(OBJ.BaseAnalogType)  # EURange optional (range not known)
MODELLING_MANDATORY = node_id(OBJ.ModellingRule_Mandatory)
MODELLING_OPTIONAL = node_id(OBJ.ModellingRule_Optional)

DT_BOOLEAN = node_id(OBJ.Boolean)
DT_INT64 = node_id(OBJ.Int64)
DT_UINT64 = node_id(OBJ.UInt64)
DT_UINT32 = node_id(OBJ.UInt32)
DT_DOUBLE = node_id(OBJ.Double)
DT_STRING = node_id(OBJ.String)
DT_DATETIME = node_id(OBJ.DateTime)
DT_BASE = node_id(OBJ.BaseDataType)
DT_EUINFO = node_id(OBJ.EUInformation)
DT_RANGE = node_id(OBJ.Range)
DT_ARGUMENT = node_id(OBJ.Argument)
DT_BUILD_INFO = node_id(OBJ.BuildInfo)

VARIANT_FOR_DATATYPE: dict[ua.NodeId, ua.VariantType | None] = {
    DT_BOOLEAN: ua.VariantType.Boolean,
    DT_INT64: ua.VariantType.Int64,
    DT_UINT64: ua.VariantType.UInt64,
    DT_UINT32: ua.VariantType.UInt32,
    DT_DOUBLE: ua.VariantType.Double,
    DT_STRING: ua.VariantType.String,
    DT_DATETIME: ua.VariantType.DateTime,
    DT_BASE: None,  # any type: let asyncua guess from the Python value
}

# Shared empty values for reference fields (never mutated; saves three objects per reference).
_NULL_ID = ua.NodeId()
_EMPTY_QN = ua.QualifiedName()
_EMPTY_LT = ua.LocalizedText()

READ = ua.AccessLevel.CurrentRead.mask
READ_HISTORY = READ | ua.AccessLevel.HistoryRead.mask
WRITE = ua.AccessLevel.CurrentWrite.mask


@dataclass(slots=True)
class Made:
    """A node we created, plus what references to it need to show."""

    data: NodeData
    nodeclass: ua.NodeClass
    browse_name: ua.QualifiedName
    display_name: ua.LocalizedText
    typedef: ua.NodeId = _NULL_ID

    @property
    def nodeid(self) -> ua.NodeId:
        return self.data.nodeid


class NodeFactory:
    """Creates nodes in one namespace of an address space; see the module docstring."""

    def __init__(self, aspace: AddressSpace, ns: int) -> None:
        self.aspace = aspace
        self.ns = ns
        self.created = 0
        self._shared: dict[tuple[Any, ...], AttributeValue] = {}
        self._templates: dict[tuple[Any, ...], dict[ua.AttributeIds, AttributeValue]] = {}
        self._qnames: dict[str, ua.QualifiedName] = {}
        self._names: dict[tuple[int, str, str], tuple[AttributeValue, AttributeValue]] = {}
        self._descriptions: dict[str, AttributeValue] = {}

    # -- attribute helpers ----------------------------------------------------
    def shared(self, attr: ua.AttributeIds, value: Any, vtype: ua.VariantType) -> AttributeValue:
        """One AttributeValue per distinct constant (see module docstring for why this is safe)."""
        key = (attr, vtype, _hashable(value))
        av = self._shared.get(key)
        if av is None:
            av = AttributeValue(ua.DataValue(ua.Variant(value, vtype), StatusCode=ua.StatusCode()))
            self._shared[key] = av
        return av

    def nid(self, identifier: str) -> ua.NodeId:
        return node_id(identifier, self.ns)

    def qn(self, name: str) -> ua.QualifiedName:
        qn = self._qnames.get(name)
        if qn is None:
            qn = self._qnames[name] = ua.QualifiedName(name, self.ns)
        return qn

    def existing(self, nodeid: ua.NodeId) -> Made:
        data = self.aspace[nodeid]
        bname = data.attributes[A.BrowseName].value.Value.Value  # type: ignore[union-attr]
        dname = data.attributes[A.DisplayName].value.Value.Value  # type: ignore[union-attr]
        nclass = ua.NodeClass(data.attributes[A.NodeClass].value.Value.Value)  # type: ignore[union-attr]
        return Made(data, nclass, bname, dname)

    def template(
        self, key: tuple[Any, ...], attrs: dict[ua.AttributeIds, tuple[Any, ua.VariantType]]
    ) -> dict[ua.AttributeIds, AttributeValue]:
        """The constant attributes of a node shape, built once per shape."""
        tpl = self._templates.get(key)
        if tpl is None:
            tpl = {attr: self.shared(attr, value, vt) for attr, (value, vt) in attrs.items()}
            self._templates[key] = tpl
        return tpl

    def _base(
        self,
        nodeid: ua.NodeId,
        nodeclass: ua.NodeClass,
        browse_name: ua.QualifiedName,
        display: str,
        description: str,
        template: dict[ua.AttributeIds, AttributeValue] | None = None,
    ) -> NodeData:
        aspace = self.aspace
        if nodeid in aspace:
            raise ValueError(f"node {nodeid.to_string()} already exists")
        data = NodeData(nodeid)
        if template is None:
            template = self.template(
                ("base", nodeclass),
                {
                    A.NodeClass: (int(nodeclass), ua.VariantType.Int32),
                    A.WriteMask: (0, ua.VariantType.UInt32),
                    A.UserWriteMask: (0, ua.VariantType.UInt32),
                },
            )
        attrs = data.attributes = dict(template)
        attrs[A.NodeId] = AttributeValue(ua.DataValue(ua.Variant(nodeid, ua.VariantType.NodeId)))
        names = self._names.get((browse_name.NamespaceIndex, browse_name.Name, display))
        if names is None:
            names = (
                self.shared(A.BrowseName, browse_name, ua.VariantType.QualifiedName),
                self.shared(A.DisplayName, ua.LocalizedText(display), ua.VariantType.LocalizedText),
            )
            self._names[(browse_name.NamespaceIndex, browse_name.Name, display)] = names
        attrs[A.BrowseName], attrs[A.DisplayName] = names
        desc = self._descriptions.get(description)
        if desc is None:
            desc = self._descriptions[description] = self.shared(
                A.Description, ua.LocalizedText(description), ua.VariantType.LocalizedText
            )
        attrs[A.Description] = desc
        aspace[nodeid] = data
        self.created += 1
        return data

    def link(self, parent: Made, child: Made, reftype: ua.NodeId) -> None:
        parent.data.references.append(
            ua.ReferenceDescription(
                ReferenceTypeId=reftype,
                IsForward=True,
                NodeId=child.nodeid,
                BrowseName=child.browse_name,
                DisplayName=child.display_name,
                NodeClass=child.nodeclass,
                TypeDefinition=child.typedef,
            )
        )
        child.data.references.append(
            ua.ReferenceDescription(
                ReferenceTypeId=reftype,
                IsForward=False,
                NodeId=parent.nodeid,
                BrowseName=parent.browse_name,
                DisplayName=parent.display_name,
                NodeClass=parent.nodeclass,
                TypeDefinition=parent.typedef,
            )
        )

    def _typedef(self, made: Made, typedef: ua.NodeId, typeclass: ua.NodeClass) -> None:
        made.typedef = typedef
        made.data.references.append(
            ua.ReferenceDescription(
                ReferenceTypeId=REF_HAS_TYPEDEF,
                IsForward=True,
                NodeId=typedef,
                NodeClass=typeclass,
                BrowseName=_EMPTY_QN,
                DisplayName=_EMPTY_LT,
                TypeDefinition=_NULL_ID,
            )
        )

    def modelling_rule(self, made: Made, rule: ua.NodeId) -> None:
        made.data.references.append(
            ua.ReferenceDescription(
                ReferenceTypeId=REF_HAS_MODELLING_RULE,
                IsForward=True,
                NodeId=rule,
                NodeClass=ua.NodeClass.Object,
                BrowseName=_EMPTY_QN,
                DisplayName=_EMPTY_LT,
                TypeDefinition=_NULL_ID,
            )
        )

    # -- node kinds -----------------------------------------------------------
    def object_type(self, ident: str, name: str, description: str, parent: Made) -> Made:
        bname = self.qn(name)
        data = self._base(self.nid(ident), ua.NodeClass.ObjectType, bname, name, description)
        data.attributes[A.IsAbstract] = self.shared(A.IsAbstract, False, ua.VariantType.Boolean)
        made = Made(data, ua.NodeClass.ObjectType, bname, ua.LocalizedText(name))
        self.link(parent, made, REF_HAS_SUBTYPE)
        return made

    def obj(
        self,
        ident: str,
        name: str,
        parent: Made,
        *,
        typedef: ua.NodeId = BASE_OBJECT_TYPE,
        reftype: ua.NodeId = REF_HAS_COMPONENT,
        description: str = "",
        display: str | None = None,
    ) -> Made:
        bname = self.qn(name)
        display = display or name
        data = self._base(self.nid(ident), ua.NodeClass.Object, bname, display, description)
        data.attributes[A.EventNotifier] = self.shared(A.EventNotifier, 0, ua.VariantType.Byte)
        made = Made(data, ua.NodeClass.Object, bname, ua.LocalizedText(display))
        self._typedef(made, typedef, ua.NodeClass.ObjectType)
        self.link(parent, made, reftype)
        return made

    def folder(self, ident: str, name: str, parent: Made, description: str = "") -> Made:
        return self.obj(
            ident, name, parent, typedef=FOLDER_TYPE, reftype=REF_ORGANIZES, description=description
        )

    def variable(
        self,
        ident: str,
        name: str,
        parent: Made,
        value: ua.DataValue,
        datatype: ua.NodeId,
        *,
        typedef: ua.NodeId = BASE_DATA_VARIABLE_TYPE,
        reftype: ua.NodeId = REF_HAS_COMPONENT,
        description: str = "",
        value_rank: int = -1,
        access: int = READ,
        user_access: int | None = None,
        sampling_ms: float = 0.0,
        historizing: bool = False,
        own_property: bool = False,
    ) -> Made:
        # Standard properties (EngineeringUnits, InputArguments…) are named in
        # namespace 0; our own properties (own_property) in ours.
        # ``user_access``: the stored UserAccessLevel (default ``access``); a
        # session reads its own (opcua_server.access), this is the viewer's.
        if user_access is None:
            user_access = access
        standard = reftype == REF_HAS_PROPERTY and not own_property
        bname = ua.QualifiedName(name, 0) if standard else self.qn(name)
        shape: dict[ua.AttributeIds, tuple[Any, ua.VariantType]] = {
            A.NodeClass: (int(ua.NodeClass.Variable), ua.VariantType.Int32),
            A.WriteMask: (0, ua.VariantType.UInt32),
            A.UserWriteMask: (0, ua.VariantType.UInt32),
            A.DataType: (datatype, ua.VariantType.NodeId),
            A.ValueRank: (value_rank, ua.VariantType.Int32),
            A.AccessLevel: (access, ua.VariantType.Byte),
            A.UserAccessLevel: (user_access, ua.VariantType.Byte),
            A.MinimumSamplingInterval: (sampling_ms, ua.VariantType.Double),
            A.Historizing: (historizing, ua.VariantType.Boolean),
        }
        key = (
            "var",
            datatype.Identifier,
            datatype.NamespaceIndex,
            value_rank,
            access,
            user_access,
            sampling_ms,
            historizing,
        )
        template = self._templates.get(key)
        if template is None:
            if value_rank >= 0:
                shape[A.ArrayDimensions] = ([0], ua.VariantType.UInt32)
            template = self.template(key, shape)
        data = self._base(
            self.nid(ident), ua.NodeClass.Variable, bname, name, description, template
        )
        data.attributes[A.Value] = AttributeValue(value)
        made = Made(data, ua.NodeClass.Variable, bname, ua.LocalizedText(name))
        self._typedef(made, typedef, ua.NodeClass.VariableType)
        self.link(parent, made, reftype)
        return made

    def prop(
        self,
        ident: str,
        name: str,
        parent: Made,
        value: ua.DataValue,
        datatype: ua.NodeId,
        value_rank: int = -1,
    ) -> Made:
        """A property (standard browse name in namespace 0, e.g. EngineeringUnits)."""
        return self.variable(
            ident,
            name,
            parent,
            value,
            datatype,
            typedef=PROPERTY_TYPE,
            reftype=REF_HAS_PROPERTY,
            value_rank=value_rank,
        )

    def method(
        self,
        ident: str,
        name: str,
        parent: Made,
        call: Callable[..., Any] | None,
        inputs: list[ua.Argument],
        outputs: list[ua.Argument],
        description: str = "",
    ) -> Made:
        bname = self.qn(name)
        data = self._base(self.nid(ident), ua.NodeClass.Method, bname, name, description)
        data.attributes[A.Executable] = self.shared(A.Executable, True, ua.VariantType.Boolean)
        data.attributes[A.UserExecutable] = self.shared(
            A.UserExecutable, True, ua.VariantType.Boolean
        )
        data.call = call
        made = Made(data, ua.NodeClass.Method, bname, ua.LocalizedText(name))
        self.link(parent, made, REF_HAS_COMPONENT)
        for arg_name, args in (("InputArguments", inputs), ("OutputArguments", outputs)):
            if args:
                self.prop(
                    f"{ident}.{arg_name}",
                    arg_name,
                    made,
                    ua.DataValue(ua.Variant(args, ua.VariantType.ExtensionObject, is_array=True)),
                    DT_ARGUMENT,
                    value_rank=1,
                )
        return made


def _hashable(value: Any) -> Any:
    # QualifiedName / LocalizedText are unhashable dataclasses: key by their fields.
    if isinstance(value, ua.QualifiedName):
        return ("qn", value.NamespaceIndex, value.Name)
    if isinstance(value, ua.LocalizedText):
        return ("lt", value.Locale, value.Text)
    if isinstance(value, list):
        return tuple(value)
    return value


def argument(name: str, datatype: ua.NodeId, description: str) -> ua.Argument:
    return ua.Argument(
        Name=name,
        DataType=datatype,
        ValueRank=-1,
        ArrayDimensions=[],
        Description=ua.LocalizedText(description),
    )
