"""Connection limits of the OPC UA server: per peer, in total, sessions, idle time.

asyncua 2.1 already bounds TCP connections in total (``InternalServer.
max_connections``, refused in ``OPCUAProtocol.connection_made``), closes a
connection that has not activated a session in time
(``max_pending_activation_seconds``) and bounds activated sessions
(``InternalSession.max_connections``, a class attribute: one limit per
process, which holds one server). These are set from ``[opcua]``. What it
lacks is a bound per peer address, so one host's parked sockets could take
every slot: :func:`apply` wraps ``OPCUAProtocol.connection_made`` to close a
connection from a host that already holds ``max_connections_per_peer``.
"""

from __future__ import annotations

import functools
import logging
import weakref
from dataclasses import dataclass
from typing import Any

from asyncua.server.binary_server_asyncio import OPCUAProtocol
from asyncua.server.internal_server import InternalServer
from asyncua.server.internal_session import InternalSession

from .asyncua_gate import require_pinned
from .config import OpcUaConfig
from .users import peer_host

_log = logging.getLogger(__name__)

FEATURE = "OPC UA connection limits (OPCUAProtocol.connection_made, InternalSession)"
_WRAPPER_MARK = "_gridctl_connection_limits"


@dataclass(slots=True)
class PeerLimit:
    per_peer: int
    refused: int = 0  # connections closed at once: their host was at per_peer
    peak: int = 0  # most connections one host held at once


# Each server's limit, looked up from the protocol's InternalServer; a server
# this module did not configure keeps asyncua's behaviour.
_LIMITS: weakref.WeakKeyDictionary[InternalServer, PeerLimit] = weakref.WeakKeyDictionary()


def apply(iserver: InternalServer, config: OpcUaConfig) -> PeerLimit:
    """Configure ``iserver``'s limits from ``config``; call before the server starts."""
    require_pinned(FEATURE)
    iserver.max_connections = config.max_connections
    iserver.max_pending_activation_seconds = config.activation_timeout_s
    InternalSession.max_connections = config.max_sessions
    _install()
    limit = PeerLimit(config.max_connections_per_peer)
    _LIMITS[iserver] = limit
    return limit


def _install() -> None:
    current = OPCUAProtocol.connection_made
    if getattr(current, _WRAPPER_MARK, False):
        return

    @functools.wraps(current)
    def connection_made(self: OPCUAProtocol, transport: Any) -> None:
        limit = _LIMITS.get(self.iserver)
        if limit is not None:
            host = peer_host(transport.get_extra_info("peername"))
            # at most max_connections entries (asyncua refuses beyond), so a scan is cheap
            held = sum(1 for client in self.clients if peer_host(client.peer_name) == host)
            if held >= limit.per_peer:
                limit.refused += 1
                if limit.refused == 1 or limit.refused % 1000 == 0:
                    _log.warning(
                        "OPC UA connection from %s refused: it holds %d connections "
                        "(max_connections_per_peer); %d refused so far",
                        host,
                        held,
                        limit.refused,
                    )
                self.peer_name = transport.get_extra_info("peername")
                transport.close()
                return
            limit.peak = max(limit.peak, held + 1)
        current(self, transport)

    setattr(connection_made, _WRAPPER_MARK, True)
    OPCUAProtocol.connection_made = connection_made  # type: ignore[method-assign]
