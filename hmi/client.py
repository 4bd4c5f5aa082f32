"""The HMI's OPC UA client layer: one session, subscriptions, coalescing, reconnect.

Everything the screens show comes from here. Values arrive by subscription
(never polling); notifications are coalesced per node and handed to listeners
at most every ``flush_interval`` seconds, so 10 000 values changing at 1 Hz cost
one UI update per flush, not one per value.

The client keeps a cache ``values`` (tag path → :class:`Reading`). A reading is
*stale* when it was received on an earlier connection than the current one, or
while the connection is down: the screens mark such values, never show them as
current.

Reconnect: a supervisor task connects, discovers the plant, re-creates every
watched item and then watches the session; on loss it backs off (0.5 s → 5 s)
and starts again. A refused login is not retried (retrying would only trip the
server's lock-out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState
from asyncua.common.subscription import DataChangeEvent, StatusChangeEvent, Subscription

_log = logging.getLogger(__name__)

NAMESPACE_URI = "urn:gridctl"
SC = ua.StatusCodes

_BAD = 0x80000000
_UNCERTAIN = 0x40000000
_SEVERITY_MASK = 0xC0000000

# Refused logins: retrying only feeds the server's lock-out counter.
_AUTH_ERRORS = frozenset(
    {
        SC.BadUserAccessDenied,
        SC.BadIdentityTokenInvalid,
        SC.BadIdentityTokenRejected,
        SC.BadUserSignatureInvalid,
    }
)


# Short words for the status codes gridctl uses, so they fit a table cell.
SHORT_STATUS = {
    "BadNoCommunication": "NoComm",
    "BadTimeout": "Timeout",
    "BadOutOfService": "OutSvc",
    "BadWaitingForInitialData": "NoData",
    "BadCommunicationError": "CommErr",
    "BadOutOfRange": "Range",
    "BadConfigurationError": "Config",
    "BadSensorFailure": "Sensor",
    "BadDeviceFailure": "Device",
    "BadNodeIdUnknown": "Unknown",
    "UncertainSubstituteValue": "Subst",
    "UncertainInitialValue": "Initial",
    "UncertainLastUsableValue": "LastUsable",
    "UncertainSensorNotAccurate": "Inaccurate",
    "UncertainEngineeringUnitsExceeded": "Range",
}


def _string_node(path: str, namespace: int) -> ua.NodeId:
    # asyncua annotates NodeId with its own str/int subclasses; plain values are what it sends
    return ua.NodeId(cast(ua.String, path), cast(ua.Int16, namespace))


class Conn(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    LOGIN_FAILED = "login refused"
    STOPPED = "stopped"


class Quality(StrEnum):
    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


def status_name(code: int) -> str:
    try:
        name, _doc = ua.status_codes.get_name_and_doc(code)
    except Exception:
        return f"0x{code:08X}"
    return name


def quality_of(code: int) -> Quality:
    sev = code & _SEVERITY_MASK
    if sev == 0:
        return Quality.GOOD
    if sev == _UNCERTAIN:
        return Quality.UNCERTAIN
    return Quality.BAD


@dataclass(slots=True)
class Reading:
    """One value as last received: never shown as good unless its status is Good."""

    value: Any
    status: int
    source_time: datetime | None
    epoch: int  # connection number it arrived on
    received: float  # time.monotonic()

    @property
    def quality(self) -> Quality:
        return quality_of(self.status)

    @property
    def status_text(self) -> str:
        name = status_name(self.status)
        if name in SHORT_STATUS:
            return SHORT_STATUS[name]
        for prefix in ("Bad", "Uncertain", "Good"):
            if name.startswith(prefix) and len(name) > len(prefix):
                return name[len(prefix) :]
        return name


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


@dataclass(frozen=True, slots=True)
class RecentCommand:
    """One slot of the server's ring of recent commands (any client's, not only ours)."""

    command_id: str
    kind: str
    target: str
    user: str
    state: str  # queued, sent, confirmed, failed, expired, refused
    reason: str

    @property
    def terminal(self) -> bool:
        return self.state in ("confirmed", "failed", "expired", "refused")


class CommandError(Exception):
    """A method call the server refused; ``code`` is the OPC UA status code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def denied(self) -> bool:
        return self.code == SC.BadUserAccessDenied

    @property
    def name(self) -> str:
        return status_name(self.code)


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

