"""The ``[opcua]`` config section: endpoint, security, users and publisher limits.

Defined here (not in the controller) so the OPC UA server owns its schema; the
root ``GridConfig`` embeds :class:`OpcUaConfig` as its ``opcua`` table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import (
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from controller.config_model import ConfigModel
from controller.loopback import is_loopback


class Role(StrEnum):
    """gridctl roles, ordered: each one may do everything the previous one may."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ENGINEER = "engineer"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _ROLE_RANK[self]

    def allows(self, required: Role) -> bool:
        return self.rank >= required.rank


_ROLE_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ENGINEER: 2, Role.ADMIN: 3}


@dataclass(frozen=True, slots=True)
class SetpointRule:
    """A tag clients may write: the least role that may, and the values the device can
    hold (inclusive, in the tag's unit; None: no bound). A Write outside them is
    BadOutOfRange before anything is journaled or sent."""

    role: Role
    minimum: float | None = None
    maximum: float | None = None

    @classmethod
    def of(cls, rule: Role | SetpointRule) -> SetpointRule:
        return rule if isinstance(rule, SetpointRule) else cls(rule)


# Where the server runs: "separate" = its own process fed over a Unix socket
# (opcua_server.feed / opcua_server.process), so asyncua's publish work never
# delays the cyclic tasks; "inline" = on the controller's event loop.
ProcessMode = Literal["separate", "inline"]
PROCESS_MODES: tuple[str, ...] = ("separate", "inline")

SAMPLING_INTERVAL_MS = 0.0  # every change at once; see sampling_interval_ms

SecurityPolicyName = Literal["None", "Basic256Sha256", "Aes256_Sha256_RsaPss"]
SecurityModeName = Literal["Sign", "SignAndEncrypt"]


def is_loopback_endpoint(endpoint: str) -> bool:
    """True when an opc.tcp endpoint listens on loopback only (0.0.0.0 listens everywhere)."""
    return is_loopback(urlparse(endpoint).hostname or "")


