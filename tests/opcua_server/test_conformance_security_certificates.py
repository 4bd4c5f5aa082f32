"""Client application certificates: the trust list, validity, application URI, `gridctl certs`.

Each test attacks one way in: a real asyncua server on loopback, a real
asyncua client with a certificate made here, the real CLI as a subprocess.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncua
import pytest
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.config import ConfigError, validate_config
from opcua_server.asyncua_gate import AsyncuaVersionError
from opcua_server.config import OpcUaConfig
from opcua_server.pki import CertificateStore, ClientCertificateValidator
from opcua_server.security import install_client_certificate_checks
from opcua_server.server import OpcUaServer, ServerSettings

from .conftest import PASSWORDS, USERS, demo_image, free_port, make_config, nid, ns_of

SC = ua.StatusCodes
ROOT = Path(__file__).resolve().parents[2]
CLIENT_URI = "urn:gridctl:test-client"
VOLT = "buses/bus1/meters/000000000001/voltage_a"
UTC = datetime.UTC
DAY = datetime.timedelta(days=1)
SECURE = {"security_policies": ["Basic256Sha256"], "anonymous": "off"}


@dataclass(frozen=True)
class ClientCert:
    der: Path
    key: Path
    thumbprint: str  # SHA-1 of the DER, lower-case hex


# RSA key generation is the slow part; one key serves every certificate here.
_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_cert(
    directory: Path,
    name: str,
    *,
    uri: str = CLIENT_URI,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> ClientCert:
    """A self-signed OPC UA client application certificate."""
    now = datetime.datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - DAY)
        .not_valid_after(not_after or now + 365 * DAY)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(_KEY, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    directory.mkdir(parents=True, exist_ok=True)
    der_path, key_path = directory / f"{name}.der", directory / f"{name}.key.pem"
    der_path.write_bytes(der)
    key_path.write_bytes(
        _KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ClientCert(der_path, key_path, hashlib.sha1(der).hexdigest())


def trust(state_dir: Path, cert: ClientCert) -> None:
    trusted = state_dir / "pki" / "trusted"
    trusted.mkdir(parents=True, exist_ok=True)
    (trusted / cert.der.name).write_bytes(cert.der.read_bytes())


async def secure_client(srv: OpcUaServer, cert: ClientCert, app_uri: str = CLIENT_URI) -> Client:
    client = Client(srv.endpoint, timeout=10)
    client.application_uri = app_uri
    client.set_user("otto")
    client.set_password(PASSWORDS["otto"])
    await client.set_security(
        SecurityPolicyBasic256Sha256,
        str(cert.der),
        str(cert.key),
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )
    return client


def sessions(srv: OpcUaServer) -> int:
    assert srv.server is not None
    return len(srv.server.iserver._external_sessions)


async def assert_refused(client: Client, code: int) -> None:
    with pytest.raises(ua.UaStatusCodeError) as err:
        await client.connect()
    assert err.value.code == code, ua.StatusCode(err.value.code).name
    client.disconnect_socket()


async def assert_reads(client: Client, srv: OpcUaServer, value: float) -> None:
    async with client:
        ns = await ns_of(client)
        assert await client.get_node(nid(ns, VOLT)).read_value() == value


# -- the default is the trust list --------------------------------------------------------


def test_trust_list_is_the_default():
    assert OpcUaConfig().client_certificates == "trust-list"
    assert validate_config({}).opcua.client_certificates == "trust-list"


async def test_untrusted_self_signed_certificate_is_refused_and_kept(start_server, tmp_path):
    srv = await start_server(config_overrides=SECURE)  # default: trust-list
    cert = make_cert(tmp_path / "client", "stranger")
    # Part 6: an untrusted certificate gets SecurityChecksFailed, revealing nothing
    await assert_refused(await secure_client(srv, cert), SC.BadSecurityChecksFailed)
    assert sessions(srv) == 0
    kept = tmp_path / "pki" / "rejected" / f"{cert.thumbprint}.der"
    assert kept.read_bytes() == cert.der.read_bytes()
    assert list((tmp_path / "pki" / "trusted").iterdir()) == []


async def test_trusted_certificate_connects(start_server, tmp_path):
    image = demo_image()
    cert = make_cert(tmp_path / "client", "friend")
    trust(tmp_path, cert)
    srv = await start_server(image, config_overrides=SECURE)
    image.write(VOLT, 231.5)
    await assert_reads(await secure_client(srv, cert), srv, 231.5)
    assert not (tmp_path / "pki" / "rejected" / f"{cert.thumbprint}.der").exists()


async def test_trust_all_accepts_an_unknown_certificate(start_server, tmp_path):
    # the demo's loopback setting: no trust list, nothing kept
    image = demo_image()
    srv = await start_server(image, config_overrides={**SECURE, "client_certificates": "trust-all"})
    image.write(VOLT, 230.75)
    cert = make_cert(tmp_path / "client", "anyone")
    await assert_reads(await secure_client(srv, cert), srv, 230.75)
    assert not (tmp_path / "pki" / "rejected").exists()


# -- validity period and application URI, on a trusted certificate ---------------------------


async def test_expired_certificate_is_refused_even_when_trusted(start_server, tmp_path):
    # valid 2020-01-01 .. 2021-01-01: expired years before any run of this test
    cert = make_cert(
        tmp_path / "client",
        "expired",
        not_before=datetime.datetime(2020, 1, 1, tzinfo=UTC),
        not_after=datetime.datetime(2021, 1, 1, tzinfo=UTC),
    )
    trust(tmp_path, cert)
    srv = await start_server(config_overrides=SECURE)
    await assert_refused(await secure_client(srv, cert), SC.BadCertificateTimeInvalid)
    assert sessions(srv) == 0
    assert not (tmp_path / "pki" / "rejected").joinpath(f"{cert.thumbprint}.der").exists()


async def test_not_yet_valid_certificate_is_refused(start_server, tmp_path):
    now = datetime.datetime.now(UTC)
    cert = make_cert(tmp_path / "client", "future", not_before=now + 30 * DAY)
    trust(tmp_path, cert)
    srv = await start_server(config_overrides=SECURE)
    await assert_refused(await secure_client(srv, cert), SC.BadCertificateTimeInvalid)
    assert sessions(srv) == 0


async def test_certificate_for_another_application_uri_is_refused(start_server, tmp_path):
    cert = make_cert(tmp_path / "client", "other-app", uri="urn:someone:else")
    trust(tmp_path, cert)
    srv = await start_server(config_overrides=SECURE)
    # the client declares CLIENT_URI, its certificate says urn:someone:else
    await assert_refused(await secure_client(srv, cert), SC.BadCertificateUriInvalid)
    assert sessions(srv) == 0


async def test_untrusted_expired_certificate_does_not_learn_it_is_expired(start_server, tmp_path):
    # valid 2020-01-01 .. 2021-01-01, and not in the trust list
    cert = make_cert(
        tmp_path / "client",
        "old-stranger",
        not_before=datetime.datetime(2020, 1, 1, tzinfo=UTC),
        not_after=datetime.datetime(2021, 1, 1, tzinfo=UTC),
    )
    srv = await start_server(config_overrides=SECURE)
    await assert_refused(await secure_client(srv, cert), SC.BadSecurityChecksFailed)
    assert (tmp_path / "pki" / "rejected" / f"{cert.thumbprint}.der").exists()


async def test_untrusted_certificate_refused_by_validator_with_untrusted(tmp_path):
    cert = make_cert(tmp_path / "client", "stranger")
    validator = ClientCertificateValidator(CertificateStore(tmp_path / "pki"))
    with pytest.raises(asyncua.common.utils.ServiceError) as err:
        validator.check(cert.der.read_bytes(), CLIENT_URI)
    assert err.value.code == SC.BadCertificateUntrusted
    with pytest.raises(asyncua.common.utils.ServiceError) as err:
        validator.check(b"\x30\x03\x02\x01\x00", CLIENT_URI)  # a DER SEQUENCE, no certificate
    assert err.value.code == SC.BadCertificateInvalid


def test_rejected_list_is_bounded_against_a_flood_of_new_certificates(tmp_path):
    store = CertificateStore(tmp_path / "pki", max_rejected=3)
    validator = ClientCertificateValidator(store)
    certs = [make_cert(tmp_path / "client", f"flood-{i}") for i in range(5)]
    for cert in certs:
        # age those already kept by 1 s, so the new one is the newest without waiting
        for old in (tmp_path / "pki" / "rejected").iterdir():
            os.utime(old, ns=(old.stat().st_atime_ns, old.stat().st_mtime_ns - 10**9))
        with pytest.raises(asyncua.common.utils.ServiceError):
            validator.check(cert.der.read_bytes(), CLIENT_URI)
    kept = sorted(p.name for p in (tmp_path / "pki" / "rejected").iterdir())
    # 5 refused, 3 kept: the newest three (flood-2, flood-3, flood-4)
    assert kept == sorted(f"{c.thumbprint}.der" for c in certs[2:])


# -- CreateSession must carry the channel's certificate ---------------------------------------


@pytest.mark.parametrize("claimed", ["theirs", "none"])
async def test_create_session_with_a_certificate_other_than_the_channels(
    start_server, tmp_path, claimed
):
    mine = make_cert(tmp_path / "client", "mine", uri="urn:mine")
    theirs = make_cert(tmp_path / "client", "theirs", uri="urn:theirs")
    trust(tmp_path, mine)
    trust(tmp_path, theirs)  # certificates are public: anyone can copy this one
    srv = await start_server(config_overrides=SECURE)
    client = await secure_client(srv, mine, app_uri="urn:theirs")
    send_create_session = client.uaclient.create_session

    async def claiming(params: ua.CreateSessionParameters) -> ua.CreateSessionResult:
        # the channel is "mine"; CreateSession shows "theirs", or no certificate
        params.ClientCertificate = theirs.der.read_bytes() if claimed == "theirs" else None
        return await send_create_session(params)

    client.uaclient.create_session = claiming  # type: ignore[method-assign]
    await client.connect_socket()
    try:
        await client.send_hello()
        await client.open_secure_channel()
        with pytest.raises(ua.UaStatusCodeError) as err:
            await client.create_session()
        assert err.value.code == SC.BadSecurityChecksFailed
        assert sessions(srv) == 0
    finally:
        client.disconnect_socket()


async def test_create_session_with_a_malformed_certificate(start_server):
    srv = await start_server(config_overrides={"security_policies": ["None"]})
    client = Client(srv.endpoint, timeout=10)
    send_create_session = client.uaclient.create_session

    async def malformed(params: ua.CreateSessionParameters) -> ua.CreateSessionResult:
        params.ClientCertificate = b"\x30\x82\x01"  # a DER header and nothing after it
        return await send_create_session(params)

    client.uaclient.create_session = malformed  # type: ignore[method-assign]
    await client.connect_socket()
    try:
        await client.send_hello()
        await client.open_secure_channel()
        with pytest.raises(ua.UaStatusCodeError) as err:
            await client.create_session()
        assert err.value.code == SC.BadCertificateInvalid
        assert sessions(srv) == 0
    finally:
        client.disconnect_socket()


async def test_activate_after_refused_create_session_finds_no_session(start_server, tmp_path):
    cert = make_cert(tmp_path / "client", "other-app", uri="urn:someone:else")
    trust(tmp_path, cert)
    srv = await start_server(config_overrides=SECURE)
    client = await secure_client(srv, cert)
    await client.connect_socket()
    try:
        await client.send_hello()
        await client.open_secure_channel()
        with pytest.raises(ua.UaStatusCodeError) as err:
            await client.create_session()
        assert err.value.code == SC.BadCertificateUriInvalid
        # ignore the refusal and activate anyway, on the same channel
        with pytest.raises(ua.UaStatusCodeError) as err:
            await client.activate_session(username="otto", password=PASSWORDS["otto"])
        assert err.value.code == SC.BadSessionIdInvalid
        assert sessions(srv) == 0
    finally:
        client.disconnect_socket()


# -- gridctl certs, and the running server rereading the lists ---------------------------------


def site_config(tmp_path: Path, endpoint: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(
        f'[service]\nstate_dir = "{tmp_path / "svc"}"\n\n[opcua]\nendpoint = "{endpoint}"\n'
    )
    return path


def gridctl(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "controller", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in this process (no interpreter start-up): same parser, same exit codes."""
    from controller.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


