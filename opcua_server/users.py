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
import base64
import contextvars
import getpass
import hashlib
import hmac
import logging
import secrets
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from asyncua import ua
from asyncua.crypto.permission_rules import PermissionRuleset, User, UserRole

from .config import Role, UserConfig

_log = logging.getLogger(__name__)

# scrypt cost: 2**14 × 8 × 128 B = 16 MiB, ~30–60 ms. Verification runs on the
# event loop, so successful logins are cached (keyed by an HMAC, never the
# password) and repeated failures for a user are refused without hashing.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_MAXMEM = 64 * 1024 * 1024


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    if not password:
        raise ValueError("password must not be empty")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_MAXMEM,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


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


class UserStore:
    """asyncua user manager: config users with scrypt hashes, optional anonymous."""

    def __init__(
        self,
        users: Iterable[UserConfig],
        *,
        anonymous: bool,
        lockout_after: int = 5,
        lockout_s: float = 30.0,
    ) -> None:
        self._users = {u.name: u for u in users}
        self.anonymous = anonymous
        self.lockout_after = lockout_after
        self.lockout_s = lockout_s
        self._key = secrets.token_bytes(32)
        self._ok: dict[bytes, float] = {}  # HMAC(name, password) -> time verified
        self._failures: dict[str, tuple[int, float]] = {}
        self.rejected = 0

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
        return self.authenticate(username, password or "")

    def authenticate(self, username: str, password: str) -> GridUser | None:
        cfg = self._users.get(username)
        now = time.monotonic()
        count, since = self._failures.get(username, (0, 0.0))
        if count >= self.lockout_after and now - since < self.lockout_s:
            self.rejected += 1
            _log.warning(
                "OPC UA login for %r refused: locked out after %d failures", username, count
            )
            return None
        mac = hmac.digest(self._key, f"{username}\0{password}".encode(), "sha256")
        ok = cfg is not None and (mac in self._ok or verify_password(password, cfg.password_hash))
        if cfg is None or not ok:
            self._failures[username] = (count + 1, now)
            self.rejected += 1
            _log.warning("OPC UA login for %r refused: unknown user or wrong password", username)
            return None
        self._failures.pop(username, None)
        if len(self._ok) > 1024:
            self._ok.clear()
        self._ok[mac] = now
        return GridUser(role=UserRole.User, name=username, grid_role=cfg.role)


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
