"""The asyncua version whose internals this server reaches into, and the gate around them.

gridctl replaces or wraps a few of asyncua's private structures. Security:
the session tokens and the reconnect path (``session_guard``), the client
certificate checks at channel open and CreateSession (``security``), the
login peer and back-off (``users``), the connection limits
(``connection_limits``), per-item Call/Write and per-session access levels
(``access``), Browse continuation points (``browse``), the smallest publishing
interval (``subscription_limits``). Speed: the packed publish encoder
(``publish_encoding``) and the synchronous data-change path (``publisher``).
Each was written and tested against
one minor version (pinned in pyproject.toml and constraints.txt). On another
version a *security* patch refuses to start the server
(:class:`AsyncuaVersionError`: silently losing it would reopen the hole it
closes), while a *speed* patch falls back to asyncua's own code and logs it.
"""

from __future__ import annotations

import logging

import asyncua

_log = logging.getLogger(__name__)

# The asyncua minor version every patch in opcua_server/ is written against.
PINNED = (2, 1)
PINNED_TEXT = "asyncua>=2.1,<2.2"


class AsyncuaVersionError(RuntimeError):
    """The installed asyncua is not the version a security patch was written for."""


def installed_version() -> str:
    return str(asyncua.__version__)


def _minor(version: str) -> tuple[int, int] | None:
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def is_pinned(version: str | None = None) -> bool:
    """True when ``version`` (default: the installed asyncua) is the pinned minor."""
    return _minor(version if version is not None else installed_version()) == PINNED


def require_pinned(feature: str) -> None:
    """Raise unless the installed asyncua is the pinned minor (for security patches)."""
    if not is_pinned():
        raise AsyncuaVersionError(
            f"{feature} is written against asyncua {PINNED[0]}.{PINNED[1]}.x internals; "
            f"asyncua {installed_version()} is installed: install {PINNED_TEXT}"
        )


def allow_fallback(feature: str) -> bool:
    """True on the pinned asyncua; otherwise log that ``feature`` uses asyncua's own code."""
    if is_pinned():
        return True
    _log.warning(
        "asyncua %s: %s falls back to asyncua's own code (written for %d.%d.x)",
        installed_version(),
        feature,
        *PINNED,
    )
    return False