async def test_refused_client_connects_after_certs_trust(tmp_path):
    image = demo_image()
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/gridctl"
    cfg_path = site_config(tmp_path, endpoint)
    config = make_config(endpoint=endpoint, **SECURE)
    srv = OpcUaServer(config, image, ServerSettings(state_dir=tmp_path / "svc" / "opcua"))
    await srv.start()
    try:
        image.write(VOLT, 228.25)
        cert = make_cert(tmp_path / "client", "newcomer")
        await assert_refused(await secure_client(srv, cert), SC.BadSecurityChecksFailed)

        listed = gridctl("certs", "list", "--config", str(cfg_path))
        assert listed.returncode == 0, listed.stderr
        rejected_part = listed.stdout.split("rejected (1)")[1]
        assert cert.thumbprint in rejected_part and "CN=newcomer" in rejected_part
        assert f"uri={CLIENT_URI}" in rejected_part

        done = gridctl("certs", "--config", str(cfg_path), "trust", cert.thumbprint)
        assert done.returncode == 0, done.stderr
        # no restart: the server rereads pki/trusted at the next channel open
        await assert_reads(await secure_client(srv, cert), srv, 228.25)

        back = gridctl("certs", "reject", cert.thumbprint, "--config", str(cfg_path))
        assert back.returncode == 0, back.stderr
        await assert_refused(await secure_client(srv, cert), SC.BadSecurityChecksFailed)
    finally:
        await srv.stop()