# Lowest role each command needs, as the server enforces it (methods.py); the
# HMI only offers what the session's role allows, the server has the last word.
ROLE_RANK = {"viewer": 0, "operator": 1, "engineer": 2, "admin": 3}
KIND_ROLE = {
    "keep_power_on": "engineer",
    "keep_power_off": "engineer",
    "set_demand_limit": "engineer",
}

ChangeListener = Callable[[set[str]], None]
StateListener = Callable[["GridClient"], None]


class GridClient:
    def __init__(
        self,
        url: str,
        user: str | None = None,
        password: str | None = None,
        *,
        security: str = "auto",
        state_dir: Path | None = None,
        flush_interval: float = 0.25,
        publishing_interval_ms: float = 200.0,
        request_timeout: float = 5.0,
        max_backoff: float = 5.0,
    ) -> None:
        self.url = url
        self.user = user
        self._password = password
        self.security = security
        self.state_dir = state_dir
        self.flush_interval = flush_interval
        self.publishing_interval_ms = publishing_interval_ms
        self.request_timeout = request_timeout
        self.max_backoff = max_backoff

        self.state = Conn.CONNECTING
        self.error = ""
        self.attempts = 0
        self.epoch = 0
        self.connected_since = 0.0
        self.plant = Plant()
        # None: not known yet; "anonymous", "viewer", "operator", "engineer", "admin";
        # "unknown" when the server does not say (commands are offered, the server decides).
        self.role: str | None = None
        self.denied_kinds: set[str] = set()
        self.values: dict[str, Reading] = {}
        self.stats = {"notifications": 0, "flushes": 0, "items": 0}

        self._client: Client | None = None
        self._sub: Subscription | None = None
        self._wanted: set[str] = set()
        self._handles: dict[int, str] = {}
        self._by_path: dict[str, int] = {}
        self._missing: set[str] = set()
        self._next_handle = 1_000_000
        self._pending: dict[str, Reading] = {}
        self._listeners: list[ChangeListener] = []
        self._state_listeners: list[StateListener] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._consumer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._stopping = False
        self._connected_event = asyncio.Event()

    # -- listeners ----------------------------------------------------------------
    def on_change(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def on_state(self, listener: StateListener) -> None:
        self._state_listeners.append(listener)

    def _set_state(self, state: Conn, error: str = "") -> None:
        self.state = state
        self.error = error
        for listener in list(self._state_listeners):
            try:
                listener(self)
            except Exception:
                _log.exception("state listener failed")

    # -- queries used by the screens ----------------------------------------------
    @property
    def connected(self) -> bool:
        return self.state is Conn.CONNECTED

    def get(self, path: str) -> Reading | None:
        return self.values.get(path)

    def is_stale(self, reading: Reading) -> bool:
        return self.state is not Conn.CONNECTED or reading.epoch != self.epoch

    def missing(self, path: str) -> bool:
        """True when the server answered that this node does not exist."""
        return path in self._missing

    @staticmethod
    def missing_code(reading: Reading) -> bool:
        return reading.status in (SC.BadNodeIdUnknown, SC.BadAttributeIdInvalid)

    def can_command(self, kind: str | None = None) -> bool:
        """Whether to offer a command: anonymous never; a kind the server refused, no.

        A role the server did not name ("unknown") is offered everything: the
        server checks every call and a refusal is remembered per kind.
        """
        if self.role in (None, "anonymous", "viewer"):
            return False
        if kind is not None and kind in self.denied_kinds:
            return False
        needed = KIND_ROLE.get(kind or "", "operator")
        rank = ROLE_RANK.get(self.role or "")
        return rank is None or rank >= ROLE_RANK[needed]

    def command_ring_paths(self) -> list[str]:
        paths = [f"{slot}/{f}" for slot in self.plant.command_slots for f in COMMAND_FIELDS]
        return [*paths, COMMAND_LAST_SLOT] if paths else []

    def recent_commands(self) -> list[RecentCommand]:
        """The ring's commands, newest first (by its LastSlot), empty slots left out."""
        slots = self.plant.command_slots
        if not slots:
            return []
        last = self.get(COMMAND_LAST_SLOT)
        start = int(last.value) if last is not None and isinstance(last.value, int) else 0
        out = []
        for i in range(len(slots)):
            slot = slots[(start - i) % len(slots)]
            fields = [self.get(f"{slot}/{f}") for f in COMMAND_FIELDS]
            if any(r is None or r.quality is not Quality.GOOD for r in fields):
                continue
            values = [str(r.value) for r in fields if r is not None]
            if values[0]:
                out.append(RecentCommand(*values))
        return out

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._supervise(), name="hmi-opcua-supervisor"),
            asyncio.create_task(self._flush_loop(), name="hmi-opcua-flush"),
        ]

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        await self._teardown()
        self._set_state(Conn.STOPPED)

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._connected_event.wait(), timeout)

    async def _supervise(self) -> None:
        delay = 0.5
        while not self._stopping:
            self.attempts += 1
            try:
                await self._connect()
            except ua.UaStatusCodeError as exc:
                await self._teardown()
                if exc.code in _AUTH_ERRORS:
                    self._set_state(Conn.LOGIN_FAILED, f"login refused: {status_name(exc.code)}")
                    return
                self._lost(f"{status_name(exc.code)}")
            except (OSError, TimeoutError, ua.UaError) as exc:
                await self._teardown()
                self._lost(_describe(exc))
            else:
                delay = 0.5
                reason = await self._watch_session()
                await self._teardown()
                if self._stopping:
                    return
                self._lost(reason)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff)

    def _lost(self, reason: str) -> None:
        self._connected_event.clear()
        state = Conn.CONNECTING if self.epoch == 0 else Conn.RECONNECTING
        self._set_state(state, reason)
        # Everything shown is now stale: tell the screens to redraw.
        self._notify(set(self.values))

    async def _connect(self) -> None:
        # asyncua's own health probe (server state read every `watchdog_intervall`,
        # timing out after the same time) gets a request's time: at its default of
        # 1 s, one long server step (a monitored-item batch on a 10 000-meter
        # plant, a big publish on a loaded box) drops a live session. Our
        # `_watch_session` probes the session too.
        client = Client(
            self.url, timeout=self.request_timeout, watchdog_intervall=self.request_timeout
        )
        client.name = client.description = "gridctl HMI"
        client.application_uri = "urn:gridctl:hmi"
        client.product_uri = "urn:gridctl"
        if self.user:
            client.set_user(self.user)
            client.set_password(self._password or "")
        await self._setup_security(client)
        self._client = client
        await asyncio.wait_for(client.connect(), self.request_timeout * 2)
        ns = await client.get_namespace_index(NAMESPACE_URI)
        self.plant = await self._discover(client, ns)
        self.epoch += 1
        self._handles.clear()
        self._by_path.clear()
        self._missing.clear()
        sub = await client.create_subscription(
            self.publishing_interval_ms, None, queue_maxsize=500_000
        )
        self._sub = sub
        self._consumer = asyncio.create_task(self._consume(sub), name="hmi-opcua-consume")
        await self._detect_role(client)
        wanted = set(self._wanted)
        await self._create_items(wanted)
        self.connected_since = time.monotonic()
        self._connected_event.set()
        self._set_state(Conn.CONNECTED)

    async def _setup_security(self, client: Client) -> None:
        mode = self.security.lower()
        if mode == "none":
            return
        if mode == "auto":
            try:
                endpoints = await asyncio.wait_for(
                    client.connect_and_get_server_endpoints(), self.request_timeout
                )
            except Exception:
                return  # the real connect reports the error
            policies = {e.SecurityPolicyUri.rsplit("#", 1)[-1] for e in endpoints}
            if "None" in policies and not self.user:
                return
            if "Basic256Sha256" not in policies:
                return
            mode = "encrypt"
        cert, key = await self._certificate()
        sign_mode = "SignAndEncrypt" if mode == "encrypt" else "Sign"
        await client.set_security_string(f"Basic256Sha256,{sign_mode},{cert},{key}")

    async def _certificate(self) -> tuple[Path, Path]:
        from asyncua.crypto.cert_gen import setup_self_signed_certificate
        from cryptography.x509.oid import ExtendedKeyUsageOID

        base = self.state_dir or Path.home() / ".local" / "state" / "gridctl-hmi"
        base.mkdir(parents=True, exist_ok=True)
        cert, key = base / "hmi-cert.der", base / "hmi-key.pem"
        await setup_self_signed_certificate(
            key,
            cert,
            "urn:gridctl:hmi",
            "localhost",
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            {"commonName": "gridctl HMI"},
        )
        return cert, key

    async def _watch_session(self) -> str:
        """Return a reason once the session is lost."""
        client = self._client
        assert client is not None
        while not self._stopping:
            await asyncio.sleep(0.5)
            if client.state is not UaClientState.CONNECTED:
                return "connection lost"
            if self._consumer is not None and self._consumer.done():
                return "subscription lost"
            if time.monotonic() - self._last_probe >= 2.0:
                self._last_probe = time.monotonic()
                try:
                    await asyncio.wait_for(client.nodes.server_state.read_value(), 3.0)
                except Exception as exc:
                    return f"server not answering ({_describe(exc)})"
        return "stopped"

    _last_probe = 0.0

    async def _teardown(self) -> None:
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._consumer
            self._consumer = None
        self._sub = None
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 2.0)

    # -- discovery ----------------------------------------------------------------
    def nid(self, path: str) -> ua.NodeId:
        return _string_node(path, self.plant.namespace)

    async def _children(self, client: Client, path: str, ns: int) -> list[tuple[str, str, int]]:
        """(browse name, identifier, node class) of the hierarchical children of ``path``."""
        try:
            refs = await client.get_node(_string_node(path, ns)).get_children_descriptions()
        except ua.UaStatusCodeError:
            return []
        out: list[tuple[str, str, int]] = []
        for ref in refs:
            ident = ref.NodeId.Identifier
            if ref.NodeId.NamespaceIndex == ns and isinstance(ident, str):
                out.append((ref.BrowseName.Name, ident, int(ref.NodeClass)))
        return out

    async def _members(self, client: Client, path: str, ns: int) -> list[str]:
        """Object members of a collection folder, looking through range folders."""
        members: list[str] = []
        for _name, ident, _cls in await self._children(client, path, ns):
            tail = ident.rsplit("/", 1)[-1]
            if tail.startswith("["):
                members.extend(
                    i for _n, i, _c in await self._children(client, ident, ns) if "/[" not in i
                )
            else:
                members.append(ident)
        return members

    async def _exists(self, client: Client, paths: Sequence[str], ns: int) -> list[bool]:
        results = await client.uaclient.read(_read_params(paths, ns, ua.AttributeIds.NodeClass))
        return [r.StatusCode is not None and r.StatusCode.is_good() for r in results]

    async def _discover(self, client: Client, ns: int) -> Plant:
        plant = Plant(namespace=ns)
        for _name, bus_path, _cls in await self._children(client, "buses", ns):
            bus = bus_path.rsplit("/", 1)[-1]
            plant.buses[bus] = sorted(await self._members(client, f"{bus_path}/meters", ns))
        names = list(plant.buses)
        if names:
            has = await self._exists(client, [f"buses/{b}/@diag" for b in names], ns)
            plant.bus_diagnostics = {b for b, ok in zip(names, has, strict=True) if ok}
        for bus, meters in plant.buses.items():
            if meters:
                children = await self._children(client, meters[0], ns)
                plant.meter_leaves[bus] = {n for n, _i, cls in children if cls == NODE_VARIABLE}
        plant.loads = sorted(await self._members(client, "loads", ns))
        # Demand groups live under demand/groups (older servers: a top-level groups folder).
        plant.groups = sorted(await self._members(client, "demand/groups", ns)) or sorted(
            await self._members(client, "groups", ns)
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
        found = dict(zip(probes, await self._exists(client, probes, ns), strict=True))
        if found[COMMAND_RING]:
            slots = await self._children(client, COMMAND_RING, ns)
            plant.command_slots = sorted(i for _n, i, cls in slots if cls == NODE_OBJECT)
        plant.has_acknowledge = found[ALARM_ACK]
        plant.has_alarm_list = found[ALARM_LIST]
        plant.has_shelving = found[ALARM_SHELVE]
        plant.has_whoami = found[WHOAMI]
        plant.line = found["line"]
        plant.warehouse = found["warehouse"]
        if found["tasks"]:
            plant.tasks = [i for _n, i, _c in await self._children(client, "tasks", ns)]
        return plant

    async def _detect_role(self, client: Client) -> None:
        if not self.user:
            self.role = "anonymous"
            return
        if self.plant.has_whoami:
            try:
                out = await self._call(client, "@gridctl", "WhoAmI", [])
                self.role = str(out[1]) if len(out) > 1 else "unknown"
                return
            except CommandError:
                pass
        self.role = self.role if self.role not in (None, "anonymous") else "unknown"

    async def browse(self, path: str) -> list[tuple[str, str, int]]:
        client = self._client
        if client is None:
            return []
        return await self._children(client, path, self.plant.namespace)

    # -- subscriptions ----------------------------------------------------------
    async def watch(self, paths: Iterable[str]) -> None:
        new = set(paths) - self._wanted
        if not new:
            return
        self._wanted |= new
        if self._sub is not None and self.connected:
            try:
                await self._create_items(new)
            except Exception as exc:  # the supervisor notices a dead session
                _log.warning("subscribing %d items failed: %s", len(new), exc)

    async def unwatch(self, paths: Iterable[str]) -> None:
        gone = set(paths) & self._wanted
        self._wanted -= gone
        sub = self._sub
        handles = [self._by_path.pop(p) for p in gone if p in self._by_path]
        for p in gone:
            self.values.pop(p, None)
        self.stats["items"] = len(self._by_path)
        if sub is None or not handles:
            return
        server_ids = []
        for h in handles:
            self._handles.pop(h, None)
            data = sub._monitored_items.get(h)
            if data is not None and data.server_handle is not None:
                server_ids.append(data.server_handle)
        with contextlib.suppress(Exception):
            await sub.unsubscribe(server_ids)

    async def _create_items(self, paths: set[str], chunk: int = 500) -> None:
        # Chunks of 500: creating an item costs the server a read and a callback;
        # one request of thousands is a loop step of seconds there, holding up
        # every client's publishing (and our own session probes) meanwhile.
        sub = self._sub
        if sub is None:
            return
        ns = self.plant.namespace
        todo = sorted(p for p in paths if p not in self._by_path)
        async with self._lock:
            for start in range(0, len(todo), chunk):
                part = todo[start : start + chunk]
                requests = []
                for path in part:
                    self._next_handle += 1
                    handle = self._next_handle
                    self._handles[handle] = path
                    self._by_path[path] = handle
                    requests.append(_item_request(_string_node(path, ns), handle))
                results = await sub.create_monitored_items(requests)
                for path, res in zip(part, results, strict=True):
                    if isinstance(res, ua.StatusCode):
                        handle = self._by_path.pop(path)
                        self._handles.pop(handle, None)
                        self._missing.add(path)
                        self._pending[path] = Reading(
                            None, res.value, None, self.epoch, time.monotonic()
                        )
        self.stats["items"] = len(self._by_path)

    async def read(self, paths: Iterable[str], chunk: int = 2000) -> None:
        """Read the current value of ``paths`` once into the cache (listeners are told).

        For what needs values that are not watched (sorting or filtering every
        meter while only the rows on screen are subscribed). A path that is
        watched keeps being updated by its subscription; one that is not keeps
        this value until it is read or watched again.
        """
        client = self._client
        if client is None or not self.connected:
            return
        ns = self.plant.namespace
        todo = list(paths)
        if not todo:
            return
        epoch = self.epoch
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            results = await client.uaclient.read(_read_params(part, ns, ua.AttributeIds.Value))
            now = time.monotonic()
            pending = self._pending
            for path, dv in zip(part, results, strict=True):
                if path in pending:
                    continue  # a notification newer than this read is waiting for the flush
                status = dv.StatusCode.value if dv.StatusCode is not None else 0
                value = dv.Value.Value if dv.Value is not None else None
                self.values[path] = Reading(value, status, dv.SourceTimestamp, epoch, now)
        self._notify(set(todo))

    async def _consume(self, sub: Subscription) -> None:
        handles = self._handles
        pending = self._pending
        async for event in sub:
            if isinstance(event, DataChangeEvent):
                item = event.data.monitored_item
                path = handles.get(item.ClientHandle)
                if path is None:
                    continue
                dv = item.Value
                status = dv.StatusCode.value if dv.StatusCode is not None else 0
                value = dv.Value.Value if dv.Value is not None else None
                pending[path] = Reading(
                    value, status, dv.SourceTimestamp, self.epoch, time.monotonic()
                )
                self.stats["notifications"] += 1
            elif isinstance(event, StatusChangeEvent):
                code = event.notification.Status
                _log.warning("subscription status change: %s", code)
                return

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            self.flush()

    def flush(self) -> None:
        """Apply coalesced notifications to the cache and tell the listeners once."""
        if not self._pending:
            return
        batch = self._pending.copy()  # the consumer holds a reference: clear in place
        self._pending.clear()
        self.values.update(batch)
        self.stats["flushes"] += 1
        self._notify(set(batch))

    def _notify(self, changed: set[str]) -> None:
        for listener in list(self._listeners):
            try:
                listener(changed)
            except Exception:
                _log.exception("change listener failed")

    # -- methods ------------------------------------------------------------------
    async def call(self, object_path: str, method: str, *args: str | list[str]) -> list[Any]:
        client = self._client
        if client is None or not self.connected:
            raise CommandError(SC.BadNotConnected, "not connected to the server")
        try:
            return await self._call(client, object_path, method, list(args))
        except CommandError as err:
            if err.denied and self.role in ("unknown", None):
                self.role = "viewer"  # the server said so; stop offering commands
            raise

    async def _call(
        self, client: Client, object_path: str, method: str, args: list[str | list[str]]
    ) -> list[Any]:
        ns = self.plant.namespace
        req = ua.CallMethodRequest()
        req.ObjectId = _string_node(object_path, ns)
        req.MethodId = _string_node(f"{object_path}/{method}", ns)
        # Everything goes as String (or String[]): the server parses numbers given as text.
        req.InputArguments = [ua.Variant(a, ua.VariantType.String) for a in args]
        try:
            (res,) = await client.uaclient.call([req])
        except ua.UaStatusCodeError as exc:
            raise CommandError(exc.code, _refusal(exc.code, "")) from None
        if not res.StatusCode.is_good():
            detail = ""
            for info in res.InputArgumentDiagnosticInfos or []:
                if info is not None and info.AdditionalInfo:
                    detail = info.AdditionalInfo
            raise CommandError(res.StatusCode.value, _refusal(res.StatusCode.value, detail))
        return [v.Value for v in res.OutputArguments or []]


# What a refusal means to an operator when the server sends no detail with it.
REFUSAL_TEXT = {
    SC.BadUserAccessDenied: "refused: your role does not allow this command",
    SC.BadInvalidState: "refused by the plant in its present state (BadInvalidState)",
    SC.BadNotSupported: "not supported by this server (BadNotSupported)",
}


def _refusal(code: int, detail: str) -> str:
    text = REFUSAL_TEXT.get(code, f"refused: {status_name(code)}")
    return f"{text} ({detail})" if detail else text


def _item_request(nodeid: ua.NodeId, handle: int) -> ua.MonitoredItemCreateRequest:
    rv = ua.ReadValueId()
    rv.NodeId = nodeid
    rv.AttributeId = ua.AttributeIds.Value
    params = ua.MonitoringParameters()
    params.ClientHandle = handle
    params.SamplingInterval = 0.0
    params.QueueSize = 1
    params.DiscardOldest = True
    mir = ua.MonitoredItemCreateRequest()
    mir.ItemToMonitor = rv
    mir.MonitoringMode = ua.MonitoringMode.Reporting
    mir.RequestedParameters = params
    return mir


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ua.UaStatusCodeError):
        return status_name(exc.code)
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text[:80]


def _read_params(paths: Sequence[str], ns: int, attribute: int) -> ua.ReadParameters:
    """One Read request for ``attribute`` of every node named by ``paths`` (string ids in ``ns``)."""
    params = ua.ReadParameters()
    for path in paths:
        rv = ua.ReadValueId()
        rv.NodeId = _string_node(path, ns)
        rv.AttributeId = attribute
        params.NodesToRead.append(rv)
    return params