class UserConfig(ConfigModel):
    """One OPC UA user. ``password_hash`` comes from ``python -m opcua_server.users hash``."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1, max_length=64)
    password_hash: str = Field(pattern=r"^scrypt\$")
    role: Role = Field(default=Role.VIEWER, strict=False)  # TOML spells it as text


class OpcUaConfig(ConfigModel):
    enabled: bool = True
    process: ProcessMode = "separate"
    endpoint: str = "opc.tcp://127.0.0.1:4840/gridctl"
    namespace: str = "urn:gridctl"
    application_uri: str = "urn:gridctl:server"
    server_name: str = "gridctl"
    # Security. "None" is only offered when listed here; it is meant for the demo.
    security_policies: list[SecurityPolicyName] = ["Basic256Sha256", "Aes256_Sha256_RsaPss"]
    security_modes: list[SecurityModeName] = ["Sign", "SignAndEncrypt"]
    # Anonymous sessions are read-only at most; off by default outside the demo.
    anonymous: Literal["off", "read-only"] = "off"
    users: list[UserConfig] = []
    # Client application certificates: "trust-list" accepts only those in
    # <state_dir>/pki/trusted (valid now, SubjectAltName URI = the client's
    # application URI); refused ones land in pki/rejected for `gridctl certs
    # trust`. "trust-all" accepts any certificate: for a loopback demo only.
    client_certificates: Literal["trust-all", "trust-list"] = "trust-list"
    # A user name and password over a channel without encryption (policy
    # "None") is refused unless this is true; allowed only on a loopback endpoint.
    allow_plaintext_password_on_loopback: bool = False
    certificate_days: int = Field(default=3650, ge=1, le=36500)
    # Publisher limits: the change queue is bounded (drop-oldest, counted) and
    # each step writes at most `publish_batch` values before yielding the loop.
    queue_size: int = Field(default=100_000, ge=1, le=10_000_000)
    publish_batch: int = Field(default=2_000, ge=1, le=1_000_000)
    # A collection with more children is split into range folders, so a client
    # that browses without a reference limit (the HMI) never gets thousands of
    # references in one response; a client that sets requestedMaxReferencesPerNode
    # pages through any node with BrowseNext (opcua_server/browse.py).
    max_children: int = Field(default=500, ge=10, le=10_000)
    min_publishing_interval_ms: float = Field(default=100.0, ge=10.0, le=60_000.0)
    # Monitored items are fed once per sampling tick with each changed variable's
    # latest value (the address space itself gets every value at once); changes
    # superseded within a tick are not notified. 0: every change, at once. Keep
    # it at or below the smallest publishing interval clients ask for.
    sampling_interval_ms: float = Field(default=SAMPLING_INTERVAL_MS, ge=0.0, le=60_000.0)
    # Failed logins, per user name and peer address (never per user alone: a
    # stranger's wrong guesses must not lock the operator out). After
    # `login_free_attempts` failures that pair waits `login_backoff_s`, doubling
    # per further failure up to `login_backoff_max_s`, and is refused without
    # checking the password meanwhile. The table remembers the
    # `login_table_size` most recent pairs (oldest forgotten first).
    login_free_attempts: int = Field(default=3, ge=0, le=100)
    login_backoff_s: float = Field(default=1.0, gt=0.0, le=3600.0)
    login_backoff_max_s: float = Field(default=60.0, gt=0.0, le=86_400.0)
    login_table_size: int = Field(default=10_000, ge=16, le=1_000_000)
    # Connection limits: TCP connections in total and from one peer address
    # (beyond them a new connection is closed at once), activated sessions in
    # total, and seconds a connection may take to activate a session before it
    # is closed (idle sockets cannot hold connection slots).
    max_connections: int = Field(default=256, ge=1, le=65_536)
    max_connections_per_peer: int = Field(default=16, ge=1, le=65_536)
    max_sessions: int = Field(default=100, ge=1, le=65_536)
    activation_timeout_s: float = Field(default=5.0, gt=0.0, le=600.0)

    @field_validator("process", mode="before")
    @classmethod
    def _process(cls, value: Any) -> Any:
        if value not in PROCESS_MODES:
            raise ValueError(
                'must be "separate" (the OPC UA server in its own process) or "inline" '
                f"(on the control loop), got {value!r}"
            )
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        url = urlparse(value)
        if url.scheme != "opc.tcp" or not url.hostname:
            raise ValueError(f"endpoint must be opc.tcp://HOST:PORT/PATH, got {value!r}")
        try:
            port = url.port
        except ValueError as exc:
            raise ValueError(f"endpoint port: {exc}") from None
        if port is None:
            raise ValueError(f"endpoint needs an explicit port, got {value!r}")
        return value

    @field_validator("security_policies")
    @classmethod
    def _policies(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("security_policies must name at least one policy")
        if len(set(value)) != len(value):
            raise ValueError(f"security_policies has duplicates: {value}")
        return value

    @field_validator("security_modes")
    @classmethod
    def _modes(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("security_modes must name at least one mode (Sign, SignAndEncrypt)")
        return value

    # Exposure rules: what is tolerable on 127.0.0.1 is not on a network. Field
    # validators (endpoint is validated first) so the error names the field.
    @field_validator("security_policies")
    @classmethod
    def _no_plaintext_on_network(cls, value: list[str], info: ValidationInfo) -> list[str]:
        endpoint = info.data.get("endpoint")
        if "None" in value and endpoint is not None and not is_loopback_endpoint(endpoint):
            raise ValueError(
                f'"None" (no signing, no encryption) is allowed only on a loopback endpoint '
                f"(127.0.0.1, ::1, localhost), not on {endpoint}; list only "
                '"Basic256Sha256" and/or "Aes256_Sha256_RsaPss"'
            )
        return value

    @field_validator("anonymous")
    @classmethod
    def _no_anonymous_on_network(cls, value: str, info: ValidationInfo) -> str:
        endpoint = info.data.get("endpoint")
        if value != "off" and endpoint is not None and not is_loopback_endpoint(endpoint):
            raise ValueError(
                f'"{value}" is allowed only on a loopback endpoint (127.0.0.1, ::1, '
                f'localhost), not on {endpoint}; use "off" and give users'
            )
        return value

    @field_validator("allow_plaintext_password_on_loopback")
    @classmethod
    def _plaintext_only_on_loopback(cls, value: bool, info: ValidationInfo) -> bool:
        endpoint = info.data.get("endpoint")
        if value and endpoint is not None and not is_loopback_endpoint(endpoint):
            raise ValueError(
                "true is allowed only on a loopback endpoint (127.0.0.1, ::1, localhost), "
                f"not on {endpoint}: passwords would cross the network in clear text"
            )
        return value

    @model_validator(mode="after")
    def _limits(self) -> OpcUaConfig:
        if self.login_backoff_max_s < self.login_backoff_s:
            raise ValueError(
                f"login_backoff_max_s ({self.login_backoff_max_s} s) must be at least "
                f"login_backoff_s ({self.login_backoff_s} s)"
            )
        if self.max_connections_per_peer > self.max_connections:
            raise ValueError(
                f"max_connections_per_peer ({self.max_connections_per_peer}) must be at most "
                f"max_connections ({self.max_connections})"
            )
        return self

    @model_validator(mode="after")
    def _unique_users(self) -> OpcUaConfig:
        names = [u.name for u in self.users]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"users: duplicate user names {dupes}")
        return self

    def deployment_problems(self) -> list[str]:
        """Settings that load but leave the server unusable; ``gridctl check-config`` refuses them.

        Not refused at load time: a config without an ``[opcua]`` table (tests,
        a bare field config) still runs, with a server nobody can log on to.
        """
        if not self.enabled:
            return []
        problems = []
        if "None" not in self.security_policies and not self.users:
            problems.append(
                'users: a secure endpoint (no "None" policy) needs at least one user '
                "(name, role, password_hash from `python -m opcua_server.users hash`), "
                "or set enabled = false"
            )
        return problems

    @property
    def host(self) -> str:
        return urlparse(self.endpoint).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlparse(self.endpoint).port or 4840