def test_certs_cli_show_and_unknown_thumbprints(tmp_path, capsys):
    cfg_path = site_config(tmp_path, "opc.tcp://127.0.0.1:4840/gridctl")
    pki = tmp_path / "svc" / "opcua" / "pki"
    # valid 2030-01-02 03:04:05 .. 2031-06-07 08:09:10 UTC
    cert = make_cert(
        tmp_path / "client",
        "hmi-7",
        uri="urn:site:hmi-7",
        not_before=datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        not_after=datetime.datetime(2031, 6, 7, 8, 9, 10, tzinfo=UTC),
    )
    (pki / "rejected").mkdir(parents=True)
    (pki / "rejected" / f"{cert.thumbprint}.der").write_bytes(cert.der.read_bytes())

    shown = run_cli(capsys, "certs", "show", cert.thumbprint.upper(), "--config", str(cfg_path))
    assert shown.returncode == 0, shown.stderr
    assert f"thumbprint:      {cert.thumbprint}" in shown.stdout
    assert "state:           rejected" in shown.stdout
    assert "subject:         CN=hmi-7" in shown.stdout
    assert "application uri: urn:site:hmi-7" in shown.stdout
    assert "not before:      2030-01-02 03:04:05Z" in shown.stdout
    assert "not after:       2031-06-07 08:09:10Z" in shown.stdout

    listed = run_cli(capsys, "certs", "list", "--config", str(cfg_path))
    assert "valid 2030-01-02 03:04:05Z .. 2031-06-07 08:09:10Z" in listed.stdout

    unknown = "0" * 40
    for action in ("show", "trust", "reject"):
        proc = run_cli(capsys, "certs", action, unknown, "--config", str(cfg_path))
        assert proc.returncode == 2, (action, proc.stdout)
        assert unknown in proc.stderr and "Traceback" not in proc.stderr
    # reject what is not trusted: says where it is, moves nothing
    proc = run_cli(capsys, "certs", "reject", cert.thumbprint, "--config", str(cfg_path))
    assert proc.returncode == 2 and "is not trusted" in proc.stderr
    assert (pki / "rejected" / f"{cert.thumbprint}.der").exists()
    bad = run_cli(capsys, "certs", "trust", "../../etc/passwd", "--config", str(cfg_path))
    assert bad.returncode == 2 and "40 hex digits" in bad.stderr
    assert not (pki / "trusted").exists() or list((pki / "trusted").iterdir()) == []


