"""OPC UA users, roles and the per-service permission ruleset.

Passwords are stored as scrypt hashes (``scrypt$N$r$p$salt$hash``, base64), never
in plain text. ``python -m opcua_server.users hash`` prints a hash for the config.

asyncua knows three roles (Admin, User, Anonymous) and its default
``SimpleRoleRuleset`` gives anonymous sessions nothing at all — not even Read
or CreateSubscription. gridctl maps its own four roles onto asyncua's ``User``
(never asyncua ``Admin``: that role bypasses access levels on writes and may
add or delete nodes) and decides per service request here, remembering the
session's user in a context variable so methods can check roles too (asyncua
does not pass the caller to method callbacks; a connection's requests are
processed one after another in that connection's task, so the variable set by
the ruleset is the caller's while its Call runs).
"""

from __future__ import annotations

import argparse
import contextvars
import functools
import getpass
import hmac
import inspect
import logging
import secrets
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from asyncua import ua
from asyncua.crypto.permission_rules import PermissionRuleset, User, UserRole
from asyncua.server.internal_session import InternalSession

from controller.password_hash import hash_password, verify_password

from .asyncua_gate import require_pinned
from .config import OpcUaConfig, Role, UserConfig
from .login_failures import MAX_USER_CHARS, REASONS, LoginFailure

_log = logging.getLogger(__name__)

# scrypt cost: 2**14 × 8 × 128 B = 16 MiB, ~30–60 ms (controller.password_hash).
# Verification runs on the event loop, so successful logins are cached (keyed
# by an HMAC, never the password) and a user and peer that keep failing are
# refused without hashing.


@dataclass
class GridUser(User):
    """An asyncua user carrying the gridctl role (None for anonymous)."""

    grid_role: Role | None = None

    def allows(self, required: Role) -> bool:
        return self.grid_role is not None and self.grid_role.allows(required)

    def __str__(self) -> str:
        return (
            f"{self.name or 'anonymous'}({self.grid_role.value if self.grid_role else 'anonymous'})"
        )


ANONYMOUS = GridUser(role=UserRole.Anonymous, name="anonymous", grid_role=None)

# The user of the request being processed (set by the ruleset, read by methods).
current_user: contextvars.ContextVar[GridUser | None] = contextvars.ContextVar(
    "opcua_current_user", default=None
)
# The host address of the client whose CreateSession or ActivateSession is being
# processed (set around asyncua's InternalSession methods by install_login_peer;
# asyncua does not pass the connection to the user manager or the validator).
login_peer: contextvars.ContextVar[str] = contextvars.ContextVar("opcua_login_peer", default="")
_WRAPPER_MARK = "_gridctl_login_peer"

FailureSink = Callable[[LoginFailure], None]


def peer_host(peername: Any) -> str:
    """The host of a transport's ``peername`` (``(ip, port)``, IPv6 4-tuple, or a path)."""
    if isinstance(peername, tuple | list) and peername:
        return str(peername[0])
    return "" if peername is None else str(peername)


def install_login_peer() -> None:
    """Set :data:`login_peer` while asyncua creates (the client certificate is
    checked there) and activates a session (idempotent).

    Plain wrappers around whatever ``InternalSession.create_session`` and
    ``activate_session`` are current, so other patches may wrap them too,
    before or after these. A peer already set by the caller is kept: a session
    re-activated from a new connection carries its first connection's address
    in ``InternalSession.name``, and that caller knows the new one.
    """
    require_pinned("per-peer login back-off (InternalSession.create_session, activate_session)")
    for name in ("create_session", "activate_session"):
        current = getattr(InternalSession, name)
        if not _is_login_peer_wrapper(current):
            setattr(InternalSession, name, _with_login_peer(current))


def _with_login_peer(current: Callable[..., Any]) -> Callable[..., Any]:
    wrapper: Callable[..., Any]
    if inspect.iscoroutinefunction(current):

        @functools.wraps(current)
        async def wrapper(self: InternalSession, *args: Any, **kwargs: Any) -> Any:
            token = login_peer.set(login_peer.get() or peer_host(self.name))
            try:
                return await current(self, *args, **kwargs)
            finally:
                login_peer.reset(token)

    else:

        @functools.wraps(current)
        def wrapper(self: InternalSession, *args: Any, **kwargs: Any) -> Any:
            token = login_peer.set(login_peer.get() or peer_host(self.name))
            try:
                return current(self, *args, **kwargs)
            finally:
                login_peer.reset(token)

    wrapper.__dict__[_WRAPPER_MARK] = True
    return wrapper


def _is_login_peer_wrapper(func: Any) -> bool:
    # functools.wraps copies __dict__ and sets __wrapped__: the mark is found
    # under any wrapper another patch put around this one.
    seen = 0
    while func is not None and seen < 32:
        if getattr(func, _WRAPPER_MARK, False):
            return True
        func = getattr(func, "__wrapped__", None)
        seen += 1
    return False


