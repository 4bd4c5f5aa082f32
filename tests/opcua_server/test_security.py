from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.crypto.security_policies import (
    SecurityPolicyAes256Sha256RsaPss,
    SecurityPolicyBasic256Sha256,
)

from opcua_server import Role, UserConfig
from opcua_server.users import UserStore, hash_password, verify_password

from .conftest import CLIENT_URI, PASSWORDS, client_for, demo_image, make_config, nid, ns_of

SC = ua.StatusCodes
VOLT = "buses/bus1/meters/000000000001/voltage_a"


@pytest.fixture
def trusted_client_cert(client_cert, tmp_path) -> tuple[Path, Path]:
    """The client certificate in the server's trust list (``start_server`` uses tmp_path)."""
    cert, key = client_cert
    trusted = tmp_path / "pki" / "trusted"
    trusted.mkdir(parents=True, exist_ok=True)
    (trusted / "test-client.der").write_bytes(cert.read_bytes())
    return cert, key


def test_password_hash_roundtrip():
    h = hash_password("s3cret", n=2**10)
    assert h.startswith("scrypt$1024$") and "s3cret" not in h
    assert verify_password("s3cret", h)
    assert not verify_password("s3cret!", h)
    assert not verify_password("s3cret", "scrypt$garbage")
    assert hash_password("s3cret", n=2**10) != h  # salted


def test_user_config_rejects_plain_password():
    with pytest.raises(ValueError, match="password_hash"):
        UserConfig(name="x", password_hash="plain", role=Role.ADMIN)


def test_backoff_after_repeated_failures():
    now = [0.0]
    store = UserStore(
        [UserConfig(name="u", password_hash=hash_password("pw", n=2**10))],
        anonymous=False,
        free_attempts=3,
        clock=lambda: now[0],
    )
    for _ in range(3):
        assert store.authenticate("u", "wrong", "10.0.0.9") is None
    # backed off, even with the right password
    assert store.authenticate("u", "pw", "10.0.0.9") is None
    now[0] += 1.0  # the first wait: login_backoff_s = 1 s
    user = store.authenticate("u", "pw", "10.0.0.9")
    assert user is not None and user.grid_role is Role.VIEWER


def test_hash_cli():
    out = subprocess.run(
        [sys.executable, "-m", "opcua_server.users", "hash"],
        input="from-stdin\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert verify_password("from-stdin", out)


async def test_anonymous_can_read_and_subscribe_but_not_write(start_server):
    image = demo_image()
    srv = await start_server(image)
    image.write(VOLT, 229.0)
    async with client_for(srv) as client:
        ns = await ns_of(client)
        node = client.get_node(nid(ns, VOLT))
        assert await node.read_value() == 229.0
        sub = await client.create_subscription(100, None)
        await sub.subscribe_data_change(node)
        with pytest.raises(ua.UaStatusCodeError) as err:
            await node.write_value(ua.DataValue(ua.Variant(1.0, ua.VariantType.Double)))
        assert err.value.code == SC.BadNotWritable  # a measured value: read-only for everyone
    assert image.get(VOLT).value == 229.0


async def test_operator_cannot_write_measured_values(start_server):
    srv = await start_server()
    async with client_for(srv, "ada") as client:
        ns = await ns_of(client)
        node = client.get_node(nid(ns, VOLT))
        with pytest.raises(ua.UaStatusCodeError) as err:
            await node.write_value(ua.DataValue(ua.Variant(1.0, ua.VariantType.Double)))
        assert err.value.code == SC.BadNotWritable
        # nor change the model
        with pytest.raises(ua.UaStatusCodeError):
            await client.nodes.objects.add_folder(ns, "Intruder")


async def test_wrong_password_refused(start_server):
    srv = await start_server()
    client = Client(srv.endpoint, timeout=10)
    client.set_user("otto")
    client.set_password("not-" + PASSWORDS["otto"])
    with pytest.raises(ua.UaStatusCodeError) as err:
        await client.connect()
    assert err.value.code == SC.BadUserAccessDenied
    client2 = Client(srv.endpoint, timeout=10)
    client2.set_user("nobody")
    client2.set_password("x")
    with pytest.raises(ua.UaStatusCodeError):
        await client2.connect()
    assert srv.stats()["logins_rejected"] == 2


async def test_anonymous_off(start_server):
    srv = await start_server(config_overrides={"anonymous": "off"})
    with pytest.raises(ua.UaStatusCodeError) as err:
        async with Client(srv.endpoint, timeout=10):
            pass
    assert err.value.code == SC.BadIdentityTokenRejected


@pytest.mark.parametrize(
    ("policy", "mode"),
    [
        (SecurityPolicyBasic256Sha256, ua.MessageSecurityMode.SignAndEncrypt),
        (SecurityPolicyAes256Sha256RsaPss, ua.MessageSecurityMode.Sign),
    ],
)
async def test_secure_session_with_client_certificate(
    start_server, trusted_client_cert, policy, mode
):
    image = demo_image()
    srv = await start_server(
        image,
        config_overrides={
            "security_policies": ["Basic256Sha256", "Aes256_Sha256_RsaPss"],
            "anonymous": "off",
        },
    )
    image.write(VOLT, 231.0)
    cert, key = trusted_client_cert
    client = client_for(srv, "otto")
    client.application_uri = CLIENT_URI
    await client.set_security(policy, str(cert), str(key), mode=mode)
    async with client:
        ns = await ns_of(client)
        assert await client.get_node(nid(ns, VOLT)).read_value() == 231.0


async def test_no_security_endpoint_unless_configured(start_server, client_cert):
    srv = await start_server(
        config_overrides={
            "security_policies": ["Basic256Sha256"],
            "security_modes": ["SignAndEncrypt"],
        }
    )
    with pytest.raises(ua.UaError, match="No matching endpoints"):
        async with Client(srv.endpoint, timeout=10):
            pass
    endpoints = await Client(srv.endpoint).connect_and_get_server_endpoints()
    assert {(e.SecurityPolicyUri.split("#")[1], e.SecurityMode) for e in endpoints} == {
        ("Basic256Sha256", ua.MessageSecurityMode.SignAndEncrypt)
    }


async def test_server_certificate_generated_once_and_reused(start_server, tmp_path):
    await start_server()
    cert_file = tmp_path / "pki" / "own" / "cert.der"
    key_file = tmp_path / "pki" / "own" / "key.pem"
    first = cert_file.read_bytes()
    assert key_file.stat().st_mode & 0o077 == 0
    await start_server(config=make_config())
    assert cert_file.read_bytes() == first
