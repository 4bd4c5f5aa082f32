"""Whether a listening host is reachable from this machine only.

Loopback endpoints may keep conveniences a network endpoint must not have
(the demo's policy "None", anonymous sessions, metrics without auth). A host
name is never taken as loopback except ``localhost``: it may resolve to any
interface, and 0.0.0.0 / :: listen on every one.
"""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
