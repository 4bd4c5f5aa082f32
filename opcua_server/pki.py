"""The server's PKI directories and the validation of client application certificates.

Layout under ``<state_dir>/pki/``: ``own/`` (the server's certificate and key,
see :mod:`opcua_server.security`), ``trusted/`` (client certificates allowed
to connect) and ``rejected/`` (certificates that were refused, kept as
``<thumbprint>.der`` so an administrator can promote one with
``gridctl certs trust THUMBPRINT``).

Trust is by exact certificate (its thumbprint), the way OPC UA applications
trust self-signed application instance certificates; certificate authorities
and revocation lists are not supported. The checks follow the order of OPC UA
Part 4 (certificate validation): trust list, validity period, application URI.
The trusted directory is reread when its modification time changes, so
``gridctl certs trust`` takes effect on the running server at the next
connection attempt.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.ua import status_codes
from cryptography import x509
from cryptography.hazmat.primitives import serialization

_log = logging.getLogger(__name__)

SC = ua.StatusCodes

# A directory modified this recently may change again within the same
# timestamp tick of a coarse filesystem clock; such a listing is reread at the
# next check rather than trusted to be complete.
_RACY_NS = 100_000_000  # 100 ms


class UnknownCertificate(LookupError):
    """No certificate with this thumbprint in the trusted or rejected list."""


def thumbprint(der: bytes) -> str:
    """SHA-1 of the DER encoding, lower-case hex: the thumbprint OPC UA uses."""
    return hashlib.sha1(der, usedforsecurity=False).hexdigest()


def application_uri(cert: x509.Certificate) -> str | None:
    """The first URI of the SubjectAltName extension (the application URI), if any."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


@dataclass(frozen=True)
class CertificateInfo:
    """What an administrator needs to decide about one certificate."""

    thumbprint: str
    subject: str
    issuer: str
    application_uri: str | None
    not_before: datetime.datetime  # UTC
    not_after: datetime.datetime  # UTC
    serial_number: int
    path: Path

    @classmethod
    def load(cls, path: Path) -> CertificateInfo:
        der = read_der(path)
        cert = x509.load_der_x509_certificate(der)
        return cls(
            thumbprint=thumbprint(der),
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            application_uri=application_uri(cert),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            serial_number=cert.serial_number,
            path=path,
        )


def read_der(path: Path) -> bytes:
    """A certificate file's DER bytes; PEM files (``.pem``, ``.crt``) are converted."""
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        cert = x509.load_pem_x509_certificate(data)
        return cert.public_bytes(serialization.Encoding.DER)
    return data


_CERT_SUFFIXES = (".der", ".pem", ".crt", ".cer")
# Refused certificates kept for `gridctl certs trust`; older ones are dropped.
MAX_REJECTED = 200


class CertificateStore:
    """The ``trusted/`` and ``rejected/`` directories: list, trust, reject, record."""

    def __init__(self, pki_dir: Path, *, max_rejected: int = MAX_REJECTED) -> None:
        self.root = Path(pki_dir)
        self.max_rejected = max_rejected
        self.trusted_dir = self.root / "trusted"
        self.rejected_dir = self.root / "rejected"

    def ensure_dirs(self) -> None:
        self.trusted_dir.mkdir(parents=True, exist_ok=True)
        self.rejected_dir.mkdir(parents=True, exist_ok=True)

    def trusted(self) -> list[CertificateInfo]:
        return _infos(self.trusted_dir)

    def rejected(self) -> list[CertificateInfo]:
        return _infos(self.rejected_dir)

    def find(self, thumb: str) -> CertificateInfo:
        """The certificate with this thumbprint (trusted first); raises UnknownCertificate."""
        want = _normalise(thumb)
        for info in (*self.trusted(), *self.rejected()):
            if info.thumbprint == want:
                return info
        raise UnknownCertificate(
            f"no certificate with thumbprint {want} in {self.trusted_dir} or {self.rejected_dir}"
        )

    def trust(self, thumb: str) -> CertificateInfo:
        """Move a rejected certificate to the trusted list."""
        return self._move(thumb, self.rejected_dir, self.trusted_dir, "rejected")

    def reject(self, thumb: str) -> CertificateInfo:
        """Move a trusted certificate to the rejected list."""
        return self._move(thumb, self.trusted_dir, self.rejected_dir, "trusted")

    def record_rejected(self, der: bytes) -> Path:
        """Keep a refused certificate as ``rejected/<thumbprint>.der`` (idempotent)."""
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        path = self.rejected_dir / f"{thumbprint(der)}.der"
        if not path.exists():
            # Write then rename: a concurrent `gridctl certs list` never sees half a file.
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(der)
            os.replace(tmp, path)
            self._prune_rejected(keep=path)
        return path

    def _prune_rejected(self, keep: Path) -> None:
        # Anyone who can reach the port can make a new certificate per attempt:
        # keep the newest max_rejected, so the directory cannot fill the disk.
        files = [p for p in self.rejected_dir.iterdir() if p.suffix.lower() in _CERT_SUFFIXES]
        if len(files) <= self.max_rejected:
            return
        files.sort(key=lambda p: (p == keep, _mtime_ns(p)), reverse=True)  # newest first
        for old in files[self.max_rejected :]:
            old.unlink(missing_ok=True)
        _log.warning(
            "%s holds more than %d certificates: dropped the %d oldest",
            self.rejected_dir,
            self.max_rejected,
            len(files) - self.max_rejected,
        )

    def _move(self, thumb: str, src: Path, dst: Path, src_name: str) -> CertificateInfo:
        want = _normalise(thumb)
        matches = [i for i in _infos(src) if i.thumbprint == want]
        if not matches:
            other = [i for i in _infos(dst) if i.thumbprint == want]
            if other:
                raise UnknownCertificate(f"certificate {want} is not {src_name}: already in {dst}")
            raise UnknownCertificate(f"no {src_name} certificate with thumbprint {want} in {src}")
        dst.mkdir(parents=True, exist_ok=True)
        target = dst / f"{want}.der"
        der = read_der(matches[0].path)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(der)
        # The rename into dst is what the server's stat sees: one step, whole file.
        os.replace(tmp, target)
        for info in matches:
            info.path.unlink(missing_ok=True)
        return CertificateInfo.load(target)


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:  # moved by `gridctl certs trust` meanwhile
        return -1