# -- the asyncua gate ------------------------------------------------------------------------


async def test_trust_list_refuses_to_start_on_another_asyncua_minor(monkeypatch, tmp_path):
    monkeypatch.setattr(asyncua, "__version__", "2.2.0")
    srv = OpcUaServer(make_config(**SECURE), demo_image(), ServerSettings(state_dir=tmp_path))
    # The server's first security patch refuses already; this one on its own too.
    with pytest.raises(AsyncuaVersionError, match=r"asyncua 2\.2\.0 is installed"):
        await srv.start()
    await srv.stop()
    with pytest.raises(AsyncuaVersionError, match="client certificate checks"):
        install_client_certificate_checks()


# -- config: what may listen on a network ----------------------------------------------------

NETWORK = "opc.tcp://0.0.0.0:4840/gridctl"


@pytest.mark.parametrize(
    ("opcua", "field", "allowed"),
    [
        ({"security_policies": ["None", "Basic256Sha256"]}, "security_policies", "loopback"),
        ({"anonymous": "read-only"}, "anonymous", "loopback"),
        ({"allow_plaintext_password_on_loopback": True}, "allow_plaintext_password", "loopback"),
    ],
)
def test_network_endpoint_refuses_loopback_only_settings(opcua, field, allowed):
    with pytest.raises(ConfigError) as err:
        validate_config({"opcua": {"endpoint": NETWORK, **opcua}}, "site.toml")
    assert f"site.toml: opcua.{field}" in str(err.value)
    assert allowed in str(err.value) and "0.0.0.0" in str(err.value)
    # the same settings on loopback load
    validate_config({"opcua": {"endpoint": "opc.tcp://127.0.0.1:4840/x", **opcua}})
    validate_config({"opcua": {"endpoint": "opc.tcp://[::1]:4840/x", **opcua}})


