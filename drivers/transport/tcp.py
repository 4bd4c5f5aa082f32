"""TCP client: transparent serial servers (DL/T 645 over TCP) and Modbus TCP."""

from __future__ import annotations

import asyncio
import socket

from drivers.transport.base import Link, _LinkProtocol

CONNECT_TIMEOUT_S = 5.0


class TcpTransport(Link):
    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"tcp://{host}:{port}")
        self.host = host
        self.port = port

    async def _connect(self, protocol: _LinkProtocol) -> asyncio.Transport:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                transport, _ = await loop.create_connection(lambda: protocol, self.host, self.port)
        except TimeoutError as exc:
            raise OSError(f"connect timed out after {CONNECT_TIMEOUT_S} s") from exc
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # request frames are small and latency-bound: never wait for Nagle
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return transport
