from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from controller.api import (
    ArmRequest,
    CommandRefused,
    CommandRequest,
    ExecuteRequest,
    RefusalReason,
    Selection,
)
from controller.process_image import ProcessImage
from opcua_server import OpcUaConfig, OpcUaServer, ServerSettings, UserConfig
from opcua_server.users import hash_password

PASSWORDS = {"vera": "viewer-pw", "otto": "operator-pw", "emma": "engineer-pw", "ada": "admin-pw"}
ROLES = {"vera": "viewer", "otto": "operator", "emma": "engineer", "ada": "admin"}
# Cheap scrypt parameters keep the suite fast; the cost is stored in the hash.
USERS = [
    UserConfig(name=n, password_hash=hash_password(p, n=2**10), role=ROLES[n])
    for n, p in PASSWORDS.items()
]


CLIENT_URI = "urn:gridctl:test-client"


@pytest.fixture(scope="module")
def client_cert(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("client-pki")
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        "gridctl test client",
        {"organizationName": "test"},
        [x509.UniformResourceIdentifier(CLIENT_URI), x509.DNSName(socket.gethostname())],
        extended=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    cert_path, key_path = d / "cert.der", d / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    return cert_path, key_path


class FakeSelections:
    """Select-before-operate as the test sinks' stand-in runtime: remembers each Arm and
    hands the selection to the sink's ``submit`` at Execute (the same user, the same
    target). The controller's own selection (journaled, reserving, expiring) is tested
    in tests/controller/test_selection.py and tests/loads/test_opcua_sink.py."""

    def _armed(self) -> dict[str, ArmRequest]:
        armed: dict[str, ArmRequest] | None = getattr(self, "_fake_armed", None)
        if armed is None:
            armed = {}
            self._fake_armed = armed
        return armed

    async def submit(self, request: CommandRequest) -> str:
        raise NotImplementedError

    async def arm(self, request: ArmRequest) -> Selection:
        armed = self._armed()
        token = f"arm-{len(armed) + 1}"
        armed[token] = request
        return Selection(token, request.target, request.kind, request.user, 1.0, 31.0)

    async def execute(self, request: ExecuteRequest) -> Selection:
        armed = self._armed().get(request.token)
        if armed is None or (armed.target, armed.user) != (request.target, request.user):
            raise CommandRefused(RefusalReason.NOT_ARMED, f"token: no armed {request.token!r}")
        del self._armed()[request.token]
        command_id = await self.submit(
            CommandRequest(
                target=armed.target,
                kind=armed.kind,
                reason=armed.reason,
                user=armed.user,
                role=armed.role,
                token=request.token,
                armed_at=0.0,
            )
        )
        return Selection(command_id, armed.target, armed.kind, armed.user, 1.0, 31.0)


async def until(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll ``check`` (sync, or returning an awaitable) until it is truthy; return that value.

    A bounded wait on a condition, never a timing gate."""
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        last = check()
        if isinstance(last, Awaitable):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout} s (last: {last!r})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_image(buses: int = 2, meters: int = 3) -> ProcessImage:
    image = ProcessImage()
    for b in range(1, buses + 1):
        for m in range(1, meters + 1):
            base = f"buses/bus{b}/meters/{m:012d}"
            image.define(f"{base}/voltage_a", "V", "phase A voltage")
            image.define(f"{base}/current_a", "A")
            image.define(f"{base}/power_factor", "PF")
            image.define(f"{base}/energy_forward_active", "kWh")
            image.define(f"{base}/balance", "yuan")
    image.define("loads/feeder1_l1/relay_open", "", initial=False)
    image.define("loads/feeder1_l2/relay_open", "", initial=False)
    return image


def make_config(**overrides: Any) -> OpcUaConfig:
    base: dict[str, Any] = {
        "endpoint": f"opc.tcp://127.0.0.1:{free_port()}/gridctl",
        "security_policies": ["None", "Basic256Sha256", "Aes256_Sha256_RsaPss"],
        "anonymous": "read-only",
        "users": USERS,
    }
    base.update(overrides)
    return OpcUaConfig(**base)


ServerFactory = Callable[..., Any]


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    started: list[OpcUaServer] = []

    async def start(image: ProcessImage | None = None, **kwargs: Any) -> OpcUaServer:
        config = kwargs.pop("config", None) or make_config(**kwargs.pop("config_overrides", {}))
        settings = ServerSettings(state_dir=tmp_path, **kwargs)
        srv = OpcUaServer(config, image if image is not None else demo_image(), settings)
        await srv.start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        await srv.stop()


def client_for(srv: OpcUaServer, user: str | None = None) -> Client:
    client = Client(srv.endpoint, timeout=10)
    if user is not None:
        client.set_user(user)
        client.set_password(PASSWORDS[user])
    return client


async def ns_of(client: Client) -> int:
    return await client.get_namespace_index("urn:gridctl")


def nid(ns: int, path: str) -> ua.NodeId:
    return ua.NodeId(path, ns)