def _normalise(thumb: str) -> str:
    text = thumb.strip().lower().replace(":", "")
    if len(text) != 40 or any(c not in "0123456789abcdef" for c in text):
        raise UnknownCertificate(
            f"thumbprint must be 40 hex digits (SHA-1 of the certificate), got {thumb!r}"
        )
    return text


def _infos(directory: Path) -> list[CertificateInfo]:
    out: list[CertificateInfo] = []
    try:
        paths = sorted(directory.iterdir())
    except FileNotFoundError:
        return out
    for path in paths:
        if path.suffix.lower() not in _CERT_SUFFIXES or not path.is_file():
            continue
        try:
            out.append(CertificateInfo.load(path))
        except (OSError, ValueError) as exc:
            _log.warning("skipping unreadable certificate %s: %s", path, exc)
    return out


class ClientCertificateValidator:
    """Decides whether a client application certificate may open a channel or a session.

    Raises :class:`ServiceError` with the Part 4 status code: BadCertificateUntrusted
    (not in the trust list), BadCertificateTimeInvalid (outside its validity
    period), BadCertificateUriInvalid (its SubjectAltName URI is not the
    application URI the client declared), BadCertificateInvalid (not a
    certificate). An untrusted certificate is recorded in ``rejected/``.
    """

    def __init__(
        self,
        store: CertificateStore,
        *,
        now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self.store = store
        self._now = now
        self._trusted: frozenset[str] = frozenset()
        self._seen_mtime_ns: int | None = None
        self.refused = 0
        # Told of every refusal (the server journals it as a failed login).
        self.on_refused: Callable[[], None] | None = None
        store.ensure_dirs()
        self._reload_if_changed()

    @property
    def trusted_thumbprints(self) -> frozenset[str]:
        self._reload_if_changed()
        return self._trusted

    def _reload_if_changed(self) -> None:
        try:
            mtime = self.store.trusted_dir.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = -1
        if mtime == self._seen_mtime_ns:
            return
        self._trusted = frozenset(i.thumbprint for i in self.store.trusted())
        racy = time.time_ns() - mtime < _RACY_NS
        # A listing taken in the same clock tick as the last change may miss a
        # second change with the same mtime: leave it marked unseen.
        self._seen_mtime_ns = None if racy else mtime
        _log.info("client certificate trust list: %d certificates", len(self._trusted))

    def check(self, der: bytes, declared_uri: str | None) -> None:
        """Validate a certificate; ``declared_uri`` None skips the URI check (channel open)."""
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            self._refuse(SC.BadCertificateInvalid, "not a DER X.509 certificate", None)
        thumb = thumbprint(der)
        if thumb not in self.trusted_thumbprints:
            self.store.record_rejected(der)
            self._refuse(
                SC.BadCertificateUntrusted,
                f"not in the trust list (kept as {self.store.rejected_dir / (thumb + '.der')}; "
                f"`gridctl certs trust {thumb}` trusts it)",
                cert,
            )
        now = self._now()
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            self._refuse(
                SC.BadCertificateTimeInvalid,
                f"valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S}Z to "
                f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z, now {now:%Y-%m-%d %H:%M:%S}Z",
                cert,
            )
        if declared_uri is not None:
            uri = application_uri(cert)
            if uri != declared_uri:
                self._refuse(
                    SC.BadCertificateUriInvalid,
                    f"certificate URI {uri!r} is not the application URI {declared_uri!r}",
                    cert,
                )

    def _refuse(self, code: int, why: str, cert: x509.Certificate | None) -> NoReturn:
        self.refused += 1
        if self.on_refused is not None:
            self.on_refused()
        who = cert.subject.rfc4514_string() if cert is not None else "?"
        name = status_codes.get_name_and_doc(code)[0]
        _log.warning("client certificate refused (%s): %s: %s", name, who, why)
        raise ServiceError(code)

    async def __call__(
        self, cert: x509.Certificate, description: ua.ApplicationDescription
    ) -> None:
        """asyncua's CreateSession hook (``Server.set_certificate_validator``)."""
        self.check(cert.public_bytes(serialization.Encoding.DER), description.ApplicationUri or "")