def test_hostname_endpoint_is_not_loopback():
    with pytest.raises(ConfigError, match=r"opcua\.anonymous"):
        validate_config(
            {"opcua": {"endpoint": "opc.tcp://scada-gw:4840/x", "anonymous": "read-only"}}
        )


def test_plaintext_password_option_defaults_off():
    assert OpcUaConfig().allow_plaintext_password_on_loopback is False


def test_check_config_refuses_secure_endpoint_without_users(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text(f'[opcua]\nendpoint = "{NETWORK}"\nsecurity_policies = ["Basic256Sha256"]\n')
    proc = gridctl("check-config", str(path))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"{path}: opcua.users: a secure endpoint"), proc.stderr
    # with a user it passes
    user = USERS[0]
    path.write_text(
        f'[opcua]\nendpoint = "{NETWORK}"\nsecurity_policies = ["Basic256Sha256"]\n'
        f'users = [{{ name = "{user.name}", password_hash = "{user.password_hash}" }}]\n'
    )
    proc = gridctl("check-config", str(path))
    assert proc.returncode == 0, proc.stderr


def test_check_config_refuses_none_policy_on_network(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text(f'[opcua]\nendpoint = "{NETWORK}"\nsecurity_policies = ["None"]\n')
    proc = gridctl("check-config", str(path))
    assert proc.returncode == 2
    assert f"{path}: opcua.security_policies:" in proc.stderr


def test_demo_keeps_loopback_conveniences():
    proc = gridctl("check-config", str(ROOT / "config" / "demo.toml"))
    assert proc.returncode == 0, proc.stderr
    from controller.config import load_config

    opcua = load_config(ROOT / "config" / "demo.toml").opcua
    assert opcua.client_certificates == "trust-all"
    assert opcua.allow_plaintext_password_on_loopback is True
    site = load_config(ROOT / "config" / "site-example.toml").opcua
    assert site.client_certificates == "trust-list"
    assert "None" not in site.security_policies and site.anonymous == "off"
