"""What the server exposes, found by browsing after each connect: buses and
their meters, loads, demand groups, the line, the warehouse, cycle tasks, and
which optional nodes (alarm list, acknowledge, shelve, WhoAmI, the command
ring) this server has."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from asyncua import Client, ua

from .values import read_params, string_node

# Well-known node paths (identifiers in the gridctl namespace).
ALARM_LIST = "@alarms/Active"  # String: JSON list of alarms (requested from the server)
ALARM_ACK = "@alarms/Acknowledge"
ALARM_SHELVE = "@alarms/Shelve"
WHOAMI = "@gridctl/WhoAmI"  # method → [user, role] (requested from the server)
SERVICE_DIAG = "@diag"
COMMAND_RING = "@commands/Recent"  # slots 00..NN, each CommandId, Kind, Target, State, Reason…
COMMAND_LAST_SLOT = "@commands/LastSlot"
COMMAND_FIELDS = ("CommandId", "Kind", "Target", "User", "State", "Reason")

NODE_OBJECT = 1
NODE_VARIABLE = 2
NODE_METHOD = 4


@dataclass(slots=True)
class Plant:
    """What the server exposes, discovered by browsing after each connect."""

    namespace: int = 0
    buses: dict[str, list[str]] = field(default_factory=dict)  # bus -> meter paths
    bus_diagnostics: set[str] = field(default_factory=set)  # buses with a Diagnostics object
    # bus -> variable names of its first meter (every meter of a bus polls the same items)
    meter_leaves: dict[str, set[str]] = field(default_factory=dict)
    loads: list[str] = field(default_factory=list)  # load object paths
    groups: list[str] = field(default_factory=list)  # demand group object paths
    command_slots: list[str] = field(default_factory=list)  # @commands/Recent/NN
    has_acknowledge: bool = False
    has_alarm_list: bool = False
    has_shelving: bool = False
    has_whoami: bool = False
    line: bool = False
    warehouse: bool = False
    tasks: list[str] = field(default_factory=list)  # cyclic task objects (cycle timing)

    @property
    def meter_count(self) -> int:
        return sum(len(m) for m in self.buses.values())


async def children(client: Client, path: str, ns: int) -> list[tuple[str, str, int]]:
    """(browse name, identifier, node class) of the hierarchical children of ``path``."""
    try:
        refs = await client.get_node(string_node(path, ns)).get_children_descriptions()
    except ua.UaStatusCodeError:
        return []
    out: list[tuple[str, str, int]] = []
    for ref in refs:
        ident = ref.NodeId.Identifier
        if ref.NodeId.NamespaceIndex == ns and isinstance(ident, str):
            out.append((ref.BrowseName.Name, ident, int(ref.NodeClass)))
    return out


async def _members(client: Client, path: str, ns: int) -> list[str]:
    """Object members of a collection folder, looking through range folders."""
    members: list[str] = []
    for _name, ident, _cls in await children(client, path, ns):
        tail = ident.rsplit("/", 1)[-1]
        if tail.startswith("["):
            members.extend(i for _n, i, _c in await children(client, ident, ns) if "/[" not in i)
        else:
            members.append(ident)
    return members


async def _exists(client: Client, paths: Sequence[str], ns: int) -> list[bool]:
    results = await client.uaclient.read(read_params(paths, ns, ua.AttributeIds.NodeClass))
    return [r.StatusCode is not None and r.StatusCode.is_good() for r in results]


async def discover(client: Client, ns: int) -> Plant:
    plant = Plant(namespace=ns)
    for _name, bus_path, _cls in await children(client, "buses", ns):
        bus = bus_path.rsplit("/", 1)[-1]
        plant.buses[bus] = sorted(await _members(client, f"{bus_path}/meters", ns))
    names = list(plant.buses)
    if names:
        has = await _exists(client, [f"buses/{b}/@diag" for b in names], ns)
        plant.bus_diagnostics = {b for b, ok in zip(names, has, strict=True) if ok}
    for bus, meters in plant.buses.items():
        if meters:
            leaves = await children(client, meters[0], ns)
            plant.meter_leaves[bus] = {n for n, _i, cls in leaves if cls == NODE_VARIABLE}
    plant.loads = sorted(await _members(client, "loads", ns))
    # Demand groups live under demand/groups (older servers: a top-level groups folder).
    plant.groups = sorted(await _members(client, "demand/groups", ns)) or sorted(
        await _members(client, "groups", ns)
    )
    probes = [
        ALARM_ACK,
        ALARM_LIST,
        ALARM_SHELVE,
        WHOAMI,
        "line",
        "warehouse",
        "tasks",
        COMMAND_RING,
    ]
    found = dict(zip(probes, await _exists(client, probes, ns), strict=True))
    if found[COMMAND_RING]:
        slots = await children(client, COMMAND_RING, ns)
        plant.command_slots = sorted(i for _n, i, cls in slots if cls == NODE_OBJECT)
    plant.has_acknowledge = found[ALARM_ACK]
    plant.has_alarm_list = found[ALARM_LIST]
    plant.has_shelving = found[ALARM_SHELVE]
    plant.has_whoami = found[WHOAMI]
    plant.line = found["line"]
    plant.warehouse = found["warehouse"]
    if found["tasks"]:
        plant.tasks = [i for _n, i, _c in await children(client, "tasks", ns)]
    return plant