class LoginBackoff:
    """Failed logins per (user, peer): free attempts, then an exponential wait.

    A least-recently-used table of at most ``size`` pairs, so made-up user
    names cannot grow it; a pair that falls out simply starts again.
    """

    def __init__(
        self, *, free_attempts: int, delay_s: float, max_delay_s: float, size: int
    ) -> None:
        self.free_attempts = free_attempts
        self.delay_s = delay_s
        self.max_delay_s = max_delay_s
        self.size = size
        # (user, peer) -> (failures, monotonic time until which the pair is refused)
        self._pairs: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pairs)

    def wait_s(self, key: tuple[str, str], now: float) -> float:
        """Seconds this pair must still wait (0: it may try)."""
        entry = self._pairs.get(key)
        return 0.0 if entry is None else max(0.0, entry[1] - now)

    def failures(self, key: tuple[str, str]) -> int:
        entry = self._pairs.get(key)
        return 0 if entry is None else entry[0]

    def failed(self, key: tuple[str, str], now: float) -> float:
        """Count a failure; returns the wait it starts (s)."""
        count = self._pairs.pop(key, (0, 0.0))[0] + 1
        excess = count - self.free_attempts
        delay = 0.0
        if excess >= 0:
            # the exponent is capped so a long siege cannot overflow the float
            delay = min(self.max_delay_s, self.delay_s * 2.0 ** min(excess, 64))
        self._pairs[key] = (count, now + delay)
        while len(self._pairs) > self.size:
            self._pairs.popitem(last=False)
        return delay

    def succeeded(self, key: tuple[str, str]) -> None:
        self._pairs.pop(key, None)


