"""The HMI's one OPC UA session: connect (security by what the server
offers), watch it, and on loss back off (0.5 s → ``max_backoff``) and connect
again. A refused login is not retried: retrying only feeds the server's
lock-out counter.

Each connection is an *epoch*; what the client built on the last one (plant,
monitored items, role) is rebuilt by the ``opened`` hook before the session
counts as connected."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path

from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState

from .values import SC, describe, status_name

_log = logging.getLogger(__name__)

NAMESPACE_URI = "urn:gridctl"

# Refused logins: retrying only feeds the server's lock-out counter.
_AUTH_ERRORS = frozenset(
    {
        SC.BadUserAccessDenied,
        SC.BadIdentityTokenInvalid,
        SC.BadIdentityTokenRejected,
        SC.BadUserSignatureInvalid,
    }
)


class Conn(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    LOGIN_FAILED = "login refused"
    STOPPED = "stopped"


class Session:
    """``opened(client, ns)``: rebuild on a new connection (the epoch is
    already counted); ``broken()``: why a live session is unusable though the
    channel is up (a dead subscription), or None; ``closing()``: release what
    was built on the connection, before it is closed; ``lost()``: the session
    went down (what is shown is stale now); ``state_changed()``: after each
    change of ``state``."""

    def __init__(
        self,
        url: str,
        user: str | None,
        password: str | None,
        *,
        security: str,
        state_dir: Path | None,
        request_timeout: float,
        max_backoff: float,
        opened: Callable[[Client, int], Awaitable[None]],
        broken: Callable[[], str | None],
        closing: Callable[[], Awaitable[None]],
        lost: Callable[[], None],
        state_changed: Callable[[], None],
    ) -> None:
        self.url = url
        self.user = user
        self._password = password
        self.security = security
        self.state_dir = state_dir
        self.request_timeout = request_timeout
        self.max_backoff = max_backoff
        self._opened = opened
        self._broken = broken
        self._closing = closing
        self._lost_hook = lost
        self._state_changed = state_changed

        self.state = Conn.CONNECTING
        self.error = ""
        self.attempts = 0
        self.epoch = 0
        self.connected_since = 0.0
        self.client: Client | None = None
        self.stopping = False
        self._connected_event = asyncio.Event()
        self._last_probe = 0.0

    def set_state(self, state: Conn, error: str = "") -> None:
        self.state = state
        self.error = error
        self._state_changed()

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._connected_event.wait(), timeout)

    async def supervise(self) -> None:
        delay = 0.5
        while not self.stopping:
            self.attempts += 1
            try:
                await self._connect()
            except ua.UaStatusCodeError as exc:
                await self.teardown()
                if exc.code in _AUTH_ERRORS:
                    self.set_state(Conn.LOGIN_FAILED, f"login refused: {status_name(exc.code)}")
                    return
                self._lost(f"{status_name(exc.code)}")
            except (OSError, TimeoutError, ua.UaError) as exc:
                await self.teardown()
                self._lost(describe(exc))
            else:
                delay = 0.5
                reason = await self._watch()
                await self.teardown()
                if self.stopping:
                    return
                self._lost(reason)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff)

    def _lost(self, reason: str) -> None:
        self._connected_event.clear()
        state = Conn.CONNECTING if self.epoch == 0 else Conn.RECONNECTING
        self.set_state(state, reason)
        self._lost_hook()

    async def _connect(self) -> None:
        # asyncua's own health probe (server state read every `watchdog_intervall`,
        # timing out after the same time) gets a request's time: at its default of
        # 1 s, one long server step (a monitored-item batch on a 10 000-meter
        # plant, a big publish on a loaded box) drops a live session. Our
        # `_watch` probes the session too.
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
        self.client = client
        await asyncio.wait_for(client.connect(), self.request_timeout * 2)
        ns = await client.get_namespace_index(NAMESPACE_URI)
        await self._opened(client, ns)
        self.connected_since = time.monotonic()
        self._connected_event.set()
        self.set_state(Conn.CONNECTED)

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

    async def _watch(self) -> str:
        """Return a reason once the session is lost."""
        client = self.client
        assert client is not None
        while not self.stopping:
            await asyncio.sleep(0.5)
            if client.state is not UaClientState.CONNECTED:
                return "connection lost"
            broken = self._broken()
            if broken is not None:
                return broken
            if time.monotonic() - self._last_probe >= 2.0:
                self._last_probe = time.monotonic()
                try:
                    await asyncio.wait_for(client.nodes.server_state.read_value(), 3.0)
                except Exception as exc:
                    return f"server not answering ({describe(exc)})"
        return "stopped"

    async def teardown(self) -> None:
        await self._closing()
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 2.0)
