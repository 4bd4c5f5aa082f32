"""Server application certificate and the security policy list.

The certificate is generated on first start under ``<state_dir>/pki/own/`` and
reused afterwards, so clients that trusted it keep trusting it. A certificate
whose application URI or validity no longer fits is regenerated.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
from pathlib import Path

from asyncua import ua
from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from .config import OpcUaConfig

_log = logging.getLogger(__name__)

P = ua.SecurityPolicyType
_POLICIES: dict[tuple[str, str], ua.SecurityPolicyType] = {
    ("Basic256Sha256", "Sign"): P.Basic256Sha256_Sign,
    ("Basic256Sha256", "SignAndEncrypt"): P.Basic256Sha256_SignAndEncrypt,
    ("Aes256_Sha256_RsaPss", "Sign"): P.Aes256Sha256RsaPss_Sign,
    ("Aes256_Sha256_RsaPss", "SignAndEncrypt"): P.Aes256Sha256RsaPss_SignAndEncrypt,
}


def security_policies(config: OpcUaConfig) -> list[ua.SecurityPolicyType]:
    """Endpoints to offer, strongest first; None only when the config lists it."""
    out: list[ua.SecurityPolicyType] = []
    for mode in ("SignAndEncrypt", "Sign"):
        if mode not in config.security_modes:
            continue
        for policy in ("Aes256_Sha256_RsaPss", "Basic256Sha256"):
            if policy in config.security_policies:
                out.append(_POLICIES[(policy, mode)])
    if "None" in config.security_policies:
        out.append(P.NoSecurity)
    return out


def _uri_of(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def ensure_certificate(config: OpcUaConfig, state_dir: Path) -> tuple[Path, Path]:
    """Return (certificate DER path, private key PEM path), generating them if needed."""
    own = state_dir / "pki" / "own"
    cert_path = own / "cert.der"
    key_path = own / "key.pem"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_der_x509_certificate(cert_path.read_bytes())
        expires = cert.not_valid_after_utc
        fresh = expires - datetime.datetime.now(datetime.UTC) > datetime.timedelta(days=30)
        if _uri_of(cert) == config.application_uri and fresh:
            return cert_path, key_path
        _log.warning("server certificate %s is stale or for another URI: regenerating", cert_path)
    own.mkdir(parents=True, exist_ok=True)
    (state_dir / "pki" / "trusted").mkdir(parents=True, exist_ok=True)
    key = cert_gen.generate_private_key()
    hostname = socket.gethostname()
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(config.application_uri),
        x509.DNSName(hostname),
        x509.DNSName("localhost"),
    ]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(config.host)))
    except ValueError:
        names.append(x509.DNSName(config.host))
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        f"{config.server_name}@{hostname}",
        {"organizationName": "gridctl"},
        names,
        extended=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        days=config.certificate_days,
    )
    _write_private(key_path, _pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    _log.info("generated OPC UA server certificate %s", cert_path)
    return cert_path, key_path


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    # Create with 0600 from the start: the key must never be world-readable.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