class UserStore:
    """asyncua user manager: config users with scrypt hashes, optional anonymous."""

    def __init__(
        self,
        users: Iterable[UserConfig],
        *,
        anonymous: bool,
        free_attempts: int = 3,
        backoff_s: float = 1.0,
        backoff_max_s: float = 60.0,
        table_size: int = 10_000,
        on_failure: FailureSink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._users = {u.name: u for u in users}
        self.anonymous = anonymous
        self.backoff = LoginBackoff(
            free_attempts=free_attempts,
            delay_s=backoff_s,
            max_delay_s=backoff_max_s,
            size=table_size,
        )
        self.on_failure = on_failure
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._ok: dict[bytes, float] = {}  # HMAC(name, password) -> time verified
        # An unknown user name is checked against this hash (same cost as the
        # configured users'), so the answer takes as long as for a known name.
        self.dummy_hash = _dummy_hash(self._users.values())
        self.failures: dict[str, int] = dict.fromkeys(REASONS, 0)

    @classmethod
    def from_config(cls, config: OpcUaConfig, on_failure: FailureSink | None = None) -> UserStore:
        return cls(
            config.users,
            anonymous=config.anonymous == "read-only",
            free_attempts=config.login_free_attempts,
            backoff_s=config.login_backoff_s,
            backoff_max_s=config.login_backoff_max_s,
            table_size=config.login_table_size,
            on_failure=on_failure,
        )

    @property
    def rejected(self) -> int:
        return sum(self.failures.values())

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is None:
            # Anonymous token (the channel's client certificate identifies the
            # application, not a person, so it does not make a user).
            return ANONYMOUS if self.anonymous else None
        return self.authenticate(username, password or "", login_peer.get())

    def authenticate(self, username: str, password: str, peer: str = "") -> GridUser | None:
        key = (username[:MAX_USER_CHARS], peer)
        now = self._clock()
        wait = self.backoff.wait_s(key, now)
        if wait > 0:
            # refused before any hashing: a backed-off guesser costs no scrypt
            self.record_failure(username, peer, "backed_off")
            return None
        cfg = self._users.get(username)
        mac = hmac.digest(self._key, f"{username}\0{password}".encode(), "sha256")
        if cfg is not None and mac in self._ok:
            ok = True
        else:
            ok = verify_password(password, cfg.password_hash if cfg else self.dummy_hash)
            ok = ok and cfg is not None
        if cfg is None or not ok:
            delay = self.backoff.failed(key, now)
            self.record_failure(username, peer, "unknown_user" if cfg is None else "bad_password")
            if delay > 0:
                _log.warning(
                    "OPC UA logins as %r from %s wait %.0f s after %d failures",
                    username[:MAX_USER_CHARS],
                    peer or "?",
                    delay,
                    self.backoff.failures(key),
                )
            return None
        self.backoff.succeeded(key)
        if len(self._ok) > 1024:
            self._ok.clear()
        self._ok[mac] = now
        return GridUser(role=UserRole.User, name=username, grid_role=cfg.role)

    def record_failure(self, user: str, peer: str, reason: str) -> None:
        """Count, log and report one refused login (every refusal path calls this).

        ``reason``: one of :data:`~opcua_server.login_failures.REASONS`."""
        failure = LoginFailure.make(user, peer, reason)
        self.failures[reason] += 1
        # repeats while backed off would flood the log; they are counted and journaled
        level = logging.DEBUG if reason == "backed_off" else logging.WARNING
        _log.log(level, "OPC UA login as %r from %s refused: %s", failure.user, peer or "?", reason)
        if self.on_failure is not None:
            try:
                self.on_failure(failure)
            except Exception:
                _log.exception("reporting a refused OPC UA login failed")


def _dummy_hash(users: Iterable[UserConfig]) -> str:
    """A hash of a random password at the first configured user's scrypt cost."""
    secret = secrets.token_urlsafe(16)
    for user in users:
        try:
            _scheme, n, r, p, _salt, _digest = user.password_hash.split("$")
            return hash_password(secret, n=int(n), r=int(r), p=int(p))
        except ValueError:
            continue  # a malformed hash never verifies anyway; try the next user's cost
    return hash_password(secret)


def _ids(*names: str) -> frozenset[ua.NodeId]:
    return frozenset(
        ua.NodeId(getattr(ua.ObjectIds, f"{n}Request_Encoding_DefaultBinary")) for n in names
    )


# Everything a read-only client (anonymous or viewer) needs: browse, read,
# subscriptions with monitored items, history read.
READ_SERVICES = _ids(
    "CreateSession",
    "ActivateSession",
    "CloseSession",
    "CloseSecureChannel",
    "GetEndpoints",
    "FindServers",
    "Read",
    "Browse",
    "BrowseNext",
    "TranslateBrowsePathsToNodeIds",
    "RegisterNodes",
    "UnregisterNodes",
    "CreateSubscription",
    "ModifySubscription",
    "DeleteSubscriptions",
    "TransferSubscriptions",
    "SetPublishingMode",
    "CreateMonitoredItems",
    "ModifyMonitoredItems",
    "DeleteMonitoredItems",
    "SetMonitoringMode",
    "Publish",
    "Republish",
    "HistoryRead",
)
# Call and Write pass at the request level for every activated session: Part 4
# answers them per item (a refused method next to a permitted one is Good plus
# BadUserAccessDenied, never one ServiceFault), so opcua_server.access decides
# each item with :meth:`GridRuleset.may_call` and :meth:`GridRuleset.may_write`.
CALL_SERVICES = _ids("Call")
WRITE_SERVICES = _ids("Write")
HISTORY_UPDATE_SERVICES = _ids("HistoryUpdate")
# AddNodes/DeleteNodes/AddReferences/DeleteReferences: never. The model is
# generated from the configuration, not edited by clients.


class GridRuleset(PermissionRuleset):
    def __init__(self) -> None:
        self.denied = 0  # requests and items refused
        # Methods an anonymous session may call: read-only ones (ConditionRefresh, WhoAmI).
        self.public_methods: set[ua.NodeId] = set()

    def allowed(self, user: GridUser | None, action: ua.NodeId, body: Any = None) -> bool:
        if action in READ_SERVICES or action in CALL_SERVICES or action in WRITE_SERVICES:
            return True
        if user is None or user.grid_role is None:
            return False
        if action in HISTORY_UPDATE_SERVICES:
            return user.allows(Role.ENGINEER)
        return False

    def check_validity(self, user: User, action_type_id: ua.NodeId, body: Any) -> bool:
        grid_user = user if isinstance(user, GridUser) else None
        current_user.set(grid_user)
        ok = self.allowed(grid_user, action_type_id, body)
        if not ok:
            self.denied += 1
        return ok

    def may_call(self, user: GridUser | None, method_id: ua.NodeId) -> bool:
        """One item of a Call: anonymous sessions only reach public methods.

        Signed-in users reach every method; gridctl's methods then check the
        role each needs (``methods.bind``)."""
        ok = (user is not None and user.grid_role is not None) or method_id in self.public_methods
        if not ok:
            self.denied += 1
        return ok

    def may_write(self, user: GridUser | None, required: Role) -> bool:
        """One item of a Write to a writable variable that needs role ``required``."""
        ok = user is not None and user.allows(required)
        if not ok:
            self.denied += 1
        return ok


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m opcua_server.users", description="gridctl OPC UA user helper"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("hash", help="read a password (prompt, or stdin when piped) and print its hash")
    args = parser.parse_args(argv)
    if args.command == "hash":
        if sys.stdin.isatty():
            password = getpass.getpass("password: ")
            if getpass.getpass("again: ") != password:
                print("passwords differ", file=sys.stderr)
                return 2
        else:
            password = sys.stdin.readline().rstrip("\n")
        if not password:
            print("empty password", file=sys.stderr)
            return 2
        print(hash_password(password))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
