"""The HMI's OPC UA client: everything the screens show comes from here.

A facade over the session (``hmi/session.py``: connect, reconnect, epochs),
the watched values (``hmi/subscriptions.py``: monitored items, coalescing,
the cache), discovery (``hmi/discovery.py``: what the server exposes) and
calls (``hmi/calls.py``: methods, refusals, the role's commands). Values
arrive by subscription (never polling); listeners hear of changes at most
every ``flush_interval`` seconds.

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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from asyncua import Client, ua

from .calls import (
    KIND_ROLE,
    REFUSAL_TEXT,
    ROLE_RANK,
    CommandError,
    RecentCommand,
    call_method,
    may_command,
    recent_commands,
    ring_paths,
)
from .discovery import (
    ALARM_ACK,
    ALARM_LIST,
    ALARM_SHELVE,
    COMMAND_FIELDS,
    COMMAND_LAST_SLOT,
    COMMAND_RING,
    NODE_METHOD,
    NODE_OBJECT,
    NODE_VARIABLE,
    SERVICE_DIAG,
    WHOAMI,
    Plant,
    children,
    discover,
)
from .session import NAMESPACE_URI, Conn, Session
from .subscriptions import ChangeListener, Subscriptions
from .values import SC, SHORT_STATUS, Quality, Reading, quality_of, status_name, string_node

__all__ = [
    "ALARM_ACK",
    "ALARM_LIST",
    "ALARM_SHELVE",
    "COMMAND_FIELDS",
    "COMMAND_LAST_SLOT",
    "COMMAND_RING",
    "KIND_ROLE",
    "NAMESPACE_URI",
    "NODE_METHOD",
    "NODE_OBJECT",
    "NODE_VARIABLE",
    "REFUSAL_TEXT",
    "ROLE_RANK",
    "SC",
    "SERVICE_DIAG",
    "SHORT_STATUS",
    "WHOAMI",
    "ChangeListener",
    "CommandError",
    "Conn",
    "GridClient",
    "Plant",
    "Quality",
    "Reading",
    "RecentCommand",
    "StateListener",
    "quality_of",
    "status_name",
]

_log = logging.getLogger(__name__)

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
        self.flush_interval = flush_interval
        self.publishing_interval_ms = publishing_interval_ms
        self.session = Session(
            url,
            user,
            password,
            security=security,
            state_dir=state_dir,
            request_timeout=request_timeout,
            max_backoff=max_backoff,
            opened=self._opened,
            broken=self._broken,
            closing=self._closing,
            lost=self._lost,
            state_changed=self._state_changed,
        )
        self.subscriptions = Subscriptions()
        self.plant = Plant()
        # None: not known yet; "anonymous", "viewer", "operator", "engineer", "admin";
        # "unknown" when the server does not say (commands are offered, the server decides).
        self.role: str | None = None
        self.denied_kinds: set[str] = set()
        self._state_listeners: list[StateListener] = []
        self._tasks: list[asyncio.Task[None]] = []

    # -- the session's state, as the screens read it ------------------------------------
    @property
    def url(self) -> str:
        return self.session.url

    @property
    def user(self) -> str | None:
        return self.session.user

    @property
    def max_backoff(self) -> float:
        return self.session.max_backoff

    @max_backoff.setter
    def max_backoff(self, seconds: float) -> None:
        self.session.max_backoff = seconds

    @property
    def state(self) -> Conn:
        return self.session.state

    @property
    def error(self) -> str:
        return self.session.error

    @property
    def attempts(self) -> int:
        return self.session.attempts

    @property
    def epoch(self) -> int:
        return self.session.epoch

    @property
    def connected_since(self) -> float:
        return self.session.connected_since

    @property
    def values(self) -> dict[str, Reading]:
        return self.subscriptions.values

    @property
    def stats(self) -> dict[str, int]:
        return self.subscriptions.stats

    @property
    def _client(self) -> Client | None:
        return self.session.client

    @property
    def _pending(self) -> dict[str, Reading]:
        return self.subscriptions.pending

    # -- listeners ----------------------------------------------------------------
    def on_change(self, listener: ChangeListener) -> None:
        self.subscriptions.on_change(listener)

    def on_state(self, listener: StateListener) -> None:
        self._state_listeners.append(listener)

    def _state_changed(self) -> None:
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
        return self.subscriptions.values.get(path)

    def is_stale(self, reading: Reading) -> bool:
        return self.state is not Conn.CONNECTED or reading.epoch != self.epoch

    def missing(self, path: str) -> bool:
        """True when the server answered that this node does not exist."""
        return self.subscriptions.missing(path)

    @staticmethod
    def missing_code(reading: Reading) -> bool:
        return reading.status in (SC.BadNodeIdUnknown, SC.BadAttributeIdInvalid)

    def can_command(self, kind: str | None = None) -> bool:
        """Whether to offer a command (see :func:`hmi.calls.may_command`)."""
        return may_command(self.role, self.denied_kinds, kind)

    def command_ring_paths(self) -> list[str]:
        return ring_paths(self.plant.command_slots)

    def recent_commands(self) -> list[RecentCommand]:
        """The ring's commands, newest first (by its LastSlot), empty slots left out."""
        return recent_commands(self.plant.command_slots, self.get)

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        self.session.stopping = False
        self._tasks = [
            asyncio.create_task(self.session.supervise(), name="hmi-opcua-supervisor"),
            asyncio.create_task(
                self.subscriptions.flush_loop(self.flush_interval), name="hmi-opcua-flush"
            ),
        ]

    async def stop(self) -> None:
        self.session.stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        await self.session.teardown()
        self.session.set_state(Conn.STOPPED)

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await self.session.wait_connected(timeout)

    async def _opened(self, client: Client, ns: int) -> None:
        self.plant = await discover(client, ns)
        self.session.epoch += 1
        await self.subscriptions.attach(client, ns, self.epoch, self.publishing_interval_ms)
        await self._detect_role(client)
        await self.subscriptions.resubscribe()

    def _broken(self) -> str | None:
        return self.subscriptions.broken()

    async def _closing(self) -> None:
        await self.subscriptions.detach()

    def _lost(self) -> None:
        # Everything shown is now stale: tell the screens to redraw.
        self.subscriptions.notify(set(self.values))

    async def _detect_role(self, client: Client) -> None:
        if not self.user:
            self.role = "anonymous"
            return
        if self.plant.has_whoami:
            try:
                out = await call_method(client, self.plant.namespace, "@gridctl", "WhoAmI", [])
                self.role = str(out[1]) if len(out) > 1 else "unknown"
                return
            except CommandError:
                pass
        self.role = self.role if self.role not in (None, "anonymous") else "unknown"

    # -- discovery ----------------------------------------------------------------
    def nid(self, path: str) -> ua.NodeId:
        return string_node(path, self.plant.namespace)

    async def browse(self, path: str) -> list[tuple[str, str, int]]:
        client = self._client
        if client is None:
            return []
        return await children(client, path, self.plant.namespace)

    # -- subscriptions ----------------------------------------------------------
    async def watch(self, paths: Iterable[str]) -> None:
        await self.subscriptions.watch(paths, self.connected)

    async def unwatch(self, paths: Iterable[str]) -> None:
        await self.subscriptions.unwatch(paths)

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
        await self.subscriptions.read(client, paths, chunk)

    def flush(self) -> None:
        """Apply coalesced notifications to the cache and tell the listeners once."""
        self.subscriptions.flush()

    # -- methods ------------------------------------------------------------------
    async def call(self, object_path: str, method: str, *args: str | list[str]) -> list[Any]:
        client = self._client
        if client is None or not self.connected:
            raise CommandError(SC.BadNotConnected, "not connected to the server")
        try:
            return await call_method(client, self.plant.namespace, object_path, method, list(args))
        except CommandError as err:
            if err.denied and self.role in ("unknown", None):
                self.role = "viewer"  # the server said so; stop offering commands
            raise
