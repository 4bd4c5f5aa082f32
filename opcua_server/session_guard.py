"""Sessions that cannot be guessed or taken over (Part 4 §5.6.2–5.6.3, §6.7).

asyncua 2.1, as pinned, numbers sessions: SessionId ``i=10, 11, …`` and
AuthenticationToken ``i=1000, 1001, …``. Its reconnect path (ActivateSession
arriving on a channel that has no session yet) looks the token up and
attaches the found session to the new channel *before* it checks the
client's signature, certificate or identity, and leaves it attached when
activation then fails. A client that guessed the operator's token (its own
minus one) thus held the operator's session after a refused activation.

This module closes both holes:

- tokens and session ids are 32 random bytes (ByteString NodeIds from
  ``secrets``), assigned the moment asyncua creates a session;
- a session moves to a new channel only after the client signature over the
  session's last server nonce verifies on that channel, the channel uses the
  same security policy, mode and client certificate as the one that created
  the session (the certificate validated again), and the identity token
  authenticates as the session's own user. Any failure leaves the new channel
  without a session and the session where it was, and is recorded (log, the
  guard's bounded ``refused`` list, the user store's failure journal). A
  session that moved is detached from its old channel, so that channel can
  neither use nor close it any more;
- a user name and password that would cross the wire readable (no token
  encryption, channel not SignAndEncrypt) is refused, unless the endpoint is
  loopback and ``[opcua] allow_plaintext_password_on_loopback`` says so.

The patches replace ``InternalSession.__init__`` and wrap
``UaProcessor._process_message``; both are asyncua 2.1 internals, so
:func:`install` refuses any other asyncua minor (``asyncua_gate``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.server.internal_session import InternalSession
from asyncua.server.uaprocessor import UaProcessor
from asyncua.ua.ua_binary import struct_from_binary

from controller.loopback import is_loopback
from opcua_server.ua_values import node_id

from .asyncua_gate import require_pinned
from .pki import ClientCertificateValidator
from .users import login_peer, peer_host

_log = logging.getLogger(__name__)

TOKEN_BYTES = 32
REFUSED_KEPT = 256

_ACTIVATE = node_id(ua.ObjectIds.ActivateSessionRequest_Encoding_DefaultBinary)
_CREATE = node_id(ua.ObjectIds.CreateSessionRequest_Encoding_DefaultBinary)
# Requests asyncua serves without a session on the channel.
_SESSIONLESS = frozenset(
    ua.NodeId(getattr(ua.ObjectIds, f"{name}Request_Encoding_DefaultBinary"))
    for name in (
        "CreateSession",
        "ActivateSession",
        "CloseSession",
        "FindServers",
        "GetEndpoints",
        "RegisterServer",
        "RegisterServer2",
        "CloseSecureChannel",
    )
)
_ENCRYPTED = ua.MessageSecurityMode.SignAndEncrypt
_NULL = node_id(ua.ObjectIds.Null)  # an empty identity token: anonymous (Part 4 §5.6.3)

# What a session remembers of the channel that created it (attribute names on
# asyncua's InternalSession; prefixed so they cannot clash with asyncua's own).
_CHANNEL = "_gridctl_channel"  # weakref to the UaProcessor the session is attached to
_ORIGIN = "_gridctl_origin"  # (policy URI, mode, client certificate DER) at CreateSession


def random_node_id() -> ua.NodeId:
    token: Any = secrets.token_bytes(TOKEN_BYTES)
    return ua.NodeId(token, ua.Int16(0), ua.NodeIdType.ByteString)


class FailureJournal(Protocol):
    """Where a refused login is recorded (the user store journals and counts it)."""

    def record_failure(self, user: str, peer: str, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class RefusedActivation:
    time: float  # unix seconds
    user: str
    peer: str
    reason: str  # reconnect_refused, plaintext_refused
    detail: str  # why, for the log and the audit trail


class SessionGuard:
    """Per-server policy and record of the guard (the patches themselves are global)."""

    def __init__(
        self,
        *,
        allow_plaintext_on_loopback: bool = False,
        endpoint_is_loopback: bool = False,
        failures: FailureJournal | None = None,
    ) -> None:
        self.allow_plaintext = allow_plaintext_on_loopback and endpoint_is_loopback
        self.failures = failures
        self.refused: deque[RefusedActivation] = deque(maxlen=REFUSED_KEPT)
        self.reconnects = 0

    def attach(self, iserver: Any) -> None:
        install()
        iserver.gridctl_session_guard = self

    def refuse(self, user: str, peer: str, reason: str, detail: str, code: int) -> ServiceError:
        self.refused.append(RefusedActivation(time.time(), user, peer, reason, detail))
        _log.warning(
            "OPC UA ActivateSession from %s as %r refused (%s): %s", peer, user, reason, detail
        )
        if self.failures is not None:
            try:
                self.failures.record_failure(user, peer, reason)
            except Exception:
                _log.exception("could not record the refused activation")
        return ServiceError(code)


# -- the patches -----------------------------------------------------------------
# What was installed before the guard (asyncua's own, or another check that
# wraps it): the guard wraps it, never replaces it.
_previous: dict[str, Any] = {}


def _session_init(self: InternalSession, *args: Any, **kwargs: Any) -> None:
    _previous["init"](self, *args, **kwargs)
    if self.external:
        # asyncua registered the session under its counter token: re-key it.
        self.iserver.unregister_external_session(self)
    self.session_id = random_node_id()
    self.auth_token = random_node_id()
    if self.external:
        self.iserver.register_external_session(self)


async def _process_message(
    self: UaProcessor, typeid: ua.NodeId, requesthdr: Any, seqhdr: Any, body: Any
) -> Any:
    guard: SessionGuard | None = getattr(self.iserver, "gridctl_session_guard", None)
    session = self.session
    if session is not None:
        owner = getattr(session, _CHANNEL, None)
        if owner is not None and owner() is not self:
            # The session moved to another channel (§6.7): it is no longer ours.
            self.session = None
            session = None
    if typeid == _ACTIVATE and guard is not None:
        if session is None:
            return await _reconnect(self, guard, requesthdr, seqhdr, body)
        _check_identity_transport(self, guard, _activate_params(body), session)
    elif session is None and typeid not in _SESSIONLESS:
        raise ServiceError(ua.StatusCodes.BadSessionIdInvalid)
    result = await _previous["process_message"](self, typeid, requesthdr, seqhdr, body)
    if typeid == _CREATE and self.session is not None and self.session is not session:
        _remember_origin(self, self.session)
    return result


def _activate_params(body: Any) -> ua.ActivateSessionParameters:
    # asyncua parses the body again after us: read a copy.
    return struct_from_binary(ua.ActivateSessionParameters, body.copy())


def _channel_origin(proc: UaProcessor) -> tuple[str, Any, bytes | None]:
    policy = proc._connection.security_policy
    return (policy.URI, policy.Mode, policy.peer_certificate)


def _remember_origin(proc: UaProcessor, session: InternalSession) -> None:
    setattr(session, _CHANNEL, weakref.ref(proc))
    setattr(session, _ORIGIN, _channel_origin(proc))


def _identity(params: ua.ActivateSessionParameters) -> Any:
    token = params.UserIdentityToken
    if isinstance(token, ua.ExtensionObject) and token.TypeId == _NULL:
        return ua.AnonymousIdentityToken()
    return token if token is not None else ua.AnonymousIdentityToken()


def _claimed_user(token: Any) -> str:
    if isinstance(token, ua.UserNameIdentityToken):
        return str(token.UserName or "")
    if isinstance(token, ua.X509IdentityToken):
        return "<certificate>"
    return "anonymous"


def _check_identity_transport(
    proc: UaProcessor,
    guard: SessionGuard,
    params: ua.ActivateSessionParameters,
    session: InternalSession,
) -> None:
    """Refuse a password that would cross this channel readable."""
    token = _identity(params)
    if not isinstance(token, ua.UserNameIdentityToken):
        return
    if token.EncryptionAlgorithm or proc._connection.security_policy.Mode == _ENCRYPTED:
        return
    peer = peer_host(proc.name)
    if guard.allow_plaintext and is_loopback(peer):
        return
    raise guard.refuse(
        _claimed_user(token),
        peer,
        "plaintext_refused",
        "user name and password over a channel without encryption",
        ua.StatusCodes.BadIdentityTokenRejected,
    )


async def _reconnect(
    proc: UaProcessor, guard: SessionGuard, requesthdr: Any, seqhdr: Any, body: Any
) -> Any:
    """ActivateSession on a channel without a session: move one here, or nothing."""
    params = _activate_params(body)
    token = _identity(params)
    claimed = _claimed_user(token)
    peer = peer_host(proc.name)

    def refuse(detail: str, code: int) -> ServiceError:
        return guard.refuse(claimed, peer, "reconnect_refused", detail, code)

    # The session's own peer is the address it was created from: the login
    # checks (and their back-off) must charge this channel's peer instead.
    login_peer.set(peer)

    existing = proc.iserver.lookup_external_session(requesthdr.AuthenticationToken)
    if existing is None or not existing.is_activated():
        raise refuse("no such active session", ua.StatusCodes.BadSessionIdInvalid)
    origin = getattr(existing, _ORIGIN, None)
    here = _channel_origin(proc)
    if origin is None or origin[:2] != here[:2]:
        raise refuse(
            "security policy or mode differs from the channel that created the session",
            ua.StatusCodes.BadSecurityChecksFailed,
        )
    if (origin[2] or None) != (here[2] or None):
        raise refuse(
            "client certificate differs from the one that created the session",
            ua.StatusCodes.BadSecurityChecksFailed,
        )
    policy = proc._connection.security_policy
    validator = proc.iserver.certificate_validator
    if here[2] and isinstance(validator, ClientCertificateValidator):
        # Trust list and validity now (the channel may be older than a change
        # of either); the URI was checked at CreateSession.
        try:
            validator.check(here[2], None)
        except Exception as exc:
            raise refuse(
                f"client certificate no longer valid: {exc}",
                ua.StatusCodes.BadSecurityChecksFailed,
            ) from None
    nonce = existing.nonce or b""
    data = nonce if policy.host_certificate is None else policy.host_certificate + nonce
    try:
        policy.asymmetric_cryptography.verify(data, params.ClientSignature.Signature)
    except Exception:
        raise refuse(
            "client signature over the server nonce does not verify",
            ua.StatusCodes.BadApplicationSignatureInvalid,
        ) from None
    _check_identity_transport(proc, guard, params, existing)
    user = _authenticate(proc, existing, token, params)
    if user is None:
        raise refuse("identity token does not authenticate", ua.StatusCodes.BadUserAccessDenied)
    if not _same_user(user, existing.user):
        raise refuse(
            f"identity authenticates as {getattr(user, 'name', None)!r}, "
            f"not as the session's user {getattr(existing.user, 'name', None)!r}",
            ua.StatusCodes.BadUserAccessDenied,
        )

    # Every check passed: the session moves here and leaves its old channel.
    old = getattr(existing, _CHANNEL, None)
    old_proc = old() if old is not None else None
    if old_proc is not None and old_proc is not proc and old_proc.session is existing:
        old_proc.session = None
    proc.session = existing
    setattr(existing, _CHANNEL, weakref.ref(proc))
    guard.reconnects += 1
    _log.info("OPC UA session of %s moved to a new channel from %s", claimed, peer)
    for sub in proc.iserver.subscription_service.subscriptions.values():
        if sub.session_id == existing.session_id:
            sub.pub_result_callback = proc.forward_publish_response
            sub.pub_request_callback = proc.get_publish_request  # type: ignore[assignment]
    if proc._session_watchdog_task is None or proc._session_watchdog_task.done():
        proc._session_watchdog_task = asyncio.create_task(proc._session_watchdog_loop())
    proc._closing = False
    proc.session_last_activity = time.monotonic()
    existing.touch()
    result = existing.activate_session(params, policy.peer_certificate)
    response = ua.ActivateSessionResponse()
    response.Parameters = result
    proc.send_response(requesthdr.RequestHandle, seqhdr, response)
    return True


def _authenticate(
    proc: UaProcessor, session: InternalSession, token: Any, params: ua.ActivateSessionParameters
) -> Any:
    iserver = proc.iserver
    if not isinstance(token, iserver.supported_tokens):
        return None
    manager = iserver.user_manager
    if manager is None:
        return None
    try:
        if isinstance(token, ua.UserNameIdentityToken):
            username, password = iserver.decrypt_user_token(session, token)
            return manager.get_user(iserver, username=username, password=password)
        if isinstance(token, ua.X509IdentityToken):
            cert = iserver.verify_x509_token(session, token, params.UserTokenSignature)
            return manager.get_user(iserver, certificate=cert)
        return manager.get_user(iserver)
    except Exception:
        return None


def _same_user(user: Any, current: Any) -> bool:
    name = getattr(user, "name", None)
    return (
        name is not None
        and name == getattr(current, "name", None)
        and getattr(user, "grid_role", None) == getattr(current, "grid_role", None)
        and getattr(user, "role", None) == getattr(current, "role", None)
    )


async def close_sessions(iserver: Any) -> int:
    """Close every client session of ``iserver`` (at stop); returns how many.

    asyncua counts activated sessions in a class attribute for the whole
    process (its ``max_sessions`` limit) and its server stop leaves sessions
    of vanished clients open: closed here, a stopped server frees its places.
    """
    sessions = list(iserver._external_sessions.values())
    for session in sessions:
        try:
            await session.close_session(True)
        except Exception:
            _log.exception("closing OPC UA session %s at stop", session.name)
    return len(sessions)


def installed() -> bool:
    # Other checks may wrap the guard afterwards (and it wraps what came
    # before): installed once per process, never again on top of them.
    return bool(_previous)


def install() -> None:
    """Patch asyncua (once per process); refuses an asyncua it was not written for."""
    require_pinned("the OPC UA session guard (random tokens, checked reconnects)")
    if installed():
        return
    _previous["init"] = InternalSession.__init__
    _previous["process_message"] = UaProcessor._process_message
    InternalSession.__init__ = _session_init  # type: ignore[method-assign]
    UaProcessor._process_message = _process_message  # type: ignore[method-assign]
