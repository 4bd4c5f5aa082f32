"""Server application certificate, the security policy list, client certificate checks.

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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen
from asyncua.crypto.security_policies import SecurityPolicyNone
from asyncua.crypto.uacrypto import der_from_x509, x509_from_der
from asyncua.server.uaprocessor import UaProcessor
from asyncua.ua.ua_binary import struct_from_binary, uatcp_to_binary
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from .asyncua_gate import require_pinned
from .config import OpcUaConfig
from .pki import ClientCertificateValidator, application_uri
from .users import login_peer, peer_host

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


def ensure_certificate(config: OpcUaConfig, state_dir: Path) -> tuple[Path, Path]:
    """Return (certificate DER path, private key PEM path), generating them if needed."""
    own = state_dir / "pki" / "own"
    cert_path = own / "cert.der"
    key_path = own / "key.pem"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_der_x509_certificate(cert_path.read_bytes())
        expires = cert.not_valid_after_utc
        fresh = expires - datetime.datetime.now(datetime.UTC) > datetime.timedelta(days=30)
        if application_uri(cert) == config.application_uri and fresh:
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


# -- client certificates on the secure channel and the session -----------------------
#
# asyncua opens a secure channel for any client certificate, and its
# CreateSession hook (``Server.set_certificate_validator``) only sees the
# certificate the client puts into CreateSession, which may be missing or
# another application's (certificates are public). So with a
# ClientCertificateValidator installed, two asyncua 2.1 internals are wrapped:
# OpenSecureChannel refuses a certificate the validator refuses (the reason in
# the log; the client learns only what _TOLD_AT_OPEN allows), and
# CreateSession on a secure channel must carry the channel's own certificate,
# checked against the declared application URI before any session exists.

_NONE_URI = SecurityPolicyNone.URI
_CREATE_SESSION = ua.NodeId(ua.ObjectIds.CreateSessionRequest_Encoding_DefaultBinary)  # type: ignore[arg-type]
_MARK = "_gridctl_client_certificates"
# What a refused OpenSecureChannel may tell the client (Part 4, OpenSecureChannel
# result codes): a validity period it can act on. Anything else, above all
# "untrusted", is Bad_SecurityChecksFailed, so the answer does not reveal what
# the trust list holds (Part 6: check trust first, answer SecurityChecksFailed).
_TOLD_AT_OPEN = frozenset({ua.StatusCodes.BadCertificateTimeInvalid})


def _validator_of(proc: UaProcessor) -> ClientCertificateValidator | None:
    validator = proc.iserver.certificate_validator
    return validator if isinstance(validator, ClientCertificateValidator) else None


def _leaf_der(data: bytes | None) -> bytes:
    # A sender certificate may be a chain (leaf first); only the leaf identifies the client.
    if not data:
        return b""
    return der_from_x509(x509_from_der(data))


def _wrap_open(asyncua_open: Callable[..., None]) -> Callable[..., None]:
    def open_secure_channel(self: UaProcessor, algohdr: Any, seqhdr: Any, body: Any) -> None:
        validator = _validator_of(self)
        fresh = not self._connection.is_open()
        if validator is not None and fresh and algohdr.SecurityPolicyURI != _NONE_URI:
            login_peer.set(peer_host(self.name))
            try:
                validator.check(_leaf_der(algohdr.SenderCertificate), None)
            except (ServiceError, ValueError) as exc:
                code = getattr(exc, "code", None)
                if code not in _TOLD_AT_OPEN:
                    code = ua.StatusCodes.BadSecurityChecksFailed
                err = ua.ErrorMessage(
                    ua.StatusCode(code),  # type: ignore[arg-type]
                    "client certificate refused",  # type: ignore[arg-type]
                )
                # asyncua's MessageType constants are bytes, annotated as the class
                message_type: Any = ua.MessageType.Error
                self._transport.write(uatcp_to_binary(message_type, err))
                self._transport.close()
                return
        asyncua_open(self, algohdr, seqhdr, body)

    setattr(open_secure_channel, _MARK, True)
    return open_secure_channel


def _wrap_process(asyncua_process: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def _process_message(
        self: UaProcessor, typeid: ua.NodeId, requesthdr: Any, seqhdr: Any, body: Any
    ) -> Any:
        validator = _validator_of(self)
        if typeid != _CREATE_SESSION or validator is None:
            return await asyncua_process(self, typeid, requesthdr, seqhdr, body)
        params = struct_from_binary(ua.CreateSessionParameters, body.copy())
        login_peer.set(peer_host(self.name))
        channel_cert = self._connection.security_policy.peer_certificate
        try:
            client_cert = _leaf_der(params.ClientCertificate)
        except ValueError:
            raise ServiceError(ua.StatusCodes.BadCertificateInvalid) from None
        if channel_cert and client_cert != channel_cert:
            _log.warning("CreateSession refused: its client certificate is not the channel's")
            raise ServiceError(ua.StatusCodes.BadSecurityChecksFailed)
        if client_cert:
            # Checked here, before asyncua makes the session object (see below).
            validator.check(client_cert, params.ClientDescription.ApplicationUri or "")
        previous = self.session
        try:
            return await asyncua_process(self, typeid, requesthdr, seqhdr, body)
        except BaseException:
            # asyncua registers the new session before its own checks and keeps
            # it on the connection when they fail, so a later ActivateSession on
            # this channel would reach a refused session. Drop it.
            if self.session is not None and self.session is not previous:
                await self.session.close_session()
                self.session = previous
            raise

    setattr(_process_message, _MARK, True)
    return _process_message


def install_client_certificate_checks() -> None:
    """Make asyncua's channel open and CreateSession honour a ClientCertificateValidator.

    Idempotent; wraps whatever is installed, so other wrappers of the same methods
    keep working. Only servers whose certificate validator is a
    ClientCertificateValidator are affected.
    """
    require_pinned("client certificate checks (OpenSecureChannel, CreateSession)")
    if not getattr(UaProcessor.open_secure_channel, _MARK, False):
        UaProcessor.open_secure_channel = _wrap_open(UaProcessor.open_secure_channel)  # type: ignore[method-assign]
    if not getattr(UaProcessor._process_message, _MARK, False):
        UaProcessor._process_message = _wrap_process(UaProcessor._process_message)  # type: ignore[method-assign,assignment]
